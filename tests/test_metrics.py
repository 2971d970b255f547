import pytest
import torch

from segops.metrics import PanopticQuality, SegmentationMetrics


def test_hand_computed_case():
    # Confusion (rows target, columns pred): [[1, 1, 0], [0, 2, 0], [1, 0, 1]].
    target = torch.tensor([[[0, 0, 1], [1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 1], [1, 2, 0]]])
    metrics = SegmentationMetrics(3)
    metrics.update(pred, target)
    result = metrics.compute()
    assert metrics.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result["pixel_accuracy"] == pytest.approx(4 / 6)
    assert result["mean_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert result["iou"].tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert result["mean_iou"] == pytest.approx(0.5)
    assert result["fw_iou"] == pytest.approx((2 / 6) * (1 / 3 + 2 / 3 + 1 / 2))


def _independent(pred, target, num_classes, ignore_index):
    """Long et al.'s definitions, class by class with boolean masks."""
    counted = target != ignore_index
    pred, target = pred[counted], target[counted]
    accuracies, ious, weighted = [], [], 0.0
    for c in range(num_classes):
        is_target, is_pred = target == c, pred == c
        hits = (is_target & is_pred).sum().item()
        if is_target.sum() > 0:
            accuracies.append(hits / is_target.sum().item())
        union = (is_target | is_pred).sum().item()
        if union > 0:
            ious.append(hits / union)
            weighted += is_target.sum().item() * hits / union
    return {
        "pixel_accuracy": (pred == target).sum().item() / target.numel(),
        "mean_accuracy": sum(accuracies) / len(accuracies),
        "mean_iou": sum(ious) / len(ious),
        "fw_iou": weighted / target.numel(),
    }


@pytest.mark.parametrize("seed", range(4))
def test_against_an_independent_computation_over_batches(seed):
    g = torch.Generator().manual_seed(seed)
    num_classes, ignore = 6, 255
    batches = []
    for _ in range(3):
        target = torch.randint(0, num_classes - 1, (2, 9, 11), generator=g)  # class 5 never in the targets
        target[torch.rand(target.shape, generator=g) < 0.1] = ignore
        logits = torch.randn(2, num_classes - 2, 9, 11, generator=g)  # classes 4, 5 never predicted
        batches.append((torch.cat([logits, torch.full((2, 2, 9, 11), -10.0)], dim=1), target))
    metrics = SegmentationMetrics(num_classes, ignore_index=ignore)
    for logits, target in batches:
        metrics.update(logits, target)
    result = metrics.compute()
    expected = _independent(torch.cat([l.argmax(1) for l, _ in batches]), torch.cat([t for _, t in batches]),
                            num_classes, ignore)
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)
    assert torch.isnan(result["iou"][5])  # absent from targets and predictions: left out of the means


def test_merge_and_all_reduce_equal_one_accumulator(tmp_path):
    import torch.distributed as dist

    g = torch.Generator().manual_seed(0)
    parts = [(torch.randint(0, 4, (2, 5, 5), generator=g), torch.randint(0, 4, (2, 5, 5), generator=g))
             for _ in range(2)]
    whole, first, second = SegmentationMetrics(4), SegmentationMetrics(4), SegmentationMetrics(4)
    for pred, target in parts:
        whole.update(pred, target)
    first.update(*parts[0])
    second.update(*parts[1])
    assert torch.equal(first.merge_(second).confusion, whole.confusion)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        before = whole.confusion.clone()
        whole.all_reduce()  # one process: the sum is itself
        assert torch.equal(whole.confusion, before)
    finally:
        dist.destroy_process_group()


def test_bad_labels_are_errors():
    metrics = SegmentationMetrics(3, ignore_index=255)
    with pytest.raises(ValueError, match=r"target labels must be in \[0, 3\) or 255, got 7"):
        metrics.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 255]]]))
    with pytest.raises(ValueError, match=r"pred labels must be in \[0, 3\), got -1"):
        metrics.update(torch.tensor([[[0, -1], [1, 1]]]), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"logits must have 3 channels"):
        metrics.update(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"num_classes must be at least 1, got 0"):
        SegmentationMetrics(0)


def _panoptic(rows):
    """Tensor[1, H, W, 2] from rows of (category, instance) pairs."""
    return torch.tensor([rows], dtype=torch.int64)


def test_panoptic_quality_hand_computed():
    # Things {1}, stuff {2}, category 0 is void; a thing with instance 0 is crowd.
    target = _panoptic([
        [(2, 0), (2, 0), (2, 0), (2, 0), (2, 0)],
        [(1, 1), (1, 1), (1, 1), (2, 0), (2, 0)],
        [(1, 1), (1, 1), (1, 1), (1, 2), (1, 2)],
        [(0, 0), (0, 0), (1, 0), (1, 0), (1, 2)],
    ])
    pred = _panoptic([
        [(2, 0), (2, 0), (2, 0), (2, 0), (2, 0)],
        [(1, 5), (1, 5), (1, 5), (2, 0), (2, 0)],
        [(1, 5), (1, 5), (1, 7), (1, 7), (1, 7)],
        [(1, 5), (1, 9), (1, 9), (1, 9), (1, 7)],
    ])
    metrics = PanopticQuality(things=[1], stuffs=[2])
    metrics.update(pred, target)
    # Stuff matches exactly. (1, 5) meets (1, 1) on 5 pixels; its 1 void pixel leaves the union: IoU 5/6.
    # (1, 7) meets (1, 2) on 3 of 4: IoU 3/4. (1, 9) lies on void and crowd only: not a false positive.
    result = metrics.compute()
    assert result["pq_things"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert result["rq_things"] == pytest.approx(1.0) and result["pq_stuff"] == pytest.approx(1.0)
    # A second image: the thing is missed (FN), a predicted thing lies on stuff (FP), stuff overlaps at IoU 1/4
    # (FN and FP).
    target2 = _panoptic([[(1, 1), (1, 1), (2, 0), (2, 0)], [(1, 1), (1, 1), (2, 0), (2, 0)]])
    pred2 = _panoptic([[(2, 0), (2, 0), (1, 3), (2, 0)], [(2, 0), (2, 0), (1, 3), (2, 0)]])
    metrics.update(pred2, target2)
    result = metrics.compute()
    things_pq, stuff_pq = (5 / 6 + 3 / 4) / 3, 1 / 2
    assert result["pq_things"] == pytest.approx(things_pq)
    assert result["sq_things"] == pytest.approx((5 / 6 + 3 / 4) / 2)
    assert result["rq_things"] == pytest.approx(2 / 3)
    assert result["pq_stuff"] == pytest.approx(stuff_pq) and result["sq_stuff"] == pytest.approx(1.0)
    assert result["pq"] == pytest.approx((things_pq + stuff_pq) / 2)


def test_panoptic_quality_of_a_perfect_prediction_is_one():
    g = torch.Generator().manual_seed(0)
    category = torch.randint(1, 4, (2, 8, 8), generator=g)
    instance = torch.where(category == 1, torch.randint(1, 4, (2, 8, 8), generator=g), 0)
    panoptic = torch.stack([category, instance], dim=-1)
    metrics = PanopticQuality(things=[1], stuffs=[2, 3])
    metrics.update(panoptic, panoptic)
    result = metrics.compute()
    assert result["pq"] == pytest.approx(1.0) and result["sq"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="a category cannot be both thing and stuff"):
        PanopticQuality(things=[1, 2], stuffs=[2])
    with pytest.raises(ValueError, match=r"must be Tensor\[N, H, W, 2\] of one shape"):
        metrics.update(panoptic[..., 0], panoptic[..., 0])

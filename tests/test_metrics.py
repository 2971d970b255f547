import numpy as np
import pytest
import torch

from segops.metrics import PanopticQuality, SaliencyMetrics, SegmentationMetrics


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
    expected = _independent(
        torch.cat([logits.argmax(1) for logits, _ in batches]), torch.cat([t for _, t in batches]), num_classes, ignore
    )
    for key, value in expected.items():
        assert result[key] == pytest.approx(value)
    assert torch.isnan(result["iou"][5])  # absent from targets and predictions: left out of the means


def test_merge_and_all_reduce_equal_one_accumulator(tmp_path):
    import torch.distributed as dist

    g = torch.Generator().manual_seed(0)
    parts = [
        (torch.randint(0, 4, (2, 5, 5), generator=g), torch.randint(0, 4, (2, 5, 5), generator=g)) for _ in range(2)
    ]
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
    target = _panoptic(
        [
            [(2, 0), (2, 0), (2, 0), (2, 0), (2, 0)],
            [(1, 1), (1, 1), (1, 1), (2, 0), (2, 0)],
            [(1, 1), (1, 1), (1, 1), (1, 2), (1, 2)],
            [(0, 0), (0, 0), (1, 0), (1, 0), (1, 2)],
        ]
    )
    pred = _panoptic(
        [
            [(2, 0), (2, 0), (2, 0), (2, 0), (2, 0)],
            [(1, 5), (1, 5), (1, 5), (2, 0), (2, 0)],
            [(1, 5), (1, 5), (1, 7), (1, 7), (1, 7)],
            [(1, 5), (1, 9), (1, 9), (1, 9), (1, 7)],
        ]
    )
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


# ---------------------------------------------------------------------------------------------- SaliencyMetrics


def _s_measure_numpy(pred, gt, eps=np.finfo(np.float64).eps):
    """The S-measure as written in PySODMetrics (Fan et al. 2017), transcribed with NumPy loops."""
    y_mean = gt.mean()
    if y_mean == 0:
        return 1 - pred.mean()
    if y_mean == 1:
        return pred.mean()

    def s_object(values):
        x = values.mean()
        sigma = values.std(ddof=1)
        return 2 * x / (x * x + 1 + sigma + eps)

    object_score = y_mean * s_object(pred[gt]) + (1 - y_mean) * s_object(1 - pred[~gt])

    def ssim(p, g):
        n = p.size
        x, y = p.mean(), g.mean()
        sx = ((p - x) ** 2).sum() / (n - 1)
        sy = ((g - y) ** 2).sum() / (n - 1)
        sxy = ((p - x) * (g - y)).sum() / (n - 1)
        alpha, beta = 4 * x * y * sxy, (x * x + y * y) * (sx + sy)
        return alpha / (beta + eps) if alpha != 0 else (1.0 if beta == 0 else 0.0)

    h, w = gt.shape
    rows, cols = np.argwhere(gt).mean(axis=0).round()
    y, x = int(rows) + 1, int(cols) + 1
    g = gt.astype(np.float64)
    region = sum(
        p.size / (h * w) * ssim(p, q)
        for p, q in [
            (pred[:y, :x], g[:y, :x]),
            (pred[:y, x:], g[:y, x:]),
            (pred[y:, :x], g[y:, :x]),
            (pred[y:, x:], g[y:, x:]),
        ]
    )
    return max(0.0, 0.5 * object_score + 0.5 * region)


def _max_f_brute_force(preds, gts, beta2=0.3):
    curves = []
    for pred, gt in zip(preds, gts):
        levels = np.floor(pred * 255)
        curve = []
        for t in range(256):
            binary = levels >= t
            tp = np.sum(binary & gt)
            precision = tp / binary.sum() if binary.sum() else 0.0
            recall = tp / gt.sum() if gt.sum() else 0.0
            curve.append((1 + beta2) * precision * recall / (beta2 * precision + recall) if precision + recall else 0.0)
        curves.append(curve)
    return np.mean(curves, axis=0).max()


def _saliency_case(seed, n=3, size=(12, 15)):
    g = torch.Generator().manual_seed(seed)
    target = torch.zeros(n, *size)
    target[:, 3:9, 4:11] = 1
    target[-1, 0:2, 0:3] = 1  # a second, small region
    pred = (target * 0.4 + torch.rand(n, *size, generator=g) * 0.6).clamp(0, 1)  # overlapping: max F < 1
    return pred, target


def test_saliency_metrics_against_direct_computations():
    pred, target = _saliency_case(0)
    metrics = SaliencyMetrics()
    metrics.update(pred[:2], target[:2])
    metrics.update(pred[2:].unsqueeze(1), target[2:].unsqueeze(1))  # [N, 1, H, W] too
    result = metrics.compute()
    p, t = pred.double().numpy(), target.numpy() > 0
    assert result["mae"] == pytest.approx(np.mean([np.abs(a - b).mean() for a, b in zip(p, t)]), abs=1e-12)
    assert result["max_f"] == pytest.approx(_max_f_brute_force(p, t), abs=1e-12)
    assert result["s_measure"] == pytest.approx(np.mean([_s_measure_numpy(a, b) for a, b in zip(p, t)]), abs=1e-12)
    assert 0.5 < result["s_measure"] < 1 and 0.5 < result["max_f"] < 1


def test_saliency_metrics_hand_cases():
    target = torch.zeros(1, 8, 8)
    target[0, 2:6, 2:6] = 1
    perfect = SaliencyMetrics()
    perfect.update(target.clone(), target)
    result = perfect.compute()
    assert result["mae"] == 0 and result["max_f"] == pytest.approx(1.0) and result["s_measure"] == pytest.approx(1.0)
    inverted = SaliencyMetrics()
    inverted.update(1 - target, target)
    result = inverted.compute()
    # mae 1; the best threshold (0) marks everything: P = 16/64, R = 1, F = 1.3 P / (0.3 P + 1).
    assert result["mae"] == 1 and result["max_f"] == pytest.approx(1.3 * 0.25 / (0.3 * 0.25 + 1))
    assert result["s_measure"] < 0.1
    empty, full = SaliencyMetrics(), SaliencyMetrics()
    pred = torch.full((1, 8, 8), 0.25)
    empty.update(pred, torch.zeros(1, 8, 8))
    full.update(pred, torch.ones(1, 8, 8))
    assert empty.compute()["s_measure"] == pytest.approx(0.75) and full.compute()["s_measure"] == pytest.approx(0.25)


def test_saliency_min_max_normalisation():
    pred, target = _saliency_case(1, n=1)
    scaled = pred.double() * 0.5 + 0.2
    plain, normalised, reference = SaliencyMetrics(), SaliencyMetrics(min_max_normalise=True), SaliencyMetrics()
    plain.update(scaled, target)
    normalised.update(scaled, target)
    reference.update((scaled - scaled.min()) / (scaled.max() - scaled.min()), target)
    assert normalised.compute()["mae"] == pytest.approx(reference.compute()["mae"], abs=1e-12)
    assert plain.compute()["mae"] != pytest.approx(reference.compute()["mae"])


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m: m.update(torch.rand(2, 4, 4), torch.zeros(2, 4, 5)),
            r"must have one shape.*got \[2, 4, 4\] and \[2, 4, 5\]",
        ),
        (
            lambda m: m.update(torch.rand(2, 4, 4) + 1, torch.zeros(2, 4, 4)),
            "pred must be floating point in \\[0, 1\\]",
        ),
        (lambda m: m.compute(), "no images were added"),
    ],
)
def test_saliency_metrics_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(SaliencyMetrics())

"""Panoptic FPN's merging heuristic on hand-made cases, and its output scored by segops.metrics.PanopticQuality; the
model's detector on segops' RoI ops (mask targets cropped by segops.roi_align) and its backbone weights from a local
torchvision state_dict."""

import pytest
import torch
import torchvision
from torchvision.models.detection import roi_heads as torchvision_roi_heads
from torchvision.ops import FrozenBatchNorm2d

from segops.metrics import PanopticQuality
from segops.models.panoptic import VOID, panoptic_merge

THINGS, STUFFS = [1, 2], [10, 11]


def _box(h0, h1, w0, w1, size=(10, 12)):
    mask = torch.zeros(size, dtype=torch.bool)
    mask[h0:h1, w0:w1] = True
    return mask


def test_instances_by_score_with_overlap_removal_then_stuff_then_void():
    masks = torch.stack(
        [
            _box(0, 4, 0, 4),  # score 0.6: pasted second, loses its overlap with the first
            _box(2, 6, 2, 6),  # score 0.9: pasted first
            _box(2, 5, 2, 5),  # score 0.8: 9 of 9 pixels taken (> 0.5): dropped
            _box(8, 10, 0, 2),  # score 0.3: below the score threshold
        ]
    )
    scores, labels = torch.tensor([0.6, 0.9, 0.8, 0.3]), torch.tensor([1, 2, 1, 2])
    semantic = torch.full((10, 12), 10)
    semantic[:, 9:] = 11  # 30 pixels of stuff 11
    semantic[7:, :3] = 1  # a thing category in the semantic map: ignored
    out = panoptic_merge(masks, scores, labels, semantic, STUFFS, stuff_min_area=25)
    assert out.shape == (10, 12, 2) and out.dtype == torch.int64
    first, second = _box(2, 6, 2, 6), _box(0, 4, 0, 4) & ~_box(2, 6, 2, 6)
    assert (out[first] == torch.tensor([2, 1])).all() and (out[second] == torch.tensor([1, 2])).all()
    assert set(out[..., 1].unique().tolist()) == {0, 1, 2}  # the dropped instances are nowhere
    assert (out[:, 9:] == torch.tensor([11, 0])).all()
    rest = ~first & ~second
    rest[:, 9:] = False
    rest[7:, :3] = False
    assert (out[rest] == torch.tensor([10, 0])).all()
    assert (out[7:, :3][..., 0] == VOID).all()  # the semantic map's thing pixels no instance took
    # Stuff regions smaller than stuff_min_area are dropped (void).
    assert (panoptic_merge(masks, scores, labels, semantic, STUFFS, stuff_min_area=31)[:, 9:, 0] == VOID).all()


def test_merged_perfect_predictions_score_pq_one():
    masks = torch.stack([_box(0, 4, 0, 4), _box(5, 9, 5, 9)])
    semantic = torch.full((10, 12), 10)
    merged = panoptic_merge(masks, torch.tensor([0.9, 0.8]), torch.tensor([1, 2]), semantic, STUFFS, stuff_min_area=1)
    metric = PanopticQuality(THINGS, STUFFS)
    metric.update(merged[None], merged[None].clone())
    result = metric.compute()
    assert result["pq"] == pytest.approx(1.0) and result["pq_things"] == pytest.approx(1.0)


def test_panoptic_merge_errors():
    with pytest.raises(ValueError, match=r"masks must be \[M, H, W\]"):
        panoptic_merge(torch.zeros(2, 4, 4), torch.zeros(3), torch.zeros(2), torch.zeros(4, 4), STUFFS)


def test_semantic_branch_stages_and_size():
    from segops.models.panoptic import SemanticFPNHead

    head = SemanticFPNHead(num_classes=5)
    assert [len(stages) for stages in head.levels] == [1, 1, 2, 3]
    assert isinstance(head.levels[3][0][1], torch.nn.GroupNorm)
    features = [torch.randn(2, 256, 17 // 2**i + 1, 23 // 2**i + 1) for i in range(4)]  # odd sizes
    assert head(features).shape == (2, 5, 4 * features[0].shape[2], 4 * features[0].shape[3])


@pytest.fixture(scope="module")
def panoptic_model():
    import segops.models as models

    torch.manual_seed(0)
    return models.panoptic_fpn(
        num_things=2, num_stuff=2, stuff_min_area=1, min_size=128, max_size=160, box_score_thresh=0.0
    )


def test_panoptic_fpn_merges_its_own_branches(panoptic_model):
    from segops.models.rcnn import SegopsMultiScaleRoIAlign

    model = panoptic_model.eval()
    assert isinstance(model.detector.roi_heads.mask_roi_pool, SegopsMultiScaleRoIAlign)
    images = [torch.rand(3, 120, 150), torch.rand(3, 100, 130)]
    with torch.no_grad():
        panoptic = model(images)
        detections = model.detector(images)
        image_list, _ = model.detector.transform(images)
        features = model.detector.backbone(image_list.tensors)
        semantic = model.semantic_head([features[k] for k in "0123"])
        semantic = torch.nn.functional.interpolate(semantic, size=image_list.tensors.shape[-2:], mode="bilinear")
    for index, (out, found, (height, width)) in enumerate(zip(panoptic, detections, image_list.image_sizes)):
        size = images[index].shape[-2:]
        assert out.shape == (*size, 2)
        labels = torch.nn.functional.interpolate(
            semantic[index : index + 1, :, :height, :width], size=size, mode="bilinear"
        )[0].argmax(0)
        expected = panoptic_merge(
            found["masks"][:, 0],
            found["scores"],
            found["labels"],
            torch.where(labels > 0, labels + 2, 0),
            [3, 4],
            stuff_min_area=1,
        )
        assert torch.equal(out, expected)
        assert set(out[..., 0].unique().tolist()) <= {VOID, 1, 2, 3, 4}


def test_panoptic_fpn_training_losses(panoptic_model):
    model = panoptic_model.train()
    images = [torch.rand(3, 120, 150)]
    semantic = torch.zeros(120, 150, dtype=torch.int64)
    semantic[:60] = 1
    semantic[60:, 100:] = 2
    targets = [
        {
            "boxes": torch.tensor([[10.0, 70.0, 60.0, 110.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, 120, 150, dtype=torch.uint8),
            "semantic": semantic,
        }
    ]
    targets[0]["masks"][0, 70:110, 10:60] = 1
    losses = model(images, targets)
    assert {"loss_semantic", "loss_mask", "loss_classifier", "loss_objectness"} <= set(losses)
    sum(losses.values()).backward()
    assert model.semantic_head.predictor.weight.grad.abs().sum() > 0
    assert model.detector.backbone.fpn.layer_blocks[0][0].weight.grad.abs().sum() > 0
    model.eval()


def test_panoptic_fpn_crops_mask_targets_with_segops_roi_align(panoptic_model, monkeypatch):
    """segops.roi_align crops the mask targets (torchvision's is never called), and the detector's training losses
    equal bit for bit those of torchvision's own RoIHeads.forward on the same heads and inputs."""
    from segops.models import rcnn

    calls = {"segops": 0, "torchvision": 0}

    def spy(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(rcnn, "roi_align", spy("segops", rcnn.roi_align))
    monkeypatch.setattr(torchvision_roi_heads, "roi_align", spy("torchvision", torchvision_roi_heads.roi_align))
    detector = panoptic_model.detector
    monkeypatch.setattr(detector.roi_heads.fg_bg_sampler, "batch_size_per_image", 64)  # fewer sampled boxes: faster
    assert isinstance(detector.roi_heads, rcnn.SegopsRoIHeads)
    masks = torch.zeros(2, 120, 150, dtype=torch.uint8)
    masks[0, 70:110, 10:60] = 1
    masks[1, 5:50, 80:140] = 1
    targets = [
        {
            "boxes": torch.tensor([[10.0, 70.0, 60.0, 110.0], [80.0, 5.0, 140.0, 50.0]]),
            "labels": torch.tensor([1, 2]),
            "masks": masks,
        }
    ]
    panoptic_model.train()
    with torch.no_grad():
        image_list, targets = detector.transform([torch.rand(3, 120, 150)], targets)
        features = detector.backbone(image_list.tensors)
        proposals, _ = detector.rpn(image_list, features, targets)
        torch.manual_seed(3)
        _, losses = detector.roi_heads(features, proposals, image_list.image_sizes, targets)
        assert calls == {"segops": 1, "torchvision": 0}
        torch.manual_seed(3)
        _, stock = torchvision_roi_heads.RoIHeads.forward(
            detector.roi_heads, features, proposals, image_list.image_sizes, targets
        )
        assert calls == {"segops": 1, "torchvision": 1}
    panoptic_model.eval()
    assert losses["loss_mask"] > 0 and set(losses) == set(stock)
    for key in losses:
        assert torch.equal(losses[key], stock[key]), key


def test_panoptic_fpn_backbone_weights_from_a_torchvision_state_dict(tmp_path):
    import segops.models as models

    torch.manual_seed(8)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():  # batch norms not at their initial values, so loading them shows
        if value.is_floating_point() and ("bn" in key or "downsample.1" in key):
            state[key] = torch.rand_like(value) + 0.5
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    expected_keys = {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for weights, layers in [(path, None), (str(path), 0), (state, 5)]:
        model = models.panoptic_fpn(
            2, 2, weights_backbone=weights, trainable_backbone_layers=layers, min_size=128, max_size=160
        )
        body = model.detector.backbone.body
        loaded = body.state_dict()
        assert set(loaded) == expected_keys
        for key, value in loaded.items():
            assert torch.equal(value, state[key]), key
        # torchvision's choices given backbone weights: frozen batch norms, conv1 and layer1 frozen by default (the
        # last 3 of layer4, layer3, layer2, layer1, conv1 train), none with 0, all with 5.
        assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in body.modules())
        assert isinstance(body.layer2[0].bn1, FrozenBatchNorm2d)
        trainable = {name.split(".")[0] for name, p in body.named_parameters() if p.requires_grad}
        expected = {
            None: {"layer2", "layer3", "layer4"},
            0: set(),
            5: {"conv1", "layer1", "layer2", "layer3", "layer4"},
        }
        assert trainable == expected[layers]


@pytest.mark.parametrize(
    "options, error, message",
    [
        ({"num_things": 0}, ValueError, "PanopticFPN: num_things must be an int >= 1, got 0"),
        ({"stuff_min_area": -1}, ValueError, "PanopticFPN: stuff_min_area must be an int >= 0, got -1"),
        (
            {"weights_backbone": 1.5},
            TypeError,
            "PanopticFPN: weights_backbone must be None, a torchvision ResNet50_Weights value, or a torchvision "
            "ResNet-50 state_dict or the path of its file, got 1.5",
        ),
        (
            {"weights_backbone": "IMAGENET1K_V1"},
            FileNotFoundError,
            "PanopticFPN: weights_backbone must name a file .*, got 'IMAGENET1K_V1', which is not a file",
        ),
        (
            {"trainable_backbone_layers": -1},
            ValueError,
            r"PanopticFPN: trainable_backbone_layers must be None or an int in \[0, 5\], got -1",
        ),
    ],
)
def test_panoptic_fpn_errors(options, error, message):
    import segops.models as models

    arguments = {"num_things": 2, "num_stuff": 2, **options}
    with pytest.raises(error, match=message):
        models.panoptic_fpn(**arguments)

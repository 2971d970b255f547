"""PANet (segops.models.panet): bottom-up path augmentation, adaptive feature pooling on
segops.multi_scale_roi_align(mode="all") fused by max, the mask branch's fully-connected fusion, in torchvision's
Mask R-CNN with its mask targets cropped by segops.roi_align; backbone weights from a local torchvision state_dict;
inference and training."""

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models import ResNet50_Weights, ResNet101_Weights
from torchvision.models.detection import roi_heads as torchvision_roi_heads
from torchvision.ops import FrozenBatchNorm2d

import segops
import segops.models as models
from segops.models import rcnn
from segops.models.panet import AdaptiveMaskHead, FusedMaskPredictor


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return models.panet(3, min_size=128, max_size=160, box_score_thresh=0.0)


def test_bottom_up_path_is_the_published_recurrence(model):
    path = model.backbone
    images = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        pyramid = path.fpn_backbone(images)
        out = path(images)
        n = pyramid["0"]
        assert torch.equal(out["0"], n)
        for i, key in enumerate("123"):
            n = F.relu(path.fuse[i](F.relu(path.down[i](n)) + pyramid[key]))
            torch.testing.assert_close(out[key], n)
        torch.testing.assert_close(out["pool"], F.max_pool2d(n, 1, 2))
    assert [out[k].shape[-1] for k in "0123"] == [pyramid[k].shape[-1] for k in "0123"]


def test_adaptive_pooling_pools_every_box_from_every_level(model):
    pooling = model.roi_heads.box_roi_pool
    features = {k: torch.randn(2, 8, 32 // 2**i, 40 // 2**i) for i, k in enumerate("0123")}
    boxes = [torch.tensor([[4.0, 8.0, 60.0, 90.0]]), torch.tensor([[0.0, 0.0, 120.0, 150.0], [30.0, 20, 50, 70]])]
    pooled = pooling(features, boxes, [(128, 160), (128, 160)])
    assert pooled.shape == (3, 4, 8, 7, 7)
    rois = torch.cat([torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)])
    for level, key in enumerate("0123"):
        expected = segops.roi_align(features[key], rois, 7, 0.25 / 2**level, 2, False)
        assert torch.equal(pooled[:, level], expected)


def test_heads_fuse_levels_by_max(model):
    head = model.roi_heads.box_head
    pooled = torch.randn(5, 4, 256, 7, 7)
    with torch.no_grad():
        per_level = torch.stack([F.relu(fc(pooled[:, level].flatten(1))) for level, fc in enumerate(head.fc6)], 1)
        torch.testing.assert_close(head(pooled), F.relu(head.fc7(per_level.max(1).values)))
    # The mask branch's trunk: conv1 per level, max, conv2 and conv3 (where the FCN and fc paths split).
    mask_head = model.roi_heads.mask_head
    pooled = torch.randn(2, 4, 256, 14, 14)
    with torch.no_grad():
        x = torch.stack([F.relu(conv(pooled[:, level])) for level, conv in enumerate(mask_head.first)], 1).max(1).values
        for conv in [m for m in mask_head.rest if isinstance(m, torch.nn.Conv2d)]:
            x = F.relu(conv(x))
        actual = mask_head(pooled)
    assert len(mask_head.rest) == 4 and actual.shape == (2, 256, 14, 14)
    torch.testing.assert_close(actual, x)


def _fully_connected_fusion(predictor, x):
    """Figure 4 of the paper, by hand: the FCN path's per-class logits and the fc path's class-agnostic mask."""
    fcn = predictor.mask_fcn_logits(F.relu(predictor.conv5_mask(F.relu(predictor.conv4(x)))))
    short = F.relu(predictor.conv5_fc(F.relu(predictor.conv4_fc(x))))
    fc = F.relu(short.reshape(len(x), -1) @ predictor.fc.weight.T + predictor.fc.bias)  # ReLU: the authors' code
    return fcn, fc.reshape(len(x), 28, 28)


def test_mask_branch_fully_connected_fusion(model):
    predictor = model.roi_heads.mask_predictor
    assert isinstance(predictor, FusedMaskPredictor)
    assert (predictor.fc.in_features, predictor.fc.out_features) == (128 * 14 * 14, 784)
    assert (predictor.conv4_fc.in_channels, predictor.conv4_fc.out_channels, predictor.conv4_fc.kernel_size) == (
        256,
        256,
        (3, 3),
    )
    assert (predictor.conv5_fc.in_channels, predictor.conv5_fc.out_channels, predictor.conv5_fc.kernel_size) == (
        256,
        128,
        (3, 3),
    )
    assert predictor.conv5_mask.stride == (2, 2) and predictor.mask_fcn_logits.out_channels == 3
    x = torch.randn(5, 256, 14, 14)
    with torch.no_grad():
        fcn, fc = _fully_connected_fusion(predictor, x)
        fused = predictor(x)
    assert fused.shape == (5, 3, 28, 28) and fc.abs().sum() > 0
    for c in range(3):
        torch.testing.assert_close(fused[:, c], fcn[:, c] + fc)


def test_panet_detects_and_trains(model):
    images = [torch.rand(3, 120, 150)]
    # torchvision's RoIHeads feeds the mask head's output to the FusedMaskPredictor, whose logits become the masks.
    predictor, seen = model.roi_heads.mask_predictor, {}
    hooks = [
        model.roi_heads.mask_head.register_forward_hook(lambda m, args, out: seen.update(head=out.clone())),
        predictor.register_forward_hook(lambda m, args, out: seen.update(input=args[0].clone(), logits=out)),
    ]
    try:
        with torch.no_grad():
            detections = model.eval()(images)[0]
            fcn, fc = _fully_connected_fusion(predictor, seen["input"])
    finally:
        for hook in hooks:
            hook.remove()
    assert detections["masks"].shape[1:] == (1, 120, 150) and len(detections["boxes"]) == len(seen["logits"]) > 0
    assert torch.equal(seen["input"], seen["head"])
    torch.testing.assert_close(seen["logits"], fcn + fc[:, None])
    targets = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0]]),
            "labels": torch.tensor([1]),
            "masks": torch.zeros(1, 120, 150, dtype=torch.uint8),
        }
    ]
    targets[0]["masks"][0, 20:100, 10:80] = 1
    losses = model.train()(images, targets)
    sum(losses.values()).backward()
    assert all(fc.weight.grad is not None for fc in model.roi_heads.box_head.fc6)
    assert model.backbone.fuse[2].weight.grad.abs().sum() > 0
    assert model.roi_heads.mask_head.first[0].weight.grad is not None
    predictor = model.roi_heads.mask_predictor  # both paths of the fully-connected fusion learn from the mask loss
    for layer in (predictor.fc, predictor.conv5_fc, predictor.conv4_fc, predictor.conv4, predictor.mask_fcn_logits):
        assert layer.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()


def _training_inputs():
    images = [torch.rand(3, 120, 150), torch.rand(3, 100, 130)]
    targets = []
    for (height, width), box in zip([(120, 150), (100, 130)], [[10.0, 20.0, 80.0, 100.0], [30.5, 10.25, 120.0, 70.0]]):
        masks = torch.zeros(2, height, width, dtype=torch.uint8)
        masks[0, 20:100, 10:80] = 1
        masks[1, 40:90, 60:130] = 1
        boxes = torch.tensor([box, [60.0, 40.0, 129.0, 89.0]])
        targets.append({"boxes": boxes, "labels": torch.tensor([1, 2]), "masks": masks})
    return images, targets


def test_panet_crops_mask_targets_with_segops_roi_align(model, monkeypatch):
    """The mask targets come from segops.roi_align (torchvision's is never called), and the training losses equal
    bit for bit those of torchvision's own RoIHeads.forward run on the same heads and inputs."""
    calls = {"segops": 0, "torchvision": 0}

    def spy(name, function):
        def counted(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)

        return counted

    monkeypatch.setattr(rcnn, "roi_align", spy("segops", rcnn.roi_align))
    monkeypatch.setattr(torchvision_roi_heads, "roi_align", spy("torchvision", torchvision_roi_heads.roi_align))
    monkeypatch.setattr(model.roi_heads.fg_bg_sampler, "batch_size_per_image", 64)  # fewer sampled boxes: faster
    images, targets = _training_inputs()
    model.train()
    with torch.no_grad():
        image_list, targets = model.transform(images, targets)
        features = model.backbone(image_list.tensors)
        proposals, _ = model.rpn(image_list, features, targets)
        torch.manual_seed(5)  # the sampling of proposals
        _, losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)
        assert calls == {"segops": 2, "torchvision": 0}  # one crop per image
        torch.manual_seed(5)
        _, stock = torchvision_roi_heads.RoIHeads.forward(
            model.roi_heads, features, proposals, image_list.image_sizes, targets
        )
        assert calls == {"segops": 2, "torchvision": 2}
    model.eval()
    assert set(losses) == set(stock) == {"loss_classifier", "loss_box_reg", "loss_mask"}
    assert losses["loss_mask"] > 0
    for key in losses:
        assert torch.equal(losses[key], stock[key]), key
    # The crop itself, on fractional boxes partly outside the masks.
    masks = (torch.rand(3, 40, 50) > 0.5).to(torch.uint8)
    boxes = torch.tensor([[1.5, 2.25, 30.0, 38.0], [-4.0, 10.0, 60.0, 30.5], [20.0, 0.0, 21.0, 39.0]])
    matched = torch.tensor([2, 0, 1])
    expected = torchvision_roi_heads.project_masks_on_boxes(masks, boxes, matched, 28)
    assert torch.equal(rcnn.project_masks_on_boxes(masks, boxes, matched, 28), expected)


def _random_resnet50_state(seed):
    """A torchvision resnet50's state_dict, its batch-norm statistics and affine parameters random too."""
    torch.manual_seed(seed)
    state = torchvision.models.resnet50(weights=None).state_dict()
    for key, value in state.items():
        if key.endswith(("running_mean", "running_var")) or (".bn" in key or key.startswith("bn1")):
            if value.is_floating_point():
                state[key] = torch.rand_like(value) + 0.5
    return state


def _trainable(body):
    return [(name, parameter.requires_grad) for name, parameter in body.named_parameters()]


@pytest.mark.parametrize("trainable_backbone_layers", [None, 5])
def test_panet_backbone_weights_from_a_torchvision_state_dict(tmp_path, monkeypatch, trainable_backbone_layers):
    state = _random_resnet50_state(7)
    path = tmp_path / "resnet50.pth"
    torch.save(state, path)
    model = models.panet(
        3, weights_backbone=path, trainable_backbone_layers=trainable_backbone_layers, min_size=128, max_size=160
    )
    body = model.backbone.fpn_backbone.body
    loaded = body.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key
    # torchvision's builder given backbone weights (its download replaced by the same state_dict) freezes the same
    # layers and batch norms.
    monkeypatch.setattr(ResNet50_Weights, "get_state_dict", lambda self, *args, **kwargs: state)
    reference = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=ResNet50_Weights.IMAGENET1K_V1,
        num_classes=3,
        trainable_backbone_layers=trainable_backbone_layers,
    ).backbone.body
    assert _trainable(body) == _trainable(reference)
    assert [type(m) for m in body.modules()] == [type(m) for m in reference.modules()]
    assert isinstance(body.bn1, FrozenBatchNorm2d) and body.layer4[0].conv1.weight.requires_grad
    assert body.conv1.weight.requires_grad == (trainable_backbone_layers == 5)
    # The enum itself passes through to torchvision (here without downloading).
    through = models.panet(
        3, weights_backbone=ResNet50_Weights.IMAGENET1K_V1, trainable_backbone_layers=trainable_backbone_layers
    ).backbone.fpn_backbone.body
    assert _trainable(through) == _trainable(reference)
    assert all(torch.equal(value, loaded[key]) for key, value in through.state_dict().items())


def test_panet_without_backbone_weights_trains_every_layer(model):
    """torchvision's choice without weights: plain BatchNorm, every backbone layer trainable."""
    body = model.backbone.fpn_backbone.body
    assert isinstance(body.bn1, torch.nn.BatchNorm2d) and all(p.requires_grad for p in body.parameters())


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda tmp: models.panet(1), ValueError, "panet: num_classes must be an int >= 2"),
        (
            lambda tmp: models.panet(3, weights_backbone=3),
            TypeError,
            "panet: weights_backbone must be None, a torchvision ResNet50_Weights value, or a torchvision ResNet-50 "
            "state_dict or the path of its file, got 3",
        ),
        (
            lambda tmp: models.panet(3, weights_backbone=ResNet101_Weights.IMAGENET1K_V1),
            TypeError,
            "weights_backbone must be None, .*, got ResNet101_Weights.IMAGENET1K_V1",
        ),
        (
            lambda tmp: models.panet(3, weights_backbone=tmp / "missing.pth"),
            FileNotFoundError,
            "panet: weights_backbone must name a file holding a torchvision ResNet-50 state_dict, got .*missing.pth",
        ),
        (
            lambda tmp: models.panet(3, weights_backbone={"conv1.weight": torch.zeros(64, 3, 7, 7)}),
            ValueError,
            "(?s)panet: weights_backbone must be a torchvision ResNet-50 state_dict: .*Missing key",
        ),
        (
            lambda tmp: models.panet(3, trainable_backbone_layers=6),
            ValueError,
            r"panet: trainable_backbone_layers must be None or an int in \[0, 5\], got 6",
        ),
        (
            lambda tmp: FusedMaskPredictor(256, 3)(torch.randn(2, 256, 7, 7)),
            ValueError,
            r"FusedMaskPredictor: x must have shape \[K, 256, 14, 14\] .*, got \[2, 256, 7, 7\]",
        ),
        (
            lambda tmp: FusedMaskPredictor(256, 3, channels=1),
            ValueError,
            "FusedMaskPredictor: channels must be an int >= 2, got 1",
        ),
        (
            lambda tmp: AdaptiveMaskHead()(torch.randn(2, 256, 14, 14)),
            ValueError,
            r"AdaptiveMaskHead: pooled must have shape \[K, 4, 256, R, R\] .*, got \[2, 256, 14, 14\]",
        ),
        (
            lambda tmp: rcnn.SegopsRoIHeads.from_roi_heads(torch.nn.Identity()),
            TypeError,
            "SegopsRoIHeads.from_roi_heads: heads must be a torchvision RoIHeads, got Identity",
        ),
        (
            lambda tmp: models.use_segops_roi_align("model"),
            TypeError,
            "use_segops_roi_align: model must be an nn.Module, got str",
        ),
    ],
)
def test_panet_errors(tmp_path, call, error, message):
    with pytest.raises(error, match=message):
        call(tmp_path)

"""Autocast policies (segops._autocast): under torch.autocast each op casts its inputs as its policy says, checked
against the op called outside autocast on the inputs cast by hand; networks built on segops run under bfloat16
autocast and stay within a stated distance of float32."""

import pytest
import torch

import segops
from segops import models
from segops._autocast import POLICIES

from conftest import DEVICES

LOW = torch.bfloat16


def _low(device):
    return torch.float16 if device == "cuda" else LOW


def _autocast(device):
    return torch.autocast(device, dtype=_low(device))


def _features(device, dtype=torch.float32, shape=(2, 4, 20, 24)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device, dtype)


def _rois(device):
    return torch.tensor([[0, 1.3, 2.6, 17.2, 15.9], [1, 4.1, 0.5, 22.7, 19.4]], device=device)


def test_every_forward_op_has_a_policy():
    forward_ops = {
        name for name in dir(torch.ops.segops) if not name.startswith("_") and name not in ("name", "default")
    }
    forward_ops = {
        name for name in forward_ops if isinstance(getattr(torch.ops.segops, name), torch._ops.OpOverloadPacket)
    }
    assert forward_ops == set(POLICIES)


@pytest.mark.parametrize("device", DEVICES)
def test_dilated_conv2d_runs_in_the_autocast_dtype(device):
    x = _features(device)
    weight = torch.randn(6, 4, 3, 3, device=device)
    bias = torch.randn(6, device=device)
    with _autocast(device):
        out = segops.dilated_conv2d(x, weight, bias, padding=2, dilation=2)
    low = _low(device)
    expected = segops.dilated_conv2d(x.to(low), weight.to(low), bias.to(low), padding=2, dilation=2)
    assert out.dtype == low
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"])
def test_roi_ops_keep_the_features_dtype_and_boxes_in_float32(device, op):
    pool = {
        "roi_align": lambda f, r: torch.ops.segops.roi_align(f, r, 0.5, 5, 5, 2, True),
        "roi_pool": lambda f, r: torch.ops.segops.roi_pool(f, r, 0.5, 5, 5)[0],
        # The features' channels as one group of 1 x C bins.
        "ps_roi_align": lambda f, r: torch.ops.segops.ps_roi_align(f, r, 0.5, 1, f.shape[1], 2),
        "ps_roi_pool": lambda f, r: torch.ops.segops.ps_roi_pool(f, r, 0.5, 1, f.shape[1]),
    }[op]
    low = _low(device)
    for features in (_features(device), _features(device, low)):
        rois = _rois(device)
        with _autocast(device):
            out = pool(features, rois)
            # Outside autocast, low-precision boxes with float32 features are an error; here they are cast up.
            from_low_boxes = pool(features, rois.to(low))
        assert out.dtype == features.dtype  # float32 features are not cast down, low-precision ones not up
        torch.testing.assert_close(out, pool(features, rois), rtol=0, atol=0)
        torch.testing.assert_close(from_low_boxes, pool(features, rois.to(low).float()), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_multi_scale_roi_align_promotes_the_levels(device):
    low = _low(device)
    levels = [_features(device, low), _features(device, torch.float32, (2, 4, 10, 12))]
    with _autocast(device):
        out = segops.multi_scale_roi_align(levels, _rois(device), 5, [0.5, 0.25], mode="all")
    expected = segops.multi_scale_roi_align(
        [level.float() for level in levels], _rois(device), 5, [0.5, 0.25], mode="all"
    )
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_flow_warp_keeps_the_features_dtype_and_flow_in_float32(device):
    low = _low(device)
    flow = 3 * torch.randn(2, 2, 20, 24, generator=torch.Generator().manual_seed(1)).to(device)
    scale = torch.rand(2, 4, 20, 24, device=device)
    for features in (_features(device), _features(device, low)):
        with _autocast(device):
            out = segops.flow_warp(features, flow, scale)
            from_low_flow = segops.flow_warp(features, flow.to(low), scale)
        assert out.dtype == features.dtype
        torch.testing.assert_close(out, segops.flow_warp(features, flow, scale.to(features.dtype)), rtol=0, atol=0)
        torch.testing.assert_close(
            from_low_flow, segops.flow_warp(features, flow.to(low).float(), scale.to(features.dtype)), rtol=0, atol=0
        )


@pytest.mark.parametrize("device", DEVICES)
def test_max_unpool2d_keeps_its_dtype(device):
    values, indices = torch.nn.functional.max_pool2d(_features(device, _low(device)), 2, return_indices=True)
    with _autocast(device):
        out = segops.max_unpool2d(values, indices, 2)
    assert out.dtype == values.dtype
    torch.testing.assert_close(out, segops.max_unpool2d(values, indices, 2), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_dense_crf_runs_in_float32(device):
    unary = _features(device, _low(device), (1, 3, 16, 18))
    image = 255 * torch.rand(1, 3, 16, 18, generator=torch.Generator().manual_seed(2)).to(device)
    crf = segops.DenseCRF(3).to(device)
    with torch.no_grad():  # learned values that bfloat16 cannot hold: they must reach the CRF unrounded
        crf.kernel_weights.copy_(torch.tensor([3.01, 9.97]))
        crf.compatibility.add_(0.003)
    with _autocast(device):
        out = segops.dense_crf(unary, image)
        layer = crf(unary, image)
    assert out.dtype == layer.dtype == torch.float32
    torch.testing.assert_close(out, segops.dense_crf(unary.float(), image), rtol=0, atol=0)
    torch.testing.assert_close(layer, crf(unary.float(), image), rtol=0, atol=0)


class _RCNNHeads(torch.nn.Module):
    """A convolution (so that the heads see autocast's low-precision features) and the Fast/Mask R-CNN heads."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Conv2d(3, 16, 3, stride=4, padding=1)
        self.box = models.FastRCNNBoxHead(16, 5, 0.25, representation=64, pooling="roi_align")
        self.box_pool = models.FastRCNNBoxHead(16, 5, 0.25, representation=64, pooling="roi_pool")
        self.mask = models.MaskRCNNMaskHead(16, 5, 0.25, channels=32)

    def forward(self, images):
        features = self.body(images)
        boxes = torch.tensor([[0, 3.5, 7.2, 50.1, 44.8], [0, 20.0, 12.3, 60.2, 63.0]])
        scores, deltas = self.box(features, boxes)
        pooled_scores, _ = self.box_pool(features, boxes)
        return torch.cat(
            [scores.flatten(), deltas.flatten(), pooled_scores.flatten(), self.mask(features, boxes).flatten()]
        )


# (name, network, input): every op's policy inside a network. The tolerance: the relative L2 distance of the
# bfloat16-autocast output from float32's, at most 5e-2 (bfloat16 keeps 8 significant bits, 4e-3 relative per
# rounding; a few dozen layers of them add up to about 1e-2 here).
NETWORKS = [
    ("deeplabv3 (dilated_conv2d)", lambda: models.deeplabv3(5, depth=50), (1, 3, 96, 96)),
    ("deeplabv2 + CRF (dilated_conv2d, dense_crf)", lambda: models.deeplabv2(5, depth=50, crf="post"), (1, 3, 64, 64)),
    ("segnet (max_unpool2d)", lambda: models.segnet(5, base_width=8), (1, 3, 64, 64)),
    (
        "deep_feature_flow (flow_warp)",
        lambda: models.deep_feature_flow(5, depth=50, key_interval=3, feature_channels=32),
        (1, 3, 3, 64, 64),
    ),
    ("R-CNN heads (roi_align, roi_pool)", _RCNNHeads, (1, 3, 64, 64)),
    ("basnet", lambda: models.basnet(width=16), (1, 3, 64, 64)),
]


@pytest.mark.parametrize("name, build, shape", NETWORKS, ids=[n for n, _, _ in NETWORKS])
def test_networks_under_bfloat16_autocast_match_float32(name, build, shape):
    torch.manual_seed(0)
    model = build().eval()
    images = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = model(images)
        with torch.autocast("cpu", dtype=LOW):
            out = model(images)
    if isinstance(expected, dict):  # the semantic models' logits
        expected, out = expected["out"], out["out"]
    if isinstance(expected, tuple):  # BASNet: the refined map
        expected, out = expected[0], out[0]
    distance = ((out.float() - expected).norm() / expected.norm()).item()
    assert distance < 5e-2, f"{name}: relative L2 distance {distance:.1e}"

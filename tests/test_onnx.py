"""ONNX export (segops.onnx.translation_table) run by onnxruntime against segops' eager outputs: every op at two
sizes of one dynamic-shape export, the documented differences of ONNX's operators, the dense CRF's error, and
networks. The networks checked here cover every translated op; SEGOPS_ONNX_ALL_NETWORKS=1 checks every network of
tests/test_export.py (about 4 minutes here)."""

import os

import numpy as np
import pytest
import torch
from torch.export import Dim

import segops
from segops import models

onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
import segops.onnx  # noqa: E402

from test_export import BATCH, NETWORKS, OPS, _Op, _first, _network_inputs, network_dynamic_shapes, network_params  # noqa: E402


def _export(module, inputs, dynamic_shapes):
    program = torch.onnx.export(
        module.eval(),
        inputs,
        dynamo=True,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
        custom_translation_table=segops.onnx.translation_table(),
    )
    return onnxruntime.InferenceSession(program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _run(session, args):
    return session.run(None, {i.name: a.numpy() for i, a in zip(session.get_inputs(), args)})


# Tolerances (absolute, on outputs of magnitude ~1): exact for the ops that move or average the same values in the
# same order (RoiAlign, MaxRoiPool, MaxUnpool); float32 rounding for Conv (another summation order) and for the
# warp, whose grid goes through normalised coordinates and back (x -> 2x / (W - 1) - 1 -> x) before sampling.
OP_TOLERANCE = {
    "roi_align": 0,
    "multi_scale_roi_align": 0,
    "roi_pool": 0,
    "ps_roi_align": 0,
    "max_unpool2d": 0,
    "dilated_conv2d": 1e-5,
    "flow_warp": 5e-5,
}


@pytest.mark.parametrize(
    "name, module, inputs, other_inputs, dynamic_shapes",
    [case for case in OPS if case[0] in OP_TOLERANCE],
    ids=list(OP_TOLERANCE),
)
def test_ops_in_onnxruntime_equal_eager(name, module, inputs, other_inputs, dynamic_shapes):
    session = _export(module, inputs, (dynamic_shapes,) if isinstance(module, _Op) else dynamic_shapes)
    for args in (inputs, other_inputs):
        expected = module(*args)
        expected = expected[0] if isinstance(expected, tuple) else expected  # roi_pool: the pooled values
        np.testing.assert_allclose(_run(session, args)[0], expected.detach().numpy(), rtol=0, atol=OP_TOLERANCE[name])


def test_roi_align_sampling_and_legacy_boxes_follow_onnx_attributes():
    """Adaptive sampling (sampling_ratio <= 0 -> ONNX's 0) and both box conventions, on boxes smaller than a
    pixel, where aligned=False's minimum box size of 1 (ONNX's output_half_pixel does the same) matters."""
    features = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor([[0, 2.2, 3.1, 2.6, 3.4], [0, 1.0, 1.0, 14.7, 9.3]])
    for aligned in (False, True):
        module = _Op(lambda x, r, aligned=aligned: segops.roi_align(x, r, (3, 4), 1.0, -1, aligned))
        session = _export(module, (features, rois), None)
        np.testing.assert_allclose(
            _run(session, (features, rois))[0], module(features, rois).numpy(), rtol=0, atol=1e-6
        )


def test_roi_pool_argmax_is_not_exported():
    features = torch.randn(2, 4, 16, 16)
    rois = torch.tensor([[1, 2.0, 3.0, 12.0, 9.0]])
    module = _Op(lambda x, r: torch.ops.segops.roi_pool(x, r, 1.0, 2, 2))
    pooled, argmax = _run(_export(module, (features, rois), None), (features, rois))
    expected, _ = module(features, rois)
    np.testing.assert_array_equal(pooled, expected.numpy())
    assert argmax.dtype == np.int32 and (argmax == -1).all()  # used only by the backward


def test_flow_warp_on_a_one_pixel_wide_map_is_the_documented_difference():
    feature = torch.randn(1, 2, 5, 1, generator=torch.Generator().manual_seed(0))
    flow = torch.zeros(1, 2, 5, 1)
    flow[:, 0] = 3.0  # every sample 3 pixels right of a one-pixel-wide map
    module = _Op(segops.flow_warp)
    onnx_output = _run(_export(module, (feature, flow), None), (feature, flow))[0]
    assert (segops.flow_warp(feature, flow) == 0).all()  # segops: off the map
    np.testing.assert_allclose(onnx_output, feature.numpy(), atol=1e-6)  # ONNX: the column itself


def test_ps_roi_pool_export_names_the_op():
    module = _Op(lambda x, rois: segops.ps_roi_pool(x, rois, 2, 1.0))
    with pytest.raises(Exception) as raised:
        _export(module, (torch.randn(1, 8, 8, 8), torch.tensor([[0, 1.0, 1.0, 6.0, 6.0]])), None)
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any(
        "segops::ps_roi_pool (position-sensitive average RoI pooling) has no ONNX equivalent" in t for t in chain
    )


def test_dense_crf_export_names_the_op():
    module = _Op(segops.dense_crf)
    with pytest.raises(Exception) as raised:
        _export(module, (torch.randn(1, 3, 8, 8), 255 * torch.rand(1, 3, 8, 8)), None)
    chain, error = [], raised.value
    while error is not None:
        chain.append(str(error))
        error = error.__cause__ or error.__context__
    assert any("segops::permutohedral_lattice (the dense CRF) has no ONNX equivalent" in text for text in chain)


class _RCNNHeads(torch.nn.Module):
    """Fast R-CNN's box head (RoIPool) and Mask R-CNN's mask head (RoIAlign) on the same features and boxes."""

    def __init__(self):
        super().__init__()
        self.box = models.FastRCNNBoxHead(8, 3, 0.25, representation=32)
        self.mask = models.MaskRCNNMaskHead(8, 3, 0.25, channels=16)

    def forward(self, features, boxes):
        scores, deltas = self.box(features, boxes)
        return torch.cat([scores.flatten(), deltas.flatten(), self.mask(features, boxes).flatten()])


def test_rcnn_heads_in_onnxruntime_equal_eager():
    torch.manual_seed(0)
    heads = _RCNNHeads().eval()
    features = torch.randn(2, 8, 24, 32)
    boxes = torch.tensor([[0, 3.5, 7.2, 50.1, 44.8], [1, 20.0, 12.3, 60.2, 63.0], [0, 1, 1, 30, 30.0]])
    session = _export(
        heads, (features, boxes), ({0: BATCH, 2: Dim("height"), 3: Dim("width")}, {0: Dim("boxes", min=1, max=10_000)})
    )
    for args in ((features, boxes), (torch.randn(1, 8, 40, 16), boxes[[0, 2, 2, 0]] * torch.tensor([0, 1, 1, 1, 1]))):
        with torch.no_grad():
            np.testing.assert_allclose(_run(session, args)[0], heads(*args).numpy(), rtol=1e-4, atol=1e-5)


# Networks whose adaptive pooling ONNX cannot express for every size (PSPNet's pyramid, PoolNet's FAMs, see
# tests/test_export.py) are exported at a static height and width (dynamic batch).
STATIC_SIZE = {"pspnet", "poolnet"}
CHECKED = {"segnet", "deeplabv3", "deep_feature_flow", "pspnet"}
ONNX_NETWORKS = [
    (name, build)
    for name, build in NETWORKS
    if "CRF" not in name and (os.environ.get("SEGOPS_ONNX_ALL_NETWORKS") == "1" or name in CHECKED)
]


@pytest.mark.parametrize(
    "name, build", network_params(ONNX_NETWORKS, slow={"deeplabv3", "deep_feature_flow", "pspnet"})
)
def test_networks_in_onnxruntime_equal_eager(name, build):
    torch.manual_seed(0)
    model = build().eval()
    example = _network_inputs(name, 2, 96, 128)
    session = _export(model, (example,), network_dynamic_shapes(name, example, STATIC_SIZE))
    sizes = [(2, 96, 128), (3, 96, 128)] + ([] if name in STATIC_SIZE else [(1, 160, 64)])
    for batch, height, width in sizes:
        images = _network_inputs(name, batch, height, width)
        with torch.no_grad():
            expected = _first(model(images)).numpy()
        # Relative to the output's largest magnitude: float32 rounding through a few dozen layers (< 1e-5 here).
        np.testing.assert_allclose(_run(session, (images,))[0], expected, rtol=0, atol=1e-4 * np.abs(expected).max())

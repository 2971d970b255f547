"""torch.export with dynamic shapes and torch.compile(fullgraph=True): every op and every network of segops.models
(small widths) exported once with dynamic batch, height, width and box count, then run at other sizes and compared
with eager; compiled whole-graph and compared with eager."""

import pytest
import torch
from torch.export import Dim, export

import segops
from segops import models

BATCH = Dim("batch", min=1, max=64)
HEIGHT, WIDTH = Dim("height", min=4, max=4096), Dim("width", min=4, max=4096)
BOXES = Dim("boxes", min=1, max=100_000)


def _randn(*shape, seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _rois(count, batch, size, seed=0):
    """count boxes [K, 5] over `batch` images of side `size`."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(count, 2, 2, generator=g) * size
    return torch.cat(
        [torch.randint(0, batch, (count, 1), generator=g).float(), corners.min(1).values, corners.max(1).values], dim=1
    )


class _Op(torch.nn.Module):
    def __init__(self, call):
        super().__init__()
        self.call = call

    def forward(self, *args):
        return self.call(*args)


def _unpool(x):
    values, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    return segops.max_unpool2d(values, indices, 2, output_size=x.shape[-2:])


# (name, module, inputs at the export size, inputs at another size, dynamic shapes).
OPS = [
    (
        "roi_align",
        _Op(lambda x, rois: segops.roi_align(x, rois, 7, 0.5, 2, True)),
        (_randn(2, 4, 32, 40), _rois(5, 2, 64)),
        (_randn(3, 4, 24, 56, seed=1), _rois(9, 3, 80, seed=1)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BOXES}),
    ),
    (
        "roi_pool",
        _Op(lambda x, rois: segops.roi_pool(x, rois, 7, 0.5)),
        (_randn(2, 4, 32, 40), _rois(5, 2, 64)),
        (_randn(3, 4, 24, 56, seed=1), _rois(9, 3, 80, seed=1)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BOXES}),
    ),
    (
        "ps_roi_align",
        _Op(lambda x, rois: segops.ps_roi_align(x, rois, 3, 0.5, 2)),
        (_randn(2, 18, 32, 40), _rois(5, 2, 64)),
        (_randn(3, 18, 24, 56, seed=1), _rois(9, 3, 80, seed=1)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BOXES}),
    ),
    (
        "ps_roi_pool",
        _Op(lambda x, rois: segops.ps_roi_pool(x, rois, 3, 0.5)),
        (_randn(2, 18, 32, 40), _rois(5, 2, 64)),
        (_randn(3, 18, 24, 56, seed=1), _rois(9, 3, 80, seed=1)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BOXES}),
    ),
    (
        "multi_scale_roi_align",
        _Op(lambda p2, p3, rois: segops.multi_scale_roi_align([p2, p3], rois, 7, [0.25, 0.125], 2, True)),
        (_randn(2, 4, 32, 40), _randn(2, 4, 16, 20), _rois(5, 2, 128)),
        (_randn(3, 4, 48, 24, seed=1), _randn(3, 4, 24, 12, seed=1), _rois(9, 3, 160, seed=1)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BATCH, 2: Dim("height3"), 3: Dim("width3")}, {0: BOXES}),
    ),
    (
        "flow_warp",
        _Op(segops.flow_warp),
        (_randn(2, 4, 32, 40), 3 * _randn(2, 2, 32, 40), torch.rand(2, 4, 32, 40)),
        (_randn(3, 4, 24, 56, seed=1), 3 * _randn(3, 2, 24, 56, seed=1), torch.rand(3, 4, 24, 56)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BATCH, 2: HEIGHT, 3: WIDTH}),
    ),
    (
        "max_unpool2d",
        _Op(_unpool),
        (_randn(2, 4, 32, 40),),
        (_randn(3, 4, 24, 56, seed=1),),
        ({0: BATCH, 2: 2 * Dim("half_height", min=2, max=2048), 3: 2 * Dim("half_width", min=2, max=2048)},),
    ),
    (
        "dilated_conv2d",
        segops.DilatedConv2d(4, 6, 3, padding=2, dilation=2),
        (_randn(2, 4, 32, 40),),
        (_randn(3, 4, 24, 56, seed=1),),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH},),
    ),
    (
        "dense_crf",
        _Op(segops.dense_crf),
        (_randn(2, 3, 32, 40), 255 * torch.rand(2, 3, 32, 40)),
        (_randn(3, 3, 24, 56, seed=1), 255 * torch.rand(3, 3, 24, 56)),
        ({0: BATCH, 2: HEIGHT, 3: WIDTH}, {0: BATCH, 2: HEIGHT, 3: WIDTH}),
    ),
]


@pytest.mark.parametrize("name, module, inputs, other_inputs, dynamic_shapes", OPS, ids=[case[0] for case in OPS])
def test_ops_export_with_dynamic_shapes(name, module, inputs, other_inputs, dynamic_shapes):
    if isinstance(module, _Op):  # forward(*args): one argument, the tuple
        dynamic_shapes = (dynamic_shapes,)
    program = export(module, inputs, dynamic_shapes=dynamic_shapes)
    for args in (inputs, other_inputs):
        torch.testing.assert_close(program.module()(*args), module(*args), rtol=0, atol=0)


# Networks at small widths; inputs [N, 3, H, W] (DFF: clips [N, T, 3, H, W]) with H, W multiples of 32.
NETWORKS = [
    ("fcn8s", lambda: models.fcn8s(5, base_width=8)),
    ("segnet", lambda: models.segnet(5, base_width=8)),
    ("deconvnet", lambda: models.deconvnet(5, base_width=8)),
    ("unet", lambda: models.unet(5, base_width=8)),
    ("deeplabv2", lambda: models.deeplabv2(5, depth=50)),
    ("deeplabv2 + CRF", lambda: models.deeplabv2(5, depth=50, crf="post")),
    ("deeplabv2 + CRF-as-RNN", lambda: models.deeplabv2(5, depth=50, crf="rnn")),
    ("deeplabv3", lambda: models.deeplabv3(5, depth=50)),
    ("pspnet", lambda: models.pspnet(5, depth=50)),
    ("deep_feature_flow", lambda: models.deep_feature_flow(5, depth=50, key_interval=3, feature_channels=32)),
    ("basnet", lambda: models.basnet(width=16)),
    ("poolnet", lambda: models.poolnet(width=16)),
    ("dcl", lambda: models.dcl(base_width=8)),
    ("dcl + CRF", lambda: models.dcl(base_width=8, crf=True)),
    ("cam", lambda: models.cam(5)),
    ("ucn", lambda: models.ucn()),
]
# The quick tier exports and compiles one network per op (and the small ones); these repeat the same ops at
# minutes in all, so only `./scripts/test.sh --full` runs them.
SLOW_NETWORKS = {"deeplabv2", "deeplabv2 + CRF", "deeplabv2 + CRF-as-RNN", "pspnet", "basnet", "poolnet"}


def network_params(networks, slow=SLOW_NETWORKS):
    """pytest params of (name, build), those named in `slow` marked slow."""
    return [
        pytest.param(name, build, id=name, marks=[pytest.mark.slow] if name in slow else []) for name, build in networks
    ]


# PoolNet's feature aggregation pools by 8 with ceil_mode, which makes maps of one pixel for small inputs and of
# several for larger ones; export specialises on that (broadcasting differs at size 1), so its height and width
# stay static (batch is dynamic). So does Deep Feature Flow's: FlowNetS's stride-64 and stride-128 maps are one
# pixel at these sizes.
STATIC_SIZE = {"poolnet", "deep_feature_flow"}


def _network_inputs(name, batch, height, width):
    frames = (3,) if name == "deep_feature_flow" else ()
    return torch.randn((batch, *frames, 3, height, width), generator=torch.Generator().manual_seed(batch))


def network_dynamic_shapes(name, example, static_size=STATIC_SIZE):
    """dynamic_shapes for a network's one input: batch, and height and width (multiples of 32) unless static."""
    dims = {0: BATCH}
    if name not in static_size:
        dims.update(
            {
                example.dim() - 2: 32 * Dim("height32", min=2, max=128),
                example.dim() - 1: 32 * Dim("width32", min=2, max=128),
            }
        )
    return (dims,)


def _first(output):
    """The output a network's check compares: a semantic model's "out", BASNet's refined map, or the one tensor."""
    if isinstance(output, dict):
        return output["out"]
    return output[0] if isinstance(output, tuple) else output


@pytest.mark.parametrize("name, build", network_params(NETWORKS))
def test_networks_export_with_dynamic_batch_and_size(name, build):
    torch.manual_seed(0)
    model = build().eval()
    example = _network_inputs(name, 2, 96, 128)
    program = export(model, (example,), dynamic_shapes=network_dynamic_shapes(name, example))
    sizes = [(2, 96, 128), (3, 96, 128)] + ([] if name in STATIC_SIZE else [(1, 160, 64), (3, 64, 224)])
    with torch.no_grad():
        for batch, height, width in sizes:
            images = _network_inputs(name, batch, height, width)
            torch.testing.assert_close(_first(program.module()(images)), _first(model(images)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, build", network_params(NETWORKS))
def test_networks_compile_whole(name, build):
    """fullgraph=True: one graph, no break. aot_eager traces through the fake kernels and autograd as inductor does,
    without its minutes of C++ code generation per network on this machine."""
    torch.manual_seed(0)
    model = build().eval()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    images = _network_inputs(name, 2, 96, 128)
    # Eager CPU runs the dense CRF an image at a time, a compiled graph the batch at once (dense_crf): the lattices'
    # sums round differently, by up to about 3e-4 in the probabilities.
    tolerance = 1e-3 if "CRF" in name else 1e-5
    with torch.no_grad():
        torch.testing.assert_close(_first(compiled(images)), _first(model(images)), rtol=tolerance, atol=tolerance)

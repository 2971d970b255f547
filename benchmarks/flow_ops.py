"""Flow warp (Deep Feature Flow) cases: segops against F.grid_sample fed by a grid built from the flow, as users write
it today (segops.reference.flow_warp), on the same inputs, in one process."""

import torch

import segops
from benchmarks.case import Case
from segops import reference

# d/dflow jumps where a sample crosses a pixel row or column; float32 rounding of the reference's normalised grid
# puts a few of a million samples on the other side (in float64 both agree to 1e-12 everywhere).
KINKS = 1e-5

# Deep Feature Flow's warp of stride-16 ResNet features of a 1024x2048 Cityscapes frame, batch 4.
BATCH, CHANNELS, HEIGHT, WIDTH = 4, 256, 64, 128


def make_inputs(seed=0):
    """feature Tensor[4, 256, 64, 128], a smooth random flow Tensor[4, 2, 64, 128] of a few pixels, and a scale
    field Tensor[4, 256, 64, 128] around 1."""
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=g)
    coarse = (torch.rand(BATCH, 2, 5, 9, generator=g) * 2 - 1) * 4
    flow = torch.nn.functional.interpolate(coarse, size=(HEIGHT, WIDTH), mode="bicubic", align_corners=True)
    scale = 1 + 0.1 * torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=g)
    return feature, flow, scale


def _gradients(fn, inputs, grad):
    leaves = [t.detach().requires_grad_() for t in inputs]
    return torch.autograd.grad(fn(*leaves), leaves, grad)


# Other sizes users meet (batch 1 and 8, few and many channels, small and large maps), against the same reference
# with no target of the issue's: (N, C, H, W).
OTHER_SHAPES = [
    (1, 64, 16, 32),
    (1, 256, 32, 64),
    (8, 256, 64, 128),
    (1, 1024, 128, 256),
    (2, 16, 256, 512),
    (8, 3, 256, 512),
]


def _shape_inputs(shape, seed=0):
    n, c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(*shape, generator=g)
    coarse = (torch.rand(n, 2, 5, 9, generator=g) * 2 - 1) * 4
    flow = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    return feature, flow, torch.randn(*shape, generator=g)


def _case(name, target, ours, theirs):
    return Case(name, target, ours, theirs, reference="grid_sample", allowed_outliers=KINKS)


def cases():
    feature, flow, scale = make_inputs()
    grad = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    name = "flow_warp [4, 256, 64, 128]"
    return [
        _case(
            f"{name} forward", 1.5, lambda: segops.flow_warp(feature, flow), lambda: reference.flow_warp(feature, flow)
        ),
        _case(
            f"{name} forward+backward (feature, flow)",
            2.0,
            lambda: _gradients(segops.flow_warp, (feature, flow), grad),
            lambda: _gradients(reference.flow_warp, (feature, flow), grad),
        ),
        _case(
            f"{name} forward+backward with scale (feature, flow, scale)",
            2.0,
            lambda: _gradients(segops.flow_warp, (feature, flow, scale), grad),
            lambda: _gradients(reference.flow_warp, (feature, flow, scale), grad),
        ),
    ] + [case for shape in OTHER_SHAPES for case in _shape_cases(shape)]


def _shape_cases(shape):
    feature, flow, grad = _shape_inputs(shape)
    name = f"flow_warp {list(shape)}"
    return [
        _case(
            f"{name} forward", 1.0, lambda: segops.flow_warp(feature, flow), lambda: reference.flow_warp(feature, flow)
        ),
        _case(
            f"{name} forward+backward (feature, flow)",
            1.0,
            lambda: _gradients(segops.flow_warp, (feature, flow), grad),
            lambda: _gradients(reference.flow_warp, (feature, flow), grad),
        ),
    ]

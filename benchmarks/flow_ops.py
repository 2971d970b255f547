"""Flow warp (Deep Feature Flow) cases: segops against F.grid_sample fed by a grid built from the flow, as users write
it today (segops.reference.flow_warp), on the same inputs, in one process."""

import torch

import segops
from benchmarks.case import Case
from segops import reference

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


def cases():
    feature, flow, scale = make_inputs()
    grad = torch.randn(BATCH, CHANNELS, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    name = "flow_warp [4, 256, 64, 128]"
    return [
        Case(f"{name} forward", 1.5, lambda: segops.flow_warp(feature, flow),
             lambda: reference.flow_warp(feature, flow), reference="grid_sample"),
        Case(f"{name} forward+backward (feature, flow)", 2.0,
             lambda: _gradients(segops.flow_warp, (feature, flow), grad),
             lambda: _gradients(reference.flow_warp, (feature, flow), grad), reference="grid_sample"),
        Case(f"{name} forward+backward with scale (feature, flow, scale)", 2.0,
             lambda: _gradients(segops.flow_warp, (feature, flow, scale), grad),
             lambda: _gradients(reference.flow_warp, (feature, flow, scale), grad), reference="grid_sample"),
    ]

"""Dilated convolution (DeepLab) cases: segops.dilated_conv2d against F.conv2d (oneDNN on the CPU) with the same
arguments, on the same inputs, in one process. Forward+backward cases compare the input and weight gradients."""

import torch
import torch.nn.functional as F

import segops
from benchmarks.case import Case

# (name, input [N, C, H, W], C_out, kernel, dilation, groups, forward target, forward+backward target). The issue's
# ASPP branch (stride-16 features of a 1024x1024 crop, within 1.5x of oneDNN: target 1/1.5) and depthwise DeepLabv3+
# convolution (at least as fast), then batch 1 and 8, small and large maps, DeepLab v3's own branches, and FCN's
# fc6/fc7 (a 256 crop's 8x8 map: weights that outweigh the activations).
CASES = [
    ("ASPP branch", (2, 512, 64, 64), 256, 3, 12, 1, 1 / 1.5, 1 / 1.5),
    ("depthwise", (2, 512, 64, 64), 512, 3, 6, 512, 1.0, 1.0),
    ("ASPP branch, 513 crop", (1, 256, 33, 33), 256, 3, 6, 1, 1 / 1.5, 1 / 1.5),
    # DeepLab v3's own ASPP branches (2048 -> 256) at output stride 16: most of the taps read padding (tap by tap).
    ("DeepLab v3 ASPP, 256 crop", (1, 2048, 16, 16), 256, 3, 12, 1, 1 / 1.5, 1 / 1.5),
    ("DeepLab v3 ASPP, 513 crop", (1, 2048, 33, 33), 256, 3, 18, 1, 1 / 1.5, 1 / 1.5),
    ("ASPP branch", (8, 256, 32, 32), 256, 3, 18, 1, 1 / 1.5, 1 / 1.5),
    ("dense", (1, 64, 256, 256), 64, 3, 2, 1, 1 / 1.5, 1 / 1.5),
    ("depthwise", (1, 728, 65, 65), 728, 3, 2, 728, 1.0, 1.0),
    ("depthwise", (8, 256, 64, 64), 256, 3, 12, 256, 1.0, 1.0),
    ("depthwise", (1, 32, 512, 512), 32, 3, 1, 32, 1.0, 1.0),
    ("FCN fc6", (1, 512, 8, 8), 4096, 7, 1, 1, 1 / 1.5, 1 / 1.5),
    ("FCN fc7", (1, 4096, 8, 8), 4096, 1, 1, 1, 1 / 1.5, 1 / 1.5),
]


def _inputs(shape, out_channels, kernel, groups, seed=0):
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(shape, generator=g)
    fan_in = shape[1] // groups * kernel**2
    weight = torch.randn(out_channels, shape[1] // groups, kernel, kernel, generator=g) / fan_in**0.5
    bias = torch.randn(out_channels, generator=g)
    grad = torch.randn(shape[0], out_channels, shape[2], shape[3], generator=g)
    return input, weight, bias, grad


def _gradients(fn, input, weight, bias, grad, kwargs):
    x, w = input.detach().requires_grad_(), weight.detach().requires_grad_()
    return torch.autograd.grad(fn(x, w, bias, **kwargs), (x, w), grad)


def cases():
    result = []
    for name, shape, out_channels, kernel, dilation, groups, forward_target, backward_target in CASES:
        input, weight, bias, grad = _inputs(shape, out_channels, kernel, groups)
        kwargs = dict(padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=groups)
        label = f"dilated_conv2d {name} {list(shape)} -> {out_channels}, {kernel}x{kernel}, dilation {dilation}"
        result += [
            Case(
                f"{label} forward",
                forward_target,
                lambda i=input, w=weight, b=bias, k=kwargs: segops.dilated_conv2d(i, w, b, **k),
                lambda i=input, w=weight, b=bias, k=kwargs: F.conv2d(i, w, b, **k),
                reference="F.conv2d",
            ),
            Case(
                f"{label} forward+backward (input, weight)",
                backward_target,
                lambda i=input, w=weight, b=bias, g=grad, k=kwargs: _gradients(segops.dilated_conv2d, i, w, b, g, k),
                lambda i=input, w=weight, b=bias, g=grad, k=kwargs: _gradients(F.conv2d, i, w, b, g, k),
                reference="F.conv2d",
            ),
        ]
    return result

"""dilated_conv2d's argument checks and fake kernels (dilated_conv2d, _dilated_conv2d_backward), registered with
torch.library.register_fake on import. The messages repeat csrc/dilated_conv/dilated_conv_checks.cpp's word for word."""

from typing import List, Sequence

import torch
from torch._prims_common import suggest_memory_format

from segops.ops._checks import (
    check_same_device,
    check_same_dtype,
    check_shape,
    check_supported_float,
    format_shape,
)


def _check_pair(op: str, name: str, values: Sequence[int], minimum: int) -> None:
    if len(values) != 2:
        raise RuntimeError(f"{op}: {name} must have 2 values (height, width), got {format_shape(values)}")
    if values[0] < minimum or values[1] < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise RuntimeError(f"{op}: {name} must be {kind}, got {format_shape(values)}")


def _conv_output_size(op: str, axis: str, letter: str, size, kernel, stride, pad, dilation):
    """One output extent, ``(size + 2 pad - ((kernel - 1) dilation + 1)) // stride + 1``; the dilated kernel must
    fit in the padded input."""
    extent = (kernel - 1) * dilation + 1
    if extent > size + 2 * pad:
        raise RuntimeError(
            f"{op}: the dilated kernel's {axis} ((k{letter} - 1) * dilation + 1 = {extent}) must not exceed the "
            f"padded input's ({letter} + 2 * padding = {size + 2 * pad})"
        )
    return (size + 2 * pad - extent) // stride + 1


def check_dilated_conv2d_args(op, input, weight, bias, stride, padding, dilation, groups) -> List[int]:
    """The C++ checks of input Tensor[N, C_in, H, W], weight Tensor[C_out, C_in / groups, kH, kW], bias None or
    Tensor[C_out] and the (height, width) pairs; returns the output's shape [N, C_out, Ho, Wo]."""
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must have shape [N, C, H, W], got {format_shape(input)}")
    check_supported_float(op, "input", input)
    _check_pair(op, "stride", stride, 1)
    _check_pair(op, "padding", padding, 0)
    _check_pair(op, "dilation", dilation, 1)
    if groups < 1:
        raise RuntimeError(f"{op}: groups must be positive, got {groups}")
    channels = input.shape[1]
    if channels % groups != 0:
        raise RuntimeError(f"{op}: groups must divide the input channels ({channels}), got {groups}")
    if (
        weight.dim() != 4
        or weight.shape[1] * groups != channels
        or weight.shape[0] % groups != 0
        or weight.shape[2] < 1
        or weight.shape[3] < 1
    ):
        raise RuntimeError(
            f"{op}: weight must have shape [C_out, C_in / groups, kH, kW] with C_in / groups = {channels // groups}, "
            f"C_out a multiple of groups ({groups}) and kH, kW >= 1, got {format_shape(weight)}"
        )
    check_same_dtype(op, "weight", weight, input, "input")
    check_same_device(op, "weight", weight, input, "input")
    out_channels = weight.shape[0]
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != out_channels:
            raise RuntimeError(f"{op}: bias must have shape [C_out] = [{out_channels}], got {format_shape(bias)}")
        check_same_dtype(op, "bias", bias, input, "input")
        check_same_device(op, "bias", bias, input, "input")
    out_h = _conv_output_size(op, "height", "H", input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = _conv_output_size(op, "width", "W", input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return [input.shape[0], out_channels, out_h, out_w]


def _empty_like_input_layout(input, shape):
    """An empty Tensor[shape] in the input's memory format: the C++ ops' rule for the output and the input gradient
    (conv_memory_format in csrc/dilated_conv/dilated_conv_gemm.h)."""
    return torch.empty(shape, dtype=input.dtype, device=input.device, memory_format=suggest_memory_format(input))


@torch.library.register_fake("segops::dilated_conv2d")
def _dilated_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    shape = check_dilated_conv2d_args("dilated_conv2d", input, weight, bias, stride, padding, dilation, groups)
    return _empty_like_input_layout(input, shape)


@torch.library.register_fake("segops::_dilated_conv2d_backward")
def _dilated_conv2d_backward_fake(grad, input, weight, stride, padding, dilation, groups, output_mask):
    """(grad_input, grad_weight, grad_bias), each of shape (0,) where output_mask leaves it out."""
    op = "_dilated_conv2d_backward"
    shape = check_dilated_conv2d_args(op, input, weight, None, stride, padding, dilation, groups)
    check_shape(op, "grad", grad, shape)
    check_same_dtype(op, "grad", grad, input, "input")
    check_same_device(op, "grad", grad, input, "input")
    return (
        _empty_like_input_layout(input, input.shape) if output_mask[0] else input.new_empty((0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        input.new_empty((weight.shape[0],) if output_mask[2] else (0,)),
    )

"""Dilated (atrous) convolution (DeepLab): functional, nn.Module and autograd.Function front ends of
torch.ops.segops.dilated_conv2d, and the argument checks its fake kernels run
(csrc/dilated_conv/dilated_conv_checks.cpp's messages, word for word)."""

import math
from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2
from torch.nn.modules.utils import _pair

from segops._fx import traced_call
from segops.ops._autograd import (
    OpFunction,
    below_autograd,
    call,
    once_differentiable_backward,
    register_function,
    save_for_backward_and_jvp,
)
from segops.ops._checks import (
    check_same_device,
    check_supported_float,
    check_tensor_arguments,
    dtype_name,
    shape_str,
)

IntOrPair = Union[int, Sequence[int]]


def dilated_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor] = None,
    stride: BroadcastingList2[int] = 1,
    padding: BroadcastingList2[int] = 0,
    dilation: BroadcastingList2[int] = 1,
    groups: int = 1,
) -> Tensor:
    """2-D convolution with dilated (atrous) kernels, ``torch.nn.functional.conv2d``'s signature and results.

    ``out[n, o, y, x] = bias[o] + sum_{c, i, j} weight[o, c, i, j] * input[n, g * C_in / groups + c,
    y * stride - padding + i * dilation, x * stride - padding + j * dilation]`` (zero outside the input), with g the
    group of output channel o. The general case runs a dilated im2col and a GEMM (oneDNN/MKL on the CPU, cuBLAS on
    CUDA) over chunks of output rows, so the column buffer never exceeds 2^23 elements (32 MiB in float32) or one
    output row's columns; the depthwise case (groups == C_in == C_out, DeepLabv3+'s separable convolutions) runs a
    direct kernel. The backward has no floating-point atomics: deterministic on CPU and CUDA, so
    ``torch.use_deterministic_algorithms(True)`` costs nothing here (cuDNN's dilated data gradient has no
    deterministic algorithm). Not differentiable twice.

    Args:
        input (Tensor[N, C_in, H, W]): float32, float64, float16 or bfloat16; any layout (read in place).
        weight (Tensor[C_out, C_in / groups, kH, kW]): input's dtype and device.
        bias (Tensor[C_out], optional): input's dtype and device.
        stride, padding, dilation (int or (int, int)): stride and dilation >= 1, padding >= 0.
        groups (int): divides C_in and C_out.

    Returns:
        Tensor[N, C_out, Ho, Wo], contiguous, ``Ho = (H + 2 * padding - dilation * (kH - 1) - 1) // stride + 1``
        (likewise Wo).
    """
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        return torch.ops.segops.dilated_conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _dilated_conv2d(input, weight, bias, stride, padding, dilation, groups)


@torch.jit.unused
def _dilated_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
                    dilation: List[int], groups: int) -> Tensor:
    node = traced_call(dilated_conv2d, input, weight, bias, stride, padding, dilation, groups)  # FX: one node
    if node is not None:
        return node
    check_tensor_arguments("dilated_conv2d", input=input, weight=weight, bias=bias)
    return _conv(input, weight, bias, list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), groups)


def _check_pair(op: str, name: str, values: Sequence[int], minimum: int) -> None:
    if len(values) != 2:
        raise RuntimeError(f"{op}: {name} must have 2 values (height, width), got [{', '.join(map(str, values))}]")
    if values[0] < minimum or values[1] < minimum:
        kind = "non-negative" if minimum == 0 else "positive"
        raise RuntimeError(f"{op}: {name} must be {kind}, got [{', '.join(map(str, values))}]")


def conv_output_size(op: str, axis: str, letter: str, size, kernel, stride, pad, dilation):
    extent = (kernel - 1) * dilation + 1
    if extent > size + 2 * pad:
        raise RuntimeError(
            f"{op}: the dilated kernel's {axis} ((k{letter} - 1) * dilation + 1 = {extent}) must not exceed the "
            f"padded input's ({letter} + 2 * padding = {size + 2 * pad})"
        )
    return (size + 2 * pad - extent) // stride + 1


def check_dilated_conv2d_args(op, input, weight, bias, stride, padding, dilation, groups) -> List[int]:
    """The C++ checks; returns the output's shape."""
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must have shape [N, C, H, W], got {shape_str(input)}")
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
            f"C_out a multiple of groups ({groups}) and kH, kW >= 1, got {shape_str(weight)}"
        )
    if weight.dtype != input.dtype:
        raise RuntimeError(
            f"{op}: weight must have the same dtype as input ({dtype_name(input.dtype)}), "
            f"got {dtype_name(weight.dtype)}"
        )
    check_same_device(op, "weight", weight, input, "input")
    out_channels = weight.shape[0]
    if bias is not None:
        if bias.dim() != 1 or bias.shape[0] != out_channels:
            raise RuntimeError(f"{op}: bias must have shape [C_out] = [{out_channels}], got {shape_str(bias)}")
        if bias.dtype != input.dtype:
            raise RuntimeError(
                f"{op}: bias must have the same dtype as input ({dtype_name(input.dtype)}), "
                f"got {dtype_name(bias.dtype)}"
            )
        check_same_device(op, "bias", bias, input, "input")
    out_h = conv_output_size(op, "height", "H", input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    out_w = conv_output_size(op, "width", "W", input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return [input.shape[0], out_channels, out_h, out_w]


def dilated_conv2d_fake(input, weight, bias, stride, padding, dilation, groups):
    shape = check_dilated_conv2d_args("dilated_conv2d", input, weight, bias, stride, padding, dilation, groups)
    return input.new_empty(shape)


def dilated_conv2d_backward_fake(grad, input, weight, stride, padding, dilation, groups, output_mask):
    op = "_dilated_conv2d_backward"
    shape = check_dilated_conv2d_args(op, input, weight, None, stride, padding, dilation, groups)
    if list(grad.shape) != shape:
        raise RuntimeError(f"{op}: grad must have shape [{', '.join(map(str, shape))}], got {shape_str(grad)}")
    if grad.dtype != input.dtype:
        raise RuntimeError(
            f"{op}: grad must have the same dtype as input ({dtype_name(input.dtype)}), got {dtype_name(grad.dtype)}"
        )
    check_same_device(op, "grad", grad, input, "input")
    return (
        input.new_empty(input.shape if output_mask[0] else (0,)),
        weight.new_empty(weight.shape if output_mask[1] else (0,)),
        input.new_empty((weight.shape[0],) if output_mask[2] else (0,)),
    )


def _conv(input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    return call(DilatedConv2dFunction, torch.ops.segops.dilated_conv2d, input, weight, bias, stride, padding, dilation,
                groups)


class DilatedConv2dFunction(OpFunction):
    """``torch.ops.segops.dilated_conv2d`` as an autograd.Function: the op's Autograd kernel (backward, jvp,
    torch.func).

    ``DilatedConv2dFunction.apply(input, weight, bias, stride, padding, dilation, groups)`` takes input
    Tensor[N, C_in, H, W], weight Tensor[C_out, C_in / groups, kH, kW], bias None or Tensor[C_out] and (height, width)
    lists, and returns Tensor[N, C_out, Ho, Wo]; prefer :func:`dilated_conv2d`. Bilinear in (input, weight): the
    tangent is conv(input', weight) + conv(input, weight') + bias'.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, weight, bias, stride, padding, dilation, groups):
        return below_autograd(torch.ops.segops.dilated_conv2d.default, input, weight, bias, stride, padding, dilation,
                              groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, weight, bias, stride, padding, dilation, groups = inputs
        save_for_backward_and_jvp(ctx, input, weight)
        ctx.arguments = (stride, padding, dilation, groups)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, grad):
        input, weight = ctx.saved_tensors
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_input, grad_weight, grad_bias = call(
            _DilatedConv2dBackwardFunction, torch.ops.segops._dilated_conv2d_backward, grad, input, weight,
            *ctx.arguments, mask
        )
        return (
            grad_input if mask[0] else None,
            grad_weight if mask[1] else None,
            grad_bias if mask[2] else None,
            None,
            None,
            None,
            None,
        )

    @staticmethod
    def jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
        input, weight = ctx.saved_tensors
        tangent = None
        if input_tangent is not None:
            tangent = _conv(input_tangent, weight, bias_tangent, *ctx.arguments)
        if weight_tangent is not None:
            term = _conv(input, weight_tangent, None if tangent is not None else bias_tangent, *ctx.arguments)
            tangent = term if tangent is None else tangent + term
        if tangent is None and bias_tangent is not None:
            shape = check_dilated_conv2d_args("dilated_conv2d", input, weight, None, *ctx.arguments)
            tangent = bias_tangent.view(-1, 1, 1).expand(shape).contiguous()
        return tangent


_ONCE = "the op is differentiable once with respect to input, weight and bias"


_DilatedConv2dBackwardFunction = once_differentiable_backward(
    "dilated_conv2d", torch.ops.segops._dilated_conv2d_backward.default, _ONCE
)


register_function("dilated_conv2d", DilatedConv2dFunction)
register_function("_dilated_conv2d_backward", _DilatedConv2dBackwardFunction)


class DilatedConv2d(nn.Module):
    """:func:`dilated_conv2d` as an ``nn.Conv2d``-compatible module: the same constructor arguments (padding_mode
    "zeros" only), parameters ``weight`` Tensor[C_out, C_in / groups, kH, kW] and ``bias`` Tensor[C_out] with
    nn.Conv2d's initialisation, repr and state_dict keys, so ``load_state_dict`` of an ``nn.Conv2d`` works and
    :meth:`from_conv` converts one. Input Tensor[N, C_in, H, W] gives Tensor[N, C_out, Ho, Wo].
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: IntOrPair,
        stride: IntOrPair = 1,
        padding: IntOrPair = 0,
        dilation: IntOrPair = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"DilatedConv2d: padding_mode must be 'zeros', got {padding_mode!r}")
        if isinstance(padding, str):
            raise ValueError(f"DilatedConv2d: padding must be an int or a pair of ints, got {padding!r}")
        if groups < 1 or in_channels % groups != 0 or out_channels % groups != 0:
            raise ValueError(
                f"DilatedConv2d: groups must be positive and divide in_channels ({in_channels}) and out_channels "
                f"({out_channels}), got {groups}"
            )
        factory = {"device": device, "dtype": dtype}
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation = _pair(padding), _pair(dilation)
        self.groups, self.padding_mode = groups, padding_mode
        self.weight = nn.Parameter(torch.empty((out_channels, in_channels // groups, *self.kernel_size), **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Conv2d's: kaiming_uniform_(a=sqrt(5)) weights, bias uniform in +-1/sqrt(fan_in)."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
            bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
            nn.init.uniform_(self.bias, -bound, bound)

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "DilatedConv2d":
        """A DilatedConv2d computing what ``conv`` computes, sharing its parameters (no copy)."""
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                "DilatedConv2d.from_conv: needs numeric padding with padding_mode 'zeros', "
                f"got padding={conv.padding!r}, padding_mode={conv.padding_mode!r}"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_channels, module.out_channels = conv.in_channels, conv.out_channels
        module.kernel_size, module.stride = tuple(conv.kernel_size), tuple(conv.stride)
        module.padding, module.dilation = tuple(conv.padding), tuple(conv.dilation)
        module.groups, module.padding_mode = conv.groups, conv.padding_mode
        module.weight = conv.weight
        if conv.bias is not None:
            module.bias = conv.bias
        else:
            module.register_parameter("bias", None)
        return module

    def forward(self, input: Tensor) -> Tensor:
        return dilated_conv2d(input, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        # nn.Conv2d's format.
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * len(self.padding):
            s += ", padding={padding}"
        if self.dilation != (1,) * len(self.dilation):
            s += ", dilation={dilation}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        return s.format(**self.__dict__)

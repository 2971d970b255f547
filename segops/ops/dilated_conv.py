"""Dilated (atrous) convolution (DeepLab): functional, nn.Module and autograd.Function front ends of
torch.ops.segops.dilated_conv2d. Its argument checks and fake kernels are in segops/ops/_dilated_conv_meta.py."""

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
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._dilated_conv_meta import check_dilated_conv2d_args as _check_dilated_conv2d_args

__all__ = ["DilatedConv2d", "DilatedConv2dFunction", "dilated_conv2d"]

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
        Tensor[N, C_out, Ho, Wo] in the input's memory format (channels_last for a channels_last input, as
        ``F.conv2d``'s; contiguous otherwise), ``Ho = (H + 2 * padding - dilation * (kH - 1) - 1) // stride + 1``
        (likewise Wo). The input gradient follows the input's memory format too.
    """
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        return torch.ops.segops.dilated_conv2d(input, weight, bias, stride, padding, dilation, groups)
    return _dilated_conv2d(input, weight, bias, stride, padding, dilation, groups)


@torch.jit.unused
def _dilated_conv2d(
    input: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    padding: List[int],
    dilation: List[int],
    groups: int,
) -> Tensor:
    node = traced_call(dilated_conv2d, input, weight, bias, stride, padding, dilation, groups)  # FX: one node
    if node is not None:
        return node
    _check_tensor_arguments("dilated_conv2d", input=input, weight=weight, bias=bias)
    return _conv(input, weight, bias, list(_pair(stride)), list(_pair(padding)), list(_pair(dilation)), groups)


def _conv(input, weight, bias, stride, padding, dilation, groups) -> Tensor:
    return call(
        DilatedConv2dFunction, torch.ops.segops.dilated_conv2d, input, weight, bias, stride, padding, dilation, groups
    )


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
        return below_autograd(
            torch.ops.segops.dilated_conv2d.default, input, weight, bias, stride, padding, dilation, groups
        )

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
            _DilatedConv2dBackwardFunction,
            torch.ops.segops._dilated_conv2d_backward,
            grad,
            input,
            weight,
            *ctx.arguments,
            mask,
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
            shape = _check_dilated_conv2d_args("dilated_conv2d", input, weight, None, *ctx.arguments)
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
        """A DilatedConv2d computing what ``conv`` computes, sharing its parameters (no copy). String padding becomes
        numbers: "valid" is 0 and "same" is dilation * (kernel - 1) / 2 per axis, where that is whole (symmetric)."""
        padding = conv.padding
        if padding == "valid":
            padding = (0, 0)
        elif padding == "same":
            totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]
            padding = tuple(t // 2 for t in totals) if all(t % 2 == 0 for t in totals) else padding
        if conv.padding_mode != "zeros" or isinstance(padding, str):
            raise ValueError(
                "DilatedConv2d.from_conv: needs numeric or symmetric padding with padding_mode 'zeros', "
                f"got padding={conv.padding!r} (kernel {tuple(conv.kernel_size)}, dilation {tuple(conv.dilation)}), "
                f"padding_mode={conv.padding_mode!r}"
            )
        module = cls.__new__(cls)
        nn.Module.__init__(module)
        module.in_channels, module.out_channels = conv.in_channels, conv.out_channels
        module.kernel_size, module.stride = tuple(conv.kernel_size), tuple(conv.stride)
        module.padding, module.dilation = tuple(padding), tuple(conv.dilation)
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

"""Max-unpooling with indices (SegNet's decoder): functional, nn.Module and autograd.Function front ends of
torch.ops.segops.max_unpool2d. Its argument checks and fake kernels are in segops/ops/_max_unpool_meta.py."""

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from segops._fx import not_scriptable, one_fx_node
from segops.ops._autograd import OpFunction, below_autograd, call, register_function, save_for_backward_and_jvp
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._checks import format_shape

__all__ = ["MaxUnpool2d", "MaxUnpool2dFunction", "max_unpool2d"]

IntOrPair = Union[int, Sequence[int]]


@one_fx_node  # FX (symbolic_trace, create_feature_extractor) records one call
def max_unpool2d(
    input: Tensor,
    indices: Tensor,
    kernel_size: IntOrPair,
    stride: Optional[IntOrPair] = None,
    padding: IntOrPair = 0,
    output_size: Optional[Sequence[int]] = None,
) -> Tensor:
    """Partial inverse of ``F.max_pool2d(..., return_indices=True)``: puts each input value at the position its index
    names in a zero output plane, as ``torch.nn.functional.max_unpool2d`` does (same signature, sizes and errors).

    ``out[n, c].flatten()[indices[n, c, h, w]] = input[n, c, h, w]``, zero elsewhere. Where several inputs of a plane
    name one output (overlapping pooling windows, e.g. kernel 3 stride 2), the input at the largest position
    ``h * W + w`` wins, on CPU and CUDA alike (PyTorch's CPU result; its CUDA result depends on thread scheduling),
    and only the winner receives that output's gradient: the gradient is the derivative of what the forward computed
    (PyTorch also passes it to the losers, which gradcheck rejects). Without duplicates both equal PyTorch's bit for
    bit. Differentiable any number of times (the backward is linear and its adjoint is this forward).

    Args:
        input (Tensor[N, C, H, W] or Tensor[C, H, W]): float32, float64, float16 or bfloat16; contiguous or
            channels_last (the output keeps the layout).
        indices (Tensor of input's shape, int64): positions in the flattened [Ho, Wo] output plane, each in
            ``[0, Ho * Wo)``; an index out of range is an error naming it and its value (on CUDA a device-side
            assert that prints them).
        kernel_size (int or (int, int)): the pooling window.
        stride (int or (int, int), optional): the pooling stride; default ``kernel_size``.
        padding (int or (int, int)): the pooling padding.
        output_size (sequence of 2 or 4 ints, optional): ``(Ho, Wo)`` or ``(N, C, Ho, Wo)``; each within one stride of
            the default ``(H - 1) * stride - 2 * padding + kernel_size``.

    Returns:
        Tensor[N, C, Ho, Wo] (or Tensor[C, Ho, Wo]): in input's dtype.
    """
    _check_tensor_arguments("max_unpool2d", input=input, indices=indices)
    if input.dim() not in (3, 4):
        raise RuntimeError(f"max_unpool2d: input must have shape [C, H, W] or [N, C, H, W], got {format_shape(input)}")
    kernel = _pair(kernel_size)
    stride_pair = _pair(stride) if stride is not None else kernel
    out_h, out_w = unpool_output_size(input, kernel, stride_pair, _pair(padding), output_size)
    if input.dim() == 3:
        if indices.dim() != 3:
            raise RuntimeError(
                f"max_unpool2d: indices must have input's shape {format_shape(input)}, got {format_shape(indices)}"
            )
        return _unpool(input.unsqueeze(0), indices.unsqueeze(0), out_h, out_w).squeeze(0)
    return _unpool(input, indices, out_h, out_w)


def unpool_output_size(
    input: Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int], output_size
) -> List[int]:
    """[Ho, Wo] by torch.nn.functional.max_unpool2d's rules, with its messages."""
    default = [(input.shape[d - 2] - 1) * stride[d] + kernel[d] - 2 * padding[d] for d in range(2)]
    if output_size is None:
        return default
    size = output_size[2:] if len(output_size) == 4 else output_size
    if len(size) != 2:
        raise ValueError(
            f"output_size should be a sequence containing 2 or 4 elements, but it has a length of '{len(size)}'"
        )
    for d in range(2):
        min_size, max_size = default[d] - stride[d], default[d] + stride[d]
        if not min_size < size[d] < max_size:
            raise ValueError(f'invalid output_size "{size}" (dim {d} must be between {min_size} and {max_size})')
    return list(size)


def _unpool(input: Tensor, indices: Tensor, output_height, output_width) -> Tensor:
    return call(MaxUnpool2dFunction, torch.ops.segops.max_unpool2d, input, indices, output_height, output_width)


def _unpool_backward(grad: Tensor, indices: Tensor) -> Tensor:
    return call(_MaxUnpool2dBackwardFunction, torch.ops.segops._max_unpool2d_backward, grad, indices)


class MaxUnpool2dFunction(OpFunction):
    """``torch.ops.segops.max_unpool2d`` as an autograd.Function: the op's Autograd kernel (backward, jvp, torch.func).

    ``MaxUnpool2dFunction.apply(input, indices, output_height, output_width)`` takes input Tensor[N, C, H, W] and int64
    indices of its shape and returns Tensor[N, C, Ho, Wo]; prefer :func:`max_unpool2d`. Linear in input: the tangent
    is the unpooled tangent.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, indices, output_height, output_width):
        return below_autograd(torch.ops.segops.max_unpool2d.default, input, indices, output_height, output_width)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, indices, output_height, output_width = inputs
        save_for_backward_and_jvp(ctx, indices)
        ctx.output_size = (output_height, output_width)

    @staticmethod
    def backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return _unpool_backward(grad, indices), None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        (indices,) = ctx.saved_tensors
        return None if input_tangent is None else _unpool(input_tangent, indices, *ctx.output_size)


class _MaxUnpool2dBackwardFunction(OpFunction):
    """The backward op's derivatives: linear in grad, with the forward as its adjoint."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, indices):
        return below_autograd(torch.ops.segops._max_unpool2d_backward.default, grad, indices)

    @staticmethod
    def setup_context(ctx, inputs, output):
        grad, indices = inputs
        save_for_backward_and_jvp(ctx, indices)
        ctx.output_size = (grad.shape[2], grad.shape[3])

    @staticmethod
    def backward(ctx, grad_grad_input):
        (indices,) = ctx.saved_tensors
        return _unpool(grad_grad_input, indices, *ctx.output_size), None

    @staticmethod
    def jvp(ctx, grad_tangent, _indices_tangent):
        (indices,) = ctx.saved_tensors
        return None if grad_tangent is None else _unpool_backward(grad_tangent, indices)


register_function("max_unpool2d", MaxUnpool2dFunction)
register_function("_max_unpool2d_backward", _MaxUnpool2dBackwardFunction)


class MaxUnpool2d(nn.Module):
    """:func:`max_unpool2d` as a module, ``torch.nn.MaxUnpool2d``'s drop-in replacement.

    ``MaxUnpool2d(kernel_size, stride=None, padding=0)(input, indices, output_size=None)``: input Tensor[N, C, H, W]
    or Tensor[C, H, W] and its int64 indices give Tensor[N, C, Ho, Wo] (or Tensor[C, Ho, Wo]).
    """

    def __init__(self, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: IntOrPair = 0) -> None:
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride if stride is not None else kernel_size)
        self.padding = _pair(padding)

    def __prepare_scriptable__(self):
        not_scriptable(type(self).__name__)

    def forward(self, input: Tensor, indices: Tensor, output_size: Optional[Sequence[int]] = None) -> Tensor:
        return max_unpool2d(input, indices, self.kernel_size, self.stride, self.padding, output_size)

    def __repr__(self) -> str:
        name = self.__class__.__name__
        return f"{name}(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding})"

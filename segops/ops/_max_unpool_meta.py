"""max_unpool2d's argument checks and fake kernels (max_unpool2d, _max_unpool2d_backward), registered with
torch.library.register_fake on import. The messages repeat csrc/max_unpool/max_unpool_checks.cpp's word for word; the
index range (data-dependent) is checked in C++ only."""

import torch
from torch import Tensor

from segops.ops._checks import (
    check_plane_fits_int32,
    check_same_device,
    check_supported_float,
    dtype_name,
    format_shape,
)


def _unpool_format(tensor: Tensor) -> torch.memory_format:
    """C++'s rule: channels_last where the tensor is laid out so and not also contiguous."""
    if not tensor.is_contiguous() and tensor.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _check_indices_dtype_and_device(op: str, indices: Tensor, like: Tensor, like_name: str) -> None:
    if indices.dtype != torch.int64:
        raise RuntimeError(
            f"{op}: indices must be int64 (Long), as max_pool2d returns them, got {dtype_name(indices.dtype)}"
        )
    check_same_device(op, "indices", indices, like, like_name)


@torch.library.register_fake("segops::max_unpool2d")
def _max_unpool2d_fake(input: Tensor, indices: Tensor, output_height, output_width) -> Tensor:
    """input Tensor[N, C, H, W] and int64 indices of its shape -> Tensor[N, C, Ho, Wo] in input's layout."""
    op = "max_unpool2d"
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must have shape [N, C, H, W], got {format_shape(input)}")
    check_supported_float(op, "input", input)
    _check_indices_dtype_and_device(op, indices, input, "input")
    if indices.shape != input.shape:
        raise RuntimeError(f"{op}: indices must have input's shape {format_shape(input)}, got {format_shape(indices)}")
    if output_height < 0 or output_width < 0:
        raise RuntimeError(f"{op}: output size must be non-negative, got [{output_height}, {output_width}]")
    check_plane_fits_int32(op, input.shape[2], input.shape[3])
    shape = (input.shape[0], input.shape[1], output_height, output_width)
    return input.new_empty(shape).contiguous(memory_format=_unpool_format(input))


@torch.library.register_fake("segops::_max_unpool2d_backward")
def _max_unpool2d_backward_fake(grad: Tensor, indices: Tensor) -> Tensor:
    """grad Tensor[N, C, Ho, Wo] and indices Tensor[N, C, H, W] -> Tensor[N, C, H, W] in indices' layout."""
    op = "_max_unpool2d_backward"
    if grad.dim() != 4:
        raise RuntimeError(f"{op}: grad must have shape [N, C, Ho, Wo], got {format_shape(grad)}")
    check_supported_float(op, "grad", grad)
    _check_indices_dtype_and_device(op, indices, grad, "grad")
    if indices.dim() != 4 or indices.shape[:2] != grad.shape[:2]:
        raise RuntimeError(
            f"{op}: indices must have shape [N, C, H, W] with N, C = {grad.shape[0]}, {grad.shape[1]}, "
            f"got {format_shape(indices)}"
        )
    check_plane_fits_int32(op, indices.shape[2], indices.shape[3])
    return grad.new_empty(indices.shape).contiguous(memory_format=_unpool_format(indices))

"""dense_crf_softmax's and _dense_crf_step's argument checks and fake kernels, registered with
torch.library.register_fake on import. The messages repeat csrc/dense_crf/dense_crf_checks.cpp's word for word."""

import torch

from segops.ops._checks import check_same_device, dtype_name, format_shape
from segops.ops._permutohedral_meta import check_lattice_filter

MAX_CRF_KERNELS = 8  # kMaxCrfKernels in csrc/dense_crf/dense_crf.h


def check_crf_softmax(unary, messages, weights) -> None:
    """unary Tensor[B, N, L] (float32 or float64), at most 8 messages of its shape and dtype, weights Tensor[K]."""
    op = "dense_crf_softmax"
    if unary.dim() != 3 or unary.shape[2] < 1:
        raise RuntimeError(f"{op}: unary must be [B, N, L] with L >= 1, got shape {format_shape(unary)}")
    if unary.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: unary must be float32 or float64, got {dtype_name(unary.dtype)}")
    if len(messages) > MAX_CRF_KERNELS:
        raise RuntimeError(f"{op}: at most {MAX_CRF_KERNELS} messages, got {len(messages)}")
    for message in messages:
        if message.shape != unary.shape or message.dtype != unary.dtype:
            raise RuntimeError(
                f"{op}: messages must have unary's shape {format_shape(unary)} and dtype {dtype_name(unary.dtype)}, "
                f"got {format_shape(message)} {dtype_name(message.dtype)}"
            )
        check_same_device(op, "messages", message, unary, "unary")
    if weights.dim() != 1 or weights.shape[0] != len(messages) or weights.dtype != unary.dtype:
        raise RuntimeError(
            f"{op}: weights must be [K] = [{len(messages)}] (one per message) of unary's dtype "
            f"{dtype_name(unary.dtype)}, got {format_shape(weights)} {dtype_name(weights.dtype)}"
        )
    check_same_device(op, "weights", weights, unary, "unary")


@torch.library.register_fake("segops::dense_crf_softmax")
def _dense_crf_softmax_fake(unary, messages, weights):
    check_crf_softmax(unary, messages, weights)
    return unary.new_empty(unary.shape)


def check_crf_step(
    unary, q, kernel_weights, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices
) -> None:
    """unary Tensor[B, N, L] (float32 or float64), q of its shape and dtype, 1 to 8 lattices as one list per lattice
    tensor (each checked as permutohedral_filter checks it with q), kernel_weights Tensor[K]."""
    op = "_dense_crf_step"
    kernels = len(vertex_ids)
    if not 1 <= kernels <= MAX_CRF_KERNELS:
        raise RuntimeError(f"{op}: 1 to {MAX_CRF_KERNELS} lattices, got {kernels}")
    others = (weights, neighbours, splat_offsets, splat_entries, num_vertices)
    if any(len(tensors) != kernels for tensors in others):
        raise RuntimeError(
            f"{op}: one tensor per lattice in every lattice list, got {kernels} vertex_ids, {len(weights)} weights, "
            f"{len(neighbours)} neighbours, {len(splat_offsets)} splat_offsets, {len(splat_entries)} splat_entries "
            f"and {len(num_vertices)} num_vertices"
        )
    if unary.dim() != 3 or unary.shape[2] < 1:
        raise RuntimeError(f"{op}: unary must be [B, N, L] with L >= 1, got shape {format_shape(unary)}")
    if unary.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: unary must be float32 or float64, got {dtype_name(unary.dtype)}")
    if q.shape != unary.shape or q.dtype != unary.dtype:
        raise RuntimeError(
            f"{op}: q must have unary's shape {format_shape(unary)} and dtype {dtype_name(unary.dtype)}, got "
            f"{format_shape(q)} {dtype_name(q.dtype)}"
        )
    check_same_device(op, "q", q, unary, "unary")
    if kernel_weights.dim() != 1 or kernel_weights.shape[0] != kernels or kernel_weights.dtype != unary.dtype:
        raise RuntimeError(
            f"{op}: kernel_weights must be [K] = [{kernels}] (one per lattice) of unary's dtype "
            f"{dtype_name(unary.dtype)}, got {format_shape(kernel_weights)} {dtype_name(kernel_weights.dtype)}"
        )
    check_same_device(op, "kernel_weights", kernel_weights, unary, "unary")
    for lattice in zip(vertex_ids, *others):
        check_lattice_filter(q, *lattice)


@torch.library.register_fake("segops::_dense_crf_step")
def _dense_crf_step_fake(
    unary,
    q,
    kernel_weights,
    vertex_ids,
    weights,
    neighbours,
    splat_offsets,
    splat_entries,
    num_vertices,
    labels_first=False,
):
    check_crf_step(
        unary, q, kernel_weights, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices
    )
    batch, points, labels = unary.shape
    return unary.new_empty((batch, labels, points) if labels_first else (batch, points, labels))

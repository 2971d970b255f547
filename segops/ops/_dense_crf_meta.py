"""dense_crf_softmax's argument checks and fake kernel, registered with torch.library.register_fake on import. The
messages repeat csrc/dense_crf/dense_crf_checks.cpp's word for word."""

import torch

from segops.ops._checks import check_same_device, dtype_name, format_shape

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

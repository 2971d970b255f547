"""The RoI ops' argument checks and fake kernels (roi_align, roi_pool, multi_scale_roi_align, ps_roi_align, ps_roi_pool
and their backward ops),
registered with torch.library.register_fake on import.

The messages repeat csrc/roi_common/roi_checks.cpp word for word, so one ``pytest.raises(match=...)`` covers eager, fake
and compiled calls; data-dependent checks (batch indices, finite coordinates) stay in C++."""

from typing import Sequence

import torch
from torch import Tensor

from segops.ops._checks import (
    check_dtype_or_accumulation,
    check_plane_fits_int32,
    check_same_device,
    check_shape,
    check_supported_float,
    dtype_name,
    format_shape,
)

MAX_SAMPLING_RATIO = 256  # kMaxSamplingRatio in csrc/roi_common/roi_checks.h
MAX_FEATURE_LEVELS = 8  # kMaxFeatureLevels in csrc/roi_common/roi_checks.h


# ------------------------------------------------------------------------------------------------------------ checks


def _check_rois_tensor(op: str, rois: Tensor, like: Tensor, like_name: str) -> None:
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise RuntimeError(f"{op}: rois must have shape [K, 5], got {format_shape(rois)}")
    check_dtype_or_accumulation(op, "rois", rois, like, like_name)
    check_same_device(op, "rois", rois, like, like_name)


def _check_pooling_args(op: str, spatial_scale: float, pooled_h: int, pooled_w: int) -> None:
    if pooled_h < 1 or pooled_w < 1:
        raise RuntimeError(f"{op}: output_size must be >= 1 in both dimensions, got ({pooled_h}, {pooled_w})")
    if not (spatial_scale >= 0 and spatial_scale != float("inf")):
        raise RuntimeError(f"{op}: spatial_scale must be a finite number >= 0, got {spatial_scale:g}")


def check_sampling_ratio(op: str, sampling_ratio: int) -> None:
    if sampling_ratio > MAX_SAMPLING_RATIO:
        raise RuntimeError(
            f"{op}: sampling_ratio must be <= 0 (adaptive) or at most {MAX_SAMPLING_RATIO}, got {sampling_ratio}"
        )


def _output_channels(op: str, channels: int, pooled_h: int, pooled_w: int, position_sensitive: bool) -> int:
    """C for roi_align and roi_pool; C / (PH * PW) for the position-sensitive ops, which need C divisible by it."""
    if not position_sensitive:
        return channels
    bins = pooled_h * pooled_w
    if channels % bins != 0:
        raise RuntimeError(
            f"{op}: input channels must be a multiple of output_size[0] * output_size[1] = {bins} (one score map per "
            f"bin of each output channel), got {channels}"
        )
    return channels // bins


def check_roi_op_args(
    op: str,
    input: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    position_sensitive: bool = False,
) -> int:
    """input Tensor[N, C, H, W] and rois Tensor[K, 5] of a single-map RoI op (roi_align, roi_pool, ps_roi_align,
    ps_roi_pool); returns the output's channels."""
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must have shape [N, C, H, W], got {format_shape(input)}")
    check_supported_float(op, "input", input)
    _check_rois_tensor(op, rois, input, "input")
    _check_pooling_args(op, spatial_scale, pooled_h, pooled_w)
    return _output_channels(op, input.shape[1], pooled_h, pooled_w, position_sensitive)


def check_roi_op_backward_args(
    op: str,
    grad: Tensor,
    rois: Tensor,
    spatial_scale: float,
    pooled_h: int,
    pooled_w: int,
    input_shape: Sequence[int],
    position_sensitive: bool = False,
) -> None:
    """grad Tensor[K, C_out, PH, PW] and rois Tensor[K, 5] of a single-map RoI op's backward; input_shape
    (N, C, H, W)."""
    check_supported_float(op, "grad", grad)
    _check_rois_tensor(op, rois, grad, "grad")
    _check_pooling_args(op, spatial_scale, pooled_h, pooled_w)
    if any(size < 0 for size in input_shape):
        raise RuntimeError(f"{op}: input shape must be non-negative, got {format_shape(input_shape)}")
    out_channels = _output_channels(op, input_shape[1], pooled_h, pooled_w, position_sensitive)
    check_shape(op, "grad", grad, [rois.shape[0], out_channels, pooled_h, pooled_w])


def _check_levels(op: str, levels: Tensor, rois: Tensor) -> None:
    if levels.dim() != 1 or levels.shape[0] != rois.shape[0]:
        raise RuntimeError(
            f"{op}: levels must have shape [K] = [{rois.shape[0]}] (one per rois row), got {format_shape(levels)}"
        )
    if levels.dtype != torch.int64:
        raise RuntimeError(f"{op}: levels must be int64, got {dtype_name(levels.dtype)}")
    check_same_device(op, "levels", levels, rois, "rois")


def _check_spatial_scales(op: str, spatial_scales, num_levels: int, pooled_h: int, pooled_w: int) -> None:
    if len(spatial_scales) != num_levels:
        raise RuntimeError(
            f"{op}: spatial_scales must have one entry per feature map ({num_levels}), got {len(spatial_scales)}"
        )
    for scale in spatial_scales:
        _check_pooling_args(op, scale, pooled_h, pooled_w)


def check_multi_level_args(
    op: str, features: Sequence[Tensor], rois: Tensor, levels: Tensor, spatial_scales, pooled_h: int, pooled_w: int
) -> None:
    """features (1 to 8 maps Tensor[N, C, H_l, W_l]), rois Tensor[K, 5] and levels Tensor[K] of
    multi_scale_roi_align."""
    if not 1 <= len(features) <= MAX_FEATURE_LEVELS:
        raise RuntimeError(f"{op}: features must hold 1 to {MAX_FEATURE_LEVELS} maps, got {len(features)}")
    first = features[0]
    for level, feature in enumerate(features):
        name = f"features[{level}]"
        if feature.dim() != 4:
            raise RuntimeError(f"{op}: {name} must have shape [N, C, H, W], got {format_shape(feature)}")
        check_supported_float(op, name, feature)
        if feature.dtype != first.dtype:
            raise RuntimeError(
                f"{op}: {name} must have the dtype of features[0] ({dtype_name(first.dtype)}), "
                f"got {dtype_name(feature.dtype)}"
            )
        check_same_device(op, name, feature, first, "features[0]")
        if feature.shape[0] != first.shape[0] or feature.shape[1] != first.shape[1]:
            raise RuntimeError(
                f"{op}: {name} must have the N and C of features[0] ({first.shape[0]}, "
                f"{first.shape[1]}), got {format_shape(feature)}"
            )
    _check_rois_tensor(op, rois, first, "features[0]")
    _check_spatial_scales(op, spatial_scales, len(features), pooled_h, pooled_w)
    _check_levels(op, levels, rois)


def check_multi_level_backward_args(
    op: str,
    grad: Tensor,
    rois: Tensor,
    levels: Tensor,
    spatial_scales,
    pooled_h: int,
    pooled_w: int,
    batch_size: int,
    channels: int,
    heights,
    widths,
) -> None:
    """grad Tensor[K, C, PH, PW], rois Tensor[K, 5] and levels Tensor[K] of multi_scale_roi_align's backward; the
    maps' shapes as (batch_size, channels, heights[l], widths[l])."""
    check_supported_float(op, "grad", grad)
    _check_rois_tensor(op, rois, grad, "grad")
    if not 1 <= len(heights) <= MAX_FEATURE_LEVELS or len(widths) != len(heights):
        raise RuntimeError(
            f"{op}: heights and widths must have 1 to {MAX_FEATURE_LEVELS} entries each, "
            f"got {len(heights)} and {len(widths)}"
        )
    _check_spatial_scales(op, spatial_scales, len(heights), pooled_h, pooled_w)
    if batch_size < 0 or channels < 0 or min(heights) < 0 or min(widths) < 0:
        raise RuntimeError(
            f"{op}: input shapes must be non-negative, got N = {batch_size}, C = {channels}, heights "
            f"{format_shape(heights)}, widths {format_shape(widths)}"
        )
    check_shape(op, "grad", grad, [rois.shape[0], channels, pooled_h, pooled_w])
    _check_levels(op, levels, rois)


# ------------------------------------------------------------------------------------------------------ fake kernels


@torch.library.register_fake("segops::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    check_sampling_ratio("roi_align", sampling_ratio)
    check_roi_op_args("roi_align", input, rois, spatial_scale, pooled_height, pooled_width)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("segops::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    op = "_roi_align_backward"
    input_shape = (batch_size, channels, height, width)
    check_sampling_ratio(op, sampling_ratio)
    check_roi_op_backward_args(op, grad, rois, spatial_scale, pooled_height, pooled_width, input_shape)
    return grad.new_empty(input_shape)


@torch.library.register_fake("segops::multi_scale_roi_align")
def _multi_scale_roi_align_fake(
    features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned
):
    op = "multi_scale_roi_align"
    check_sampling_ratio(op, sampling_ratio)
    check_multi_level_args(op, features, rois, levels, spatial_scales, pooled_height, pooled_width)
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@torch.library.register_fake("segops::_multi_scale_roi_align_backward")
def _multi_scale_roi_align_backward_fake(
    grad,
    rois,
    levels,
    spatial_scales,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    heights,
    widths,
    sampling_ratio,
    aligned,
):
    op = "_multi_scale_roi_align_backward"
    check_sampling_ratio(op, sampling_ratio)
    check_multi_level_backward_args(
        op, grad, rois, levels, spatial_scales, pooled_height, pooled_width, batch_size, channels, heights, widths
    )
    return [grad.new_empty((batch_size, channels, height, width)) for height, width in zip(heights, widths)]


@torch.library.register_fake("segops::roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    check_roi_op_args("roi_pool", input, rois, spatial_scale, pooled_height, pooled_width)
    check_plane_fits_int32("roi_pool", input.shape[2], input.shape[3])
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("segops::_roi_pool_backward")
def _roi_pool_backward_fake(
    grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width
):
    op = "_roi_pool_backward"
    input_shape = (batch_size, channels, height, width)
    check_roi_op_backward_args(op, grad, rois, spatial_scale, pooled_height, pooled_width, input_shape)
    check_plane_fits_int32(op, height, width)
    if argmax.dtype != torch.int32 or argmax.shape != grad.shape or argmax.device != grad.device:
        raise RuntimeError(
            f"{op}: argmax must be the int32 tensor of grad's shape {format_shape(grad)} and device {grad.device} "
            f"that roi_pool returned, got {dtype_name(argmax.dtype)} {format_shape(argmax)} on {argmax.device}"
        )
    return grad.new_empty(input_shape)


@torch.library.register_fake("segops::ps_roi_align")
def _ps_roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio):
    check_sampling_ratio("ps_roi_align", sampling_ratio)
    out_channels = check_roi_op_args("ps_roi_align", input, rois, spatial_scale, pooled_height, pooled_width, True)
    return input.new_empty((rois.shape[0], out_channels, pooled_height, pooled_width))


@torch.library.register_fake("segops::_ps_roi_align_backward")
def _ps_roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio
):
    op = "_ps_roi_align_backward"
    input_shape = (batch_size, channels, height, width)
    check_sampling_ratio(op, sampling_ratio)
    check_roi_op_backward_args(op, grad, rois, spatial_scale, pooled_height, pooled_width, input_shape, True)
    return grad.new_empty(input_shape)


@torch.library.register_fake("segops::ps_roi_pool")
def _ps_roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    out_channels = check_roi_op_args("ps_roi_pool", input, rois, spatial_scale, pooled_height, pooled_width, True)
    return input.new_empty((rois.shape[0], out_channels, pooled_height, pooled_width))


@torch.library.register_fake("segops::_ps_roi_pool_backward")
def _ps_roi_pool_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width
):
    op = "_ps_roi_pool_backward"
    input_shape = (batch_size, channels, height, width)
    check_roi_op_backward_args(op, grad, rois, spatial_scale, pooled_height, pooled_width, input_shape, True)
    return grad.new_empty(input_shape)

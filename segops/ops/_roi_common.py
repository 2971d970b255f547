"""Argument handling shared by the RoI operators: box conversion and the checks that the fake kernels run.

The messages repeat csrc/common/roi_checks.cpp word for word, so one `pytest.raises(match=...)` covers eager,
fake and compiled calls."""

import operator
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from segops.ops._checks import (
    accumulation_dtype,
    check_dtype_or_accumulation,
    check_supported_float,
    check_same_device,
    dtype_name,
    shape_str,
)

def _as_int(value) -> Optional[int]:
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # int, numpy and 0-d integer tensors; not floats
    except TypeError:
        return None


def output_size_pair(op: str, output_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
    """`output_size` as (height, width); an int means a square."""
    size = _as_int(output_size)
    if size is not None:
        return size, size
    if isinstance(output_size, (tuple, list, torch.Size)) and len(output_size) == 2:
        height, width = _as_int(output_size[0]), _as_int(output_size[1])
        if height is not None and width is not None:
            return height, width
    raise ValueError(f"{op}: output_size must be an int or a pair of ints (height, width), got {output_size!r}")


def boxes_to_rois(op: str, boxes: Union[Tensor, List[Tensor]], input: Tensor) -> Tensor:
    """Boxes as torchvision takes them, Tensor[K, 5] (batch index, x1, y1, x2, y2) or a list of one Tensor[L, 4]
    per image, returned as Tensor[K, 5] in input's accumulation dtype, so that float16/bfloat16 features keep
    float32 boxes (exact batch indices and sub-pixel coordinates). The C++ op checks shape, device and values; a
    list entry that is no Tensor[L, 4] is an error naming it."""
    if isinstance(boxes, (list, tuple)):
        for index, image_boxes in enumerate(boxes):
            if not isinstance(image_boxes, Tensor) or image_boxes.dim() != 2 or image_boxes.shape[1] != 4:
                got = shape_str(image_boxes) if isinstance(image_boxes, Tensor) else type(image_boxes).__name__
                raise ValueError(f"{op}: boxes[{index}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {got}")
        boxes = list(boxes)
    elif not isinstance(boxes, Tensor):
        raise ValueError(
            f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )
    return rois_from_boxes(boxes, input)


def rois_from_boxes(boxes: Union[Tensor, List[Tensor]], input: Tensor) -> Tensor:
    """:func:`boxes_to_rois` without its Python checks, in TorchScript (the scripted front ends call it; the C++ op
    checks the result)."""
    if isinstance(boxes, Tensor):
        rois = boxes
    else:
        if len(boxes) == 0:
            return input.new_empty((0, 5))
        rows: List[Tensor] = []
        for index, image_boxes in enumerate(boxes):
            rows.append(torch.cat([torch.full_like(image_boxes[:, :1], index), image_boxes], dim=1))
        rois = torch.cat(rows)
    if rois.is_floating_point() and input.is_floating_point():
        rois = rois.to(accumulation_dtype(input.dtype))
    return rois


def _check_rois_tensor(op: str, rois: Tensor, like: Tensor, like_name: str) -> None:
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise RuntimeError(f"{op}: rois must have shape [K, 5], got {shape_str(rois)}")
    check_dtype_or_accumulation(op, "rois", rois, like, like_name)
    check_same_device(op, "rois", rois, like, like_name)


def _check_pooling_args(op: str, spatial_scale: float, pooled_h: int, pooled_w: int) -> None:
    if pooled_h < 1 or pooled_w < 1:
        raise RuntimeError(f"{op}: output_size must be >= 1 in both dimensions, got ({pooled_h}, {pooled_w})")
    if not (spatial_scale >= 0 and spatial_scale != float("inf")):
        raise RuntimeError(f"{op}: spatial_scale must be a finite number >= 0, got {spatial_scale:g}")


MAX_SAMPLING_RATIO = 256  # kMaxSamplingRatio in csrc/common/roi_checks.h


def check_sampling_ratio(op: str, sampling_ratio: int) -> None:
    if sampling_ratio > MAX_SAMPLING_RATIO:
        raise RuntimeError(
            f"{op}: sampling_ratio must be <= 0 (adaptive) or at most {MAX_SAMPLING_RATIO}, got {sampling_ratio}"
        )


def check_roi_op_args(op: str, input: Tensor, rois: Tensor, spatial_scale: float, pooled_h: int, pooled_w: int) -> None:
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must have shape [N, C, H, W], got {shape_str(input)}")
    check_supported_float(op, "input", input)
    _check_rois_tensor(op, rois, input, "input")
    _check_pooling_args(op, spatial_scale, pooled_h, pooled_w)


def check_roi_op_backward_args(
    op: str, grad: Tensor, rois: Tensor, spatial_scale: float, pooled_h: int, pooled_w: int, input_shape: Sequence[int]
) -> None:
    check_supported_float(op, "grad", grad)
    _check_rois_tensor(op, rois, grad, "grad")
    _check_pooling_args(op, spatial_scale, pooled_h, pooled_w)
    if any(size < 0 for size in input_shape):
        raise RuntimeError(f"{op}: input shape must be non-negative, got [{', '.join(map(str, input_shape))}]")
    expected = [rois.shape[0], input_shape[1], pooled_h, pooled_w]
    if list(grad.shape) != expected:
        raise RuntimeError(f"{op}: grad must have shape [{', '.join(map(str, expected))}], got {shape_str(grad)}")


MAX_FEATURE_LEVELS = 8  # kMaxFeatureLevels in csrc/common/roi_checks.h


def _check_levels(op: str, levels: Tensor, rois: Tensor) -> None:
    if levels.dim() != 1 or levels.shape[0] != rois.shape[0]:
        raise RuntimeError(f"{op}: levels must have shape [K] = [{rois.shape[0]}] (one per rois row), "
                           f"got {shape_str(levels)}")
    if levels.dtype != torch.int64:
        raise RuntimeError(f"{op}: levels must be int64, got {dtype_name(levels.dtype)}")
    check_same_device(op, "levels", levels, rois, "rois")


def _check_spatial_scales(op: str, spatial_scales, num_levels: int, pooled_h: int, pooled_w: int) -> None:
    if len(spatial_scales) != num_levels:
        raise RuntimeError(f"{op}: spatial_scales must have one entry per feature map ({num_levels}), "
                           f"got {len(spatial_scales)}")
    for scale in spatial_scales:
        _check_pooling_args(op, scale, pooled_h, pooled_w)


def check_multi_level_args(op: str, features: Sequence[Tensor], rois: Tensor, levels: Tensor, spatial_scales,
                           pooled_h: int, pooled_w: int) -> None:
    if not 1 <= len(features) <= MAX_FEATURE_LEVELS:
        raise RuntimeError(f"{op}: features must hold 1 to {MAX_FEATURE_LEVELS} maps, got {len(features)}")
    first = features[0]
    for level, feature in enumerate(features):
        name = f"features[{level}]"
        if feature.dim() != 4:
            raise RuntimeError(f"{op}: {name} must have shape [N, C, H, W], got {shape_str(feature)}")
        check_supported_float(op, name, feature)
        if feature.dtype != first.dtype:
            raise RuntimeError(f"{op}: {name} must have the dtype of features[0] ({dtype_name(first.dtype)}), "
                               f"got {dtype_name(feature.dtype)}")
        check_same_device(op, name, feature, first, "features[0]")
        if feature.shape[0] != first.shape[0] or feature.shape[1] != first.shape[1]:
            raise RuntimeError(f"{op}: {name} must have the N and C of features[0] ({first.shape[0]}, "
                               f"{first.shape[1]}), got {shape_str(feature)}")
    _check_rois_tensor(op, rois, first, "features[0]")
    _check_spatial_scales(op, spatial_scales, len(features), pooled_h, pooled_w)
    _check_levels(op, levels, rois)


def check_multi_level_backward_args(op: str, grad: Tensor, rois: Tensor, levels: Tensor, spatial_scales,
                                    pooled_h: int, pooled_w: int, batch_size: int, channels: int, heights,
                                    widths) -> None:
    check_supported_float(op, "grad", grad)
    _check_rois_tensor(op, rois, grad, "grad")
    if not 1 <= len(heights) <= MAX_FEATURE_LEVELS or len(widths) != len(heights):
        raise RuntimeError(f"{op}: heights and widths must have 1 to {MAX_FEATURE_LEVELS} entries each, "
                           f"got {len(heights)} and {len(widths)}")
    _check_spatial_scales(op, spatial_scales, len(heights), pooled_h, pooled_w)
    if batch_size < 0 or channels < 0 or min(heights) < 0 or min(widths) < 0:
        raise RuntimeError(f"{op}: input shapes must be non-negative, got N = {batch_size}, C = {channels}, heights "
                           f"[{', '.join(map(str, heights))}], widths [{', '.join(map(str, widths))}]")
    expected = [rois.shape[0], channels, pooled_h, pooled_w]
    if list(grad.shape) != expected:
        raise RuntimeError(f"{op}: grad must have shape [{', '.join(map(str, expected))}], got {shape_str(grad)}")
    _check_levels(op, levels, rois)

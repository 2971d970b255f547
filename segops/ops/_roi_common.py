"""What the RoI operators' front ends share: output sizes and box conversion (torchvision's box formats to the ops'
rois). The ops' argument checks and fake kernels are in segops/ops/_roi_meta.py."""

import operator
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from segops.ops._checks import accumulation_dtype, format_shape


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
                got = format_shape(image_boxes) if isinstance(image_boxes, Tensor) else type(image_boxes).__name__
                raise ValueError(f"{op}: boxes[{index}] must be a Tensor[L, 4] (x1, y1, x2, y2), got {got}")
        boxes = list(boxes)
    elif not isinstance(boxes, Tensor):
        raise ValueError(f"{op}: boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}")
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
        dtype = accumulation_dtype(input.dtype)
        if rois.dtype != dtype:  # .to() of the same dtype costs a dispatch, a fifth of a small call's fixed cost
            rois = rois.to(dtype)
    return rois

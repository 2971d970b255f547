"""RoIAlign (Mask R-CNN): functional, nn.Module and autograd.Function front ends of torch.ops.segops.roi_align."""

from typing import List, Sequence, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from segops._fx import traced_call
from segops.ops._autograd import OpFunction, below_autograd, call, register_function, save_for_backward_and_jvp
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._roi_common import boxes_to_rois, output_size_pair, rois_from_boxes

__all__ = ["RoIAlign", "RoIAlignFunction", "roi_align"]


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """Region of Interest (RoI) Align, as in Mask R-CNN; a drop-in for ``torchvision.ops.roi_align``.

    Args:
        input (Tensor[N, C, H, W]): feature map; float32, float64, float16 or bfloat16; any memory format.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes in input-image coordinates, either with their batch
            index first, (idx, x1, y1, x2, y2), or as one (x1, y1, x2, y2) tensor per image. Batch indices must
            be integers in [0, N) and coordinates finite.
        output_size (int or Tuple[int, int]): (PH, PW), the bins per box.
        spatial_scale (float): feature-map pixels per input-image pixel (e.g. 0.25 for stride 4).
        sampling_ratio (int): samples per bin along each axis; <= 0 picks ceil(box size / output size).
        aligned (bool): shift boxes by -0.5 pixel so pixel centres align (Detectron2); False keeps legacy boxes.

    Returns:
        Tensor[K, C, PH, PW]: the average of each bin's bilinear samples.
    """
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        rois = rois_from_boxes(boxes, input)
        return torch.ops.segops.roi_align(
            input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio, aligned
        )
    return _roi_align(input, boxes, output_size, spatial_scale, sampling_ratio, aligned)


@torch.jit.unused
def _roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: List[int],
    spatial_scale: float,
    sampling_ratio: int,
    aligned: bool,
) -> Tensor:
    node = traced_call(roi_align, input, boxes, output_size, spatial_scale, sampling_ratio, aligned)  # FX: one node
    if node is not None:
        return node
    _check_tensor_arguments("roi_align", input=input, boxes=boxes)
    pooled_h, pooled_w = output_size_pair("roi_align", output_size)
    rois = boxes_to_rois("roi_align", boxes, input)
    return call(
        RoIAlignFunction,
        torch.ops.segops.roi_align,
        input,
        rois,
        float(spatial_scale),
        pooled_h,
        pooled_w,
        int(sampling_ratio),
        bool(aligned),
    )


class RoIAlignFunction(OpFunction):
    """``torch.ops.segops.roi_align`` as an autograd.Function: the op's Autograd kernel (backward, jvp, torch.func).

    ``RoIAlignFunction.apply(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)``
    takes rois as Tensor[K, 5] and returns Tensor[K, C, PH, PW]; prefer :func:`roi_align`. Linear in input, so the
    tangent is roi_align of the input's tangent; boxes are not differentiated (as in torchvision).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
        return below_autograd(
            torch.ops.segops.roi_align.default,
            input,
            rois,
            spatial_scale,
            pooled_height,
            pooled_width,
            sampling_ratio,
            aligned,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, rois, *params = inputs
        save_for_backward_and_jvp(ctx, rois)
        ctx.input_shape = tuple(input.shape)
        ctx.params = tuple(params)

    @staticmethod
    def backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = ctx.params
        grad_input = call(
            _RoIAlignBackwardFunction,
            torch.ops.segops._roi_align_backward,
            grad,
            rois,
            spatial_scale,
            pooled_h,
            pooled_w,
            *ctx.input_shape,
            sampling_ratio,
            aligned,
        )
        return grad_input, None, None, None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        (rois,) = ctx.saved_tensors
        if input_tangent is None:
            return None
        return call(RoIAlignFunction, torch.ops.segops.roi_align, input_tangent, rois, *ctx.params)


class _RoIAlignBackwardFunction(OpFunction):
    """The backward op's derivatives: it is linear in grad, with the forward as its adjoint."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, rois, spatial_scale, pooled_h, pooled_w, n, c, h, w, sampling_ratio, aligned):
        return below_autograd(
            torch.ops.segops._roi_align_backward.default,
            grad,
            rois,
            spatial_scale,
            pooled_h,
            pooled_w,
            n,
            c,
            h,
            w,
            sampling_ratio,
            aligned,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _grad, rois, *params = inputs
        save_for_backward_and_jvp(ctx, rois)
        ctx.params = tuple(params)

    @staticmethod
    def backward(ctx, grad_grad_input):
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_h, pooled_w, _n, _c, _h, _w, sampling_ratio, aligned = ctx.params
        grad_grad = call(
            RoIAlignFunction,
            torch.ops.segops.roi_align,
            grad_grad_input,
            rois,
            spatial_scale,
            pooled_h,
            pooled_w,
            sampling_ratio,
            aligned,
        )
        return (grad_grad,) + (None,) * 10

    @staticmethod
    def jvp(ctx, grad_tangent, *_):
        (rois,) = ctx.saved_tensors
        return (
            None
            if grad_tangent is None
            else call(_RoIAlignBackwardFunction, torch.ops.segops._roi_align_backward, grad_tangent, rois, *ctx.params)
        )


register_function("roi_align", RoIAlignFunction)
register_function("_roi_align_backward", _RoIAlignBackwardFunction)


class RoIAlign(nn.Module):
    """:func:`roi_align` as a module; the signature of ``torchvision.ops.RoIAlign``.

    Shapes: input Tensor[N, C, H, W] and boxes Tensor[K, 5] or List[Tensor[L, 4]] give Tensor[K, C, PH, PW].
    """

    def __init__(
        self, output_size: Union[int, Sequence[int]], spatial_scale: float, sampling_ratio: int, aligned: bool = False
    ):
        super().__init__()
        self.output_size = output_size_pair("RoIAlign", output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio, self.aligned)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned})"
        )

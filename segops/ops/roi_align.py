"""RoIAlign (Mask R-CNN): functional, nn.Module and autograd.Function front ends of torch.ops.segops.roi_align."""

from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from segops.ops._roi_common import boxes_to_rois, output_size_pair


def roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Sequence[int]],
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
    pooled_h, pooled_w = output_size_pair("roi_align", output_size)
    rois = boxes_to_rois("roi_align", boxes, input)
    return torch.ops.segops.roi_align(
        input, rois, float(spatial_scale), pooled_h, pooled_w, int(sampling_ratio), bool(aligned)
    )


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)


def _backward(ctx, grad):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned = ctx.params
    grad_input = torch.ops.segops._roi_align_backward(
        grad, rois, spatial_scale, pooled_h, pooled_w, *ctx.input_shape, sampling_ratio, aligned
    )
    return grad_input, None, None, None, None, None, None


def _backward_setup_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_h, pooled_w, _n, _c, _h, _w, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned)


def _backward_backward(ctx, grad_grad_input):
    # The backward is linear in grad and its adjoint is the forward: double backward is exact and cheap.
    (rois,) = ctx.saved_tensors
    grad_grad = torch.ops.segops.roi_align(grad_grad_input, rois, *ctx.params)
    return (grad_grad,) + (None,) * 10


torch.library.register_autograd("segops::roi_align", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "segops::_roi_align_backward", _backward_backward, setup_context=_backward_setup_context
)


class RoIAlignFunction(torch.autograd.Function):
    """``torch.ops.segops.roi_align`` as an autograd.Function, with the op's own registered backward.

    ``RoIAlignFunction.apply(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)``
    takes rois as Tensor[K, 5] and returns Tensor[K, C, PH, PW]; prefer :func:`roi_align`.
    """

    @staticmethod
    def forward(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
        return torch.ops.segops.roi_align(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


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

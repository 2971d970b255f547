"""RoIPool (Fast R-CNN): functional, nn.Module and autograd.Function front ends of torch.ops.segops.roi_pool."""

from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from segops.ops._roi_common import boxes_to_rois, output_size_pair


def roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Sequence[int]],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Region of Interest (RoI) max pooling, as in Fast R-CNN; a drop-in for ``torchvision.ops.roi_pool``.

    Args:
        input (Tensor[N, C, H, W]): feature map; float32, float64, float16 or bfloat16; any memory format.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes in input-image coordinates, either with their batch
            index first, (idx, x1, y1, x2, y2), or as one (x1, y1, x2, y2) tensor per image. Batch indices must
            be integers in [0, N) and coordinates finite.
        output_size (int or Tuple[int, int]): (PH, PW), the bins per box.
        spatial_scale (float): feature-map pixels per input-image pixel (e.g. 0.25 for stride 4).

    Returns:
        Tensor[K, C, PH, PW]: the maximum of each bin's window of rounded pixel coordinates (0 for an empty bin).
    """
    pooled_h, pooled_w = output_size_pair("roi_pool", output_size)
    rois = boxes_to_rois("roi_pool", boxes, input)
    output, _argmax = torch.ops.segops.roi_pool(input, rois, float(spatial_scale), pooled_h, pooled_w)
    return output


def _setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_h, pooled_w = inputs
    _output, argmax = output
    ctx.mark_non_differentiable(argmax)
    ctx.save_for_backward(rois, argmax)
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_h, pooled_w)


def _backward(ctx, grad, _grad_argmax):
    rois, argmax = ctx.saved_tensors
    grad_input = torch.ops.segops._roi_pool_backward(grad, rois, argmax, *ctx.params, *ctx.input_shape)
    return grad_input, None, None, None, None


def _backward_setup_context(ctx, inputs, output):
    _grad, rois, argmax = inputs[:3]
    ctx.save_for_backward(rois, argmax)


def _backward_backward(ctx, grad_grad_input):
    # The backward scatters grad to each bin's argmax; its adjoint gathers from there (0 for empty bins).
    rois, argmax = ctx.saved_tensors
    planes = grad_grad_input.flatten(2)[rois[:, 0].long()]  # [K, C, H * W]
    index = argmax.flatten(2).long()  # [K, C, PH * PW]
    # An empty map has no maximum anywhere (argmax is -1 throughout); pad the plane so gather has a column to read.
    planes = torch.nn.functional.pad(planes, (0, 1))
    grad_grad = planes.gather(2, index.clamp(min=0)).masked_fill(index < 0, 0).view_as(argmax)
    return (grad_grad,) + (None,) * 9


torch.library.register_autograd("segops::roi_pool", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "segops::_roi_pool_backward", _backward_backward, setup_context=_backward_setup_context
)


class RoIPoolFunction(torch.autograd.Function):
    """``torch.ops.segops.roi_pool`` as an autograd.Function, with the op's own registered backward.

    ``RoIPoolFunction.apply(input, rois, spatial_scale, pooled_height, pooled_width)`` takes rois as
    Tensor[K, 5] and returns (Tensor[K, C, PH, PW] output, Tensor[K, C, PH, PW] int32 argmax); prefer
    :func:`roi_pool`.
    """

    @staticmethod
    def forward(input, rois, spatial_scale, pooled_height, pooled_width):
        return torch.ops.segops.roi_pool(input, rois, spatial_scale, pooled_height, pooled_width)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class RoIPool(nn.Module):
    """:func:`roi_pool` as a module; the signature of ``torchvision.ops.RoIPool``.

    Shapes: input Tensor[N, C, H, W] and boxes Tensor[K, 5] or List[Tensor[L, 4]] give Tensor[K, C, PH, PW].
    """

    def __init__(self, output_size: Union[int, Sequence[int]], spatial_scale: float):
        super().__init__()
        self.output_size = output_size_pair("RoIPool", output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"

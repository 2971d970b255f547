"""RoIPool (Fast R-CNN): functional, nn.Module and autograd.Function front ends of torch.ops.segops.roi_pool."""

from typing import List, Sequence, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from segops._fx import traced_call
from segops.ops._autograd import OpFunction, below_autograd, call, register_function, save_for_backward_and_jvp
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._checks import take
from segops.ops._roi_common import boxes_to_rois, output_size_pair, rois_from_boxes

__all__ = ["RoIPool", "RoIPoolFunction", "roi_pool"]


def roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
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
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        rois = rois_from_boxes(boxes, input)
        return torch.ops.segops.roi_pool(input, rois, spatial_scale, output_size[0], output_size[1])[0]
    return _roi_pool(input, boxes, output_size, spatial_scale)


@torch.jit.unused
def _roi_pool(
    input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: List[int], spatial_scale: float
) -> Tensor:
    node = traced_call(roi_pool, input, boxes, output_size, spatial_scale)  # FX: one node
    if node is not None:
        return node
    _check_tensor_arguments("roi_pool", input=input, boxes=boxes)
    pooled_h, pooled_w = output_size_pair("roi_pool", output_size)
    rois = boxes_to_rois("roi_pool", boxes, input)
    output, _argmax = call(
        RoIPoolFunction, torch.ops.segops.roi_pool, input, rois, float(spatial_scale), pooled_h, pooled_w
    )
    return output


def _gather_at_argmax(input: Tensor, rois: Tensor, argmax: Tensor) -> Tensor:
    """input[rois[k, 0], c] at each bin's argmax (a position in the H * W plane), 0 where argmax is -1 (an empty bin):
    RoIPool of a tangent at the forward's maxima, and the adjoint of the backward's scatter. Tensor[K, C, PH, PW]."""
    if input.numel() == 0:  # no plane to read: every bin is empty
        return input.new_zeros(argmax.shape)
    channels, plane = input.shape[1], input.shape[2] * input.shape[3]
    rows = rois[:, 0].long().view(-1, 1, 1, 1) * channels + torch.arange(channels, device=argmax.device).view(-1, 1, 1)
    index = rows * plane + argmax.long().clamp(min=0)
    return take(input, index).masked_fill(argmax < 0, 0)


class RoIPoolFunction(OpFunction):
    """``torch.ops.segops.roi_pool`` as an autograd.Function: the op's Autograd kernel (backward, jvp, torch.func).

    ``RoIPoolFunction.apply(input, rois, spatial_scale, pooled_height, pooled_width)`` takes rois as
    Tensor[K, 5] and returns (Tensor[K, C, PH, PW] output, Tensor[K, C, PH, PW] int32 argmax); prefer
    :func:`roi_pool`. The tangent is the input's tangent at each bin's argmax (max pooling's derivative where the
    maximum is unique, as PyTorch's max_pool2d defines it).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(input, rois, spatial_scale, pooled_height, pooled_width):
        return below_autograd(
            torch.ops.segops.roi_pool.default, input, rois, spatial_scale, pooled_height, pooled_width
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, rois, *params = inputs
        _output, argmax = output
        ctx.mark_non_differentiable(argmax)
        save_for_backward_and_jvp(ctx, rois, argmax)
        ctx.input_shape = tuple(input.shape)
        ctx.params = tuple(params)

    @staticmethod
    def backward(ctx, grad, _grad_argmax):
        rois, argmax = ctx.saved_tensors
        grad_input = call(
            _RoIPoolBackwardFunction,
            torch.ops.segops._roi_pool_backward,
            grad,
            rois,
            argmax,
            *ctx.params,
            *ctx.input_shape,
        )
        return grad_input, None, None, None, None

    @staticmethod
    def jvp(ctx, input_tangent, *_):
        rois, argmax = ctx.saved_tensors
        tangent = None if input_tangent is None else _gather_at_argmax(input_tangent, rois, argmax)
        return tangent, None


class _RoIPoolBackwardFunction(OpFunction):
    """The backward op's derivatives: it scatters grad to each bin's argmax; its adjoint gathers from there."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, rois, argmax, spatial_scale, pooled_h, pooled_w, n, c, h, w):
        return below_autograd(
            torch.ops.segops._roi_pool_backward.default,
            grad,
            rois,
            argmax,
            spatial_scale,
            pooled_h,
            pooled_w,
            n,
            c,
            h,
            w,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _grad, rois, argmax, *params = inputs
        save_for_backward_and_jvp(ctx, rois, argmax)
        ctx.params = tuple(params)

    @staticmethod
    def backward(ctx, grad_grad_input):
        rois, argmax = ctx.saved_tensors
        return (_gather_at_argmax(grad_grad_input, rois, argmax),) + (None,) * 9

    @staticmethod
    def jvp(ctx, grad_tangent, *_):
        rois, argmax = ctx.saved_tensors
        if grad_tangent is None:
            return None
        return call(
            _RoIPoolBackwardFunction, torch.ops.segops._roi_pool_backward, grad_tangent, rois, argmax, *ctx.params
        )


register_function("roi_pool", RoIPoolFunction)
register_function("_roi_pool_backward", _RoIPoolBackwardFunction)


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

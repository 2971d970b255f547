"""Position-sensitive RoIAlign and RoIPool (R-FCN, FCIS): functional, nn.Module and autograd.Function front ends of
torch.ops.segops.ps_roi_align and torch.ops.segops.ps_roi_pool.

The input holds, for each output channel, one score map per bin: output bin (ph, pw) of output channel c pools input
channel (c * PH + ph) * PW + pw, so C = C_out * PH * PW (R-FCN's k^2 (C + 1) position-sensitive score maps)."""

from typing import List, Sequence, Tuple, Union

import torch
from torch import Tensor, nn
from torch.jit.annotations import BroadcastingList2

from segops._fx import traced_call
from segops.ops._autograd import OpFunction, below_autograd, call, register_function, save_for_backward_and_jvp
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._roi_common import boxes_to_rois, output_size_pair, rois_from_boxes

__all__ = ["PSRoIAlign", "PSRoIAlignFunction", "PSRoIPool", "PSRoIPoolFunction", "ps_roi_align", "ps_roi_pool"]


def ps_roi_align(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
) -> Tensor:
    """Position-sensitive RoI Align (R-FCN's pooling with RoIAlign's sampling); a drop-in for
    ``torchvision.ops.ps_roi_align``.

    Args:
        input (Tensor[N, C, H, W]): position-sensitive score maps, C = C_out * PH * PW; float32, float64, float16 or
            bfloat16; any memory format.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes in input-image coordinates, either with their batch
            index first, (idx, x1, y1, x2, y2), or as one (x1, y1, x2, y2) tensor per image. Batch indices must
            be integers in [0, N) and coordinates finite.
        output_size (int or Tuple[int, int]): (PH, PW), the bins per box.
        spatial_scale (float): feature-map pixels per input-image pixel (e.g. 1/16 for stride 16).
        sampling_ratio (int): samples per bin along each axis; <= 0 picks ceil(box size / output size).

    Returns:
        Tensor[K, C_out, PH, PW]: bin (ph, pw) of channel c is the mean of the bilinear samples of input channel
        (c * PH + ph) * PW + pw over the bin, boxes shifted by -0.5 pixel (torchvision's aligned geometry). A bin
        without samples (a box of zero width or height with sampling_ratio <= 0) is 0, where torchvision divides
        0 by 0 and returns NaN.
    """
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        rois = rois_from_boxes(boxes, input)
        return torch.ops.segops.ps_roi_align(input, rois, spatial_scale, output_size[0], output_size[1], sampling_ratio)
    return _ps_roi_align(input, boxes, output_size, spatial_scale, sampling_ratio)


@torch.jit.unused
def _ps_roi_align(
    input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: List[int], spatial_scale: float, sampling_ratio: int
) -> Tensor:
    node = traced_call(ps_roi_align, input, boxes, output_size, spatial_scale, sampling_ratio)  # FX: one node
    if node is not None:
        return node
    _check_tensor_arguments("ps_roi_align", input=input, boxes=boxes)
    pooled_h, pooled_w = output_size_pair("ps_roi_align", output_size)
    rois = boxes_to_rois("ps_roi_align", boxes, input)
    return call(
        PSRoIAlignFunction,
        torch.ops.segops.ps_roi_align,
        input,
        rois,
        float(spatial_scale),
        pooled_h,
        pooled_w,
        int(sampling_ratio),
    )


def ps_roi_pool(
    input: Tensor,
    boxes: Union[Tensor, List[Tensor]],
    output_size: BroadcastingList2[int],
    spatial_scale: float = 1.0,
) -> Tensor:
    """Position-sensitive RoI pooling, as in R-FCN; a drop-in for ``torchvision.ops.ps_roi_pool``.

    Args:
        input (Tensor[N, C, H, W]): position-sensitive score maps, C = C_out * PH * PW; float32, float64, float16 or
            bfloat16; any memory format.
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): boxes in input-image coordinates, either with their batch
            index first, (idx, x1, y1, x2, y2), or as one (x1, y1, x2, y2) tensor per image. Batch indices must
            be integers in [0, N) and coordinates finite.
        output_size (int or Tuple[int, int]): (PH, PW), the bins per box.
        spatial_scale (float): feature-map pixels per input-image pixel (e.g. 1/16 for stride 16).

    Returns:
        Tensor[K, C_out, PH, PW]: bin (ph, pw) of channel c is the average of input channel (c * PH + ph) * PW + pw
        over the bin's window of rounded pixel coordinates (0 for an empty bin).
    """
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        rois = rois_from_boxes(boxes, input)
        return torch.ops.segops.ps_roi_pool(input, rois, spatial_scale, output_size[0], output_size[1])
    return _ps_roi_pool(input, boxes, output_size, spatial_scale)


@torch.jit.unused
def _ps_roi_pool(
    input: Tensor, boxes: Union[Tensor, List[Tensor]], output_size: List[int], spatial_scale: float
) -> Tensor:
    node = traced_call(ps_roi_pool, input, boxes, output_size, spatial_scale)  # FX: one node
    if node is not None:
        return node
    _check_tensor_arguments("ps_roi_pool", input=input, boxes=boxes)
    pooled_h, pooled_w = output_size_pair("ps_roi_pool", output_size)
    rois = boxes_to_rois("ps_roi_pool", boxes, input)
    return call(PSRoIPoolFunction, torch.ops.segops.ps_roi_pool, input, rois, float(spatial_scale), pooled_h, pooled_w)


def _linear_roi_functions(op_name: str, doc: str) -> Tuple[type, type]:
    """The autograd.Functions of a position-sensitive op and of its backward op. Both are linear in their tensor
    argument (boxes are not differentiated, as in torchvision), each the other's adjoint: the op's tangent is the op of
    the input's tangent, and the backward op's backward is the op. Their parameters: the op's are (spatial_scale, PH,
    PW[, sampling_ratio]); the backward op's put the input's shape (N, C, H, W) after PW."""
    op = getattr(torch.ops.segops, op_name)
    backward_op = getattr(torch.ops.segops, f"_{op_name}_backward")

    def backward_params(op_params: tuple, input_shape: tuple) -> tuple:
        return op_params[:3] + input_shape + op_params[3:]

    def op_params(backward_params: tuple) -> tuple:
        return backward_params[:3] + backward_params[7:]

    class Function(OpFunction):
        generate_vmap_rule = True

        @staticmethod
        def forward(input, rois, *params):
            return below_autograd(op.default, input, rois, *params)

        @staticmethod
        def setup_context(ctx, inputs, output):
            input, rois, *params = inputs
            save_for_backward_and_jvp(ctx, rois)
            ctx.input_shape = tuple(input.shape)
            ctx.params = tuple(params)

        @staticmethod
        def backward(ctx, grad):
            (rois,) = ctx.saved_tensors
            params = backward_params(ctx.params, ctx.input_shape)
            grad_input = call(BackwardFunction, backward_op, grad, rois, *params)
            return (grad_input, None) + (None,) * len(ctx.params)

        @staticmethod
        def jvp(ctx, input_tangent, *_):
            (rois,) = ctx.saved_tensors
            return None if input_tangent is None else call(Function, op, input_tangent, rois, *ctx.params)

    class BackwardFunction(OpFunction):
        generate_vmap_rule = True

        @staticmethod
        def forward(grad, rois, *params):
            return below_autograd(backward_op.default, grad, rois, *params)

        @staticmethod
        def setup_context(ctx, inputs, output):
            _grad, rois, *params = inputs
            save_for_backward_and_jvp(ctx, rois)
            ctx.params = tuple(params)

        @staticmethod
        def backward(ctx, grad_grad_input):
            (rois,) = ctx.saved_tensors
            grad_grad = call(Function, op, grad_grad_input, rois, *op_params(ctx.params))
            return (grad_grad, None) + (None,) * len(ctx.params)

        @staticmethod
        def jvp(ctx, grad_tangent, *_):
            (rois,) = ctx.saved_tensors
            return (
                None if grad_tangent is None else call(BackwardFunction, backward_op, grad_tangent, rois, *ctx.params)
            )

    Function.__doc__ = doc
    BackwardFunction.__doc__ = f"The derivatives of segops::_{op_name}_backward: linear in grad, {op_name} its adjoint."
    register_function(op_name, Function)
    register_function(f"_{op_name}_backward", BackwardFunction)
    return Function, BackwardFunction


PSRoIAlignFunction, _PSRoIAlignBackwardFunction = _linear_roi_functions(
    "ps_roi_align",
    """``torch.ops.segops.ps_roi_align`` as an autograd.Function: the op's Autograd kernel (backward, jvp, torch.func).

    ``PSRoIAlignFunction.apply(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio)`` takes rois
    as Tensor[K, 5] and returns Tensor[K, C / (PH * PW), PH, PW]; prefer :func:`ps_roi_align`. Linear in input, so the
    tangent is ps_roi_align of the input's tangent; boxes are not differentiated (as in torchvision).""",
)
PSRoIAlignFunction.__name__ = PSRoIAlignFunction.__qualname__ = "PSRoIAlignFunction"
PSRoIPoolFunction, _PSRoIPoolBackwardFunction = _linear_roi_functions(
    "ps_roi_pool",
    """``torch.ops.segops.ps_roi_pool`` as an autograd.Function: the op's Autograd kernel (backward, jvp, torch.func).

    ``PSRoIPoolFunction.apply(input, rois, spatial_scale, pooled_height, pooled_width)`` takes rois as Tensor[K, 5]
    and returns Tensor[K, C / (PH * PW), PH, PW]; prefer :func:`ps_roi_pool`. Linear in input (an average), so the
    tangent is ps_roi_pool of the input's tangent; boxes are not differentiated (as in torchvision).""",
)
PSRoIPoolFunction.__name__ = PSRoIPoolFunction.__qualname__ = "PSRoIPoolFunction"
for _function, _name in ((_PSRoIAlignBackwardFunction, "ps_roi_align"), (_PSRoIPoolBackwardFunction, "ps_roi_pool")):
    _function.__name__ = _function.__qualname__ = f"_{_name}_backward_function"


class PSRoIAlign(nn.Module):
    """:func:`ps_roi_align` as a module; the signature of ``torchvision.ops.PSRoIAlign``.

    Shapes: input Tensor[N, C_out * PH * PW, H, W] and boxes Tensor[K, 5] or List[Tensor[L, 4]] give
    Tensor[K, C_out, PH, PW].
    """

    def __init__(self, output_size: Union[int, Sequence[int]], spatial_scale: float, sampling_ratio: int):
        super().__init__()
        self.output_size = output_size_pair("PSRoIAlign", output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return ps_roi_align(input, rois, self.output_size, self.spatial_scale, self.sampling_ratio)

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale}, "
            f"sampling_ratio={self.sampling_ratio})"
        )


class PSRoIPool(nn.Module):
    """:func:`ps_roi_pool` as a module; the signature of ``torchvision.ops.PSRoIPool``.

    Shapes: input Tensor[N, C_out * PH * PW, H, W] and boxes Tensor[K, 5] or List[Tensor[L, 4]] give
    Tensor[K, C_out, PH, PW].
    """

    def __init__(self, output_size: Union[int, Sequence[int]], spatial_scale: float):
        super().__init__()
        self.output_size = output_size_pair("PSRoIPool", output_size)
        self.spatial_scale = spatial_scale

    def forward(self, input: Tensor, rois: Union[Tensor, List[Tensor]]) -> Tensor:
        return ps_roi_pool(input, rois, self.output_size, self.spatial_scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scale={self.spatial_scale})"

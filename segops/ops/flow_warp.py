"""Flow-guided bilinear feature warping (Deep Feature Flow): functional, nn.Module and autograd.Function front ends
of torch.ops.segops.flow_warp, and the argument checks its fake kernels run (csrc/flow_warp/flow_warp_checks.cpp's
messages, word for word)."""

from typing import Optional

import torch
from torch import Tensor, nn

from segops.ops._checks import (
    check_dtype_or_accumulation,
    check_supported_float,
    check_same_device,
    dtype_name,
    shape_str,
)


def flow_warp(feature: Tensor, flow: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    """Warps a feature map along an optical-flow field, as Deep Feature Flow propagates key-frame features.

    ``out[n, c, y, x] = scale[n, c, y, x] * sum_q g(qx, x + dx) * g(qy, y + dy) * feature[n, c, qy, qx]`` with
    ``g(a, b) = max(0, 1 - |a - b|)`` and ``(dx, dy) = flow[n, :, y, x]``: bilinear sampling at the displaced
    position, samples off the feature map counting zero. This equals ``F.grid_sample(feature, grid,
    mode="bilinear", padding_mode="zeros", align_corners=True)`` with the grid built from the flow, times
    ``scale``, in values and gradients; zero flow without a scale is the identity, bit for bit. Where the
    derivative with respect to the flow is not defined (a sample exactly on a pixel row or column), it is
    grid_sample's: the derivative from the right. A NaN or infinite flow samples nothing: its output is 0 and its
    gradients are 0. Not differentiable twice.

    Args:
        feature (Tensor[N, C, H, W]): float32, float64, float16 or bfloat16; any layout (read in place).
        flow (Tensor[N, 2, Ho, Wo]): displacement in feature-map pixels, channel 0 along x (width), channel 1
            along y (height); feature's dtype, or float32 for float16/bfloat16 features.
        scale (Tensor[N, C, Ho, Wo] or Tensor[N, 1, Ho, Wo], optional): multiplies the warped features (DFF's
            scale field); feature's dtype.

    Returns:
        Tensor[N, C, Ho, Wo]: the warped features, contiguous, in feature's dtype.
    """
    return torch.ops.segops.flow_warp(feature, flow, scale)


def check_flow_warp_args(op: str, feature: Tensor, flow: Tensor, scale: Optional[Tensor]) -> None:
    if feature.dim() != 4:
        raise RuntimeError(f"{op}: feature must have shape [N, C, H, W], got {shape_str(feature)}")
    check_supported_float(op, "feature", feature)
    batch = feature.shape[0]
    if flow.dim() != 4 or flow.shape[0] != batch or flow.shape[1] != 2:
        raise RuntimeError(f"{op}: flow must have shape [N, 2, Ho, Wo] with N = {batch}, got {shape_str(flow)}")
    check_dtype_or_accumulation(op, "flow", flow, feature, "feature")
    check_same_device(op, "flow", flow, feature, "feature")
    if scale is not None:
        per_channel = [batch, feature.shape[1], flow.shape[2], flow.shape[3]]
        shared = [batch, 1, flow.shape[2], flow.shape[3]]
        if list(scale.shape) not in (per_channel, shared):
            raise RuntimeError(
                f"{op}: scale must have shape [N, C, Ho, Wo] or [N, 1, Ho, Wo] = [{', '.join(map(str, per_channel))}] "
                f"or [{', '.join(map(str, shared))}], got {shape_str(scale)}"
            )
        if scale.dtype != feature.dtype:
            raise RuntimeError(
                f"{op}: scale must have the same dtype as feature ({dtype_name(feature.dtype)}), "
                f"got {dtype_name(scale.dtype)}"
            )
        check_same_device(op, "scale", scale, feature, "feature")


def check_flow_warp_grad(grad: Tensor, feature: Tensor, flow: Tensor) -> None:
    op = "_flow_warp_backward"
    expected = [feature.shape[0], feature.shape[1], flow.shape[2], flow.shape[3]]
    if list(grad.shape) != expected:
        raise RuntimeError(f"{op}: grad must have shape [{', '.join(map(str, expected))}], got {shape_str(grad)}")
    if grad.dtype != feature.dtype:
        raise RuntimeError(
            f"{op}: grad must have the same dtype as feature ({dtype_name(feature.dtype)}), got {dtype_name(grad.dtype)}"
        )
    check_same_device(op, "grad", grad, feature, "feature")


def _setup_context(ctx, inputs, output):
    feature, flow, scale = inputs
    ctx.save_for_backward(feature, flow, scale)
    ctx.has_scale = scale is not None


def _backward(ctx, grad):
    feature, flow, scale = ctx.saved_tensors
    grad_feature, grad_flow, grad_scale = torch.ops.segops._flow_warp_backward(
        grad.contiguous(), feature, flow, scale if ctx.has_scale else None
    )
    return grad_feature, grad_flow, grad_scale if ctx.has_scale else None


def _backward_setup_context(ctx, inputs, output):
    pass


def _no_double_backward(ctx, *grads):
    raise RuntimeError(
        "flow_warp: double backward is not supported (the op is differentiable once with respect to feature, flow "
        "and scale)"
    )


torch.library.register_autograd("segops::flow_warp", _backward, setup_context=_setup_context)
torch.library.register_autograd(
    "segops::_flow_warp_backward", _no_double_backward, setup_context=_backward_setup_context
)


class FlowWarpFunction(torch.autograd.Function):
    """``torch.ops.segops.flow_warp`` as an autograd.Function, with the op's own registered backward.

    ``FlowWarpFunction.apply(feature, flow, scale)`` takes feature Tensor[N, C, H, W], flow Tensor[N, 2, Ho, Wo] and
    scale None, Tensor[N, C, Ho, Wo] or Tensor[N, 1, Ho, Wo], and returns Tensor[N, C, Ho, Wo]; prefer
    :func:`flow_warp`.
    """

    @staticmethod
    def forward(feature, flow, scale=None):
        return torch.ops.segops.flow_warp(feature, flow, scale)

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


class FlowWarp(nn.Module):
    """:func:`flow_warp` as a module (no parameters): ``FlowWarp()(feature, flow, scale=None)``.

    Shapes: feature Tensor[N, C, H, W], flow Tensor[N, 2, Ho, Wo], scale None, Tensor[N, C, Ho, Wo] or
    Tensor[N, 1, Ho, Wo] give Tensor[N, C, Ho, Wo].
    """

    def forward(self, feature: Tensor, flow: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        return flow_warp(feature, flow, scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mode=bilinear, padding=zeros, flow in pixels (dx, dy))"

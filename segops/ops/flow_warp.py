"""Flow-guided bilinear feature warping (Deep Feature Flow): functional, nn.Module and autograd.Function front ends
of torch.ops.segops.flow_warp. Its argument checks and fake kernels are in segops/ops/_flow_warp_meta.py."""

from typing import Optional

import torch
from torch import Tensor, nn

from segops._fx import traced_call
from segops.ops._autograd import (
    OpFunction,
    below_autograd,
    call,
    once_differentiable_backward,
    register_function,
    save_for_backward_and_jvp,
)
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._checks import take

__all__ = ["FlowWarp", "FlowWarpFunction", "flow_warp"]


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
    if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
        return torch.ops.segops.flow_warp(feature, flow, scale)
    return _flow_warp(feature, flow, scale)


@torch.jit.unused
def _flow_warp(feature: Tensor, flow: Tensor, scale: Optional[Tensor]) -> Tensor:
    node = traced_call(flow_warp, feature, flow, scale)  # FX: one node
    if node is not None:
        return node
    _check_tensor_arguments("flow_warp", feature=feature, flow=flow, scale=scale)
    return _warp(feature, flow, scale)


def _warp(feature: Tensor, flow: Tensor, scale: Optional[Tensor]) -> Tensor:
    return call(FlowWarpFunction, torch.ops.segops.flow_warp, feature, flow, scale)


def _taps(feature: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """feature[n, c, y, x] at integer positions x, y (Tensor[N, Ho, Wo] each), zero off the map:
    Tensor[N, C, Ho, Wo]."""
    batch, channels, height, width = feature.shape
    inside = ((x >= 0) & (x < width) & (y >= 0) & (y < height)).unsqueeze(1)
    pixel = (y.clamp(0, height - 1) * width + x.clamp(0, width - 1)).long().unsqueeze(1)
    planes = torch.arange(batch * channels, device=feature.device).view(batch, channels, 1, 1)
    return take(feature, planes * (height * width) + pixel) * inside


def _warp_flow_derivative(feature: Tensor, flow: Tensor, flow_tangent: Tensor) -> Tensor:
    """The derivative of the warp (without scale) along flow_tangent, Tensor[N, C, Ho, Wo]: the bilinear sample's slope
    in x and y at each displaced position, taken from the right where a sample lies on a pixel row or column (as the
    backward and grid_sample take it), zero for a non-finite flow (which samples nothing)."""
    if feature.numel() == 0 or flow.numel() == 0:
        return feature.new_zeros((feature.shape[0], feature.shape[1], flow.shape[2], flow.shape[3]))
    out_h, out_w = flow.shape[2], flow.shape[3]
    finite = torch.isfinite(flow).all(dim=1)
    flow = torch.where(finite.unsqueeze(1), flow, 0.0)  # any finite stand-in: the mask below zeroes its tangent
    x = torch.arange(out_w, device=flow.device, dtype=flow.dtype).view(1, 1, out_w) + flow[:, 0]
    y = torch.arange(out_h, device=flow.device, dtype=flow.dtype).view(1, out_h, 1) + flow[:, 1]
    # Far-off samples: clamp before the integer cast (their taps are all off the map either way).
    x = x.clamp(-2.0, feature.shape[3] + 1.0)
    y = y.clamp(-2.0, feature.shape[2] + 1.0)
    x0, y0 = x.floor(), y.floor()
    lx, ly = (x - x0).unsqueeze(1), (y - y0).unsqueeze(1)
    x0, y0 = x0.long(), y0.long()
    values = feature.to(flow.dtype)
    f00, f01 = _taps(values, x0, y0), _taps(values, x0 + 1, y0)
    f10, f11 = _taps(values, x0, y0 + 1), _taps(values, x0 + 1, y0 + 1)
    slope_x = (1 - ly) * (f01 - f00) + ly * (f11 - f10)
    slope_y = (1 - lx) * (f10 - f00) + lx * (f11 - f01)
    tangent = slope_x * flow_tangent[:, 0:1] + slope_y * flow_tangent[:, 1:2]
    return (tangent * finite.unsqueeze(1)).to(feature.dtype)


class FlowWarpFunction(OpFunction):
    """``torch.ops.segops.flow_warp`` as an autograd.Function: the op's Autograd kernel (backward, jvp, torch.func).

    ``FlowWarpFunction.apply(feature, flow, scale)`` takes feature Tensor[N, C, H, W], flow Tensor[N, 2, Ho, Wo] and
    scale None, Tensor[N, C, Ho, Wo] or Tensor[N, 1, Ho, Wo], and returns Tensor[N, C, Ho, Wo]; prefer
    :func:`flow_warp`. The tangent: the warp of feature's tangent and the warp times scale's tangent (both linear),
    plus the bilinear slopes along flow's tangent, times scale.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(feature, flow, scale=None):
        return below_autograd(torch.ops.segops.flow_warp.default, feature, flow, scale)

    @staticmethod
    def setup_context(ctx, inputs, output):
        feature, flow, scale = inputs
        save_for_backward_and_jvp(ctx, feature, flow, scale)
        ctx.has_scale = scale is not None

    @staticmethod
    def backward(ctx, grad):
        feature, flow, scale = ctx.saved_tensors
        grad_feature, grad_flow, grad_scale = call(
            _FlowWarpBackwardFunction,
            torch.ops.segops._flow_warp_backward,
            grad.contiguous(),
            feature,
            flow,
            scale if ctx.has_scale else None,
        )
        return grad_feature, grad_flow, grad_scale if ctx.has_scale else None

    @staticmethod
    def jvp(ctx, feature_tangent, flow_tangent, scale_tangent):
        feature, flow, scale = ctx.saved_tensors
        scale = scale if ctx.has_scale else None
        terms = []
        if feature_tangent is not None:
            terms.append(_warp(feature_tangent, flow, scale))
        if flow_tangent is not None:
            slopes = _warp_flow_derivative(feature, flow, flow_tangent)
            terms.append(slopes if scale is None else slopes * scale)
        if scale_tangent is not None and ctx.has_scale:
            terms.append(_warp(feature, flow, scale_tangent))
        return sum(terms[1:], terms[0]) if terms else None


_ONCE = "the op is differentiable once with respect to feature, flow and scale"


_FlowWarpBackwardFunction = once_differentiable_backward(
    "flow_warp", torch.ops.segops._flow_warp_backward.default, _ONCE
)


register_function("flow_warp", FlowWarpFunction)
register_function("_flow_warp_backward", _FlowWarpBackwardFunction)


class FlowWarp(nn.Module):
    """:func:`flow_warp` as a module (no parameters): ``FlowWarp()(feature, flow, scale=None)``.

    Shapes: feature Tensor[N, C, H, W], flow Tensor[N, 2, Ho, Wo], scale None, Tensor[N, C, Ho, Wo] or
    Tensor[N, 1, Ho, Wo] give Tensor[N, C, Ho, Wo].
    """

    def forward(self, feature: Tensor, flow: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        return flow_warp(feature, flow, scale)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mode=bilinear, padding=zeros, flow in pixels (dx, dy))"

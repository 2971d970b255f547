"""flow_warp's argument checks and fake kernels (flow_warp, _flow_warp_backward), registered with
torch.library.register_fake on import. The messages repeat csrc/flow_warp/flow_warp_checks.cpp's word for word."""

from typing import Optional

import torch
from torch import Tensor

from segops.ops._checks import (
    check_dtype_or_accumulation,
    check_same_device,
    check_same_dtype,
    check_shape,
    check_supported_float,
    format_shape,
)


def check_flow_warp_args(op: str, feature: Tensor, flow: Tensor, scale: Optional[Tensor]) -> None:
    """feature Tensor[N, C, H, W], flow Tensor[N, 2, Ho, Wo] and scale None, Tensor[N, C, Ho, Wo] or
    Tensor[N, 1, Ho, Wo]."""
    if feature.dim() != 4:
        raise RuntimeError(f"{op}: feature must have shape [N, C, H, W], got {format_shape(feature)}")
    check_supported_float(op, "feature", feature)
    batch = feature.shape[0]
    if flow.dim() != 4 or flow.shape[0] != batch or flow.shape[1] != 2:
        raise RuntimeError(f"{op}: flow must have shape [N, 2, Ho, Wo] with N = {batch}, got {format_shape(flow)}")
    check_dtype_or_accumulation(op, "flow", flow, feature, "feature")
    check_same_device(op, "flow", flow, feature, "feature")
    if scale is not None:
        per_channel = [batch, feature.shape[1], flow.shape[2], flow.shape[3]]
        shared = [batch, 1, flow.shape[2], flow.shape[3]]
        if list(scale.shape) not in (per_channel, shared):
            raise RuntimeError(
                f"{op}: scale must have shape [N, C, Ho, Wo] or [N, 1, Ho, Wo] = {format_shape(per_channel)} "
                f"or {format_shape(shared)}, got {format_shape(scale)}"
            )
        check_same_dtype(op, "scale", scale, feature, "feature")
        check_same_device(op, "scale", scale, feature, "feature")


def check_flow_warp_grad(grad: Tensor, feature: Tensor, flow: Tensor) -> None:
    """The backward's grad: Tensor[N, C, Ho, Wo] in feature's dtype, on its device."""
    op = "_flow_warp_backward"
    check_shape(op, "grad", grad, [feature.shape[0], feature.shape[1], flow.shape[2], flow.shape[3]])
    check_same_dtype(op, "grad", grad, feature, "feature")
    check_same_device(op, "grad", grad, feature, "feature")


@torch.library.register_fake("segops::flow_warp")
def _flow_warp_fake(feature, flow, scale=None):
    check_flow_warp_args("flow_warp", feature, flow, scale)
    return feature.new_empty((feature.shape[0], feature.shape[1], flow.shape[2], flow.shape[3]))


@torch.library.register_fake("segops::_flow_warp_backward")
def _flow_warp_backward_fake(grad, feature, flow, scale):
    """(grad_feature, grad_flow, grad_scale), grad_scale of shape (0,) without a scale."""
    check_flow_warp_args("_flow_warp_backward", feature, flow, scale)
    check_flow_warp_grad(grad, feature, flow)
    grad_scale = scale.new_empty(scale.shape) if scale is not None else feature.new_empty((0,))
    return feature.new_empty(feature.shape), flow.new_empty(flow.shape), grad_scale

"""Batching rules (torch.func.vmap) for every segops op, registered with torch.library.register_vmap.

The forward ops fold the vmapped dimension into one the kernel already loops over, so a batch of B costs one call:
the channels for the RoI ops and max-unpooling (each channel is pooled on its own), the images for dilated_conv2d and
flow_warp. Every other case (a batched box list, batched convolution weights, the backward ops of dilated_conv2d and
flow_warp, the dense-CRF lattice ops) runs the op once per batch element and stacks the results: PyTorch's own
fallback does the same, but warns, and has none for ops that take a Tensor[] (multi_scale_roi_align)."""

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

_OPS = torch.ops.segops


def _select(value: Any, dim: Any, index: int) -> Any:
    if dim is None:
        return value
    if isinstance(dim, (list, tuple)):
        return type(value)(_select(v, d, index) for v, d in zip(value, dim))
    return value.select(dim, index)


def _stack(results: Sequence[Any]) -> tuple:
    """The per-element results stacked along dim 0, with their out_dims."""
    first = results[0]
    if isinstance(first, Tensor):
        return torch.stack(results), 0
    parts = [_stack([result[i] for result in results]) for i in range(len(first))]
    return type(first)(part for part, _ in parts), type(first)(dim for _, dim in parts)


def _loop(op: Callable) -> Callable:
    def rule(info, in_dims, *args):
        return _stack([op(*_select(args, in_dims, index)) for index in range(info.batch_size)])

    return rule


def _batch_first(tensor: Tensor, dim, batch_size: int) -> Tensor:
    """tensor with its vmapped dimension first: moved there, or (unbatched) broadcast along a new one."""
    if dim is None:
        return tensor.unsqueeze(0).expand(batch_size, *tensor.shape)
    return tensor.movedim(dim, 0)


def _into_channels(tensor: Tensor, dim, batch_size: int) -> Tensor:
    """[B, N, C, ...] -> [N, B * C, ...]."""
    batched = _batch_first(tensor, dim, batch_size).movedim(0, 1)
    return batched.reshape(batched.shape[0], -1, *batched.shape[3:])


def _out_of_channels(tensor: Tensor, batch_size: int) -> Tensor:
    """[N, B * C, ...] -> [N, B, C, ...] (out_dim 1)."""
    return tensor.view(tensor.shape[0], batch_size, -1, *tensor.shape[2:])


def _into_images(tensor, dim, batch_size: int):
    """[B, N, ...] -> [B * N, ...]; None stays None."""
    if tensor is None:
        return None
    return _batch_first(tensor, dim, batch_size).flatten(0, 1)


def _channel_rule(name: str) -> Callable:
    """roi_align, ps_roi_align, ps_roi_pool: each channel (each group of PH * PW score maps) is pooled on its own."""
    op = getattr(_OPS, name)

    def rule(info, in_dims, input, rois, *params):
        if in_dims[1] is not None:
            return _loop(op)(info, in_dims, input, rois, *params)
        out = op(_into_channels(input, in_dims[0], info.batch_size), rois, *params)
        return _out_of_channels(out, info.batch_size), 1

    return rule


def _channel_backward_rule(name: str) -> Callable:
    """Their backward ops, whose arguments are (grad, rois, spatial_scale, PH, PW, N, C, H, W, ...)."""
    op = getattr(_OPS, name)

    def rule(info, in_dims, grad, rois, scale, ph, pw, n, c, h, w, *params):
        if in_dims[1] is not None:
            return _loop(op)(info, in_dims, grad, rois, scale, ph, pw, n, c, h, w, *params)
        b = info.batch_size
        out = op(_into_channels(grad, in_dims[0], b), rois, scale, ph, pw, n, b * c, h, w, *params)
        return _out_of_channels(out, b), 1

    return rule


def _roi_pool(info, in_dims, input, rois, *params):
    if in_dims[1] is not None:
        return _loop(_OPS.roi_pool)(info, in_dims, input, rois, *params)
    out, argmax = _OPS.roi_pool(_into_channels(input, in_dims[0], info.batch_size), rois, *params)
    return (_out_of_channels(out, info.batch_size), _out_of_channels(argmax, info.batch_size)), (1, 1)


def _roi_pool_backward(info, in_dims, grad, rois, argmax, scale, ph, pw, n, c, h, w):
    if in_dims[1] is not None:
        return _loop(_OPS._roi_pool_backward)(info, in_dims, grad, rois, argmax, scale, ph, pw, n, c, h, w)
    b = info.batch_size
    out = _OPS._roi_pool_backward(
        _into_channels(grad, in_dims[0], b), rois, _into_channels(argmax, in_dims[2], b), scale, ph, pw, n, b * c, h, w
    )
    return _out_of_channels(out, b), 1


def _multi_scale_roi_align(info, in_dims, features, rois, levels, *params):
    if in_dims[1] is not None or in_dims[2] is not None:
        return _loop(_OPS.multi_scale_roi_align)(info, in_dims, features, rois, levels, *params)
    b = info.batch_size
    folded = [_into_channels(feature, dim, b) for feature, dim in zip(features, in_dims[0])]
    return _out_of_channels(_OPS.multi_scale_roi_align(folded, rois, levels, *params), b), 1


def _multi_scale_roi_align_backward(
    info, in_dims, grad, rois, levels, scales, ph, pw, n, c, heights, widths, sampling_ratio, aligned
):
    if in_dims[1] is not None or in_dims[2] is not None:
        return _loop(_OPS._multi_scale_roi_align_backward)(
            info, in_dims, grad, rois, levels, scales, ph, pw, n, c, heights, widths, sampling_ratio, aligned
        )
    b = info.batch_size
    grads = _OPS._multi_scale_roi_align_backward(
        _into_channels(grad, in_dims[0], b),
        rois,
        levels,
        scales,
        ph,
        pw,
        n,
        b * c,
        heights,
        widths,
        sampling_ratio,
        aligned,
    )
    return [_out_of_channels(g, b) for g in grads], [1] * len(grads)


def _max_unpool2d(info, in_dims, input, indices, output_height, output_width):
    b = info.batch_size
    out = _OPS.max_unpool2d(
        _into_channels(input, in_dims[0], b), _into_channels(indices, in_dims[1], b), output_height, output_width
    )
    return _out_of_channels(out, b), 1


def _max_unpool2d_backward(info, in_dims, grad, indices):
    b = info.batch_size
    out = _OPS._max_unpool2d_backward(_into_channels(grad, in_dims[0], b), _into_channels(indices, in_dims[1], b))
    return _out_of_channels(out, b), 1


def _dilated_conv2d(info, in_dims, input, weight, bias, *geometry):
    if in_dims[1] is not None or in_dims[2] is not None:
        return _loop(_OPS.dilated_conv2d)(info, in_dims, input, weight, bias, *geometry)
    out = _OPS.dilated_conv2d(_into_images(input, in_dims[0], info.batch_size), weight, bias, *geometry)
    return out.unflatten(0, (info.batch_size, -1)), 0


def _flow_warp(info, in_dims, feature, flow, scale=None):  # the dispatcher drops a default scale
    b = info.batch_size
    scale_dim = in_dims[2] if len(in_dims) > 2 else None
    out = _OPS.flow_warp(
        _into_images(feature, in_dims[0], b), _into_images(flow, in_dims[1], b), _into_images(scale, scale_dim, b)
    )
    return out.unflatten(0, (b, -1)), 0


_RULES = {
    "roi_align": _channel_rule("roi_align"),
    "_roi_align_backward": _channel_backward_rule("_roi_align_backward"),
    "ps_roi_align": _channel_rule("ps_roi_align"),
    "_ps_roi_align_backward": _channel_backward_rule("_ps_roi_align_backward"),
    "ps_roi_pool": _channel_rule("ps_roi_pool"),
    "_ps_roi_pool_backward": _channel_backward_rule("_ps_roi_pool_backward"),
    "roi_pool": _roi_pool,
    "_roi_pool_backward": _roi_pool_backward,
    "multi_scale_roi_align": _multi_scale_roi_align,
    "_multi_scale_roi_align_backward": _multi_scale_roi_align_backward,
    "max_unpool2d": _max_unpool2d,
    "_max_unpool2d_backward": _max_unpool2d_backward,
    "dilated_conv2d": _dilated_conv2d,
    "flow_warp": _flow_warp,
}
_LOOPED = (
    "_dilated_conv2d_backward",
    "_flow_warp_backward",
    "permutohedral_lattice",
    "permutohedral_filter",
    "dense_crf_softmax",
    "_dense_crf_step",
)

for _name, _rule in _RULES.items():
    torch.library.register_vmap(f"segops::{_name}", _rule)
for _name in _LOOPED:
    torch.library.register_vmap(f"segops::{_name}", _loop(getattr(_OPS, _name)))

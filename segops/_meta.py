"""Fake (meta) kernels for every segops op, so torch.compile and torch.library.opcheck can trace them. They
raise the C++ kernels' messages (segops/ops/_checks.py, _roi_common.py, flow_warp.py, max_unpool.py, dilated_conv.py,
dense_crf.py); data-dependent checks stay in C++."""

import torch

from segops.ops.dense_crf import dense_crf_softmax_fake, permutohedral_filter_fake, permutohedral_lattice_fake
from segops.ops.dilated_conv import dilated_conv2d_backward_fake, dilated_conv2d_fake
from segops.ops.flow_warp import check_flow_warp_args, check_flow_warp_grad
from segops.ops.max_unpool import max_unpool2d_backward_fake, max_unpool2d_fake
from segops.ops._checks import check_plane_fits_int32, dtype_name
from segops.ops._roi_common import (
    check_multi_level_args,
    check_multi_level_backward_args,
    check_roi_op_args,
    check_roi_op_backward_args,
    check_sampling_ratio,
)


@torch.library.register_fake("segops::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned):
    check_sampling_ratio("roi_align", sampling_ratio)
    check_roi_op_args("roi_align", input, rois, spatial_scale, pooled_height, pooled_width)
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("segops::_roi_align_backward")
def _roi_align_backward_fake(
    grad, rois, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width, sampling_ratio, aligned
):
    input_shape = (batch_size, channels, height, width)
    check_sampling_ratio("_roi_align_backward", sampling_ratio)
    check_roi_op_backward_args("_roi_align_backward", grad, rois, spatial_scale, pooled_height, pooled_width, input_shape)
    return grad.new_empty(input_shape)


@torch.library.register_fake("segops::multi_scale_roi_align")
def _multi_scale_roi_align_fake(features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio,
                                aligned):
    op = "multi_scale_roi_align"
    check_sampling_ratio(op, sampling_ratio)
    check_multi_level_args(op, features, rois, levels, spatial_scales, pooled_height, pooled_width)
    return features[0].new_empty((rois.shape[0], features[0].shape[1], pooled_height, pooled_width))


@torch.library.register_fake("segops::_multi_scale_roi_align_backward")
def _multi_scale_roi_align_backward_fake(grad, rois, levels, spatial_scales, pooled_height, pooled_width, batch_size,
                                         channels, heights, widths, sampling_ratio, aligned):
    op = "_multi_scale_roi_align_backward"
    check_sampling_ratio(op, sampling_ratio)
    check_multi_level_backward_args(op, grad, rois, levels, spatial_scales, pooled_height, pooled_width, batch_size,
                                    channels, heights, widths)
    return [grad.new_empty((batch_size, channels, height, width)) for height, width in zip(heights, widths)]


@torch.library.register_fake("segops::roi_pool")
def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    check_roi_op_args("roi_pool", input, rois, spatial_scale, pooled_height, pooled_width)
    check_plane_fits_int32("roi_pool", input.shape[2], input.shape[3])
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return input.new_empty(shape), input.new_empty(shape, dtype=torch.int32)


@torch.library.register_fake("segops::_roi_pool_backward")
def _roi_pool_backward_fake(
    grad, rois, argmax, spatial_scale, pooled_height, pooled_width, batch_size, channels, height, width
):
    op = "_roi_pool_backward"
    input_shape = (batch_size, channels, height, width)
    check_roi_op_backward_args(op, grad, rois, spatial_scale, pooled_height, pooled_width, input_shape)
    check_plane_fits_int32(op, height, width)
    if argmax.dtype != torch.int32 or argmax.shape != grad.shape or argmax.device != grad.device:
        raise RuntimeError(
            f"{op}: argmax must be the int32 tensor of grad's shape {list(grad.shape)} and device {grad.device} "
            f"that roi_pool returned, got {dtype_name(argmax.dtype)} {list(argmax.shape)} on {argmax.device}"
        )
    return grad.new_empty(input_shape)


@torch.library.register_fake("segops::flow_warp")
def _flow_warp_fake(feature, flow, scale=None):
    check_flow_warp_args("flow_warp", feature, flow, scale)
    return feature.new_empty((feature.shape[0], feature.shape[1], flow.shape[2], flow.shape[3]))


@torch.library.register_fake("segops::_flow_warp_backward")
def _flow_warp_backward_fake(grad, feature, flow, scale):
    check_flow_warp_args("_flow_warp_backward", feature, flow, scale)
    check_flow_warp_grad(grad, feature, flow)
    grad_scale = scale.new_empty(scale.shape) if scale is not None else feature.new_empty((0,))
    return feature.new_empty(feature.shape), flow.new_empty(flow.shape), grad_scale


torch.library.register_fake("segops::max_unpool2d")(max_unpool2d_fake)
torch.library.register_fake("segops::_max_unpool2d_backward")(max_unpool2d_backward_fake)
torch.library.register_fake("segops::dilated_conv2d")(dilated_conv2d_fake)
torch.library.register_fake("segops::_dilated_conv2d_backward")(dilated_conv2d_backward_fake)
torch.library.register_fake("segops::permutohedral_lattice")(permutohedral_lattice_fake)
torch.library.register_fake("segops::permutohedral_filter")(permutohedral_filter_fake)
torch.library.register_fake("segops::dense_crf_softmax")(dense_crf_softmax_fake)

"""segops operators: functional, nn.Module and autograd.Function front ends."""

from segops.ops.dense_crf import DEEPLAB_V2, DenseCRF, DenseCRFFunction, dense_crf
from segops.ops.permutohedral import PermutohedralLattice
from segops.ops.dilated_conv import DilatedConv2d, DilatedConv2dFunction, dilated_conv2d
from segops.ops.flow_warp import FlowWarp, FlowWarpFunction, flow_warp
from segops.ops.max_unpool import MaxUnpool2d, MaxUnpool2dFunction, max_unpool2d
from segops.ops.multi_scale_roi_align import (
    MultiScaleRoIAlign,
    MultiScaleRoIAlignFunction,
    fpn_levels,
    multi_scale_roi_align,
)
from segops.ops.ps_roi import PSRoIAlign, PSRoIAlignFunction, PSRoIPool, PSRoIPoolFunction, ps_roi_align, ps_roi_pool
from segops.ops.roi_align import RoIAlign, RoIAlignFunction, roi_align
from segops.ops.roi_pool import RoIPool, RoIPoolFunction, roi_pool

__all__ = [
    "DEEPLAB_V2",
    "DenseCRF",
    "DenseCRFFunction",
    "PermutohedralLattice",
    "dense_crf",
    "DilatedConv2d",
    "DilatedConv2dFunction",
    "dilated_conv2d",
    "FlowWarp",
    "FlowWarpFunction",
    "flow_warp",
    "MaxUnpool2d",
    "MaxUnpool2dFunction",
    "max_unpool2d",
    "MultiScaleRoIAlign",
    "MultiScaleRoIAlignFunction",
    "fpn_levels",
    "multi_scale_roi_align",
    "PSRoIAlign",
    "PSRoIAlignFunction",
    "PSRoIPool",
    "PSRoIPoolFunction",
    "ps_roi_align",
    "ps_roi_pool",
    "RoIAlign",
    "RoIAlignFunction",
    "RoIPool",
    "RoIPoolFunction",
    "roi_align",
    "roi_pool",
]

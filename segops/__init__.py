"""segops: hand-written C++/CUDA kernels for semantic, instance and video segmentation, as PyTorch ops.

    >>> from segops import roi_align
    >>> roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
"""

from segops._version import __version__
from segops._extension import cuda_version, torch_version
from segops import _meta  # noqa: F401  (registers the fake kernels)
from segops.ops import (
    DEEPLAB_V2,
    DenseCRF,
    DenseCRFFunction,
    PermutohedralLattice,
    dense_crf,
    DilatedConv2d,
    DilatedConv2dFunction,
    FlowWarp,
    FlowWarpFunction,
    MaxUnpool2d,
    MaxUnpool2dFunction,
    RoIAlign,
    RoIAlignFunction,
    RoIPool,
    RoIPoolFunction,
    dilated_conv2d,
    flow_warp,
    max_unpool2d,
    roi_align,
    roi_pool,
)

__all__ = [
    "__version__",
    "cuda_version",
    "torch_version",
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
    "RoIAlign",
    "RoIAlignFunction",
    "RoIPool",
    "RoIPoolFunction",
    "roi_align",
    "roi_pool",
]

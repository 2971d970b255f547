"""segops operators: functional, nn.Module and autograd.Function front ends."""

from segops.ops.roi_align import RoIAlign, RoIAlignFunction, roi_align
from segops.ops.roi_pool import RoIPool, RoIPoolFunction, roi_pool

__all__ = ["RoIAlign", "RoIAlignFunction", "RoIPool", "RoIPoolFunction", "roi_align", "roi_pool"]

"""segops: hand-written C++/CUDA kernels for semantic, instance and video segmentation, as PyTorch ops.

>>> from segops import roi_align
>>> roi_align(features, boxes, output_size=7, spatial_scale=0.25, sampling_ratio=2, aligned=True)
"""

from segops._version import __version__
from segops._extension import cuda_version, torch_version
from segops import _meta  # noqa: F401  (registers the fake kernels)
from segops import _autocast  # noqa: F401  (registers the autocast policies)
from segops import _vmap  # noqa: F401  (registers the batching rules)
from segops import ops
from segops.ops import *  # noqa: F401,F403  (every operator; segops.ops.__all__ lists them)

__all__ = ["__version__", "cuda_version", "torch_version"] + ops.__all__

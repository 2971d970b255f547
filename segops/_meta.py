"""Fake (meta) kernels for every segops op, so that torch.compile, torch.export and torch.library.opcheck can trace
them; importing this module registers them all.

Each op family keeps its argument checks and its fake kernels together, in one private module beside its front end:
segops/ops/_roi_meta.py (roi_align, roi_pool, multi_scale_roi_align), _max_unpool_meta.py, _dilated_conv_meta.py,
_flow_warp_meta.py, _permutohedral_meta.py (permutohedral_lattice, permutohedral_filter) and _dense_crf_meta.py
(dense_crf_softmax). Each registers its fake kernels with torch.library.register_fake on import and raises the C++
kernels' messages word for word (shared pieces: segops/ops/_checks.py); data-dependent checks stay in C++."""

from segops.ops import (  # noqa: F401  (each registers its fake kernels on import)
    _dense_crf_meta,
    _dilated_conv_meta,
    _flow_warp_meta,
    _max_unpool_meta,
    _permutohedral_meta,
    _roi_meta,
)

"""ONNX export of segops' operators: onnxscript translations to standard ONNX operators (opset 18), for
``torch.onnx.export(model, args, dynamo=True, custom_translation_table=segops.onnx.translation_table())``.

=====================  =====================================================================================
segops op              ONNX
=====================  =====================================================================================
roi_align              RoiAlign (mode avg; coordinate_transformation_mode half_pixel for aligned=True,
                       output_half_pixel for aligned=False), batch indices split from the rois
multi_scale_roi_align  one RoiAlign per pyramid level on all boxes, each box's row taken from its level (Where)
roi_pool               MaxRoiPool; the argmax output (used only by the backward) is filled with -1
ps_roi_align           RoiAlign (half_pixel) of every channel at every bin, then each channel's own bin gathered
                       (GatherElements): exact, at PH * PW times ps_roi_align's work
ps_roi_pool            none: ONNX has no average RoI pooling; export raises an error naming the op
max_unpool2d           MaxUnpool, PyTorch's per-plane indices offset to ONNX's indices over the whole tensor
dilated_conv2d         Conv
flow_warp              GridSample (bilinear, zeros, align_corners=1) on a grid built from the flow, then Mul by
                       the scale field
dense CRF ops          none: the permutohedral lattice has no ONNX equivalent; export raises an error naming
                       the op (export the network without its CRF and run the CRF in PyTorch)
=====================  =====================================================================================

Where ONNX's operators differ from segops' (tests/test_onnx.py checks each):

- RoiAlign and MaxRoiPool take float32 (or float64) features; onnxruntime has no float16 kernel for them.
- MaxUnpool assumes indices from a max pool (each in its plane's range); segops checks the range and raises,
  ONNX leaves out-of-range indices undefined.
- MaxRoiPool has no argmax output: roi_pool's second output (used only by the backward) is filled with -1.
- flow_warp on a map one pixel wide (or high) samples that pixel's column (row) at every displacement in ONNX,
  where segops samples zero off the map: GridSample's align_corners=1 cannot express a one-pixel axis.

Needs the optional packages: ``pip install .[onnx]`` (onnx, onnxscript, onnxruntime).
"""

from typing import Callable, Dict

import torch

__all__ = ["translation_table", "UnsupportedOperatorError"]


class UnsupportedOperatorError(RuntimeError):
    """A segops op without an ONNX equivalent was met during export."""


def translation_table() -> Dict[torch._ops.OpOverload, Callable]:
    """{segops op overload: its onnxscript translation}, for torch.onnx.export's custom_translation_table."""
    try:
        import onnxscript  # noqa: F401
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError("segops.onnx needs onnxscript: pip install 'segops[onnx]'") from error
    from segops import _onnx_translations as translations

    ops = torch.ops.segops
    table = {
        ops.roi_align.default: translations.roi_align,
        ops.multi_scale_roi_align.default: translations.multi_scale_roi_align,
        ops.roi_pool.default: translations.roi_pool,
        ops.ps_roi_align.default: translations.ps_roi_align,
        ops.max_unpool2d.default: translations.max_unpool2d,
        ops.dilated_conv2d.default: translations.dilated_conv2d,
        ops.flow_warp.default: translations.flow_warp,
    }
    for name, advice in UNSUPPORTED.items():
        table[getattr(ops, name).default] = _unsupported_translation(name, advice)
    return table


_CRF_ADVICE = (
    "(the dense CRF) has no ONNX equivalent; export the network without its CRF (e.g. models.deeplabv2(crf=None), "
    "models.dcl(crf=False)) and run segops.dense_crf in PyTorch"
)
# The ops without an ONNX equivalent, and what the error tells the user: exported as an error naming the op.
UNSUPPORTED: Dict[str, str] = {
    "permutohedral_lattice": _CRF_ADVICE,
    "permutohedral_filter": _CRF_ADVICE,
    "dense_crf_softmax": _CRF_ADVICE,
    "_dense_crf_step": _CRF_ADVICE,
    "ps_roi_pool": (
        "(position-sensitive average RoI pooling) has no ONNX equivalent (MaxRoiPool takes the maximum); export "
        "with ps_roi_align, which has one"
    ),
}


def _unsupported_translation(name: str, advice: str) -> Callable:
    """A translation that raises an error naming the op."""

    def translate(*args, **kwargs):
        raise UnsupportedOperatorError(f"segops.onnx: segops::{name} {advice}")

    return translate

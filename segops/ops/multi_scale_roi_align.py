"""Multi-level RoIAlign (FPN, PANet): functional, nn.Module and autograd.Function front ends of
torch.ops.segops.multi_scale_roi_align, which pools every RoI from its own map of a feature pyramid in one pass (one
kernel launch, one parallel CPU pass) on RoIAlign's arithmetic; and the FPN rule that assigns boxes to levels."""

import math
from typing import List, Sequence, Union

import torch
from torch import Tensor, nn

from segops._fx import one_fx_node
from segops.ops._autograd import OpFunction, below_autograd, call, register_function, save_for_backward_and_jvp
from segops.ops._checks import check_tensor_arguments as _check_tensor_arguments
from segops.ops._checks import format_shape
from segops.ops._roi_common import boxes_to_rois, output_size_pair, rois_from_boxes

__all__ = ["MultiScaleRoIAlign", "MultiScaleRoIAlignFunction", "fpn_levels", "multi_scale_roi_align"]

MODES = ("assign", "all")


def fpn_levels(
    rois: Tensor,
    spatial_scales: List[float],
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
    eps: float = 1e-6,
) -> Tensor:
    """The FPN rule (Lin et al. 2017, eq. 1), as torchvision's LevelMapper computes it: a box of area w * h goes to
    pyramid level floor(canonical_level + log2(sqrt(w * h) / canonical_scale) + eps), clamped to the levels that
    exist (level k has scale 2^-k); returned as an index into `spatial_scales` (ordered finest first).

    Args:
        rois (Tensor[K, 5]): (batch index, x1, y1, x2, y2) in image coordinates.
        spatial_scales (sequence of float): each map's scale, powers of 2 (1/4, 1/8, ...).

    Returns:
        Tensor[K] int64 in [0, len(spatial_scales)).
    """
    if not torch.jit.is_scripting():
        _check_powers_of_two(spatial_scales)
    # The levels k with scale 2^-k (powers of 2, so rounding is exact; TorchScript has math.log, not math.log2).
    k_min = float(round(-math.log(spatial_scales[0]) / math.log(2.0)))
    k_max = float(round(-math.log(spatial_scales[-1]) / math.log(2.0)))
    sizes = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + torch.tensor(eps, dtype=sizes.dtype))
    return (torch.clamp(levels, min=k_min, max=k_max).to(torch.int64) - int(k_min)).to(torch.int64)


@torch.jit.unused
def _check_powers_of_two(spatial_scales: List[float]) -> None:
    if not all(math.log2(scale).is_integer() for scale in (spatial_scales[0], spatial_scales[-1])):
        raise ValueError(f"fpn_levels: spatial_scales must be powers of 2 for the FPN rule, got {list(spatial_scales)}")


def _rows_and_levels(
    rois: Tensor, spatial_scales: List[float], mode: str, canonical_scale: float, canonical_level: int
):
    """The op's rois and levels: each box at its FPN level ("assign"); or every (box, map) pair, box-major, so that
    the output is [K, L, C, PH, PW] without a copy ("all"). In TorchScript too."""
    if mode == "assign":
        if len(spatial_scales) > 1:
            return rois, fpn_levels(rois, spatial_scales, canonical_scale, canonical_level)
        return rois, torch.zeros(rois.shape[0], dtype=torch.int64, device=rois.device)
    num_levels = len(spatial_scales)
    return rois.repeat_interleave(num_levels, dim=0), torch.arange(num_levels, device=rois.device).repeat(rois.shape[0])


def _by_box(pooled: Tensor, num_boxes: int, num_levels: int, mode: str) -> Tensor:
    if mode == "assign":
        return pooled
    return pooled.view(num_boxes, num_levels, pooled.shape[1], pooled.shape[2], pooled.shape[3])


@one_fx_node  # FX (symbolic_trace, create_feature_extractor) records one call
def multi_scale_roi_align(
    features: Sequence[Tensor],
    boxes: Union[Tensor, List[Tensor]],
    output_size: Union[int, Sequence[int]],
    spatial_scales: Sequence[float],
    sampling_ratio: int = 2,
    aligned: bool = False,
    mode: str = "assign",
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> Tensor:
    """RoIAlign over the maps of a feature pyramid, in one pass.

    ``mode="assign"`` pools each box from the one map the FPN rule assigns it (:func:`fpn_levels`; torchvision's
    ``MultiScaleRoIAlign``, whose outputs this equals); ``mode="all"`` pools every box from every map (PANet's
    adaptive feature pooling), equal to stacking :func:`segops.roi_align` per map. Bin values are exactly
    roi_align's on the same map.

    Args:
        features (sequence of Tensor[N, C, H_l, W_l]): 1 to 8 maps, finest first, one dtype and device (float32,
            float64, float16 or bfloat16).
        boxes (Tensor[K, 5] or List[Tensor[L, 4]]): as :func:`segops.roi_align` takes them, in image coordinates.
        output_size (int or Tuple[int, int]): (PH, PW).
        spatial_scales (sequence of float): map l's pixels per image pixel (1/4, 1/8, ... for an FPN).
        sampling_ratio (int): samples per bin along each axis; <= 0 picks ceil(box size / output size).
        aligned (bool): as :func:`segops.roi_align` (torchvision's MultiScaleRoIAlign uses False).
        mode (str): "assign" or "all".
        canonical_scale, canonical_level: the FPN rule's 224 and 4.

    Returns:
        Tensor[K, C, PH, PW] ("assign") or Tensor[K, L, C, PH, PW] ("all").
    """
    op = "multi_scale_roi_align"
    if mode not in MODES:
        raise ValueError(f"{op}: mode must be 'assign' or 'all', got {mode!r}")
    features = list(features) if isinstance(features, (list, tuple)) else features
    if not isinstance(features, list) or not features or not all(isinstance(f, Tensor) for f in features):
        raise ValueError(
            f"{op}: features must be a non-empty list of Tensor[N, C, H, W], got {type(features).__name__}"
        )
    _check_tensor_arguments(op, features=features, boxes=boxes)
    pooled_h, pooled_w = output_size_pair(op, output_size)
    rois = boxes_to_rois(op, boxes, features[0])
    scales = [float(scale) for scale in spatial_scales]
    if rois.dim() != 2 or rois.shape[1] != 5:
        raise RuntimeError(f"{op}: rois must have shape [K, 5], got {format_shape(rois)}")
    rows, levels = _rows_and_levels(rois, scales, mode, canonical_scale, canonical_level)
    pooled = _pool(features, rows, levels, scales, pooled_h, pooled_w, int(sampling_ratio), bool(aligned))
    return _by_box(pooled, rois.shape[0], len(scales), mode)


def _pool(features, rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned) -> Tensor:
    if torch._C._are_functorch_transforms_active():
        return MultiScaleRoIAlignFunction.apply(
            rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned, *features
        )
    return torch.ops.segops.multi_scale_roi_align(
        features, rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned
    )


def _pool_backward(
    grad, rois, levels, spatial_scales, pooled_h, pooled_w, n, c, heights, widths, sampling_ratio, aligned
) -> List[Tensor]:
    return call(
        _MultiScaleRoIAlignBackwardFunction,
        torch.ops.segops._multi_scale_roi_align_backward,
        grad,
        rois,
        levels,
        spatial_scales,
        pooled_h,
        pooled_w,
        n,
        c,
        heights,
        widths,
        sampling_ratio,
        aligned,
    )


class MultiScaleRoIAlignFunction(OpFunction):
    """``torch.ops.segops.multi_scale_roi_align`` as an autograd.Function: the op's Autograd kernel (backward, jvp,
    torch.func).

    ``MultiScaleRoIAlignFunction.apply(rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio,
    aligned, *features)`` takes rois Tensor[K, 5], levels Tensor[K] (int64, the map of each row) and the maps
    Tensor[N, C, H_l, W_l] last (autograd sees tensors only as direct arguments), and returns Tensor[K, C, PH, PW];
    prefer :func:`multi_scale_roi_align`. Linear in the features: the tangent pools their tangents.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned, *features):
        return below_autograd(
            torch.ops.segops.multi_scale_roi_align.default,
            list(features),
            rois,
            levels,
            spatial_scales,
            pooled_height,
            pooled_width,
            sampling_ratio,
            aligned,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        rois, levels, spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned, *features = inputs
        save_for_backward_and_jvp(ctx, rois, levels)
        ctx.shapes = (
            features[0].shape[0],
            features[0].shape[1],
            [f.shape[2] for f in features],
            [f.shape[3] for f in features],
        )
        ctx.params = (spatial_scales, pooled_h, pooled_w)
        ctx.sampling = (sampling_ratio, aligned)

    @staticmethod
    def backward(ctx, grad):
        rois, levels = ctx.saved_tensors
        grads = _pool_backward(grad, rois, levels, *ctx.params, *ctx.shapes, *ctx.sampling)
        return (None,) * 7 + tuple(grads)

    @staticmethod
    def jvp(ctx, *tangents):
        rois, levels = ctx.saved_tensors
        feature_tangents = tangents[7:]
        if all(t is None for t in feature_tangents):
            return None
        n, c, heights, widths = ctx.shapes
        like = next(t for t in feature_tangents if t is not None)
        feature_tangents = [
            like.new_zeros((n, c, h, w)) if t is None else t for t, h, w in zip(feature_tangents, heights, widths)
        ]
        return _pool(feature_tangents, rois, levels, *ctx.params, *ctx.sampling)


class _MultiScaleRoIAlignBackwardFunction(OpFunction):
    """The backward op's derivatives: linear in grad, with the forward as its adjoint."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad, rois, levels, spatial_scales, pooled_h, pooled_w, n, c, heights, widths, sampling_ratio, aligned):
        return tuple(
            below_autograd(
                torch.ops.segops._multi_scale_roi_align_backward.default,
                grad,
                rois,
                levels,
                spatial_scales,
                pooled_h,
                pooled_w,
                n,
                c,
                heights,
                widths,
                sampling_ratio,
                aligned,
            )
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        _grad, rois, levels, spatial_scales, pooled_h, pooled_w, _n, _c, _heights, _widths, sampling_ratio, aligned = (
            inputs
        )
        save_for_backward_and_jvp(ctx, rois, levels)
        ctx.params = (spatial_scales, pooled_h, pooled_w, sampling_ratio, aligned)
        ctx.arguments = tuple(inputs[3:])

    @staticmethod
    def backward(ctx, *grad_grads):
        rois, levels = ctx.saved_tensors
        return (_pool(list(grad_grads), rois, levels, *ctx.params),) + (None,) * 11

    @staticmethod
    def jvp(ctx, grad_tangent, *_):
        rois, levels = ctx.saved_tensors
        return None if grad_tangent is None else tuple(_pool_backward(grad_tangent, rois, levels, *ctx.arguments))


register_function(
    "multi_scale_roi_align", MultiScaleRoIAlignFunction, to_function_args=lambda args: (*args[1:], *args[0])
)
register_function("_multi_scale_roi_align_backward", _MultiScaleRoIAlignBackwardFunction, to_op_output=list)


class MultiScaleRoIAlign(nn.Module):
    """:func:`multi_scale_roi_align` as a module: ``MultiScaleRoIAlign(output_size, spatial_scales, sampling_ratio=2,
    aligned=False, mode="assign")(features, boxes)``; features a list of Tensor[N, C, H_l, W_l], boxes Tensor[K, 5]
    or List[Tensor[L, 4]] give Tensor[K, C, PH, PW] ("assign") or Tensor[K, L, C, PH, PW] ("all")."""

    def __init__(
        self,
        output_size: Union[int, Sequence[int]],
        spatial_scales: Sequence[float],
        sampling_ratio: int = 2,
        aligned: bool = False,
        mode: str = "assign",
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"MultiScaleRoIAlign: mode must be 'assign' or 'all', got {mode!r}")
        self.output_size = output_size_pair("MultiScaleRoIAlign", output_size)
        self.spatial_scales = [float(scale) for scale in spatial_scales]
        self.sampling_ratio, self.aligned, self.mode = sampling_ratio, aligned, mode
        self.canonical_scale, self.canonical_level = canonical_scale, canonical_level

    def forward(self, features: List[Tensor], boxes: Union[Tensor, List[Tensor]]) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript: the checks are the C++ op's
            rois = rois_from_boxes(boxes, features[0])
            rows, levels = _rows_and_levels(
                rois, self.spatial_scales, self.mode, self.canonical_scale, self.canonical_level
            )
            pooled = torch.ops.segops.multi_scale_roi_align(
                features,
                rows,
                levels,
                self.spatial_scales,
                self.output_size[0],
                self.output_size[1],
                self.sampling_ratio,
                self.aligned,
            )
            return _by_box(pooled, rois.shape[0], len(self.spatial_scales), self.mode)
        return self._eager(features, boxes)

    @torch.jit.unused
    def _eager(self, features: List[Tensor], boxes: Union[Tensor, List[Tensor]]) -> Tensor:
        return multi_scale_roi_align(
            features,
            boxes,
            self.output_size,
            self.spatial_scales,
            self.sampling_ratio,
            self.aligned,
            self.mode,
            self.canonical_scale,
            self.canonical_level,
        )

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(output_size={self.output_size}, spatial_scales={self.spatial_scales}, "
            f"sampling_ratio={self.sampling_ratio}, aligned={self.aligned}, mode={self.mode!r})"
        )

"""Global poolings of weakly supervised segmentation (image labels -> class maps) and class activation maps.

All take score or feature maps Tensor[N, C, H, W] and pool each channel over its H x W positions to Tensor[N, C]:
the average (CAM, Zhou et al. 2016), the max (Oquab et al. 2015) and log-sum-exp (Pinheiro and Collobert 2015),
which moves from the one to the other as its sharpness beta goes from 0 to infinity."""

from typing import Optional, Sequence, Union

import torch
from torch import Tensor
from torch.nn import functional as F

from segops._fx import one_fx_node, traced_call


def _check_maps(op: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
        dtype = f" {x.dtype}" if isinstance(x, Tensor) else ""
        raise ValueError(f"{op}: x must be a floating-point Tensor[N, C, H, W], got{dtype} {shape}")
    if x.shape[2] * x.shape[3] == 0:
        raise ValueError(f"{op}: x must have at least one position to pool, got shape {list(x.shape)}")


def global_avg_pool(x: Tensor) -> Tensor:
    """Mean over positions: Tensor[N, C, H, W] -> Tensor[N, C]."""
    if not torch.jit.is_scripting():  # FX: one node (TorchScript skips this block: is_scripting() is a static if)
        node = traced_call(global_avg_pool, x)
        if node is not None:
            return node
    _check_maps("global_avg_pool", x)
    return x.mean(dim=(2, 3))


def global_max_pool(x: Tensor) -> Tensor:
    """Max over positions: Tensor[N, C, H, W] -> Tensor[N, C] (the gradient goes to the maxima, shared evenly)."""
    if not torch.jit.is_scripting():  # FX: one node (TorchScript skips this block: is_scripting() is a static if)
        node = traced_call(global_max_pool, x)
        if node is not None:
            return node
    _check_maps("global_max_pool", x)
    return x.amax(dim=(2, 3))


@one_fx_node
def lse_pool(x: Tensor, beta: Union[float, Tensor] = 1.0) -> Tensor:
    """Log-sum-exp pooling ``(1 / beta) * log(mean over positions of exp(beta * x))``: Tensor[N, C, H, W] ->
    Tensor[N, C]; beta > 0 (a float or a Tensor, e.g. a learnable one).

    Computed as ``m + log1p(mean(expm1(beta * (x - m)))) / beta`` with m the max: nothing overflows however large
    beta or x, and for small beta the mean of expm1 keeps the digits that ``log(mean(exp(.)))`` would round away, so
    the result tends to the max as beta grows and to the mean as beta shrinks, in floating point too.
    """
    _check_maps("lse_pool", x)
    beta_value = beta if isinstance(beta, Tensor) else torch.tensor(float(beta))
    if beta_value.numel() != 1 or not bool(torch.isfinite(beta_value)) or not bool(beta_value > 0):
        raise ValueError(f"lse_pool: beta must be a finite number > 0, got {beta!r}")
    peak = x.detach().amax(dim=(2, 3), keepdim=True)  # the value does not depend on it: no gradient needed
    spread = torch.expm1(beta * (x - peak)).mean(dim=(2, 3))
    return peak.flatten(2).squeeze(2) + torch.log1p(spread) / beta


@one_fx_node
def class_activation_maps(
    features: Tensor, weight: Tensor, bias: Optional[Tensor] = None, size: Optional[Sequence[int]] = None
) -> Tensor:
    """Class activation maps (Zhou et al. 2016): ``M_c(x, y) = sum_k weight[c, k] * features[n, k, y, x]``
    (+ bias[c]) for a classifier ``logits = global_avg_pool(features) @ weight.T + bias``, so that the maps' mean over
    positions is the logits.

    Args:
        features (Tensor[N, D, h, w]): the last feature maps, before the global average pooling.
        weight (Tensor[K, D]): the classifier's weight; bias (Tensor[K], optional): its bias.
        size ((H, W), optional): upsample the maps bilinearly to this size (usually the image's).

    Returns:
        Tensor[N, K, h, w] or Tensor[N, K, H, W].
    """
    _check_maps("class_activation_maps", features)
    if weight.dim() != 2 or weight.shape[1] != features.shape[1]:
        raise ValueError(
            f"class_activation_maps: weight must have shape [K, D] with D = {features.shape[1]} "
            f"(the features' channels), got {list(weight.shape)}"
        )
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
        raise ValueError(
            f"class_activation_maps: bias must have shape [K] = [{weight.shape[0]}], got {list(bias.shape)}"
        )
    maps = torch.einsum("kd,ndhw->nkhw", weight, features)
    if bias is not None:
        maps = maps + bias.view(1, -1, 1, 1)
    if size is not None:
        maps = F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)
    return maps

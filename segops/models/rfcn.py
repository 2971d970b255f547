"""Position-sensitive RoI heads on segops.ps_roi_pool and segops.ps_roi_align: R-FCN's detection head (Dai et al.,
"R-FCN: Object Detection via Region-based Fully Convolutional Networks", NIPS 2016) and FCIS's inside/outside score
assembly (Li et al., "Fully Convolutional Instance-aware Semantic Segmentation", CVPR 2017).

Both count the background in num_classes, as torchvision's detection models do (PASCAL VOC: 21), and take boxes in
image coordinates, as Tensor[K, 5] rows (batch index, x1, y1, x2, y2) or one Tensor[L, 4] per image."""

import math
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from segops._fx import one_fx_node
from segops.models._checks import check_int as _check_int
from segops.ops.ps_roi import ps_roi_align, ps_roi_pool

__all__ = ["FCISHead", "RFCNHead"]

_POOLINGS = ("ps_roi_pool", "ps_roi_align")


@one_fx_node
def _check_features(owner: str, features: Tensor, in_channels: int) -> Tensor:
    """`features` if a Tensor[N, in_channels, H, W] (FX: one node, so tracing never reads a Proxy)."""
    if not isinstance(features, Tensor) or features.dim() != 4 or features.shape[1] != in_channels:
        got = list(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"{owner}: features must be a Tensor[N, {in_channels}, H, W] (in_channels), got {got}")
    return features


class _PositionSensitiveHead(nn.Module):
    """What R-FCN's and FCIS's heads share: their arguments' checks, the optional dimension-reducing 1x1 convolution
    (with ReLU; R-FCN's 1024-d on ResNet-101's 2048-d conv5), the score maps' 1x1 convolutions initialised as the
    authors' code does (normal, std 0.01; bias 0), and position-sensitive pooling of score maps to a grid of bins."""

    def __init__(
        self,
        owner: str,
        in_channels: int,
        num_classes: int,
        spatial_scale: float,
        bins: int,
        pooling: str,
        sampling_ratio: int,
        reduce_channels: Optional[int],
    ):
        super().__init__()
        _check_int(owner, "in_channels", in_channels)
        _check_int(owner, "num_classes", num_classes, 2, " (background included)")
        _check_int(owner, "bins", bins)
        if isinstance(spatial_scale, bool) or not isinstance(spatial_scale, (int, float)) or not spatial_scale > 0:
            raise ValueError(
                f"{owner}: spatial_scale must be a positive number (feature-map pixels per image pixel, e.g. 1/16), "
                f"got {spatial_scale!r}"
            )
        if not math.isfinite(spatial_scale):
            raise ValueError(f"{owner}: spatial_scale must be finite, got {spatial_scale!r}")
        if pooling not in _POOLINGS:
            raise ValueError(f"{owner}: pooling must be 'ps_roi_pool' or 'ps_roi_align', got {pooling!r}")
        if isinstance(sampling_ratio, bool) or not isinstance(sampling_ratio, int):
            raise ValueError(f"{owner}: sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
        if reduce_channels is not None:
            _check_int(owner, "reduce_channels", reduce_channels, 1, " or None")
        self.owner = owner
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.spatial_scale = float(spatial_scale)
        self.bins = bins
        self.pooling = pooling
        self.sampling_ratio = sampling_ratio
        if reduce_channels is None:
            self.reduce: nn.Module = nn.Identity()
            self.channels = in_channels
        else:
            self.reduce = nn.Sequential(self._conv(in_channels, reduce_channels), nn.ReLU(inplace=True))
            self.channels = reduce_channels

    @staticmethod
    def _conv(in_channels: int, out_channels: int) -> nn.Conv2d:
        conv = nn.Conv2d(in_channels, out_channels, 1)
        nn.init.normal_(conv.weight, std=0.01)
        nn.init.zeros_(conv.bias)
        return conv

    def _reduced(self, features: Tensor) -> Tensor:
        """The reduced features of a Tensor[N, in_channels, H, W]."""
        if not torch.jit.is_scripting():  # TorchScript: the convolution's own check
            features = _check_features(self.owner, features, self.in_channels)
        return self.reduce(features)

    def _pool(self, maps: Tensor, boxes: Union[Tensor, List[Tensor]], size: int) -> Tensor:
        """Position-sensitive pooling of maps [N, G * size * size, H, W] to [K, G, size, size]."""
        if self.pooling == "ps_roi_pool":
            return ps_roi_pool(maps, boxes, size, self.spatial_scale)
        return ps_roi_align(maps, boxes, size, self.spatial_scale, self.sampling_ratio)

    def extra_repr(self) -> str:
        text = f"num_classes={self.num_classes}, spatial_scale={self.spatial_scale}, bins={self.bins}, "
        text += f"pooling={self.pooling!r}"
        return text + (f", sampling_ratio={self.sampling_ratio}" if self.pooling == "ps_roi_align" else "")


class RFCNHead(_PositionSensitiveHead):
    """R-FCN's head (Dai et al. 2016): a 1x1 convolution producing k^2 (C + 1) position-sensitive score maps, a
    sibling 1x1 convolution producing 4 k^2 maps (class-agnostic box regression, the paper's) or 4 k^2 (C + 1)
    (class-specific), position-sensitive RoI pooling of each box over k x k bins, bin (i, j) of class c reading
    only class c's (i, j) map, and voting by averaging the k x k bins.

    Args:
        in_channels (int): the features' channels.
        num_classes (int): C + 1, the classes with the background (index 0, as torchvision's).
        spatial_scale (float): feature-map pixels per image pixel (R-FCN: 1/16).
        bins (int): k, the bins per side (R-FCN: 7).
        pooling (str): "ps_roi_pool" (R-FCN's average over rounded windows) or "ps_roi_align" (bilinear samples).
        sampling_ratio (int): ps_roi_align's samples per bin and axis (<= 0: adaptive); unused by ps_roi_pool.
        class_agnostic_boxes (bool): 4 box deltas per box (the paper's) or 4 per class.
        reduce_channels (int or None): a 1x1 convolution with ReLU first, to this many channels (the paper's 1024
            on ResNet-101's 2048); None: the score maps are computed on the features themselves.

    Every convolution starts as in the authors' code: weights normal with std 0.01, biases 0.

    Shapes: features Tensor[N, in_channels, H, W] and boxes Tensor[K, 5] or List[Tensor[L, 4]] give
    (scores Tensor[K, num_classes], the class logits, softmax being the loss's; deltas Tensor[K, 4], or
    Tensor[K, 4 * num_classes] with class c's at 4c .. 4c + 3, as torchvision's box predictors).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_scale: float,
        bins: int = 7,
        pooling: str = "ps_roi_pool",
        sampling_ratio: int = 2,
        class_agnostic_boxes: bool = True,
        reduce_channels: Optional[int] = None,
    ):
        super().__init__(
            "RFCNHead", in_channels, num_classes, spatial_scale, bins, pooling, sampling_ratio, reduce_channels
        )
        if not isinstance(class_agnostic_boxes, bool):
            raise ValueError(f"RFCNHead: class_agnostic_boxes must be a bool, got {class_agnostic_boxes!r}")
        self.class_agnostic_boxes = class_agnostic_boxes
        box_outputs = 4 if class_agnostic_boxes else 4 * num_classes
        self.cls_maps = self._conv(self.channels, bins * bins * num_classes)
        self.bbox_maps = self._conv(self.channels, bins * bins * box_outputs)

    def forward(self, features: Tensor, boxes: Union[Tensor, List[Tensor]]) -> Tuple[Tensor, Tensor]:
        x = self._reduced(features)
        scores = self._pool(self.cls_maps(x), boxes, self.bins).mean(dim=(2, 3))
        deltas = self._pool(self.bbox_maps(x), boxes, self.bins).mean(dim=(2, 3))
        return scores, deltas


class FCISHead(_PositionSensitiveHead):
    """FCIS's inside/outside score assembly (Li et al. 2017): a 1x1 convolution producing 2 k^2 (C + 1)
    position-sensitive score maps, an inside and an outside map per class and part of a k x k grid; for each box an
    M x M crop is assembled whose cell (i, j) is pooled from part (i k // M, j k // M)'s maps; then per class and
    pixel the mask logit is inside - outside (the softmax over (inside, outside) gives the inside probability
    sigmoid(inside - outside)), and the detection score is max(inside, outside) averaged over the M x M pixels.

    The assembly is one position-sensitive pooling to M x M bins (MXNet's PSROIPooling with group size k and pooled
    size M, as the authors' code calls it): the score maps are regrouped by an index_select so that bin (i, j) of
    inside/outside map g reads the copy of part (i k // M, j k // M)'s map at channel (g M + i) M + j, then pooled
    with ps_roi_pool or ps_roi_align to output size M. The regrouped maps hold (M / k)^2 times the score maps (9
    times at FCIS's M = 21, k = 7). FCIS's sibling box-regression branch (4 k^2 maps, voted as R-FCN's) is
    RFCNHead's and is not repeated here.

    Args:
        in_channels (int): the features' channels.
        num_classes (int): C + 1, the classes with the background (index 0).
        spatial_scale (float): feature-map pixels per image pixel (FCIS: 1/16).
        bins (int): k, the parts per side (FCIS: 7).
        mask_size (int): M >= k, the assembled crop's side (FCIS: 21).
        pooling (str): "ps_roi_pool" (the authors' average over rounded windows) or "ps_roi_align".
        sampling_ratio (int): ps_roi_align's samples per bin and axis (<= 0: adaptive); unused by ps_roi_pool.
        reduce_channels (int or None): a 1x1 convolution with ReLU first (FCIS's 1024 on ResNet-101's 2048).

    Every convolution starts as in the authors' code: weights normal with std 0.01, biases 0.

    Shapes: features Tensor[N, in_channels, H, W] and boxes Tensor[K, 5] or List[Tensor[L, 4]] give
    (mask_logits Tensor[K, num_classes, M, M], inside versus outside, for a per-pixel binary cross-entropy on the
    ground-truth class; scores Tensor[K, num_classes], the class logits).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_scale: float,
        bins: int = 7,
        mask_size: int = 21,
        pooling: str = "ps_roi_pool",
        sampling_ratio: int = 2,
        reduce_channels: Optional[int] = None,
    ):
        super().__init__(
            "FCISHead", in_channels, num_classes, spatial_scale, bins, pooling, sampling_ratio, reduce_channels
        )
        _check_int("FCISHead", "mask_size", mask_size, bins, " (bins: every part fills a cell)")
        self.mask_size = mask_size
        self.score_maps = self._conv(self.channels, 2 * num_classes * bins * bins)
        # Map g = 2 c + (0 inside, 1 outside) of part (a, b) is channel (g k + a) k + b of the score maps.
        part = torch.arange(mask_size) * bins // mask_size
        maps = torch.arange(2 * num_classes)[:, None, None]
        index = (maps * bins + part[None, :, None]) * bins + part[None, None, :]
        self.register_buffer("assembly_index", index.flatten(), persistent=False)

    def forward(self, features: Tensor, boxes: Union[Tensor, List[Tensor]]) -> Tuple[Tensor, Tensor]:
        maps = self.score_maps(self._reduced(features)).index_select(1, self.assembly_index)
        assembled = self._pool(maps, boxes, self.mask_size)  # [K, 2 (C + 1), M, M]
        pairs = assembled.unflatten(1, (self.num_classes, 2))
        inside, outside = pairs[:, :, 0], pairs[:, :, 1]
        return inside - outside, torch.maximum(inside, outside).mean(dim=(2, 3))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, mask_size={self.mask_size}"

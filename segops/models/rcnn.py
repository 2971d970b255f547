"""R-CNN heads on segops' RoI ops: Fast R-CNN's box head (RoIPool, Girshick 2015), Mask R-CNN's mask head
(RoIAlign, He et al. 2017), and torchvision's own Mask R-CNN running its RoI pooling on
segops.multi_scale_roi_align."""

from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn
from torchvision.ops import poolers

from segops.ops.roi_align import RoIAlign
from segops.ops.roi_pool import RoIPool


class FastRCNNBoxHead(nn.Module):
    """RoI pooling of each box to 7x7 (RoIPool, as Fast R-CNN; or RoIAlign), two fully connected layers, class scores
    and per-class box deltas: features [N, C, H, W] and boxes [K, 5] (batch index, x1, y1, x2, y2, in image
    coordinates) -> (scores [K, num_classes], deltas [K, 4 * num_classes])."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        spatial_scale: float,
        resolution: int = 7,
        representation: int = 1024,
        pooling: str = "roi_pool",
    ):
        super().__init__()
        if pooling not in ("roi_pool", "roi_align"):
            raise ValueError(f"FastRCNNBoxHead: pooling must be 'roi_pool' or 'roi_align', got {pooling!r}")
        self.pool = (
            RoIPool(resolution, spatial_scale)
            if pooling == "roi_pool"
            else RoIAlign(resolution, spatial_scale, sampling_ratio=2, aligned=True)
        )
        self.fc6 = nn.Linear(in_channels * resolution * resolution, representation)
        self.fc7 = nn.Linear(representation, representation)
        self.cls_score = nn.Linear(representation, num_classes)
        self.bbox_pred = nn.Linear(representation, 4 * num_classes)

    def forward(self, features: Tensor, boxes: Tensor) -> Tuple[Tensor, Tensor]:
        x = torch.flatten(self.pool(features, boxes), 1)
        x = torch.relu(self.fc7(torch.relu(self.fc6(x))))
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNMaskHead(nn.Module):
    """Mask R-CNN's mask branch: RoIAlign to 14x14, four 3x3 convolutions (256, ReLU), a 2x2 up-convolution and a
    1x1 classifier: features [N, C, H, W], boxes [K, 5] -> mask logits [K, num_classes, 28, 28]."""

    def __init__(
        self, in_channels: int, num_classes: int, spatial_scale: float, resolution: int = 14, channels: int = 256
    ):
        super().__init__()
        self.pool = RoIAlign(resolution, spatial_scale, sampling_ratio=2, aligned=True)
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.upsample = nn.Sequential(nn.ConvTranspose2d(channels, channels, 2, stride=2), nn.ReLU(inplace=True))
        self.predictor = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: Tensor, boxes: Tensor) -> Tensor:
        return self.predictor(self.upsample(self.convs(self.pool(features, boxes))))


class SegopsMultiScaleRoIAlign(poolers.MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (FPN level per box, torchvision's arithmetic: aligned=False) on
    segops.multi_scale_roi_align: every level in one pass."""

    def features_and_rois(
        self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]
    ) -> Tuple[List[Tensor], Tensor]:
        """torchvision's preparation: the named maps, their scales (inferred once from the sizes) and rois [K, 5]."""
        features = poolers._filter_input(x, self.featmap_names)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = poolers._setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        return features, poolers._convert_to_roi_format(boxes)

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        # Written for TorchScript too: a scripted torchvision detector keeps this module scriptable.
        features, rois = self.features_and_rois(x, boxes, image_shapes)
        scales, map_levels = self.scales, self.map_levels
        if scales is None or map_levels is None:
            raise ValueError("SegopsMultiScaleRoIAlign: scales and map_levels must be set up by features_and_rois")
        if len(features) == 1:
            levels = torch.zeros(len(rois), dtype=torch.int64, device=rois.device)
        else:
            levels = map_levels(boxes).to(torch.int64)
        return torch.ops.segops.multi_scale_roi_align(
            features,
            rois,
            levels,
            [float(s) for s in scales],
            self.output_size[0],
            self.output_size[1],
            self.sampling_ratio,
            False,
        )


def use_segops_roi_align(model: nn.Module) -> nn.Module:
    """Makes a torchvision detection model (e.g. `maskrcnn_resnet50_fpn`) pool its RoIs with segops, every FPN level
    in one segops.multi_scale_roi_align pass: each MultiScaleRoIAlign in it becomes a SegopsMultiScaleRoIAlign with
    the same settings. Returns the model."""
    for name, child in model.named_children():
        if isinstance(child, poolers.MultiScaleRoIAlign) and not isinstance(child, SegopsMultiScaleRoIAlign):
            replacement = SegopsMultiScaleRoIAlign(
                child.featmap_names,
                child.output_size,
                child.sampling_ratio,
                canonical_scale=child.canonical_scale,
                canonical_level=child.canonical_level,
            )
            setattr(model, name, replacement)
        else:
            use_segops_roi_align(child)
    return model

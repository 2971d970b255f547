"""PANet (Liu, Qi, Qin, Shi and Jia 2018): Mask R-CNN with bottom-up path augmentation (a second, bottom-up pyramid
N2..N5 built on the FPN's P2..P5) and adaptive feature pooling (every proposal pooled from every level with
segops.multi_scale_roi_align(mode="all"), each level through its own first layer, fused by element-wise max)."""

from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.models.rcnn import SegopsMultiScaleRoIAlign
from segops.ops.multi_scale_roi_align import multi_scale_roi_align

LEVELS = ("0", "1", "2", "3")  # torchvision's FPN outputs P2..P5; "pool" is P6, for the RPN only


class BottomUpPath(nn.Module):
    """N2 = P2; N(i+1) = ReLU(conv3x3(ReLU(conv3x3 stride 2 (Ni) + P(i+1)))), 256 channels; the RPN's extra level is
    recomputed from N5 (a stride-2 max pool, as FPN's). Wraps the FPN backbone: same output keys and channels."""

    def __init__(self, fpn_backbone: nn.Module, channels: int = 256):
        super().__init__()
        self.fpn_backbone = fpn_backbone
        self.out_channels = fpn_backbone.out_channels
        self.down = nn.ModuleList([nn.Conv2d(channels, channels, 3, stride=2, padding=1) for _ in LEVELS[1:]])
        self.fuse = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in LEVELS[1:]])

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        pyramid = self.fpn_backbone(images)
        augmented = [pyramid[LEVELS[0]]]
        for key, down, fuse in zip(LEVELS[1:], self.down, self.fuse):
            lateral = pyramid[key]
            reduced = F.relu(down(augmented[-1]))[..., : lateral.shape[-2], : lateral.shape[-1]]
            augmented.append(F.relu(fuse(reduced + lateral)))
        out = OrderedDict(zip(LEVELS, augmented))
        out["pool"] = F.max_pool2d(augmented[-1], 1, 2, 0)
        return out


class AdaptiveFeaturePooling(SegopsMultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign interface (scales inferred from the maps' sizes), pooling every box from every
    level in one segops.multi_scale_roi_align pass: [K, L, C, PH, PW]."""

    def forward(self, x: Dict[str, Tensor], boxes: List[Tensor], image_shapes: List[Tuple[int, int]]) -> Tensor:
        features, rois = self.features_and_rois(x, boxes, image_shapes)
        return multi_scale_roi_align(
            features,
            rois,
            self.output_size,
            [float(s) for s in self.scales],
            self.sampling_ratio,
            aligned=False,
            mode="all",
        )


class AdaptiveBoxHead(nn.Module):
    """The box branch's two fully connected layers with PANet's fusion: fc6 per level, element-wise max over levels,
    fc7: [K, L, C, 7, 7] -> [K, representation_size]."""

    def __init__(self, in_features: int, representation_size: int = 1024, levels: int = 4):
        super().__init__()
        self.fc6 = nn.ModuleList([nn.Linear(in_features, representation_size) for _ in range(levels)])
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, pooled: Tensor) -> Tensor:
        per_level = torch.stack([F.relu(fc(pooled[:, level].flatten(1))) for level, fc in enumerate(self.fc6)], dim=1)
        return F.relu(self.fc7(per_level.amax(dim=1)))


class AdaptiveMaskHead(nn.Module):
    """Mask R-CNN's four 3x3 convolutions with PANet's fusion after the first: conv1 per level, element-wise max,
    then conv2..conv4: [K, L, C, 14, 14] -> [K, 256, 14, 14]."""

    def __init__(self, channels: int = 256, levels: int = 4):
        super().__init__()
        self.first = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels)])
        self.rest = nn.Sequential(
            *[layer for _ in range(3) for layer in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))]
        )

    def forward(self, pooled: Tensor) -> Tensor:
        per_level = torch.stack([F.relu(conv(pooled[:, level])) for level, conv in enumerate(self.first)], dim=1)
        return self.rest(per_level.amax(dim=1))


def panet(num_classes: int, **detector_options) -> nn.Module:
    """PANet's instance segmentation network: torchvision's Mask R-CNN (ResNet-50 FPN, no download, num_classes with
    background) with BottomUpPath around its backbone and adaptive feature pooling in both heads. It is used as
    torchvision's detection models are: ``model(images, targets)`` -> losses, ``model(images)`` -> detections."""
    _check_int("panet", "num_classes", num_classes, 2, " (background included)")
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, **detector_options
    )
    model.backbone = BottomUpPath(model.backbone)
    heads = model.roi_heads
    heads.box_roi_pool = AdaptiveFeaturePooling(list(LEVELS), 7, 2)
    heads.box_head = AdaptiveBoxHead(256 * 7 * 7, heads.box_head.fc7.out_features)
    heads.mask_roi_pool = AdaptiveFeaturePooling(list(LEVELS), 14, 2)
    heads.mask_head = AdaptiveMaskHead()
    return model

"""PANet (Liu, Qi, Qin, Shi and Jia 2018): Mask R-CNN with bottom-up path augmentation (a second, bottom-up pyramid
N2..N5 built on the FPN's P2..P5), adaptive feature pooling (every proposal pooled from every level with
segops.multi_scale_roi_align(mode="all"), each level through its own first layer, fused by element-wise max) and
the mask branch's fully-connected fusion (a class-agnostic fc mask added to the FCN's per-class mask logits)."""

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.models.rcnn import BackboneWeights, SegopsMultiScaleRoIAlign, _maskrcnn_resnet50_fpn, use_segops_roi_align
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
    """The mask branch's shared trunk with PANet's fusion: conv1 per level, element-wise max over levels, then conv2
    and conv3 (3x3, `channels`, ReLU): [K, L, C, R, R] -> [K, channels, R, R], conv3's features, where the paper's
    FCN path (conv4, deconv) and its fully-connected path (conv4_fc, conv5_fc, fc) split (FusedMaskPredictor)."""

    def __init__(self, channels: int = 256, levels: int = 4):
        super().__init__()
        _check_int("AdaptiveMaskHead", "channels", channels)
        _check_int("AdaptiveMaskHead", "levels", levels)
        self.first = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in range(levels)])
        self.rest = nn.Sequential(
            *[layer for _ in range(2) for layer in (nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True))]
        )

    def forward(self, pooled: Tensor) -> Tensor:
        if pooled.dim() != 5 or pooled.shape[1] != len(self.first) or pooled.shape[2] != self.first[0].in_channels:
            raise ValueError(
                f"AdaptiveMaskHead: pooled must have shape [K, {len(self.first)}, {self.first[0].in_channels}, R, R] "
                f"(every box from every level), got {list(pooled.shape)}"
            )
        per_level = torch.stack([F.relu(conv(pooled[:, level])) for level, conv in enumerate(self.first)], dim=1)
        return self.rest(per_level.amax(dim=1))


class FusedMaskPredictor(nn.Module):
    """PANet's fully-connected fusion (Liu et al. 2018, Figure 4): the mask logits of the FCN path (conv4: 3x3,
    `channels`, ReLU; conv5_mask: 2x2 stride-2 deconvolution, ReLU; mask_fcn_logits: 1x1 to the classes, as
    torchvision's MaskRCNNPredictor) plus a class-agnostic foreground/background mask from the short path (conv4_fc:
    3x3, `channels`; conv5_fc: 3x3, `channels` / 2; each with ReLU; fc: one fully connected layer to (2R)^2, ReLU as
    in the authors' code), reshaped to 2R x 2R and added to every class's logits:
    conv3's features [K, in_channels, R, R] -> logits [K, num_classes, 2R, 2R] (R = 14: fc 128*14*14 -> 784)."""

    def __init__(self, in_channels: int, num_classes: int, resolution: int = 14, channels: int = 256):
        super().__init__()
        _check_int("FusedMaskPredictor", "in_channels", in_channels)
        _check_int("FusedMaskPredictor", "num_classes", num_classes)
        _check_int("FusedMaskPredictor", "resolution", resolution)
        _check_int("FusedMaskPredictor", "channels", channels, 2)
        self.in_channels, self.resolution, self.mask_size = in_channels, resolution, 2 * resolution
        self.conv4 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.conv5_mask = nn.ConvTranspose2d(channels, channels, 2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(channels, num_classes, 1)
        self.conv4_fc = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.conv5_fc = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.fc = nn.Linear(channels // 2 * resolution * resolution, self.mask_size * self.mask_size)
        for layer in (self.conv4, self.conv5_mask, self.mask_fcn_logits, self.conv4_fc, self.conv5_fc):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")  # torchvision's mask branch
        nn.init.normal_(self.fc.weight, std=0.01)  # the authors'
        nn.init.zeros_(self.fc.bias)

    def fcn_logits(self, x: Tensor) -> Tensor:
        """The FCN path: [K, in_channels, R, R] -> per-class logits [K, num_classes, 2R, 2R]."""
        return self.mask_fcn_logits(F.relu(self.conv5_mask(F.relu(self.conv4(x)))))

    def fc_mask(self, x: Tensor) -> Tensor:
        """The fully-connected path: [K, in_channels, R, R] -> class-agnostic logits [K, 1, 2R, 2R]."""
        flat = F.relu(self.conv5_fc(F.relu(self.conv4_fc(x)))).flatten(1)
        return F.relu(self.fc(flat)).view(x.shape[0], 1, self.mask_size, self.mask_size)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1:] != (self.in_channels, self.resolution, self.resolution):
            raise ValueError(
                f"FusedMaskPredictor: x must have shape [K, {self.in_channels}, {self.resolution}, {self.resolution}] "
                f"(the fc layer fixes the size), got {list(x.shape)}"
            )
        return self.fcn_logits(x) + self.fc_mask(x)


def panet(
    num_classes: int,
    *,
    weights_backbone: BackboneWeights = None,
    trainable_backbone_layers: Optional[int] = None,
    **detector_options,
) -> nn.Module:
    """PANet's instance segmentation network: torchvision's Mask R-CNN (ResNet-50 FPN, num_classes with background)
    with BottomUpPath around its backbone, adaptive feature pooling in both heads, the mask branch's fully-connected
    fusion (AdaptiveMaskHead, then FusedMaskPredictor as the mask predictor), and its RoI ops on segops
    (use_segops_roi_align: the mask targets cropped by segops.roi_align). It is used as torchvision's detection
    models are: ``model(images, targets)`` -> losses, ``model(images)`` -> detections (images: a list of
    Tensor[3, H, W] in 0..1; detections per image "boxes" [D, 4], "labels" [D], "scores" [D], "masks" [D, 1, H, W]).

    Args:
        num_classes (int): classes including the background (>= 2).
        weights_backbone: None (random), a torchvision ResNet50_Weights value (torchvision downloads it), or a
            torchvision ResNet-50 state_dict or its file (read locally). Given weights, the backbone is built as
            torchvision's builder builds it: FrozenBatchNorm2d, and the first layers frozen.
        trainable_backbone_layers (int, optional): with weights, how many of layer4, layer3, layer2, layer1, conv1
            train (0..5, default 3), as torchvision's; without, all do.
        detector_options: torchvision's MaskRCNN options (min_size, max_size, thresholds, ...).
    """
    _check_int("panet", "num_classes", num_classes, 2, " (background included)")
    model = _maskrcnn_resnet50_fpn(
        "panet", num_classes, weights_backbone, trainable_backbone_layers, **detector_options
    )
    model.backbone = BottomUpPath(model.backbone)
    heads = model.roi_heads
    heads.box_roi_pool = AdaptiveFeaturePooling(list(LEVELS), 7, 2)
    heads.box_head = AdaptiveBoxHead(256 * 7 * 7, heads.box_head.fc7.out_features)
    heads.mask_roi_pool = AdaptiveFeaturePooling(list(LEVELS), 14, 2)
    heads.mask_head = AdaptiveMaskHead()
    heads.mask_predictor = FusedMaskPredictor(256, num_classes)
    return use_segops_roi_align(model)

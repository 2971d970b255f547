"""PSPNet (Zhao et al. 2017): a dilated ResNet (output stride 8) and the pyramid pooling module (bins 1, 2, 3, 6)."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models.resnet import DilatedResNet, Weights
from segops.models._checks import check_int as _check_int


class PyramidPooling(nn.Module):
    """Average-pools the map to each bin size, reduces each to C/len(bins) channels (1x1, BN, ReLU), upsamples
    bilinearly and concatenates them with the map: [N, C, h, w] -> [N, 2C, h, w]."""

    def __init__(self, in_channels: int, bins=(1, 2, 3, 6)):
        super().__init__()
        reduced = in_channels // len(bins)
        self.bins = bins
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(in_channels, reduced, 1, bias=False), nn.BatchNorm2d(reduced), nn.ReLU(inplace=True)
                )
                for _ in bins
            ]
        )

    def forward(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        pooled = [
            F.interpolate(stage(F.adaptive_avg_pool2d(x, b)), size=size, mode="bilinear", align_corners=False)
            for b, stage in zip(self.bins, self.stages)
        ]
        return torch.cat([x] + pooled, dim=1)


class PSPNet(nn.Module):
    """PSPNet: [N, 3, H, W] -> logits [N, K, H, W] (the dilated backbone's atrous convolutions on segops)."""

    def __init__(self, num_classes: int, depth: int = 101, backbone: Weights = None, dropout: float = 0.1):
        super().__init__()
        _check_int("PSPNet", "num_classes", num_classes)
        self.backbone = DilatedResNet(depth, 8, backbone)
        self.head = nn.Sequential(
            PyramidPooling(2048),
            nn.Conv2d(4096, 512, 3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(512, num_classes, 1),
        )

    def forward(self, images: Tensor) -> Tensor:
        scores = self.head(self.backbone(images))
        return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


def pspnet(num_classes: int, depth: int = 101, backbone: Weights = None) -> PSPNet:
    """PSPNet (ResNet-101 unless depth=50); backbone: torchvision resnet weights (a state_dict or its file)."""
    return PSPNet(num_classes, depth, backbone)

"""PSPNet (Zhao et al. 2017): a dilated ResNet with a deep stem (output stride 8), the pyramid pooling module (bins
1, 2, 3, 6) and the deeply supervised auxiliary classifier on block 3 (its loss weighted 0.4 in training:
segops.losses.segmentation_loss)."""

from typing import Dict

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
    """PSPNet: images [N, in_channels, H, W] -> {"out": logits [N, K, H, W], "aux": logits [N, K, H, W]} (the
    dilated backbone's atrous convolutions on segops). "aux" is the paper's auxiliary classifier on block 3 (res4b22):
    3x3 convolution to 256 channels, batch norm, ReLU, dropout, 1x1 classifier; `aux=False` leaves it out.
    `deep_stem` (the paper's ResNet: three 3x3 convolutions in place of the 7x7) is on by default; torchvision's
    ResNet weights need `deep_stem=False`."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        backbone: Weights = None,
        dropout: float = 0.1,
        in_channels: int = 3,
        deep_stem: bool = True,
        aux: bool = True,
    ):
        super().__init__()
        _check_int("PSPNet", "num_classes", num_classes)
        self.backbone = DilatedResNet(depth, 8, backbone, in_channels, deep_stem=deep_stem)
        self.head = nn.Sequential(
            PyramidPooling(2048),
            nn.Conv2d(4096, 512, 3, padding=1, bias=False),
            nn.BatchNorm2d(512),
            nn.ReLU(inplace=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(512, num_classes, 1),
        )
        self.aux_classifier = (
            nn.Sequential(
                nn.Conv2d(1024, 256, 3, padding=1, bias=False),
                nn.BatchNorm2d(256),
                nn.ReLU(inplace=True),
                nn.Dropout2d(dropout),
                nn.Conv2d(256, num_classes, 1),
            )
            if aux
            else None
        )

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        block3, block4 = self.backbone.stages(images)
        size = images.shape[-2:]
        outputs = {"out": F.interpolate(self.head(block4), size=size, mode="bilinear", align_corners=False)}
        if self.aux_classifier is not None:
            aux = self.aux_classifier(block3)
            outputs["aux"] = F.interpolate(aux, size=size, mode="bilinear", align_corners=False)
        return outputs


def pspnet(
    num_classes: int,
    depth: int = 101,
    backbone: Weights = None,
    in_channels: int = 3,
    deep_stem: bool = True,
    aux: bool = True,
) -> PSPNet:
    """PSPNet (ResNet-101 unless depth=50, deep stem and auxiliary classifier unless told otherwise); backbone:
    torchvision resnet weights (a state_dict or its file; they need deep_stem=False)."""
    return PSPNet(num_classes, depth, backbone, in_channels=in_channels, deep_stem=deep_stem, aux=aux)

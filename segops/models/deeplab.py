"""DeepLab v2 (Chen et al. 2017: atrous ResNet-101, ASPP with rates 6/12/18/24, optional dense CRF) and v3 (Chen
et al. 2017: multi-grid, ASPP with image pooling, output stride 16 or 8) on segops.DilatedConv2d; the CRF is
segops.DenseCRF, as post-processing or trained end to end (CRF-as-RNN). Both return torchvision's
``{"out": logits}``."""

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.models.resnet import DilatedResNet, Weights
from segops.ops.dense_crf import DenseCRF
from segops.ops.dilated_conv import DilatedConv2d

# ImageNet's normalisation, which torchvision's backbones expect: the CRF needs the image back in 0..255.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DeepLabV2(nn.Module):
    """DeepLab v2: a dilated ResNet (output stride 8) and ASPP-L, four 3x3 atrous classifiers (rates 6, 12, 18, 24)
    whose scores are summed, upsampled bilinearly to the input: images [N, in_channels, H, W] ->
    {"out": logits [N, K, H, W]}.

    crf: None; "post" (DeepLab's fully-connected CRF with its published settings, a post-processing step: it runs
    in eval mode only, and training returns the network's logits, as DeepLab trains without it); or "rnn" (a
    learnable segops.DenseCRF, CRF-as-RNN, in training too). Where the CRF runs, "out" is the log of its label
    marginals: logits in the same sense (their softmax is the prediction; cross-entropy takes them as they are).
    The CRF needs the RGB image: pass it as `rgb` ([N, 3, H, W], 0..255), or the images are taken as
    ImageNet-normalised RGB and un-normalised.
    """

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        rates=(6, 12, 18, 24),
        crf: Optional[str] = None,
        backbone: Weights = None,
        in_channels: int = 3,
    ):
        super().__init__()
        _check_int("DeepLabV2", "num_classes", num_classes)
        if crf not in (None, "post", "rnn"):
            raise ValueError(f"DeepLabV2: crf must be None, 'post' or 'rnn', got {crf!r}")
        if crf is not None and in_channels != 3:
            raise ValueError(f"DeepLabV2: a CRF needs RGB images (in_channels 3), got in_channels={in_channels!r}")
        self.backbone = DilatedResNet(depth, 8, backbone, in_channels)
        self.aspp = nn.ModuleList([DilatedConv2d(2048, num_classes, 3, padding=r, dilation=r) for r in rates])
        self.crf_mode = crf
        if crf == "post":
            self.crf = DenseCRF.deeplab(num_classes)
        elif crf == "rnn":
            self.crf = DenseCRF(num_classes, num_iters=5)
        else:
            self.crf = None

    def forward(self, images: Tensor, rgb: Optional[Tensor] = None) -> Dict[str, Tensor]:
        features = self.backbone(images)
        scores = sum(branch(features) for branch in self.aspp)
        logits = F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)
        if self.crf is None or (self.crf_mode == "post" and self.training):
            return {"out": logits}
        rgb = rgb if rgb is not None else unnormalise(images)
        return {"out": self.crf(logits, rgb).clamp_min(1e-12).log()}


def unnormalise(images: Tensor) -> Tensor:
    """ImageNet-normalised images back to RGB in 0..255 (float)."""
    mean = images.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((images * std + mean) * 255).clamp(0, 255).detach()


class ASPP(nn.Module):
    """DeepLab v3's atrous spatial pyramid pooling: a 1x1 convolution, three 3x3 atrous convolutions and
    image-level pooling, each to 256 channels with batch norm and ReLU, concatenated and projected to 256."""

    def __init__(self, in_channels: int, rates, channels: int = 256):
        super().__init__()

        def branch(conv):
            return nn.Sequential(conv, nn.BatchNorm2d(channels), nn.ReLU(inplace=True))

        self.branches = nn.ModuleList(
            [branch(nn.Conv2d(in_channels, channels, 1, bias=False))]
            + [branch(DilatedConv2d(in_channels, channels, 3, padding=r, dilation=r, bias=False)) for r in rates]
        )
        self.pooling = branch(nn.Conv2d(in_channels, channels, 1, bias=False))
        self.project = branch(nn.Conv2d(channels * (len(rates) + 2), channels, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pooling(F.adaptive_avg_pool2d(x, 1)).expand(-1, -1, x.shape[2], x.shape[3])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabV3(nn.Module):
    """DeepLab v3 as the paper ("Rethinking Atrous Convolution", Chen et al. 2017) builds it: a dilated ResNet with
    multi-grid in block 4 (unit rates (1, 2, 4) times the stage's rate: dilations (2, 4, 8) at output stride 16,
    (4, 8, 16) at 8), ASPP (rates 6/12/18 at output stride 16, 12/24/36 at 8) with image pooling, projected by a
    1x1 convolution to 256 channels, then the final 1x1 classifier; upsampled bilinearly: images
    [N, in_channels, H, W] -> {"out": logits [N, K, H, W]}. `multi_grid=(1, 1, 1)` is the paper's plain setting;
    torchvision's deeplabv3_* (output stride 8, block 4 at (2, 4, 4), ASPP rates 12/24/36 and an extra 3x3
    convolution in the head) run on segops
    through use_segops_dilated_conv."""

    def __init__(
        self,
        num_classes: int,
        depth: int = 101,
        output_stride: int = 16,
        backbone: Weights = None,
        in_channels: int = 3,
        multi_grid: Sequence[int] = (1, 2, 4),
    ):
        super().__init__()
        _check_int("DeepLabV3", "num_classes", num_classes)
        self.backbone = DilatedResNet(depth, output_stride, backbone, in_channels, multi_grid=multi_grid)
        rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        self.head = nn.Sequential(ASPP(2048, rates), nn.Conv2d(256, num_classes, 1))

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        scores = self.head(self.backbone(images))
        return {"out": F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)}


def deeplabv2(
    num_classes: int, depth: int = 101, crf: Optional[str] = None, backbone: Weights = None, in_channels: int = 3
) -> DeepLabV2:
    """DeepLab v2 (ResNet-101 unless depth=50); crf None, "post" or "rnn"; backbone: torchvision resnet weights
    (a state_dict or its file)."""
    return DeepLabV2(num_classes, depth, crf=crf, backbone=backbone, in_channels=in_channels)


def deeplabv3(
    num_classes: int,
    depth: int = 101,
    output_stride: int = 16,
    backbone: Weights = None,
    in_channels: int = 3,
    multi_grid: Sequence[int] = (1, 2, 4),
) -> DeepLabV3:
    """DeepLab v3 (ResNet-101 unless depth=50, output stride 16 or 8, multi-grid (1, 2, 4) unless told otherwise);
    backbone as deeplabv2."""
    return DeepLabV3(num_classes, depth, output_stride, backbone, in_channels, multi_grid)

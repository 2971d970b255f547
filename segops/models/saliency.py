"""Salient-object detection networks: each maps images [N, 3, H, W] (any H, W >= 64) to saliency probabilities
[N, 1, H, W] in (0, 1).

- DCL (Li and Yu 2016): the pixel-level stream of deep contrast learning, a VGG16 whose multi-scale side features
  are fused by a 1x1 convolution into one sigmoid channel, optionally refined by segops' dense CRF.
- BASNet (Qin et al. 2019): predict (a ResNet-34 encoder-decoder with an atrous bridge on segops.DilatedConv2d and a
  supervised side output per stage), then refine (a residual refinement module), trained with the hybrid BCE +
  SSIM + IoU loss over every output (basnet_loss).
- PoolNet (Liu et al. 2019): a ResNet-50 feature pyramid with a global guidance module (pyramid pooling whose output
  guides every decoder level) and feature aggregation modules (multi-scale average pooling).
"""

from typing import List, Tuple

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F

from segops.losses import hybrid_loss
from segops.models.deeplab import unnormalise
from segops.models.fcn import vgg16_stages
from segops.ops.dense_crf import dense_crf
from segops.ops.dilated_conv import DilatedConv2d


def _conv_bn_relu(in_channels: int, out_channels: int, conv=nn.Conv2d, **options) -> nn.Sequential:
    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=options.pop("padding", 1), bias=False, **options),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _up(x: Tensor, size) -> Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class DCL(nn.Module):
    """DCL's pixel-level stream: VGG16 (base_width 64) with a side branch after each of its five stages (3x3 conv to
    `side_channels`, ReLU, bilinear upsampling to the image), the five concatenated and fused by a 1x1 convolution
    into one channel, then a sigmoid. With crf=True, evaluation refines the map with segops.dense_crf on
    (1 - p, p) and the image (`rgb` in 0..255, or the images un-normalised from ImageNet's statistics)."""

    def __init__(self, base_width: int = 64, side_channels: int = 32, crf: bool = False):
        super().__init__()
        self.stages = vgg16_stages(base_width)
        widths = [base_width * m for m in (1, 2, 4, 8, 8)]
        self.sides = nn.ModuleList(
            [nn.Sequential(nn.Conv2d(w, side_channels, 3, padding=1), nn.ReLU(inplace=True)) for w in widths]
        )
        self.fuse = nn.Conv2d(5 * side_channels, 1, 1)
        self.crf = crf

    def forward(self, images: Tensor, rgb: Tensor = None) -> Tensor:
        x, sides = images, []
        for stage, side in zip(self.stages, self.sides):
            x = stage(x)
            sides.append(_up(side(x), images.shape[-2:]))
        saliency = torch.sigmoid(self.fuse(torch.cat(sides, dim=1)))
        if not self.crf or self.training:
            return saliency
        rgb = rgb if rgb is not None else unnormalise(images)
        logits = torch.cat([torch.log1p(-saliency.clamp(max=1 - 1e-6)), saliency.clamp_min(1e-6).log()], dim=1)
        return dense_crf(logits, rgb)[:, 1:]


class ResidualRefinement(nn.Module):
    """BASNet's residual refinement module: a 4-stage encoder-decoder (64 channels) on the coarse map, whose output
    is added to it: the refined map is coarse + residual (before the sigmoid)."""

    def __init__(self, channels: int = 64, stages: int = 4):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1)
        self.down = nn.ModuleList([_conv_bn_relu(channels, channels) for _ in range(stages)])
        self.bottom = _conv_bn_relu(channels, channels)
        self.up = nn.ModuleList([_conv_bn_relu(2 * channels, channels) for _ in range(stages)])
        self.out = nn.Conv2d(channels, 1, 3, padding=1)

    def forward(self, coarse_logits: Tensor) -> Tensor:
        x, skips = self.stem(coarse_logits), []
        for down in self.down:
            x = down(x)
            skips.append(x)
            x = F.max_pool2d(x, 2, 2, ceil_mode=True)
        x = self.bottom(x)
        for up, skip in zip(self.up, reversed(skips)):
            x = up(torch.cat([_up(x, skip.shape[-2:]), skip], dim=1))
        return coarse_logits + self.out(x)


class BASNet(nn.Module):
    """BASNet: [N, 3, H, W] -> (refined saliency [N, 1, H, W], side outputs: a list of 6 [N, 1, H, W], bridge first
    then each decoder stage from coarse to fine, the last being the coarse map the refinement starts from). All are
    probabilities; train with basnet_loss on all of them, use the refined one.

    The predict module: torchvision's ResNet-34 body (no download) as the encoder (strides 2, 4, 8, 16, 32), a bridge of
    three 3x3 convolutions dilated 2 (segops.DilatedConv2d), and a decoder stage per encoder stage (its input
    concatenated with the upsampled deeper stage, three 3x3 convolutions), each with a 3x3 side output. The paper's
    encoder adds two stages of basic blocks below ResNet-34's; `width` is the decoder's channels."""

    def __init__(self, width: int = 64):
        super().__init__()
        resnet = torchvision.models.resnet34(weights=None)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu)
        self.encoder = nn.ModuleList(
            [nn.Sequential(resnet.maxpool, resnet.layer1), resnet.layer2, resnet.layer3, resnet.layer4]
        )
        self.bridge = nn.Sequential(
            *[_conv_bn_relu(512 if i == 0 else width, width, DilatedConv2d, padding=2, dilation=2) for i in range(3)]
        )
        encoder_widths = [64, 64, 128, 256, 512]  # stem, layer1 .. layer4
        self.decoder = nn.ModuleList(
            [
                nn.Sequential(_conv_bn_relu(width + w, width), _conv_bn_relu(width, width), _conv_bn_relu(width, width))
                for w in reversed(encoder_widths)
            ]
        )
        self.sides = nn.ModuleList([nn.Conv2d(width, 1, 3, padding=1) for _ in range(len(encoder_widths) + 1)])
        self.refine = ResidualRefinement()

    def forward(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        size = images.shape[-2:]
        features = [self.stem(images)]
        for stage in self.encoder:
            features.append(stage(features[-1]))
        x = self.bridge(features[-1])
        side_logits = [_up(self.sides[0](x), size)]
        for decoder, skip, side in zip(self.decoder, reversed(features), self.sides[1:]):
            x = decoder(torch.cat([_up(x, skip.shape[-2:]), skip], dim=1))
            side_logits.append(_up(side(x), size))
        refined = self.refine(side_logits[-1])
        return torch.sigmoid(refined), [torch.sigmoid(s) for s in side_logits]


def basnet_loss(outputs: Tuple[Tensor, List[Tensor]], target: Tensor) -> Tensor:
    """BASNet's deep supervision: the hybrid loss (BCE + SSIM + IoU, segops.losses.hybrid_loss) summed over the
    refined output and every side output; target [N, 1, H, W] in [0, 1]."""
    refined, sides = outputs
    return sum(hybrid_loss(output, target) for output in [refined, *sides])


class FeatureAggregation(nn.Module):
    """PoolNet's FAM: the map, plus its average pools at 2, 4 and 8 (each a 3x3 convolution, upsampled back), summed,
    then a 3x3 convolution."""

    def __init__(self, channels: int, scales=(2, 4, 8)):
        super().__init__()
        self.scales = scales
        self.convs = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1, bias=False) for _ in scales])
        self.out = _conv_bn_relu(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        total = x
        for scale, conv in zip(self.scales, self.convs):
            total = total + _up(conv(F.avg_pool2d(x, scale, scale, ceil_mode=True)), x.shape[-2:])
        return self.out(F.relu(total))


class PoolNet(nn.Module):
    """PoolNet: [N, 3, H, W] -> saliency [N, 1, H, W]. A ResNet-50 (torchvision's, no download) bottom-up; the global
    guidance module, a pyramid pooling module on its top (bins 1, 3, 5), whose output is upsampled and added to every
    top-down level (the global guiding flows); each level fused by a FAM; the finest level scored by a 1x1
    convolution and a sigmoid. `width`: the top-down channels."""

    def __init__(self, width: int = 128):
        super().__init__()
        resnet = torchvision.models.resnet50(weights=None)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)
        self.encoder = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in (256, 512, 1024, 2048)])
        self.ppm_bins = (1, 3, 5)
        self.ppm = nn.ModuleList([nn.Conv2d(2048, width, 1) for _ in self.ppm_bins] + [nn.Conv2d(2048, width, 1)])
        self.ppm_fuse = _conv_bn_relu(width * (len(self.ppm_bins) + 1), width)
        self.fams = nn.ModuleList([FeatureAggregation(width) for _ in range(4)])
        self.score = nn.Conv2d(width, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        features, x = [], self.stem(images)
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        top = features[-1]
        pooled = [_up(conv(F.adaptive_avg_pool2d(top, b)), top.shape[-2:]) for conv, b in zip(self.ppm, self.ppm_bins)]
        guide = self.ppm_fuse(torch.cat(pooled + [self.ppm[-1](top)], dim=1))
        x = None
        for lateral, fam, feature in zip(reversed(self.lateral), reversed(self.fams), reversed(features)):
            size = feature.shape[-2:]
            total = lateral(feature) + _up(guide, size)  # the global guiding flow reaches every level
            x = fam(total if x is None else total + _up(x, size))
        return torch.sigmoid(_up(self.score(x), images.shape[-2:]))


def dcl(base_width: int = 64, crf: bool = False) -> DCL:
    """DCL's pixel-level stream on VGG16's widths (base_width 64); crf=True refines at evaluation."""
    return DCL(base_width, crf=crf)


def basnet(width: int = 64) -> BASNet:
    """BASNet on a ResNet-34 encoder."""
    return BASNet(width)


def poolnet(width: int = 128) -> PoolNet:
    """PoolNet on a ResNet-50."""
    return PoolNet(width)

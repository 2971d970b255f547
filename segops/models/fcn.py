"""Fully convolutional networks (Long, Shelhamer and Darrell 2015): VGG16 convolutionised (fc6 a 7x7 convolution,
fc7 a 1x1), zero-initialised class scores, learnable 2x upsampling initialised to bilinear interpolation, skip
fusion from pool4 (FCN-16s) and pool3 (FCN-8s), and a fixed bilinear final upsampling; the paper's staged training
(32s, then 16s from it, then 8s) through `from_coarser`."""

from pathlib import Path
from typing import Dict, Optional, Union

import torch.nn.functional as F

import torch
from torch import Tensor, nn
from segops.models._checks import check_int as _check_int
from segops.models.resnet import adapt_input_weight, load_state
from segops.ops.dilated_conv import DilatedConv2d

# VGG16's convolution widths per stage, in units of its first width (64); each stage ends in a 2x2 max-pool.
VGG16_STAGES = ((1, 1), (2, 2), (4, 4, 4), (8, 8, 8), (8, 8, 8))


def vgg16_stages(base_width: int = 64, in_channels: int = 3) -> nn.ModuleList:
    """VGG16's five convolution stages (3x3 convolutions, padding 1, ReLU), each followed by a 2x2 max-pool that
    rounds up (ceil_mode) so that no input row or column is dropped; with base_width 64, torchvision's `features`
    layer for layer."""
    stages = nn.ModuleList()
    for multipliers in VGG16_STAGES:
        layers = []
        for width in (base_width * m for m in multipliers):
            layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            in_channels = width
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
        stages.append(nn.Sequential(*layers))
    return stages


def bilinear_kernel(channels: int, factor: int) -> Tensor:
    """The weight [C, C, 2f, 2f] of a transposed convolution (stride f, padding f/2) that upsamples each channel
    bilinearly by the even factor f (FCN's initialisation of its upsampling layers)."""
    size = 2 * factor
    center = factor - 0.5
    taps = 1 - (torch.arange(size, dtype=torch.float64) - center).abs() / factor
    kernel = (taps[:, None] * taps[None, :]).float()
    weight = torch.zeros(channels, channels, size, size)
    weight[range(channels), range(channels)] = kernel
    return weight


class FixedBilinearUpsampling(nn.Module):
    """A x factor bilinear upsampling of [N, C, h, w] to [N, C, h * f, w * f], not learned: the transposed
    convolution `upsampling` starts as, with its kernel a buffer (FCN's final upsampling, fixed in the paper)."""

    def __init__(self, channels: int, factor: int):
        super().__init__()
        self.channels, self.factor = channels, factor
        self.register_buffer("kernel", bilinear_kernel(1, factor).expand(channels, 1, -1, -1).clone(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        kernel = self.kernel.to(x.dtype)
        return F.conv_transpose2d(x, kernel, stride=self.factor, padding=self.factor // 2, groups=self.channels)


def upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learnable x factor upsampling of a [N, C, h, w] map to [N, C, h * f, w * f], initialised to bilinear."""
    layer = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(bilinear_kernel(channels, factor))
    return layer


class FCN(nn.Module):
    """FCN-32s, -16s or -8s (`stride` 32, 16 or 8) on a VGG16 backbone; images [N, in_channels, H, W] ->
    {"out": logits [N, K, H, W]}.

    As in the paper: the class scores (score_fr and the skip scores from pool4, pool3) start at zero, so FCN-16s
    begins as FCN-32s and FCN-8s as FCN-16s; the 2x upsamplings are learned from bilinear; the final upsampling is
    fixed bilinear (a buffer, no parameters). Fused maps are cropped to the skip's size and the output to the
    input's. `base_width` 64 is VGG16 (fc6/fc7 4096 wide); smaller widths scale every layer (fc6/fc7: 64 x
    base_width) for a cheaper network.
    """

    def __init__(
        self, num_classes: int, stride: int = 8, dropout: float = 0.5, base_width: int = 64, in_channels: int = 3
    ):
        super().__init__()
        if stride not in (8, 16, 32):
            raise ValueError(f"FCN: stride must be 8, 16 or 32, got {stride!r}")
        _check_int("FCN", "num_classes", num_classes)
        _check_int("FCN", "in_channels", in_channels)
        self.stride = stride
        self.stages = vgg16_stages(base_width, in_channels)
        top, fc = 8 * base_width, 64 * base_width
        # fc6/fc7 on segops' convolution: their weights (411 and 67 MB) outweigh their small maps' activations, where
        # segops' CPU convolution skips oneDNN's per-call weight reorders (docs/operators.md).
        self.fc6 = nn.Sequential(DilatedConv2d(top, fc, 7, padding=3), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.fc7 = nn.Sequential(DilatedConv2d(fc, fc, 1), nn.ReLU(inplace=True), nn.Dropout2d(dropout))
        self.score_fr = nn.Conv2d(fc, num_classes, 1)
        self.score_pool4 = nn.Conv2d(top, num_classes, 1) if stride <= 16 else None
        self.score_pool3 = nn.Conv2d(4 * base_width, num_classes, 1) if stride == 8 else None
        for score in (self.score_fr, self.score_pool4, self.score_pool3):
            if score is not None:
                nn.init.zeros_(score.weight)
                nn.init.zeros_(score.bias)
        self.upscore2 = upsampling(num_classes, 2) if stride <= 16 else None
        self.upscore_pool4 = upsampling(num_classes, 2) if stride == 8 else None
        self.upscore_final = FixedBilinearUpsampling(num_classes, stride)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        height, width = images.shape[-2:]
        x = images
        pooled = []
        for stage in self.stages:
            x = stage(x)
            pooled.append(x)
        score = self.score_fr(self.fc7(self.fc6(x)))
        if self.stride <= 16:
            skip = self.score_pool4(pooled[3])
            score = _crop(self.upscore2(score), skip) + skip
        if self.stride == 8:
            skip = self.score_pool3(pooled[2])
            score = _crop(self.upscore_pool4(score), skip) + skip
        return {"out": self.upscore_final(score)[..., :height, :width]}

    def from_coarser(self, coarser: "FCN") -> "FCN":
        """The paper's staged training: starts this FCN (16s or 8s) from a trained coarser one (32s or 16s) by
        copying every parameter they share (the backbone, fc6/fc7, score_fr, and the coarser's skip scores and
        upsamplings); the new skip scores stay zero. Returns self."""
        if coarser.stride <= self.stride:
            raise ValueError(
                f"FCN.from_coarser: coarser must have a larger stride than {self.stride}, got stride {coarser.stride}"
            )
        mine = self.state_dict()
        theirs = {k: v for k, v in coarser.state_dict().items() if k in mine}
        mismatched = [k for k, v in theirs.items() if v.shape != mine[k].shape]
        if mismatched:
            raise ValueError(f"FCN.from_coarser: parameters differ in shape (base_width, num_classes): {mismatched}")
        self.load_state_dict(theirs, strict=False)
        return self


def _crop(x: Tensor, like: Tensor) -> Tensor:
    return x[..., : like.shape[-2], : like.shape[-1]]


def load_vgg16_backbone(model: FCN, weights: Union[str, Path, dict]) -> FCN:
    """Loads torchvision's `vgg16` weights (a state_dict, or the file holding one: torch.save(
    torchvision.models.vgg16(weights=...).state_dict(), path)) into the FCN's convolutions and fc6/fc7 (the
    classifier's first two linear layers, reshaped to convolutions). Returns the model."""
    if model.fc7[0].out_channels != 4096:
        raise ValueError(
            f"load_vgg16_backbone: VGG16's weights need base_width 64 (fc7 4096 wide), got fc7 "
            f"{model.fc7[0].out_channels} wide"
        )
    state = load_state(weights)
    convs = [m for stage in model.stages for m in stage if isinstance(m, nn.Conv2d)]
    indices = sorted({int(key.split(".")[1]) for key in state if key.startswith("features.")})
    if len(indices) != len(convs):
        raise ValueError(f"load_vgg16_backbone: expected {len(convs)} convolutions in features.*, got {len(indices)}")
    with torch.no_grad():
        for conv, index in zip(convs, indices):
            conv.weight.copy_(adapt_input_weight(state[f"features.{index}.weight"], conv.in_channels))
            conv.bias.copy_(state[f"features.{index}.bias"])
        model.fc6[0].weight.copy_(state["classifier.0.weight"].view(4096, 512, 7, 7))
        model.fc6[0].bias.copy_(state["classifier.0.bias"])
        model.fc7[0].weight.copy_(state["classifier.3.weight"].view(4096, 4096, 1, 1))
        model.fc7[0].bias.copy_(state["classifier.3.bias"])
    return model


Backbone = Optional[Union[str, Path, dict]]


def _build(num_classes: int, stride: int, backbone: Backbone, **options) -> FCN:
    model = FCN(num_classes, stride, **options)
    return load_vgg16_backbone(model, backbone) if backbone is not None else model


def fcn32s(num_classes: int, backbone: Backbone = None, **options) -> FCN:
    """FCN-32s; `backbone`: torchvision vgg16 weights to start from (see load_vgg16_backbone; with in_channels other
    than 3 the first convolution is adapted, as segops.models.resnet.adapt_input_weight says); `options`: FCN's
    `dropout`, `base_width` and `in_channels`."""
    return _build(num_classes, 32, backbone, **options)


def fcn16s(num_classes: int, backbone: Backbone = None, **options) -> FCN:
    """FCN-16s (pool4 skip); arguments as fcn32s."""
    return _build(num_classes, 16, backbone, **options)


def fcn8s(num_classes: int, backbone: Backbone = None, **options) -> FCN:
    """FCN-8s (pool4 and pool3 skips); arguments as fcn32s."""
    return _build(num_classes, 8, backbone, **options)

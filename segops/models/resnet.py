"""Dilated ResNet backbones (DeepLab, PSPNet): torchvision's ResNet-50/101 with the strides of its last stages
replaced by dilation, every dilated 3x3 convolution running on segops.DilatedConv2d, and torchvision's
state_dicts loading unchanged (the module names and parameters are torchvision's)."""

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import torch
import torchvision
from torch import Tensor, nn

from segops.models._checks import check_int as _check_int
from segops.models.swap import use_segops_dilated_conv

Weights = Optional[Union[str, Path, dict]]


def load_state(weights: Union[str, Path, dict]) -> dict:
    """A state_dict, or the one saved in a file (torch.save(model.state_dict(), path)), on the CPU."""
    return weights if isinstance(weights, dict) else torch.load(weights, map_location="cpu", weights_only=True)


def adapt_input_weight(weight: Tensor, in_channels: int) -> Tensor:
    """A first convolution's weight [C_out, 3, kH, kW] (pretrained on RGB) for `in_channels` inputs, keeping what it
    learned: one channel takes the sum of the RGB filters (a gray image's response equals the RGB filters' on that
    image repeated), k channels take the RGB filters repeated cyclically and scaled by 3 / k, which keeps the
    response's scale (exactly, for a gray image repeated over the channels, where k is a multiple of 3)."""
    if in_channels == weight.shape[1]:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeated = torch.stack([weight[:, c % weight.shape[1]] for c in range(in_channels)], dim=1)
    return repeated * (weight.shape[1] / in_channels)


def adapt_input_conv(conv: nn.Conv2d, in_channels: int, pretrained: bool = True) -> nn.Conv2d:
    """`conv` for `in_channels` inputs: its pretrained filters adapted (adapt_input_weight), or, where it holds no
    pretrained weights, a fresh convolution initialised as torchvision initialises ResNet's (Kaiming normal, fan
    out); `conv` itself where it already takes `in_channels`."""
    if in_channels == conv.in_channels:
        return conv
    adapted = _like(conv, in_channels, conv.out_channels)
    if pretrained:
        with torch.no_grad():
            adapted.weight.copy_(adapt_input_weight(conv.weight, in_channels))
            if conv.bias is not None:
                adapted.bias.copy_(conv.bias)
    return adapted


def _like(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    """A convolution with `conv`'s geometry for other channel counts, initialised as torchvision's ResNets are."""
    fresh = nn.Conv2d(
        in_channels,
        out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    nn.init.kaiming_normal_(fresh.weight, mode="fan_out", nonlinearity="relu")
    if fresh.bias is not None:
        nn.init.zeros_(fresh.bias)
    return fresh


def deep_stem_layers(in_channels: int) -> nn.Sequential:
    """PSPNet's stem in place of ResNet's 7x7 convolution: three 3x3 convolutions (64 stride 2, 64, 128), each with
    batch norm and, but the last, ReLU (ResNet's own ReLU follows); [N, in_channels, H, W] -> [N, 128, H/2, W/2]."""
    layers = []
    for i, (c_in, c_out) in enumerate(((in_channels, 64), (64, 64), (64, 128))):
        conv = nn.Conv2d(c_in, c_out, 3, 2 if i == 0 else 1, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # torchvision's ResNet init
        layers += [conv, nn.BatchNorm2d(c_out)] + ([nn.ReLU(inplace=True)] if i < 2 else [])
    return nn.Sequential(*layers)


class DilatedResNet(nn.Module):
    """The convolutional body of a ResNet (no pooling head): [N, in_channels, H, W] -> [N, 2048, H/os, W/os]
    (rounded up), for output stride os 8 (layer3 and layer4 dilated 2 and 4) or 16 (layer4 dilated 2).

    By default the dilations are torchvision's (a dilated stage's first block keeps the previous stage's
    dilation). `multi_grid` (DeepLab v3's unit rates, e.g. (1, 2, 4)) sets layer4's three blocks to the stage's
    rate times each unit rate instead: (2, 4, 8) at output stride 16. `deep_stem` (PSPNet's) replaces the 7x7
    stem by three 3x3 convolutions to 128 channels, and layer1's first block takes 128 inputs; torchvision's
    7x7-stem weights cannot load into it. `weights`: a torchvision resnet state_dict (or its file); with
    `in_channels` other than 3 the first convolution is adapted (adapt_input_conv)."""

    def __init__(
        self,
        depth: int = 101,
        output_stride: int = 8,
        weights: Weights = None,
        in_channels: int = 3,
        multi_grid: Optional[Sequence[int]] = None,
        deep_stem: bool = False,
    ):
        super().__init__()
        if depth not in (50, 101):
            raise ValueError(f"DilatedResNet: depth must be 50 or 101, got {depth!r}")
        if output_stride not in (8, 16):
            raise ValueError(f"DilatedResNet: output_stride must be 8 or 16, got {output_stride!r}")
        _check_int("DilatedResNet", "in_channels", in_channels)
        if multi_grid is not None and (
            len(multi_grid) != 3
            or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in multi_grid)
        ):
            raise ValueError(f"DilatedResNet: multi_grid must be three ints >= 1 (layer4's blocks), got {multi_grid!r}")
        build = torchvision.models.resnet50 if depth == 50 else torchvision.models.resnet101
        net = build(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        if weights is not None:
            state = load_state(weights)
            if deep_stem:
                raise ValueError(
                    "DilatedResNet: deep_stem=True has no torchvision weights (their stem is one 7x7 convolution): "
                    "pass deep_stem=False to start from a torchvision resnet, or load a deep-stem state_dict into "
                    "the built model"
                )
            net.load_state_dict(state)
        if multi_grid is not None:
            rate = 2 if output_stride == 16 else 4
            for block, unit in zip(net.layer4, multi_grid):
                block.conv2.dilation = block.conv2.padding = (rate * unit, rate * unit)
        if deep_stem:
            net.conv1, net.bn1 = deep_stem_layers(in_channels), nn.Identity()
            first = net.layer1[0]
            first.conv1 = _like(first.conv1, 128, first.conv1.out_channels)
            first.downsample[0] = _like(first.downsample[0], 128, first.downsample[0].out_channels)
        else:
            net.conv1 = adapt_input_conv(net.conv1, in_channels, pretrained=weights is not None)
        use_segops_dilated_conv(net)
        self.depth, self.output_stride, self.in_channels = depth, output_stride, in_channels
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def stages(self, images: Tensor) -> Tuple[Tensor, Tensor]:
        """(layer3's output [N, 1024, H/os, W/os], layer4's [N, 2048, H/os, W/os]): the auxiliary heads' input and
        the body's output."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return x, self.layer4(x)

    def forward(self, images: Tensor) -> Tensor:
        return self.stages(images)[1]

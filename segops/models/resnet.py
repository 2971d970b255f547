"""Dilated ResNet backbones (DeepLab, PSPNet): torchvision's ResNet-50/101 with the strides of its last stages
replaced by dilation, every dilated 3x3 convolution running on segops.DilatedConv2d, and torchvision's
state_dicts loading unchanged (the module names and parameters are torchvision's)."""

from pathlib import Path
from typing import Optional, Union

import torch
import torchvision
from torch import Tensor, nn

from segops.models.swap import use_segops_dilated_conv

Weights = Optional[Union[str, Path, dict]]


class DilatedResNet(nn.Module):
    """The convolutional body of a ResNet (no pooling head): [N, 3, H, W] -> [N, 2048, H/os, W/os] (rounded up),
    for output stride os 8 (layer3 and layer4 dilated 2 and 4) or 16 (layer4 dilated 2)."""

    def __init__(self, depth: int = 101, output_stride: int = 8, weights: Weights = None):
        super().__init__()
        if depth not in (50, 101):
            raise ValueError(f"DilatedResNet: depth must be 50 or 101, got {depth!r}")
        if output_stride not in (8, 16):
            raise ValueError(f"DilatedResNet: output_stride must be 8 or 16, got {output_stride!r}")
        build = torchvision.models.resnet50 if depth == 50 else torchvision.models.resnet101
        net = build(weights=None, replace_stride_with_dilation=[False, output_stride == 8, True])
        if weights is not None:
            state = weights if isinstance(weights, dict) else torch.load(weights, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        use_segops_dilated_conv(net)
        self.depth, self.output_stride = depth, output_stride
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4

    def forward(self, images: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(images))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

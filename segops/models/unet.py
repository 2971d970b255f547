"""U-Net (Ronneberger, Fischer and Brox 2015): a contracting path of double 3x3 convolutions and max-pools, an
expanding path of 2x2 up-convolutions, each concatenated with the contracting path's map of its size."""

from typing import Dict

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from segops.models._checks import check_int as _check_int


def double_conv(in_channels: int, out_channels: int, batch_norm: bool = False) -> nn.Sequential:
    """Two 3x3 convolutions (padded) with ReLU, as the paper's; batch_norm adds batch norm after each (a common
    variant: the paper has none)."""
    layers = []
    for c_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(c_in, out_channels, 3, padding=1, bias=not batch_norm))
        layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """U-Net: images [N, in_channels, H, W] -> {"out": logits [N, K, H, W]}; `base_width` 64, `depth` 4 and no
    batch norm (`batch_norm=False`) are the paper's; in_channels 1 is its grayscale microscopy.

    Padded convolutions keep sizes (the paper's are unpadded, so it crops the copied maps to the smaller
    up-convolved ones); here a copied map is larger only where a max-pool dropped an odd row or column, and then
    the up-convolved map is padded by that row or column instead, so every input pixel keeps its own output."""

    def __init__(
        self, num_classes: int, base_width: int = 64, depth: int = 4, in_channels: int = 3, batch_norm: bool = False
    ):
        super().__init__()
        _check_int("UNet", "num_classes", num_classes)
        _check_int("UNet", "in_channels", in_channels)
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            [double_conv(in_channels, widths[0], batch_norm)]
            + [double_conv(widths[i], widths[i + 1], batch_norm) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.merge = nn.ModuleList([double_conv(2 * widths[i], widths[i], batch_norm) for i in reversed(range(depth))])
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        copied = []
        x = self.down[0](images)
        for down in self.down[1:]:
            copied.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, merge, skip in zip(self.up, self.merge, reversed(copied)):
            x = up(x)
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = merge(torch.cat([skip, x], dim=1))
        return {"out": self.classifier(x)}


def unet(
    num_classes: int, base_width: int = 64, depth: int = 4, in_channels: int = 3, batch_norm: bool = False
) -> UNet:
    """U-Net with the paper's widths (64 ... 1024) and no batch norm unless told otherwise."""
    return UNet(num_classes, base_width, depth, in_channels, batch_norm)

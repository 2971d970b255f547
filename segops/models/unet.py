"""U-Net (Ronneberger, Fischer and Brox 2015): a contracting path of double 3x3 convolutions and max-pools, an
expanding path of 2x2 up-convolutions, each concatenated with the contracting path's map of its size."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from segops.models._checks import check_int as _check_int


def double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net: [N, 3, H, W] -> logits [N, K, H, W]; `base_width` 64 and `depth` 4 are the paper's.

    Padded convolutions keep sizes (the paper's are unpadded, so it crops the copied maps to the smaller
    up-convolved ones); here a copied map is larger only where a max-pool dropped an odd row or column, and then
    the up-convolved map is padded by that row or column instead, so every input pixel keeps its own output."""

    def __init__(self, num_classes: int, base_width: int = 64, depth: int = 4):
        super().__init__()
        _check_int("UNet", "num_classes", num_classes)
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            [double_conv(3, widths[0])] + [double_conv(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.merge = nn.ModuleList([double_conv(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, images: Tensor) -> Tensor:
        copied = []
        x = self.down[0](images)
        for down in self.down[1:]:
            copied.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, merge, skip in zip(self.up, self.merge, reversed(copied)):
            x = up(x)
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = merge(torch.cat([skip, x], dim=1))
        return self.classifier(x)


def unet(num_classes: int, base_width: int = 64, depth: int = 4) -> UNet:
    """U-Net with the paper's widths (64 ... 1024) unless told otherwise."""
    return UNet(num_classes, base_width, depth)

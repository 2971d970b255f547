"""SegNet (Badrinarayanan, Kendall and Cipolla 2017): a VGG16 encoder (with batch normalisation) whose max-pools
keep their indices, and a mirrored decoder that upsamples with segops.max_unpool2d at those indices."""

from torch import Tensor, nn
from torch.nn import functional as F

from segops.ops.max_unpool import max_unpool2d

# Convolutions per stage, VGG16's; stage widths are base_width times these.
STAGE_CONVS = (2, 2, 3, 3, 3)
STAGE_MULTIPLIERS = (1, 2, 4, 8, 8)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class SegNet(nn.Module):
    """SegNet: [N, 3, H, W] -> logits [N, K, H, W]. `base_width` 64 is the paper's network; smaller widths make
    the same architecture cheaper. Each decoder stage unpools to the exact size its encoder stage pooled (odd
    sizes included), so the output is at the input size."""

    def __init__(self, num_classes: int, base_width: int = 64):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"SegNet: num_classes must be an int >= 1, got {num_classes!r}")
        widths = [base_width * m for m in STAGE_MULTIPLIERS]
        self.encoder = nn.ModuleList()
        in_channels = 3
        for convs, width in zip(STAGE_CONVS, widths):
            layers = [conv_bn_relu(in_channels if i == 0 else width, width) for i in range(convs)]
            self.encoder.append(nn.Sequential(*layers))
            in_channels = width
        # Decoder stage s mirrors encoder stage s: its convolutions keep the width but the last, which narrows to
        # the previous stage's width (the first stage keeps its own).
        self.decoder = nn.ModuleList()
        for stage in reversed(range(len(widths))):
            width = widths[stage]
            out_width = widths[stage - 1] if stage > 0 else width
            convs = STAGE_CONVS[stage]
            layers = [conv_bn_relu(width, width) for _ in range(convs - 1)] + [conv_bn_relu(width, out_width)]
            self.decoder.append(nn.Sequential(*layers))
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def forward(self, images: Tensor) -> Tensor:
        x = images
        pools = []
        for stage in self.encoder:
            x = stage(x)
            size = x.shape[-2:]
            x, indices = F.max_pool2d(x, 2, 2, return_indices=True)
            pools.append((indices, size))
        for stage, (indices, size) in zip(self.decoder, reversed(pools)):
            x = stage(max_unpool2d(x, indices, 2, output_size=size))
        return self.classifier(x)


def segnet(num_classes: int, base_width: int = 64) -> SegNet:
    """SegNet with VGG16's widths (base_width 64)."""
    return SegNet(num_classes, base_width)

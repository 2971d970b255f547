"""SegNet (Badrinarayanan, Kendall and Cipolla 2017): a VGG16 encoder (with batch normalisation) whose max-pools
keep their indices, and a mirrored decoder that upsamples with segops.max_unpool2d at those indices; and DeconvNet
(Noh, Hong and Han 2015), the same encoder-decoder with fc6/fc7 between and deconvolutions in the decoder."""

from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.ops.max_unpool import max_unpool2d

# Convolutions per stage, VGG16's; stage widths are base_width times these.
STAGE_CONVS = (2, 2, 3, 3, 3)
STAGE_MULTIPLIERS = (1, 2, 4, 8, 8)


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def deconv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """DeconvNet's layer: a 3x3 transposed convolution (stride 1, so the size is kept), batch norm, ReLU."""
    return nn.Sequential(
        nn.ConvTranspose2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """SegNet: [N, 3, H, W] -> logits [N, K, H, W]. `base_width` 64 is the paper's network; smaller widths make
    the same architecture cheaper. Each decoder stage unpools to the exact size its encoder stage pooled (odd
    sizes included), so the output is at the input size."""

    def __init__(self, num_classes: int, base_width: int = 64, decoder_layer=conv_bn_relu):
        super().__init__()
        _check_int(type(self).__name__, "num_classes", num_classes)
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
            layers = [decoder_layer(width, width) for _ in range(convs - 1)] + [decoder_layer(width, out_width)]
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
        x = self.middle(x)
        for stage, (indices, size) in zip(self.decoder, reversed(pools)):
            x = stage(max_unpool2d(x, indices, 2, output_size=size))
        return self.classifier(x)

    def middle(self, x: Tensor) -> Tensor:
        """Between the last pool and the first unpool: nothing in SegNet."""
        return x


class DeconvNet(SegNet):
    """DeconvNet (Noh, Hong and Han 2015): SegNet's shape with DeconvNet's layers: the VGG16 encoder (batch-
    normalised), fc6 (7x7) and fc7 (1x1) as convolutions and a 7x7 "deconvolution" back from fc6, then the mirrored
    decoder of unpooling (segops.max_unpool2d at the encoder's indices) and 3x3 deconvolutions, and a 1x1 classifier.
    The paper's fc6 is unpadded on 224x224 proposals (7x7 -> 1x1 -> 7x7); here fc6 and its deconvolution are padded
    (3), so any input size works and keeps its size. fc6/fc7 are 64 x base_width wide (4096 for VGG16's 64)."""

    def __init__(self, num_classes: int, base_width: int = 64):
        super().__init__(num_classes, base_width, decoder_layer=deconv_bn_relu)
        top, fc = STAGE_MULTIPLIERS[-1] * base_width, 64 * base_width
        self.fc6 = nn.Sequential(
            nn.Conv2d(top, fc, 7, padding=3, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True)
        )
        self.fc7 = nn.Sequential(nn.Conv2d(fc, fc, 1, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.deconv_fc6 = nn.Sequential(
            nn.ConvTranspose2d(fc, top, 7, padding=3, bias=False), nn.BatchNorm2d(top), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(base_width, num_classes, 1)

    def middle(self, x: Tensor) -> Tensor:
        return self.deconv_fc6(self.fc7(self.fc6(x)))


def deconvnet(num_classes: int, base_width: int = 64) -> DeconvNet:
    """DeconvNet with VGG16's widths (base_width 64)."""
    return DeconvNet(num_classes, base_width)


def segnet(num_classes: int, base_width: int = 64) -> SegNet:
    """SegNet with VGG16's widths (base_width 64)."""
    return SegNet(num_classes, base_width)

"""SegNet (Badrinarayanan, Kendall and Cipolla 2017): a VGG16 encoder (with batch normalisation) whose max-pools
keep their indices, and a mirrored decoder that upsamples with segops.max_unpool2d at those indices; and DeconvNet
(Noh, Hong and Han 2015), the same encoder-decoder with fc6/fc7 between and deconvolutions in the decoder."""

from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from segops.models._checks import check_int as _check_int
from segops.models.resnet import adapt_input_weight, load_state
from segops.ops.dilated_conv import DilatedConv2d
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
    """SegNet: images [N, in_channels, H, W] -> {"out": logits [N, K, H, W]}. `base_width` 64 is the paper's
    network; smaller widths make the same architecture cheaper. Each decoder stage unpools to the exact size its
    encoder stage pooled (odd sizes included), so the output is at the input size."""

    def __init__(self, num_classes: int, base_width: int = 64, decoder_layer=conv_bn_relu, in_channels: int = 3):
        super().__init__()
        _check_int(type(self).__name__, "num_classes", num_classes)
        _check_int(type(self).__name__, "in_channels", in_channels)
        widths = [base_width * m for m in STAGE_MULTIPLIERS]
        self.encoder = nn.ModuleList()
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

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
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
        return {"out": self.classifier(x)}

    def middle(self, x: Tensor) -> Tensor:
        """Between the last pool and the first unpool: nothing in SegNet."""
        return x


class DeconvNet(SegNet):
    """DeconvNet (Noh, Hong and Han 2015): SegNet's shape with DeconvNet's layers: the VGG16 encoder (batch-
    normalised), fc6 (7x7) and fc7 (1x1) as convolutions and a 7x7 "deconvolution" back from fc6, then the mirrored
    decoder of unpooling (segops.max_unpool2d at the encoder's indices) and 3x3 deconvolutions, and a 1x1 classifier.
    The paper's fc6 is unpadded on 224x224 proposals (7x7 -> 1x1 -> 7x7); here fc6 and its deconvolution are padded
    (3), so any input size works and keeps its size. fc6/fc7 are 64 x base_width wide (4096 for VGG16's 64)."""

    def __init__(self, num_classes: int, base_width: int = 64, in_channels: int = 3):
        super().__init__(num_classes, base_width, decoder_layer=deconv_bn_relu, in_channels=in_channels)
        top, fc = STAGE_MULTIPLIERS[-1] * base_width, 64 * base_width
        # fc6/fc7 on segops' convolution, as FCN's (models/fcn.py): weights that outweigh their maps' activations.
        self.fc6 = nn.Sequential(
            DilatedConv2d(top, fc, 7, padding=3, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True)
        )
        self.fc7 = nn.Sequential(DilatedConv2d(fc, fc, 1, bias=False), nn.BatchNorm2d(fc), nn.ReLU(inplace=True))
        self.deconv_fc6 = nn.Sequential(
            nn.ConvTranspose2d(fc, top, 7, padding=3, bias=False), nn.BatchNorm2d(top), nn.ReLU(inplace=True)
        )
        self.classifier = nn.Conv2d(base_width, num_classes, 1)

    def middle(self, x: Tensor) -> Tensor:
        return self.deconv_fc6(self.fc7(self.fc6(x)))


def load_vgg16_bn_encoder(model: SegNet, weights: Union[str, Path, dict]) -> SegNet:
    """Loads torchvision's `vgg16_bn` weights (a state_dict, or its file) into the encoder of a SegNet or DeconvNet
    with base_width 64: each convolution and its batch norm. The encoder's convolutions have no bias (the batch
    norm after them makes one redundant); VGG16-BN's bias b is folded into the running mean (mean - b), which
    leaves the layer's output unchanged in eval mode, and in training mode a constant shift cancels in the batch
    mean anyway. With in_channels other than 3 the first convolution is adapted (adapt_input_weight). Returns the
    model."""
    pairs = [(layer[0], layer[1]) for stage in model.encoder for layer in stage]
    state = load_state(weights)
    indices = sorted(
        {int(key.split(".")[1]) for key in state if key.startswith("features.") and key.endswith("running_var")}
    )
    if len(indices) != len(pairs) or pairs[-1][0].out_channels != 512:
        raise ValueError(
            f"load_vgg16_bn_encoder: expected torchvision's vgg16_bn ({len(pairs)} batch norms in features.*) and a "
            f"model with base_width 64, got {len(indices)} batch norms and a last encoder width of "
            f"{pairs[-1][0].out_channels}"
        )
    with torch.no_grad():
        for (conv, bn), bn_index in zip(pairs, indices):
            conv_key, bn_key = f"features.{bn_index - 1}", f"features.{bn_index}"
            conv.weight.copy_(adapt_input_weight(state[f"{conv_key}.weight"], conv.in_channels))
            bn.weight.copy_(state[f"{bn_key}.weight"])
            bn.bias.copy_(state[f"{bn_key}.bias"])
            bn.running_mean.copy_(state[f"{bn_key}.running_mean"] - state[f"{conv_key}.bias"])
            bn.running_var.copy_(state[f"{bn_key}.running_var"])
    return model


Backbone = Optional[Union[str, Path, dict]]


def deconvnet(num_classes: int, base_width: int = 64, backbone: Backbone = None, in_channels: int = 3) -> DeconvNet:
    """DeconvNet with VGG16's widths (base_width 64); `backbone`: torchvision vgg16_bn weights for the encoder
    (load_vgg16_bn_encoder)."""
    model = DeconvNet(num_classes, base_width, in_channels)
    return load_vgg16_bn_encoder(model, backbone) if backbone is not None else model


def segnet(num_classes: int, base_width: int = 64, backbone: Backbone = None, in_channels: int = 3) -> SegNet:
    """SegNet with VGG16's widths (base_width 64); `backbone`: torchvision vgg16_bn weights for the encoder
    (load_vgg16_bn_encoder)."""
    model = SegNet(num_classes, base_width, in_channels=in_channels)
    return load_vgg16_bn_encoder(model, backbone) if backbone is not None else model

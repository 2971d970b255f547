"""Salient-object detection networks: each maps images [N, in_channels, H, W] (in_channels 3 by default; any H,
W >= 64) to saliency probabilities [N, 1, H, W] in (0, 1). Every builder takes `backbone`, the ImageNet weights of
its torchvision backbone (a state_dict, or the file that torch.save wrote it to; nothing is downloaded), and
`in_channels`: with in_channels other than 3 a pretrained first convolution is adapted by
segops.models.resnet.adapt_input_weight (one channel: the sum of the RGB filters; k channels: the RGB filters
repeated cyclically and scaled by 3 / k).

- DCL (Li and Yu, CVPR 2016): deep contrast learning's two streams on VGG16, the pixel-level multi-scale stream (a
  one-channel side output per stage, fused by a 1x1 convolution) and the segment-wise spatial pooling stream (each
  segment's conv5_3 features, and their contrast with its surroundings and the whole image, scored by fully connected
  layers), fused by a 1x1 convolution; optionally refined by segops' dense CRF.
- BASNet (Qin et al., CVPR 2019): predict (an input convolution, ResNet-34's four stages and two more stages of basic
  blocks, an atrous bridge on segops.DilatedConv2d, a decoder stage per encoder stage as wide as it, a supervised side
  output for the bridge and each decoder stage), then refine (a residual refinement module); 87.05M parameters, the
  paper's 87.06M. Trained with the hybrid BCE + SSIM + IoU loss over all 8 outputs (basnet_loss).
- PoolNet (Liu et al., CVPR 2019): a ResNet-50 feature pyramid with a global guidance module (pyramid pooling whose
  output guides every decoder level) and feature aggregation modules (multi-scale average pooling).
"""

from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torchvision
from torch import Tensor, nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock

from segops._fx import one_fx_node
from segops.losses import hybrid_loss
from segops.models._checks import check_int as _check_int
from segops.models.deeplab import unnormalise
from segops.models.fcn import vgg16_stages
from segops.models.resnet import Weights, adapt_input_conv, adapt_input_weight, load_state
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


# ----------------------------------------------------------------------------------------------- argument checks


def _check_backbone(owner: str, backbone) -> None:
    if backbone is not None and not isinstance(backbone, (str, Path, dict)):
        raise ValueError(
            f"{owner}: backbone must be None, a torchvision state_dict or the path of the file holding one, got "
            f"{type(backbone).__name__}"
        )


def _load_torchvision(owner: str, model: nn.Module, backbone, name: str) -> None:
    """Loads `backbone` into the torchvision `model` (strict: every key of torchvision's `name`)."""
    try:
        model.load_state_dict(load_state(backbone))
    except RuntimeError as error:
        raise ValueError(
            f"{owner}: backbone must hold torchvision {name}'s state_dict, got one that does not load: {error}"
        ) from None


@one_fx_node
def _check_images(owner: str, images: Tensor, in_channels: int) -> Tensor:
    """`images` if a floating-point Tensor[N, in_channels, H, W] (FX: one node, so tracing never reads a Proxy)."""
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] != in_channels:
        got = list(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"{owner}: images must be a Tensor[N, {in_channels}, H, W] (in_channels), got {got}")
    if not images.is_floating_point():
        raise ValueError(f"{owner}: images must be floating point, got {images.dtype}")
    return images


# --------------------------------------------------------------------------------------------------------- DCL


def grid_segments(height: int, width: int, cell: int = 16, device=None) -> Tensor:
    """DCL's segments where no superpixels are given: a regular grid of `cell` x `cell` squares (the last row and
    column of squares cut by the image's edge), numbered row by row: Tensor[height, width] (int64) with
    ``label[y, x] = (y // cell) * ceil(width / cell) + x // cell``."""
    for name, value in (("height", height), ("width", width), ("cell", cell)):
        _check_int("grid_segments", name, value)
    return _grid(height, width, cell, device)


def _grid(height: int, width: int, cell: int, device=None) -> Tensor:
    rows = torch.arange(height, device=device) // cell
    cols = torch.arange(width, device=device) // cell
    return rows[:, None] * ((width + cell - 1) // cell) + cols[None, :]


@one_fx_node
def _segment_labels(segments: Optional[Tensor], images: Tensor, cell: int) -> Tuple[Tensor, int]:
    """(labels [N, H, W] in 0..K-1, K): `segments` relabelled consecutively over the batch, or the grid."""
    n, height, width = images.shape[0], images.shape[2], images.shape[3]
    if segments is None:
        count = ((height + cell - 1) // cell) * ((width + cell - 1) // cell)
        return _grid(height, width, cell, images.device).expand(n, height, width), count
    if (
        not isinstance(segments, Tensor)
        or segments.shape != (n, height, width)
        or segments.is_floating_point()
        or segments.is_complex()
        or segments.dtype == torch.bool
    ):
        got = f"{segments.dtype} {list(segments.shape)}" if isinstance(segments, Tensor) else type(segments).__name__
        raise ValueError(f"DCL: segments must be an integer Tensor[N, H, W] = {[n, height, width]}, got {got}")
    if segments.numel() and int(segments.min()) < 0:
        raise ValueError(f"DCL: segments must be labels >= 0, got a minimum of {int(segments.min())}")
    values, labels = torch.unique(segments.to(images.device), return_inverse=True)
    return labels, values.numel()


@one_fx_node
def _segment_descriptors(features: Tensor, labels: Tensor, count: int, stride: int) -> Tensor:
    """Each segment's descriptor [N, count, 3C], as SegmentPooling describes it (FX: one node; under torch.export
    and torch.compile, `count` may be symbolic: the grid's)."""
    n, channels, h, w = features.shape
    height, width = labels.shape[-2:]
    exact = features.to(torch.promote_types(features.dtype, torch.float32))  # means in float32 at least
    rows = (torch.arange(height, device=labels.device) // stride).clamp(max=h - 1)
    cols = (torch.arange(width, device=labels.device) // stride).clamp(max=w - 1)
    cell = (rows[:, None] * w + cols[None, :]).reshape(1, -1).expand(n, -1)
    flat = labels.reshape(n, -1)
    # Pixels of each segment in each feature cell (integers: exact in float32 up to 2^24 pixels).
    counts = torch.zeros(n, count * h * w, dtype=exact.dtype, device=features.device).scatter_add_(
        1, flat * (h * w) + cell, torch.ones(flat.shape, dtype=exact.dtype, device=features.device)
    )
    counts = counts.view(n, count, h * w)
    own = torch.bmm(counts / counts.sum(2, keepdim=True).clamp_min(1), exact.flatten(2).transpose(1, 2))
    # The bounding box of each segment, in feature cells (a segment with no pixels gets cell (0, 0); it is not used).
    present = counts.sum(2) > 0
    cell_rows = rows[:, None].expand(height, width).reshape(1, -1).expand(n, -1)
    cell_cols = cols[None, :].expand(height, width).reshape(1, -1).expand(n, -1)
    boxes = []
    for coordinate, size in ((cell_rows, h), (cell_cols, w)):
        low = torch.full((n, count), size, device=labels.device).scatter_reduce(1, flat, coordinate, "amin")
        high = torch.full((n, count), -1, device=labels.device).scatter_reduce(1, flat, coordinate, "amax")
        low, high = torch.where(present, low, 0), torch.where(present, high, 0)
        extent = high - low + 1
        boxes.append(((low - extent).clamp(min=0), (high + extent).clamp(max=size - 1)))
    (top, bottom), (left, right) = boxes
    # The boxes' sums from the integral image [N, C, h + 1, w + 1].
    integral = F.pad(exact.cumsum(2).cumsum(3), (1, 0, 1, 0)).flatten(2)

    def corner(r: Tensor, c: Tensor) -> Tensor:
        return integral.gather(2, (r * (w + 1) + c)[:, None, :].expand(-1, channels, -1))

    box_sum = corner(bottom + 1, right + 1) - corner(top, right + 1) - corner(bottom + 1, left) + corner(top, left)
    area = ((bottom - top + 1) * (right - left + 1))[:, None, :]
    around = (box_sum / area).transpose(1, 2)
    whole = exact.mean((2, 3))[:, None, :]
    descriptor = torch.cat([own, own - around, own - whole.expand_as(own)], dim=2)
    return descriptor.to(features.dtype)


class SegmentPooling(nn.Module):
    """DCL's segment-wise spatial pooling stream, after the segments: features Tensor[N, C, h, w] at `stride` (h =
    ceil(H / stride), as VGG16's conv5_3 at stride 16; pixel (y, x) lies in cell (y // stride, x // stride)), labels
    Tensor[N, H, W] (int64, 0..count-1) and count -> segment-level logits Tensor[N, 1, H, W], constant over each
    segment.

    Each segment is described by 3C numbers: its own features (the mean of the cells it covers, each weighted by its
    pixels there), those minus its surroundings' (the mean of the cells in its bounding box grown by the box's own
    height and width on every side, clipped to the map) and those minus the whole image's (the mean of all cells).
    Three fully connected layers (3C -> width -> width -> 1, ReLU between) score it, and the score is painted over
    the segment's pixels."""

    def __init__(self, channels: int, width: int = 256, stride: int = 16):
        super().__init__()
        _check_int("SegmentPooling", "channels", channels)
        _check_int("SegmentPooling", "width", width)
        _check_int("SegmentPooling", "stride", stride)
        self.channels, self.width, self.stride = channels, width, stride
        self.classifier = nn.Sequential(
            nn.Linear(3 * channels, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, width),
            nn.ReLU(inplace=True),
            nn.Linear(width, 1),
        )

    def forward(self, features: Tensor, labels: Tensor, count: int) -> Tensor:
        scores = self.classifier(_segment_descriptors(features, labels, count, self.stride)).squeeze(2)
        return scores.gather(1, labels.reshape(labels.shape[0], -1)).view_as(labels).unsqueeze(1)

    def extra_repr(self) -> str:
        return f"channels={self.channels}, width={self.width}, stride={self.stride}"


class DCL(nn.Module):
    """DCL, deep contrast learning (Li and Yu 2016): images [N, in_channels, H, W] -> saliency [N, 1, H, W].

    The pixel-level stream: VGG16 (base_width 64; smaller widths scale every layer) with a side branch after each
    of its five stages (the paper's three layers: a 3x3 convolution to `side_channels`, ReLU, a 1x1 convolution,
    ReLU, a 1x1 convolution to one channel), each upsampled bilinearly to the image and the five fused by a 1x1
    convolution into one map of logits.

    The segment-wise spatial pooling stream (SegmentPooling): VGG16's conv5_3 features (stride 16) pooled over each
    segment, with the segment's contrast against its surroundings and the whole image, scored by fully connected
    layers (`segment_width` wide) into one logit per segment. The paper's segments are SLIC superpixels; segops
    adds no dependency for them, so `segments` (an integer label map [N, H, W], e.g. from
    skimage.segmentation.slic) is an argument of forward, and without it the image is cut into a regular grid of
    `grid_cell`-pixel squares (grid_segments): an approximation of superpixels that follows no image edge.

    The two maps are fused by a 1x1 convolution (2 -> 1, initialised to their mean) and a sigmoid. With crf=True,
    evaluation refines the map with segops.dense_crf on (1 - p, p) and the image (`rgb` in 0..255; without it the
    images are un-normalised from ImageNet's statistics, which needs in_channels 3).

    `backbone`: torchvision vgg16 weights (a state_dict or its file; `features.*` is used) for the 13 convolutions,
    which needs base_width 64; with in_channels other than 3 the first is adapted (adapt_input_weight)."""

    def __init__(
        self,
        base_width: int = 64,
        side_channels: int = 128,
        crf: bool = False,
        in_channels: int = 3,
        backbone: Weights = None,
        segment_width: int = 256,
        grid_cell: int = 16,
    ):
        super().__init__()
        for name, value in (
            ("base_width", base_width),
            ("side_channels", side_channels),
            ("in_channels", in_channels),
            ("segment_width", segment_width),
            ("grid_cell", grid_cell),
        ):
            _check_int("DCL", name, value)
        if not isinstance(crf, bool):
            raise ValueError(f"DCL: crf must be a bool, got {crf!r}")
        _check_backbone("DCL", backbone)
        if backbone is not None and base_width != 64:
            raise ValueError(f"DCL: backbone (VGG16's weights) needs base_width 64, got base_width={base_width!r}")
        self.in_channels, self.grid_cell, self.crf = in_channels, grid_cell, crf
        self.stages = vgg16_stages(base_width, in_channels)
        widths = [base_width * m for m in (1, 2, 4, 8, 8)]
        self.sides = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(w, side_channels, 3, padding=1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(side_channels, side_channels, 1),
                    nn.ReLU(inplace=True),
                    nn.Conv2d(side_channels, 1, 1),
                )
                for w in widths
            ]
        )
        self.fuse = nn.Conv2d(len(widths), 1, 1)
        self.segment_stream = SegmentPooling(8 * base_width, segment_width, stride=16)
        self.fuse_streams = nn.Conv2d(2, 1, 1)
        with torch.no_grad():
            self.fuse_streams.weight.fill_(0.5)
            self.fuse_streams.bias.zero_()
        if backbone is not None:
            self._load_vgg16(load_state(backbone))

    def _load_vgg16(self, state: dict) -> None:
        convs = [m for stage in self.stages for m in stage if isinstance(m, nn.Conv2d)]
        indices = sorted({int(key.split(".")[1]) for key in state if key.startswith("features.")})
        if len(indices) != len(convs):
            raise ValueError(
                f"DCL: backbone must hold torchvision vgg16's state_dict ({len(convs)} convolutions in features.*), "
                f"got {len(indices)}"
            )
        with torch.no_grad():
            for conv, index in zip(convs, indices):
                conv.weight.copy_(adapt_input_weight(state[f"features.{index}.weight"], conv.in_channels))
                conv.bias.copy_(state[f"features.{index}.bias"])

    def streams(self, images: Tensor, segments: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """(pixel-level logits [N, 1, H, W], segment-level logits [N, 1, H, W]) before their fusion; `segments` as
        forward's."""
        images = _check_images("DCL", images, self.in_channels)
        size = images.shape[-2:]
        x, sides, conv5 = images, [], images
        for index, (stage, side) in enumerate(zip(self.stages, self.sides)):
            if index == len(self.stages) - 1:  # keep conv5_3, before the last pool, for the segment stream
                *body, pool = stage
                for layer in body:
                    x = layer(x)
                conv5, x = x, pool(x)
            else:
                x = stage(x)
            sides.append(_up(side(x), size))
        labels, count = _segment_labels(segments, images, self.grid_cell)
        return self.fuse(torch.cat(sides, dim=1)), self.segment_stream(conv5, labels, count)

    def forward(self, images: Tensor, rgb: Optional[Tensor] = None, segments: Optional[Tensor] = None) -> Tensor:
        """images Tensor[N, in_channels, H, W]; rgb Tensor[N, 3, H, W] in 0..255 (the CRF's image, optional);
        segments Tensor[N, H, W] (integer labels >= 0, any numbering; optional: a grid of `grid_cell` squares)
        -> saliency Tensor[N, 1, H, W] in (0, 1)."""
        pixel, segment = self.streams(images, segments)
        saliency = torch.sigmoid(self.fuse_streams(torch.cat([pixel, segment], dim=1)))
        if not self.crf or self.training:
            return saliency
        if rgb is None:
            if self.in_channels != 3:
                raise ValueError(
                    f"DCL: rgb (Tensor[N, 3, H, W] in 0..255) must be given for the CRF when in_channels is not 3, "
                    f"got None with in_channels={self.in_channels}"
                )
            rgb = unnormalise(images)
        logits = torch.cat([torch.log1p(-saliency.clamp(max=1 - 1e-6)), saliency.clamp_min(1e-6).log()], dim=1)
        return dense_crf(logits, rgb)[:, 1:]


# ------------------------------------------------------------------------------------------------------ BASNet


class ResidualRefinement(nn.Module):
    """BASNet's residual refinement module: a 4-stage encoder-decoder (64 channels) on the coarse map, whose output
    is added to it: the refined map is coarse + residual (before the sigmoid); logits [N, 1, H, W] -> [N, 1, H, W]."""

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


# BASNet's encoder stages after its input convolution: ResNet-34's layer1..layer4 (strides 1, 2, 4, 8) and two
# stages of a 2x2 max pool and three basic blocks (strides 16, 32); their widths.
BASNET_ENCODER_WIDTHS = (64, 128, 256, 512, 512, 512)


class BASNet(nn.Module):
    """BASNet (Qin et al. 2019): images [N, in_channels, H, W] -> (refined saliency [N, 1, H, W], side outputs: a
    list of 7 [N, 1, H, W]: the bridge's first, then each decoder stage's from coarse to fine, the last being the
    coarse map the refinement starts from). 8 outputs, all probabilities, as the paper supervises them: train with
    basnet_loss on all of them, use the refined one.

    The predict module as the paper builds it. The encoder: an input convolution (64 3x3 filters, stride 1, batch
    norm, ReLU; no 7x7 convolution or max pool, so ResNet-34's layer1 runs at the full resolution), ResNet-34's
    four stages (torchvision's), then two stages of a 2x2 max pool and three basic residual blocks of 512 filters.
    The bridge: three 3x3 convolutions dilated 2 (segops.DilatedConv2d), batch norm, ReLU. The decoder: a stage per
    encoder stage, from the deepest, each three 3x3 convolutions with batch norm and ReLU on the concatenation of
    the previous stage's output (upsampled bilinearly) and the matching encoder stage's, as wide as that encoder
    stage (512, 512, 512, 256, 128, 64) and ending at the next shallower one's width (the last at 64). A 3x3
    convolution gives a side output from the bridge and from every decoder stage, each upsampled to the image. The
    refinement: ResidualRefinement on the last side output's logits. 87.05M parameters (the paper: 87.06M).

    `width`: None for the paper's widths; an int makes the bridge and every decoder convolution that wide (a
    cheaper network for quick runs, e.g. 16 or 32; the encoder and refinement stay the paper's).
    `backbone`: torchvision resnet34 weights (a state_dict or its file) for layer1..layer4; the input convolution,
    the two extra stages and the rest start from their initialisation, whatever in_channels (the paper's input
    convolution is not ResNet's 7x7 one)."""

    def __init__(self, width: Optional[int] = None, in_channels: int = 3, backbone: Weights = None):
        super().__init__()
        if width is not None:
            _check_int("BASNet", "width", width, why=" (or None for the paper's widths)")
        _check_int("BASNet", "in_channels", in_channels)
        _check_backbone("BASNet", backbone)
        self.width, self.in_channels = width, in_channels
        resnet = torchvision.models.resnet34(weights=None)
        if backbone is not None:
            _load_torchvision("BASNet", resnet, backbone, "resnet34")
        self.stem = _conv_bn_relu(in_channels, 64)
        extra = [
            nn.Sequential(nn.MaxPool2d(2, 2, ceil_mode=True), *[BasicBlock(512, 512) for _ in range(3)])
            for _ in range(2)
        ]
        self.encoder = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4, *extra])
        bridge_width = 512 if width is None else width
        self.bridge = nn.Sequential(
            *[
                _conv_bn_relu(512 if i == 0 else bridge_width, bridge_width, DilatedConv2d, padding=2, dilation=2)
                for i in range(3)
            ]
        )
        deep_to_shallow = BASNET_ENCODER_WIDTHS[::-1]
        decoder, previous = [], bridge_width
        for i, skip in enumerate(deep_to_shallow):
            mid = skip if width is None else width
            out = (deep_to_shallow[i + 1] if i + 1 < len(deep_to_shallow) else 64) if width is None else width
            decoder.append(
                nn.Sequential(_conv_bn_relu(previous + skip, mid), _conv_bn_relu(mid, mid), _conv_bn_relu(mid, out))
            )
            previous = out
        self.decoder = nn.ModuleList(decoder)
        side_widths = [bridge_width] + [stage[-1][0].out_channels for stage in decoder]
        self.sides = nn.ModuleList([nn.Conv2d(w, 1, 3, padding=1) for w in side_widths])
        self.refine = ResidualRefinement()

    def forward(self, images: Tensor) -> Tuple[Tensor, List[Tensor]]:
        images = _check_images("BASNet", images, self.in_channels)
        size = images.shape[-2:]
        x, features = self.stem(images), []
        for stage in self.encoder:
            x = stage(x)
            features.append(x)
        x = self.bridge(x)
        side_logits = [_up(self.sides[0](x), size)]
        for decoder, skip, side in zip(self.decoder, reversed(features), self.sides[1:]):
            x = decoder(torch.cat([_up(x, skip.shape[-2:]), skip], dim=1))
            side_logits.append(_up(side(x), size))
        refined = self.refine(side_logits[-1])
        return torch.sigmoid(refined), [torch.sigmoid(s) for s in side_logits]


def basnet_loss(outputs: Tuple[Tensor, List[Tensor]], target: Tensor) -> Tensor:
    """BASNet's deep supervision: the hybrid loss (BCE + SSIM + IoU, segops.losses.hybrid_loss) summed over the
    refined output and every side output (8 outputs for BASNet: the refined map, the bridge's and the 6 decoder
    stages').

    Args:
        outputs (tuple): BASNet's (refined Tensor[N, 1, H, W], side outputs: a list of Tensor[N, 1, H, W]), all
            probabilities.
        target (Tensor[N, 1, H, W]): the masks, in [0, 1].

    Returns:
        Tensor: a scalar, the sum of the outputs' hybrid losses.
    """
    if (
        not isinstance(outputs, (tuple, list))
        or len(outputs) != 2
        or not isinstance(outputs[0], Tensor)
        or not isinstance(outputs[1], (tuple, list))
        or not all(isinstance(s, Tensor) for s in outputs[1])
    ):
        got = type(outputs).__name__ + (f" of {len(outputs)}" if isinstance(outputs, (tuple, list)) else "")
        raise ValueError(f"basnet_loss: outputs must be BASNet's (refined, list of side outputs) pair, got {got}")
    refined, sides = outputs
    for output in [refined, *sides]:
        if not isinstance(target, Tensor) or output.shape != target.shape:
            got = list(target.shape) if isinstance(target, Tensor) else type(target).__name__
            raise ValueError(f"basnet_loss: target must have the outputs' shape {list(output.shape)}, got {got}")
    return sum(hybrid_loss(output, target) for output in [refined, *sides])


# ----------------------------------------------------------------------------------------------------- PoolNet


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
    """PoolNet: images [N, in_channels, H, W] -> saliency [N, 1, H, W]. A ResNet-50 (torchvision's) bottom-up; the
    global guidance module, a pyramid pooling module on its top (bins 1, 3, 5), whose output is upsampled and added
    to every top-down level (the global guiding flows); each level fused by a FAM; the finest level scored by a 1x1
    convolution and a sigmoid. `width`: the top-down channels.

    `backbone`: torchvision resnet50 weights (a state_dict or its file) for the bottom-up; with in_channels other
    than 3 its first convolution is adapted (adapt_input_conv)."""

    def __init__(self, width: int = 128, in_channels: int = 3, backbone: Weights = None):
        super().__init__()
        _check_int("PoolNet", "width", width)
        _check_int("PoolNet", "in_channels", in_channels)
        _check_backbone("PoolNet", backbone)
        self.in_channels = in_channels
        resnet = torchvision.models.resnet50(weights=None)
        if backbone is not None:
            _load_torchvision("PoolNet", resnet, backbone, "resnet50")
        stem_conv = adapt_input_conv(resnet.conv1, in_channels, pretrained=backbone is not None)
        self.stem = nn.Sequential(stem_conv, resnet.bn1, resnet.relu, resnet.maxpool)
        self.encoder = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        self.lateral = nn.ModuleList([nn.Conv2d(c, width, 1) for c in (256, 512, 1024, 2048)])
        self.ppm_bins = (1, 3, 5)
        self.ppm = nn.ModuleList([nn.Conv2d(2048, width, 1) for _ in self.ppm_bins] + [nn.Conv2d(2048, width, 1)])
        self.ppm_fuse = _conv_bn_relu(width * (len(self.ppm_bins) + 1), width)
        self.fams = nn.ModuleList([FeatureAggregation(width) for _ in range(4)])
        self.score = nn.Conv2d(width, 1, 1)

    def forward(self, images: Tensor) -> Tensor:
        images = _check_images("PoolNet", images, self.in_channels)
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


# ---------------------------------------------------------------------------------------------------- builders


def dcl(base_width: int = 64, crf: bool = False, backbone: Weights = None, in_channels: int = 3, **options) -> DCL:
    """DCL, both streams, on VGG16's widths (base_width 64); crf=True refines at evaluation; `backbone`: torchvision
    vgg16 weights to start from (a state_dict or its file; needs base_width 64); `options`: DCL's side_channels,
    segment_width and grid_cell."""
    return DCL(base_width, crf=crf, in_channels=in_channels, backbone=backbone, **options)


def basnet(width: Optional[int] = None, backbone: Weights = None, in_channels: int = 3) -> BASNet:
    """BASNet as the paper builds it (87.05M parameters, 8 outputs); `width` an int for a narrower bridge and decoder;
    `backbone`: torchvision resnet34 weights to start from (a state_dict or its file)."""
    return BASNet(width, in_channels, backbone)


def poolnet(width: int = 128, backbone: Weights = None, in_channels: int = 3) -> PoolNet:
    """PoolNet on a ResNet-50; `backbone`: torchvision resnet50 weights to start from (a state_dict or its file)."""
    return PoolNet(width, in_channels, backbone)

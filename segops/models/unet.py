"""U-Net (Ronneberger, Fischer and Brox 2015): a contracting path of double 3x3 convolutions and max-pools, an
expanding path of 2x2 up-convolutions, each concatenated with the contracting path's map of its size; with the
paper's unpadded convolutions, its overlap-tile inference."""

import itertools
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from segops.models._checks import check_int as _check_int

PADDINGS = ("same", "valid")


def double_conv(in_channels: int, out_channels: int, batch_norm: bool = False, padding: int = 1) -> nn.Sequential:
    """Two 3x3 convolutions with ReLU, as the paper's, padded by `padding` (1 keeps sizes; 0 is the paper's, which
    trims 2 pixels per side); batch_norm adds batch norm after each (a common variant: the paper has none)."""
    layers = []
    for c_in in (in_channels, out_channels):
        layers.append(nn.Conv2d(c_in, out_channels, 3, padding=padding, bias=not batch_norm))
        layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def _valid_output_size(size: int, depth: int) -> Optional[int]:
    """The output size of the unpadded U-Net of `depth` pools for an input of `size` pixels, or None where that
    input does not fit: each double convolution trims 4 pixels, each 2x2 max-pool needs an even size (else a row
    would be dropped and the output would no longer align with the input), each up-convolution doubles."""
    size -= 4
    for _ in range(depth):
        if size < 2 or size % 2:
            return None
        size = size // 2 - 4
    if size < 1:
        return None
    for _ in range(depth):
        size = 2 * size - 4
        if size < 1:
            return None
    return size


def _margin(depth: int) -> int:
    """(input - output) / 2 of the unpadded U-Net, its receptive field's half-width: 92 pixels at depth 4."""
    return 6 * 2**depth - 4


def _nearest(size: int, fits: Callable[[int], bool]) -> str:
    """The sizes next to `size`, below and above, for which `fits` holds: "556 or 572" (or only the one above)."""
    below = next((s for s in range(size - 1, 0, -1) if fits(s)), None)
    above = next(s for s in itertools.count(max(size, 0) + 1) if fits(s))
    return f"{below} or {above}" if below is not None else str(above)


def unet_valid_sizes(depth: int = 4, max_input_size: int = 1024) -> List[Tuple[int, int]]:
    """The (input, output) sizes of the unpadded U-Net (``padding="valid"``) of `depth` pools, inputs up to
    `max_input_size`: at depth 4 the inputs 188, 204, ... (every 16th size: each 2x2 max-pool needs an even
    map) give the outputs 4, 20, ..., and the paper's 572 gives 388. They hold for height and width separately;
    input - output is twice the margin (92 pixels at depth 4) that ``unet_tile_inference`` mirrors around an
    image."""
    _check_int("unet_valid_sizes", "depth", depth, minimum=0)
    _check_int("unet_valid_sizes", "max_input_size", max_input_size)
    sizes = ((size, _valid_output_size(size, depth)) for size in range(1, max_input_size + 1))
    return [(size, output) for size, output in sizes if output is not None]


class UNet(nn.Module):
    """U-Net: images [N, in_channels, H, W] -> {"out": logits [N, K, H', W']}; `base_width` 64, `depth` 4 and no
    batch norm (`batch_norm=False`) are the paper's; in_channels 1 is its grayscale microscopy.

    `padding="same"` (the default) pads the convolutions, so H', W' = H, W for any size; a copied map is then
    larger than the up-convolved one only where a max-pool dropped an odd row or column, and the up-convolved map
    is padded by that row or column instead, so every input pixel keeps its own output. `padding="valid"` is the
    paper's: unpadded convolutions, the copied maps center-cropped to the up-convolved ones, and an output smaller
    than the input by the receptive field's margin on each side (572x572 -> 388x388 at depth 4, the paper's
    figure 1); H and W must be sizes that `unet_valid_sizes` lists, and `unet_tile_inference` segments images of
    any size with it, tile by tile."""

    def __init__(
        self,
        num_classes: int,
        base_width: int = 64,
        depth: int = 4,
        in_channels: int = 3,
        batch_norm: bool = False,
        padding: str = "same",
    ):
        super().__init__()
        _check_int("UNet", "num_classes", num_classes)
        _check_int("UNet", "in_channels", in_channels)
        _check_int("UNet", "depth", depth, minimum=0)
        if padding not in PADDINGS:
            raise ValueError(f"UNet: padding must be 'same' or 'valid', got {padding!r}")
        self.depth, self.padding = depth, padding
        pad = 1 if padding == "same" else 0
        widths = [base_width * 2**level for level in range(depth + 1)]
        self.down = nn.ModuleList(
            [double_conv(in_channels, widths[0], batch_norm, pad)]
            + [double_conv(widths[i], widths[i + 1], batch_norm, pad) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth))]
        )
        self.merge = nn.ModuleList(
            [double_conv(2 * widths[i], widths[i], batch_norm, pad) for i in reversed(range(depth))]
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def extra_repr(self) -> str:
        return f"depth={self.depth}, padding={self.padding!r}"

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        valid = self.padding == "valid"
        if valid:
            for name, size in zip(("height", "width"), images.shape[-2:]):
                if _valid_output_size(size, self.depth) is None:
                    sizes = _nearest(size, lambda s: _valid_output_size(s, self.depth) is not None)
                    raise ValueError(
                        f"UNet: with padding='valid' and depth {self.depth}, the images' {name} must be an input "
                        f"size of unet_valid_sizes({self.depth}), e.g. {sizes}, got {size}"
                    )
        copied = []
        x = self.down[0](images)
        for down in self.down[1:]:
            copied.append(x)
            x = down(F.max_pool2d(x, 2))
        for up, merge, skip in zip(self.up, self.merge, reversed(copied)):
            x = up(x)
            if valid:  # the paper's cropping: the copied map's center, the up-convolved map's size
                top, left = (skip.shape[-2] - x.shape[-2]) // 2, (skip.shape[-1] - x.shape[-1]) // 2
                skip = skip[..., top : top + x.shape[-2], left : left + x.shape[-1]]
            else:
                x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = merge(torch.cat([skip, x], dim=1))
        return {"out": self.classifier(x)}


def unet(
    num_classes: int,
    base_width: int = 64,
    depth: int = 4,
    in_channels: int = 3,
    batch_norm: bool = False,
    padding: str = "same",
) -> UNet:
    """U-Net with the paper's widths (64 ... 1024) and no batch norm unless told otherwise; `padding="valid"` for
    the paper's unpadded convolutions (see UNet)."""
    return UNet(num_classes, base_width, depth, in_channels, batch_norm, padding)


def _mirror_indices(size: int, before: int, after: int, device: torch.device) -> Tensor:
    """The indices into an axis of `size` pixels of that axis mirrored `before` pixels before it and `after` after
    it: reflected about the edge pixels, which are not repeated (F.pad's "reflect"), and reflected again where the
    margin exceeds the axis (F.pad's would refuse), so the extension has period 2 (size - 1)."""
    index = torch.arange(-before, size + after, device=device)
    if size == 1:
        return torch.zeros_like(index)
    period = 2 * (size - 1)
    index = index.remainder(period)
    return torch.where(index < size, index, period - index)


def _mirror_pad(images: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """images [..., H, W] mirrored by the given number of pixels on each side (see _mirror_indices)."""
    rows = _mirror_indices(images.shape[-2], top, bottom, images.device)
    columns = _mirror_indices(images.shape[-1], left, right, images.device)
    return images.index_select(-2, rows).index_select(-1, columns)


def unet_tile_inference(model: UNet, images: Tensor, tile: int = 388) -> Tensor:
    """The paper's overlap-tile strategy (its figure 2): segments images [N, C, H, W] of any size with an unpadded
    U-Net (``padding="valid"``), tile by tile, into logits [N, K, H, W].

    The image is mirrored by the network's margin (92 pixels at depth 4: (input - output) / 2) on every side, so
    that border pixels get context, and each tile of `tile` x `tile` output pixels runs on its input of tile + 2
    margin pixels. The tiles step by the largest multiple of 2**depth within `tile` (384 for the paper's 388),
    since the network's 2x2 pools make it equivariant only to such shifts; the result then does not depend on
    `tile` and equals one pass of the network over the whole mirrored image (the last tiles' surplus rows and
    columns, over further mirrored pixels, are cut off). Memory grows with `tile`, not with the image.

    Args:
        model (UNet): with ``padding="valid"``; put it in eval mode (and call this under ``torch.no_grad()``) for
            inference.
        images (Tensor[N, C, H, W]): any H, W >= 1.
        tile (int): the output size of each tile, an output size of ``unet_valid_sizes(model.depth)`` of at least
            2**depth; 388 (the paper's) is one at every depth up to 7.
    """
    if not isinstance(model, UNet) or model.padding != "valid":
        got = f"padding={model.padding!r}" if isinstance(model, UNet) else type(model).__name__
        raise ValueError(f"unet_tile_inference: model must be a UNet with padding='valid', got {got}")
    if images.dim() != 4:
        raise ValueError(f"unet_tile_inference: images must have shape [N, C, H, W], got {list(images.shape)}")
    depth, margin = model.depth, _margin(model.depth)

    def fits(size: int) -> bool:
        return size >= 2**depth and _valid_output_size(size + 2 * margin, depth) == size

    if isinstance(tile, bool) or not isinstance(tile, int) or not fits(tile):
        sizes = f", e.g. {_nearest(tile, fits)}" if isinstance(tile, int) and not isinstance(tile, bool) else ""
        raise ValueError(
            f"unet_tile_inference: tile must be an output size of unet_valid_sizes({depth}) of at least "
            f"{2**depth}{sizes}, got {tile!r}"
        )
    step = tile - tile % 2**depth
    height, width = images.shape[-2:]
    rows, columns = range(0, height, step), range(0, width, step)
    padded = _mirror_pad(images, margin, rows[-1] + tile + margin - height, margin, columns[-1] + tile + margin - width)
    size = tile + 2 * margin
    strips = []
    for top in rows:
        tiles = [model(padded[..., top : top + size, left : left + size])["out"][..., :step, :step] for left in columns]
        strips.append(torch.cat(tiles, dim=-1))
    return torch.cat(strips, dim=-2)[..., :height, :width]

"""Paired transforms of an image and its label mask for training and evaluating segmentation networks: resizing,
random scaling, cropping and flipping (the same geometry for both), colour jitter (image only) and ImageNet
normalisation (image only).

Every transform is called as ``transform(image, mask, generator)`` and returns ``(image, mask)``: image
Tensor[3, H, W] float in 0..1 (until normalised), mask Tensor[H, W] int64. Random transforms draw only from
``generator`` (a ``torch.Generator``; the global generator where it is None), so one generator state gives one
result: :class:`segops.data.SegmentationFolder` seeds one per sample from (seed, epoch, index).
"""

from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from segops.models.deeplab import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ColorJitter",
    "Compose",
    "Normalize",
    "RandomCrop",
    "RandomHorizontalFlip",
    "RandomScale",
    "Resize",
    "evaluation_transform",
    "training_transform",
]

Size = Union[int, Tuple[int, int]]


def _size_pair(owner: str, size: Size) -> Tuple[int, int]:
    pair = (size, size) if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in pair):
        raise ValueError(f"{owner}: size must be an int >= 1 or a pair (height, width) of them, got {size!r}")
    return pair


def _uniform(low: float, high: float, generator: Optional[torch.Generator]) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _resize(image: Tensor, mask: Tensor, size: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
    """The image bilinearly (antialiased when shrinking), the mask by nearest neighbour (labels are not blended)."""
    if tuple(image.shape[-2:]) == size:
        return image, mask
    image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()
    return image.clamp(0, 1), mask


class Compose:
    """Applies `transforms` in turn, passing each the same generator."""

    def __init__(self, transforms: Sequence):
        self.transforms = list(transforms)

    def __call__(self, image: Tensor, mask: Tensor, generator: Optional[torch.Generator] = None):
        for transform in self.transforms:
            image, mask = transform(image, mask, generator)
        return image, mask

    def __repr__(self) -> str:
        return f"Compose({', '.join(map(repr, self.transforms))})"


class Resize:
    """Resizes both to `size` (an int for a square, or (height, width)): the image bilinearly, the mask by nearest
    neighbour. The aspect ratio is not kept."""

    def __init__(self, size: Size):
        self.size = _size_pair("Resize", size)

    def __call__(self, image, mask, generator=None):
        return _resize(image, mask, self.size)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class RandomScale:
    """Rescales both by one factor drawn uniformly from [low, high] (each side rounded, at least 1 pixel)."""

    def __init__(self, low: float = 0.75, high: float = 1.5):
        if not 0 < low <= high:
            raise ValueError(f"RandomScale: needs 0 < low <= high, got low={low!r}, high={high!r}")
        self.low, self.high = low, high

    def __call__(self, image, mask, generator=None):
        factor = _uniform(self.low, self.high, generator)
        height, width = image.shape[-2:]
        return _resize(image, mask, (max(1, round(height * factor)), max(1, round(width * factor))))

    def __repr__(self) -> str:
        return f"RandomScale({self.low}, {self.high})"


class RandomCrop:
    """Crops both to `size` at a uniformly drawn position. A side shorter than the crop is first padded at its end:
    the image with 0, the mask with `ignore_index` (so the padding is not learned from)."""

    def __init__(self, size: Size, ignore_index: int = 255):
        self.size = _size_pair("RandomCrop", size)
        self.ignore_index = ignore_index

    def __call__(self, image, mask, generator=None):
        height, width = self.size
        pad_h, pad_w = max(0, height - image.shape[-2]), max(0, width - image.shape[-1])
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.ignore_index)
        top = int(torch.randint(0, image.shape[-2] - height + 1, (), generator=generator))
        left = int(torch.randint(0, image.shape[-1] - width + 1, (), generator=generator))
        return image[:, top : top + height, left : left + width], mask[top : top + height, left : left + width]

    def __repr__(self) -> str:
        return f"RandomCrop({self.size}, ignore_index={self.ignore_index})"


class RandomHorizontalFlip:
    """Mirrors both left to right with probability p."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, image, mask, generator=None):
        if float(torch.rand((), generator=generator)) < self.p:
            return image.flip(-1), mask.flip(-1)
        return image, mask

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """The image only: brightness, contrast and saturation each scaled by a factor drawn uniformly from
    [1 - amount, 1 + amount] (in that order, as torchvision's ColorJitter defines them: brightness scales the pixels,
    contrast blends with the mean grey level, saturation with the grey image), then clamped to 0..1."""

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, saturation: float = 0.2):
        for name, amount in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
            if not 0 <= amount < 1:
                raise ValueError(f"ColorJitter: {name} must be in [0, 1), got {amount!r}")
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def __call__(self, image, mask, generator=None):
        factors = [_uniform(1 - a, 1 + a, generator) for a in (self.brightness, self.contrast, self.saturation)]
        image = (image * factors[0]).clamp(0, 1)
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = (grey.mean() + factors[1] * (image - grey.mean())).clamp(0, 1)
        grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
        image = (grey + factors[2] * (image - grey)).clamp(0, 1)
        return image, mask

    def __repr__(self) -> str:
        return f"ColorJitter(brightness={self.brightness}, contrast={self.contrast}, saturation={self.saturation})"


class Normalize:
    """The image only: (image - mean) / std per channel; ImageNet's statistics by default (those of torchvision's
    pretrained backbones)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image, mask, generator=None):
        mean = image.new_tensor(self.mean).view(-1, 1, 1)
        std = image.new_tensor(self.std).view(-1, 1, 1)
        return (image - mean) / std, mask

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


def training_transform(
    size: Size, scale: Tuple[float, float] = (0.75, 1.5), ignore_index: int = 255, jitter: float = 0.2
) -> Compose:
    """What ``segops.train`` trains on: ``Resize(size)``, ``RandomScale(*scale)``, ``RandomCrop(size)`` (padding the
    mask with ignore_index), ``RandomHorizontalFlip(0.5)``, ``ColorJitter(jitter, jitter, jitter)`` and ImageNet
    normalisation."""
    return Compose(
        [
            Resize(size),
            RandomScale(*scale),
            RandomCrop(size, ignore_index),
            RandomHorizontalFlip(0.5),
            ColorJitter(jitter, jitter, jitter),
            Normalize(),
        ]
    )


def evaluation_transform(size: Size) -> Compose:
    """What ``segops.train`` and ``segops.eval`` evaluate on: Resize(size) and ImageNet normalisation (no
    randomness); the metrics are those of the resized masks."""
    return Compose([Resize(size), Normalize()])

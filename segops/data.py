"""Synthetic datasets generated on the fly, for demos and smoke tests: coloured discs, rectangles and triangles on
striped, noisy backgrounds, labelled per class (SyntheticShapes, segmentation) or as one salient object
(SyntheticSalientObjects). Nothing is downloaded; sample i is a pure function of (seed, i), so every process of a
data-parallel run sees the same dataset."""

import math
from typing import Tuple

import torch
from torch import Tensor

CLASS_NAMES = ("background", "disc", "rectangle", "triangle")

# Each shape class has a typical colour; a sample's shape takes it with a random shift of up to COLOUR_JITTER per
# channel (so colour alone does not separate the classes everywhere) and per-pixel noise of PIXEL_NOISE.
CLASS_COLOURS = ((0.85, 0.25, 0.2), (0.2, 0.7, 0.3), (0.25, 0.35, 0.9))
COLOUR_JITTER = 0.25
PIXEL_NOISE = 0.08


class SyntheticShapes(torch.utils.data.Dataset):
    """``dataset[i]`` -> (image Tensor[3, size, size] float32 in 0..1, labels Tensor[size, size] int64 in 0..3).

    Labels: 0 background, 1 disc, 2 rectangle, 3 triangle (CLASS_NAMES). `shapes_per_image` (lowest, highest) shapes
    per image, two to five by default, later ones occluding earlier ones, each 1/4 to 2/3 of the image across; the
    background is a random colour with stripes of random frequency and orientation.
    """

    num_classes = len(CLASS_NAMES)

    def __init__(self, num_samples: int, size: int = 64, seed: int = 0, shapes_per_image: Tuple[int, int] = (2, 5)):
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"SyntheticShapes: num_samples must be an int >= 0, got {num_samples!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise ValueError(f"SyntheticShapes: size must be an int >= 16, got {size!r}")
        if (
            not isinstance(shapes_per_image, tuple)
            or len(shapes_per_image) != 2
            or not all(isinstance(n, int) and not isinstance(n, bool) for n in shapes_per_image)
            or not 1 <= shapes_per_image[0] <= shapes_per_image[1]
        ):
            raise ValueError(
                "SyntheticShapes: shapes_per_image must be a tuple (lowest, highest) of ints with "
                f"1 <= lowest <= highest, got {shapes_per_image!r}"
            )
        self.num_samples, self.size, self.seed = num_samples, size, seed
        self.shapes_per_image = shapes_per_image

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"SyntheticShapes: index {index} out of range for {self.num_samples} samples")
        index %= self.num_samples
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)

        def uniform(low=0.0, high=1.0, shape=()):
            return low + (high - low) * torch.rand(shape, generator=g)

        size = self.size
        ys, xs = torch.meshgrid(
            torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
        )
        angle, frequency = uniform(0, math.pi), uniform(0.15, 0.6)
        stripes = torch.sin(frequency * (xs * torch.cos(angle) + ys * torch.sin(angle)))
        image = uniform(0.3, 0.7, (3, 1, 1)) + uniform(0.05, 0.2) * stripes
        labels = torch.zeros(size, size, dtype=torch.int64)
        lowest, highest = self.shapes_per_image
        for _ in range(int(torch.randint(lowest, highest + 1, (), generator=g))):
            label = int(torch.randint(1, self.num_classes, (), generator=g))
            centre = uniform(0.15 * size, 0.85 * size, (2,))
            radius = uniform(size / 8, size / 3)
            mask = shape_mask(label, xs - centre[0], ys - centre[1], radius, uniform(0, 2 * math.pi))
            colour = torch.tensor(CLASS_COLOURS[label - 1]) + uniform(-COLOUR_JITTER, COLOUR_JITTER, (3,))
            image = torch.where(mask, colour.view(3, 1, 1), image)
            labels[mask] = label
        image = image + PIXEL_NOISE * torch.randn(3, size, size, generator=g)
        return image.clamp(0, 1), labels


class SyntheticSalientObjects(torch.utils.data.Dataset):
    """``dataset[i]`` -> (image Tensor[3, size, size] float32 in 0..1, mask Tensor[1, size, size] float32, 1 on the
    object and 0 elsewhere): one SyntheticShapes shape (a disc, rectangle or triangle, 1/4 to 2/3 of the image across,
    in its class colour shifted at random) on a striped, noisy background of random colour, the shape being the salient
    object. For salient-object detection demos; sample i is a pure function of (seed, i)."""

    def __init__(self, num_samples: int, size: int = 64, seed: int = 0):
        self.shapes = SyntheticShapes(num_samples, size, seed, shapes_per_image=(1, 1))

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        image, labels = self.shapes[index]
        return image, (labels > 0).to(image.dtype)[None]


def shape_mask(label: int, dx: Tensor, dy: Tensor, radius: Tensor, angle: Tensor) -> Tensor:
    """Pixels inside a disc (1), an axis-aligned rectangle (2) or a rotated equilateral triangle (3) of circumradius
    `radius`, at offsets (dx, dy) from its centre."""
    if label == 1:
        return dx.square() + dy.square() <= radius.square()
    if label == 2:
        return (dx.abs() <= radius) & (dy.abs() <= 0.6 * radius)
    inside = torch.ones_like(dx, dtype=torch.bool)
    for k in range(3):  # inside each edge: the edge's outward normal . offset <= the inradius
        normal = angle + 2 * math.pi * k / 3
        inside &= dx * torch.cos(normal) + dy * torch.sin(normal) <= radius / 2
    return inside

"""Datasets of segmentation.

A folder of your own images and masks on disk (SegmentationFolder), in one of three layouts: a ``metadata.csv``
naming image and mask files, Pascal VOC's, or ``images/`` and ``masks/`` with matching file stems; a folder it cannot
read raises FolderError, whose message names the file and what is wrong with it.

Synthetic datasets generated on the fly, for demos and smoke tests: coloured discs, rectangles and triangles on
striped, noisy backgrounds, labelled per class (SyntheticShapes, segmentation) or as one salient object
(SyntheticSalientObjects). Nothing is downloaded; sample i is a pure function of (seed, i), so every process of a
data-parallel run sees the same dataset."""

import csv
import logging
import math
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

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


# ------------------------------------------------------------------------------------------ folders of images on disk

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
LAYOUTS = ("metadata.csv", "voc", "images+masks")

_logger = logging.getLogger(__name__)


class FolderError(ValueError):
    """A dataset folder that cannot be used as it is: the message names the file and says what is wrong with it (a
    mask missing for an image, a mask whose size differs from its image's, an unreadable image or mask, a wrong
    ``metadata.csv`` header, a mask value beyond ``num_classes``)."""


class SegmentationFolder(torch.utils.data.Dataset):
    """A folder of images and label masks on disk; ``dataset[i]`` -> (image, mask): image Tensor[3, H, W] float32 in
    0..1 (RGB; grayscale images repeated, alpha dropped), mask Tensor[H, W] int64 of classes in [0, num_classes), or
    ``ignore_index``; both then passed through ``transform(image, mask, generator)`` (segops.transforms) where one is
    given, with a generator seeded from (seed, epoch, i), so a sample's augmentation is the same every time it is
    drawn in the same epoch (``set_epoch``), in every process.

    Layouts, recognised in this order:

    - ``metadata.csv`` (Kaggle's flood-area dataset): a header ``Image,Mask`` and one row per image naming its
      image and mask files, found in the root or in ``Image/`` and ``Mask/`` subfolders;
    - Pascal VOC: ``JPEGImages/NAME.jpg``, ``SegmentationClass/NAME.png`` and the names of each split in
      ``ImageSets/Segmentation/SPLIT.txt``;
    - ``images/`` and ``masks/``: each image and its mask share a file stem (``images/a.jpg``, ``masks/a.png``).

    Masks: a palette PNG's indices are the classes, and index 255 (VOC's object boundaries) becomes ``ignore_index``.
    A grayscale mask's distinct values, over every mask of the folder, map to classes in sorted order (0/255 masks
    -> 0/1; ``mask_values`` gives the list instead, as a trained model's checkpoint does); an RGB mask whose
    channels are equal counts as grayscale. The mapping is logged (logger ``segops.data``) and in ``summary``.

    The split's masks are read, and its images' headers, when the dataset is made, so that a bad folder fails at
    once with a FolderError naming the file; an image that fails to decode later is named the same way.

    Args:
        root (str or Path): the folder.
        split (str, optional): None for every image. VOC: the name of a list in ``ImageSets/Segmentation``
            ("train", "val", ...). The other layouts: "train" or "val", a seeded random partition with
            ``val_fraction`` of the images (at least one) in "val".
        num_classes (int, optional): K; a mask value whose class is K or more raises FolderError.
        transform (callable, optional): ``transform(image, mask, generator) -> (image, mask)``.
        val_fraction (float): the share of the images in the "val" split, in (0, 1).
        seed (int): seeds the partition and the transforms' generators.
        mask_values (sequence of int, optional): the grayscale values of classes 0, 1, ... (sorted).
        ignore_index (int): the label of ignored pixels (palette index 255; RandomCrop's padding).

    Attributes:
        layout (str): "metadata.csv", "voc" or "images+masks".
        samples (list): (image path, mask path) pairs, in order.
        mask_kind (str): "palette" or "grayscale".
        mask_values (list of int or None): the grayscale values of classes 0, 1, ... (None for palette masks).
        summary (str): what was found and how masks map to classes.
    """

    def __init__(
        self,
        root: Union[str, Path],
        split: Optional[str] = None,
        *,
        num_classes: Optional[int] = None,
        transform: Optional[Callable] = None,
        val_fraction: float = 0.1,
        seed: int = 0,
        mask_values: Optional[Sequence[int]] = None,
        ignore_index: int = 255,
    ):
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
            raise ValueError(f"SegmentationFolder: num_classes must be an int, got {num_classes!r}")
        if num_classes is not None and not 1 <= num_classes <= 255:
            raise ValueError(
                f"SegmentationFolder: num_classes must be in 1..255 (255 is the ignore label), got {num_classes}"
            )
        if not 0 < val_fraction < 1:
            raise ValueError(f"SegmentationFolder: val_fraction must be in (0, 1), got {val_fraction!r}")
        self.root = Path(root)
        if not self.root.is_dir():
            raise FolderError(f"{self.root}: no such folder")
        self.split, self.num_classes, self.transform = split, num_classes, transform
        self.val_fraction, self.seed, self.ignore_index = val_fraction, seed, ignore_index
        self.epoch = 0
        self.layout = _detect_layout(self.root)
        every = None  # every sample of the folder: needed unless the split is a VOC list of palette masks
        if self.layout == "voc" and split is not None:
            self.samples = _list_samples(self.root, self.layout, split)
        else:
            every = _list_samples(self.root, self.layout, None)
            self.samples = self._select(every, split)
        if not self.samples:
            raise FolderError(f"{self.root}: no images" + (f" in the {split} split" if split else ""))
        kinds = {}
        found = []  # (mask, its distinct values)
        for image, mask in self.samples:
            kind, raw = _read_mask(mask)
            width, height = _image_size(image)
            if raw.shape != (height, width):
                raise FolderError(
                    f"{mask}: the mask is {raw.shape[1]}x{raw.shape[0]} (width x height) but its image {image} is "
                    f"{width}x{height}"
                )
            kinds.setdefault(kind, mask)
            if len(kinds) > 1:
                raise FolderError(
                    f"{mask}: a {kind} mask, but {kinds[_other(kind)]} is a {_other(kind)} one; a folder's masks "
                    "must all be palette PNGs or all grayscale"
                )
            found.append((mask, raw.unique()))
        self.mask_kind = next(iter(kinds)) if kinds else "grayscale"
        if self.mask_kind == "grayscale":
            if mask_values is None:
                # Every mask of the folder, not only this split's, so that the splits map values alike.
                chosen = {mask for _, mask in self.samples}
                every = every if every is not None else _list_samples(self.root, self.layout, None)
                others = [(mask, _read_mask(mask)[1].unique()) for _, mask in every if mask not in chosen]
                mask_values = _grayscale_values(found + others, num_classes)
            self.mask_values = [int(v) for v in mask_values]
            lookup = torch.full((max(self.mask_values + [255]) + 1,), -1, dtype=torch.int64)
            lookup[self.mask_values] = torch.arange(len(self.mask_values))
            self._lookup = lookup
            shown = _short_list(self.mask_values)
            mapping = f"grayscale values {shown} -> classes {_short_list(list(range(len(self.mask_values))))}"
        else:
            self.mask_values, self._lookup = None, None
            mapping = f"palette indices are the classes, 255 -> ignored ({ignore_index})"
        for mask, distinct in found:  # every value has a class below num_classes
            self._labels(mask, distinct)
        where = f"{self.root} ({self.layout} layout" + (f", {split} split)" if split is not None else ")")
        self.summary = f"{len(self.samples)} images in {where}; masks: {mapping}"
        _logger.info("SegmentationFolder: %s", self.summary)

    def _select(self, every, split):
        if split is None:
            return every
        if split in ("train", "val"):
            count = len(every)
            held_out = max(1, round(count * self.val_fraction))
            if held_out >= count:
                raise FolderError(f"{self.root}: {count} image(s) cannot be split into train and val")
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed)).tolist()
            return [every[i] for i in sorted(order[:held_out] if split == "val" else order[held_out:])]
        raise ValueError(
            f"SegmentationFolder: split must be None, 'train' or 'val' for a {self.layout} folder, got {split!r}"
        )

    def __len__(self) -> int:
        return len(self.samples)

    def set_epoch(self, epoch: int) -> None:
        """Makes the transforms draw the given epoch's random numbers (as DistributedSampler.set_epoch)."""
        self.epoch = epoch

    def generator(self, index: int) -> torch.Generator:
        """The generator sample `index` is transformed with in the current epoch: seeded from (seed, epoch,
        index)."""
        return torch.Generator().manual_seed(((self.seed * 1_000_003 + self.epoch) * 1_000_003 + index) % 2**63)

    def read(self, index: int) -> Tuple[Tensor, Tensor]:
        """Sample `index` as read from disk, without the transform: (image Tensor[3, H, W] float32 in 0..1, mask
        Tensor[H, W] int64 of classes or ignore_index)."""
        image_path, mask_path = self.samples[index]
        image = read_image(image_path)
        labels = self._labels(mask_path, _read_mask(mask_path)[1])
        if labels.shape != image.shape[1:]:
            raise FolderError(
                f"{mask_path}: the mask is {labels.shape[1]}x{labels.shape[0]} (width x height) but its image "
                f"{image_path} is {image.shape[2]}x{image.shape[1]}"
            )
        return image, labels

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"SegmentationFolder: index {index} out of range for {len(self)} images")
        index %= len(self)
        image, labels = self.read(index)
        if self.transform is not None:
            image, labels = self.transform(image, labels, self.generator(index))
        return image, labels

    def _labels(self, path: Path, raw: Tensor) -> Tensor:
        """Raw mask values -> classes (or ignore_index), checking each against mask_values and num_classes."""
        limit = self.num_classes
        if self._lookup is None:  # palette indices
            void = raw == 255
            bad = ~void & (raw >= limit) if limit is not None else None
            if bad is not None and bad.any():
                value = int(raw[bad][0])
                raise FolderError(
                    f"{path}: palette index {value} is a class beyond num_classes={limit} (classes 0..{limit - 1}; "
                    "255 is ignored)"
                )
            return torch.where(void, torch.full_like(raw, self.ignore_index), raw)
        known = raw < len(self._lookup)
        labels = torch.where(known, self._lookup[raw.clamp(max=len(self._lookup) - 1)], torch.full_like(raw, -1))
        if (labels < 0).any():
            value = int(raw[labels < 0][0])
            raise FolderError(
                f"{path}: mask value {value} is none of the grayscale values {_short_list(self.mask_values)} that map "
                "to classes"
            )
        if limit is not None and (labels >= limit).any():
            value = int(raw[labels >= limit][0])
            raise FolderError(
                f"{path}: mask value {value} maps to class {self.mask_values.index(value)} (grayscale values "
                f"{_short_list(self.mask_values)} -> classes 0..{len(self.mask_values) - 1}), beyond "
                f"num_classes={limit}"
            )
        return labels

    def __repr__(self) -> str:
        return f"SegmentationFolder({self.summary})"


def _grayscale_values(found: List[Tuple[Path, Tensor]], num_classes: Optional[int]) -> List[int]:
    """The sorted distinct values of masks given as (path, distinct values); more than num_classes of them is a
    FolderError naming the first mask holding the value found in the fewest masks (a stray value, most likely)."""
    masks = {}  # value -> the masks holding it
    for path, distinct in found:
        for value in distinct.tolist():
            masks.setdefault(value, []).append(path)
    values = sorted(masks)
    if num_classes is not None and len(values) > num_classes:
        rarest = min(values, key=lambda v: (len(masks[v]), -v))
        raise FolderError(
            f"{masks[rarest][0]}: mask value {rarest} makes {len(values)} grayscale values in the masks "
            f"({_short_list(values)} -> classes 0..{len(values) - 1}), beyond num_classes={num_classes}; "
            f"{rarest} is in {len(masks[rarest])} of {len(found)} masks, the fewest"
        )
    return values


def _other(kind: str) -> str:
    return "grayscale" if kind == "palette" else "palette"


def _short_list(values: List[int], most: int = 12) -> str:
    if len(values) <= most:
        return str(list(values))
    return "[" + ", ".join(map(str, values[: most - 2])) + f", ... ({len(values) - most + 1} more), {values[-1]}]"


def _detect_layout(root: Path) -> str:
    if (root / "metadata.csv").is_file():
        return "metadata.csv"
    if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir():
        return "voc"
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "images+masks"
    raise FolderError(
        f"{root}: no dataset layout found: expected metadata.csv (columns Image,Mask), JPEGImages/ and "
        "SegmentationClass/ (Pascal VOC), or images/ and masks/ with matching file stems"
    )


def _list_samples(root: Path, layout: str, split: Optional[str]) -> List[Tuple[Path, Path]]:
    """(image, mask) paths of a layout, every file checked to exist; VOC's split names an ImageSets list (None: the
    union of every list, or every mask where there is none)."""
    if layout == "metadata.csv":
        return _list_metadata(root)
    if layout == "voc":
        return _list_voc(root, split)
    images = sorted(p for p in (root / "images").iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    masks = {}
    for path in sorted((root / "masks").iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES:
            masks.setdefault(path.stem, path)
    missing = [image for image in images if image.stem not in masks]
    if missing:
        raise FolderError(
            f"{missing[0]}: no mask for this image: expected {root / 'masks' / missing[0].stem}.png (or another "
            f"image suffix){f'; {len(missing) - 1} other image(s) lack one too' if len(missing) > 1 else ''}"
        )
    return [(image, masks[image.stem]) for image in images]


def _list_metadata(root: Path) -> List[Tuple[Path, Path]]:
    path = root / "metadata.csv"
    with open(path, newline="", encoding="utf-8-sig") as file:
        rows = [row for row in csv.reader(file)]
    header = [cell.strip() for cell in rows[0]] if rows else []
    if [cell.lower() for cell in header] != ["image", "mask"]:
        raise FolderError(
            f"{path}: the header must be 'Image,Mask' (the columns of image and mask file names), got "
            f"{','.join(header)!r}"
        )
    samples = []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != 2:
            raise FolderError(f"{path}, line {line}: expected 2 columns (Image,Mask), got {len(row)}: {row!r}")
        names = [cell.strip() for cell in row]
        image = _find(root, "Image", names[0])
        mask = _find(root, "Mask", names[1])
        if image is None:
            raise FolderError(
                f"{path}, line {line}: image {names[0]!r} not found (looked for {root / names[0]} and "
                f"{root / 'Image' / names[0]})"
            )
        if mask is None:
            raise FolderError(
                f"{image}: its mask {names[1]!r} (metadata.csv, line {line}) not found (looked for "
                f"{root / names[1]} and {root / 'Mask' / names[1]})"
            )
        samples.append((image, mask))
    return samples


def _find(root: Path, folder: str, name: str) -> Optional[Path]:
    for candidate in (root / name, root / folder / name):
        if name and candidate.is_file():
            return candidate
    return None


def _list_voc(root: Path, split: Optional[str]) -> List[Tuple[Path, Path]]:
    lists = root / "ImageSets" / "Segmentation"
    if split is not None:
        files = [lists / f"{split}.txt"]
        if not files[0].is_file():
            raise FolderError(f"{files[0]}: not found (the list of the {split!r} split of a Pascal VOC folder)")
    else:
        files = sorted(lists.glob("*.txt")) if lists.is_dir() else []
    if files:
        names = list(dict.fromkeys(n.strip() for f in files for n in f.read_text().split() if n.strip()))
    else:
        names = sorted(p.stem for p in (root / "SegmentationClass").glob("*.png"))
    samples = []
    for name in names:
        image, mask = root / "JPEGImages" / f"{name}.jpg", root / "SegmentationClass" / f"{name}.png"
        if not image.is_file():
            raise FolderError(f"{image}: not found (listed in {' or '.join(str(f) for f in files)})")
        if not mask.is_file():
            raise FolderError(f"{image}: no mask for this image: expected {mask}")
        samples.append((image, mask))
    return samples


def _open(path: Path, what: str):
    from PIL import Image

    try:
        return Image.open(path)
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise FolderError(f"{path}: cannot read the {what} ({type(error).__name__}: {error})") from None


def _image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the image's header."""
    with _open(path, "image") as image:
        return image.size


def read_image(path: Union[str, Path]) -> Tensor:
    """An image file as RGB Tensor[3, H, W] float32 in 0..1 (grayscale repeated, alpha dropped); FolderError naming
    the file if it cannot be read."""
    import numpy as np

    with _open(path, "image") as image:
        try:
            rgb = np.asarray(image.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as error:
            raise FolderError(f"{path}: cannot read the image ({type(error).__name__}: {error})") from None
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).float().div_(255)


def _read_mask(path: Path) -> Tuple[str, Tensor]:
    """("palette" or "grayscale", the mask's values Tensor[H, W] int64)."""
    import numpy as np

    with _open(path, "mask") as mask:
        try:
            mode = mask.mode
            if mode in ("P", "PA"):
                return "palette", torch.from_numpy(np.array(mask.convert("P") if mode == "PA" else mask, np.int64))
            if mode == "1" or mode.startswith("L"):
                return "grayscale", torch.from_numpy(np.array(mask.convert("L"), np.int64))
            if mode.startswith("I"):
                return "grayscale", torch.from_numpy(np.array(mask, np.int64))
            if mode in ("RGB", "RGBA"):
                rgb = torch.from_numpy(np.array(mask.convert("RGB"), np.int64))
                if torch.equal(rgb[..., 0], rgb[..., 1]) and torch.equal(rgb[..., 0], rgb[..., 2]):
                    return "grayscale", rgb[..., 0].contiguous()
        except (OSError, ValueError, SyntaxError) as error:
            raise FolderError(f"{path}: cannot read the mask ({type(error).__name__}: {error})") from None
    what = f"a colour ({mode}) mask" if mode in ("RGB", "RGBA") else f"a mask of PIL mode {mode}"
    raise FolderError(
        f"{path}: {what}; masks must be palette PNGs (their indices are the classes) or grayscale (their values are)"
    )


def label_colours(count: int = 256) -> Tensor:
    """Pascal VOC's colour map: Tensor[count, 3] uint8, the RGB colour of each class (0 black, 1 dark red, 2 green,
    ..., 255 the boundary colour (224, 224, 192)), as its palette PNGs hold it. Class c's colour spreads the bits of c
    over the three channels, most significant first."""
    colours = torch.zeros(count, 3, dtype=torch.uint8)
    for label in range(count):
        value, red, green, blue = label, 0, 0, 0
        for bit in range(8):
            red |= ((value >> 0) & 1) << (7 - bit)
            green |= ((value >> 1) & 1) << (7 - bit)
            blue |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        colours[label] = torch.tensor([red, green, blue], dtype=torch.uint8)
    return colours

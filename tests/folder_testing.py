"""Small dataset folders written to disk for tests/test_folder.py and tests/test_train_cli.py, in each layout that
segops.data.SegmentationFolder reads, with the arrays written returned as the independent reference."""

from pathlib import Path
from typing import List, Tuple

import numpy as np
from PIL import Image

from segops.data import label_colours

LAYOUTS = ("metadata.csv", "voc", "images+masks")
# Each class's image colour (RGB): the images are learnable from colour alone.
COLOURS = np.array([(40, 120, 40), (60, 90, 200), (200, 60, 60), (220, 200, 60)], dtype=np.int64)


def make_sample(rng, size: int, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """(image uint8 [size, size, 3], classes int64 [size, size]): a random class per 8x8 block, the image its class
    colour plus noise."""
    blocks = rng.integers(0, num_classes, ((size + 7) // 8, (size + 7) // 8))
    classes = np.kron(blocks, np.ones((8, 8), dtype=np.int64))[:size, :size]
    image = COLOURS[classes] + rng.integers(-20, 21, (size, size, 3))
    return np.clip(image, 0, 255).astype(np.uint8), classes


def save_palette(path: Path, indices: np.ndarray) -> None:
    mask = Image.fromarray(indices.astype(np.uint8))
    mask.putpalette(label_colours().flatten().tolist())
    assert mask.mode == "P"
    mask.save(path)


def write_folder(
    root: Path,
    layout: str = "metadata.csv",
    count: int = 8,
    size: int = 32,
    num_classes: int = 2,
    values=(0, 255),
    subfolders: bool = True,
    seed: int = 0,
) -> List[dict]:
    """Writes `count` samples in `layout` under `root` and returns, per sample in the dataset's order, a dict with
    its ``image`` (uint8 array as written), ``classes`` (the expected labels: class indices, 255 where VOC's
    boundary is), ``image_path`` and ``mask_path``.

    metadata.csv: JPEG images and grayscale PNG masks holding values[class] (0/255 by default), in Image/ and Mask/
    (in the root itself with subfolders=False). voc: JPEG images, palette PNG masks (their indices are the classes;
    each mask's first row is 255, VOC's boundary), the first three quarters in train.txt, the rest in val.txt.
    images+masks: PNG images and grayscale PNG masks of values[class].
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(count):
        image, classes = make_sample(rng, size, num_classes)
        name = f"s{i:02d}"
        if layout == "metadata.csv":
            image_dir, mask_dir = (root / "Image", root / "Mask") if subfolders else (root, root)
            image_path, mask_path = image_dir / f"{name}.jpg", mask_dir / f"{name}.png"
        elif layout == "voc":
            image_path = root / "JPEGImages" / f"{name}.jpg"
            mask_path = root / "SegmentationClass" / f"{name}.png"
            classes = classes.copy()
            classes[0] = 255
        else:
            image_path, mask_path = root / "images" / f"{name}.png", root / "masks" / f"{name}.png"
        image_path.parent.mkdir(parents=True, exist_ok=True)
        mask_path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(image_path, **({"quality": 95} if image_path.suffix == ".jpg" else {}))
        if layout == "voc":
            save_palette(mask_path, classes)
        else:
            raw = np.asarray(values)[classes]
            Image.fromarray(raw.astype(np.uint8)).save(mask_path)
        samples.append(dict(image=image, classes=classes, image_path=image_path, mask_path=mask_path, name=name))
    if layout == "metadata.csv":
        lines = ["Image,Mask"] + [f"{s['image_path'].name},{s['mask_path'].name}" for s in samples]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    elif layout == "voc":
        lists = root / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True)
        cut = count * 3 // 4
        (lists / "train.txt").write_text("".join(s["name"] + "\n" for s in samples[:cut]))
        (lists / "val.txt").write_text("".join(s["name"] + "\n" for s in samples[cut:]))
    return samples

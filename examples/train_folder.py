"""Trains FCN-8s and U-Net on a folder of images on disk through segops' command line, as the FCN and U-Net
tutorials train them on Kaggle's flood-area dataset (290 photos, a metadata.csv with columns Image,Mask, JPEG images,
0/255 PNG masks): first it writes a flood-style folder of synthetic photos in that layout, then runs
``python -m segops.train`` on it for each model, from scratch and, given --vgg16, FCN-8s from a local VGG16 file,
and reports FCN's metric table and the loss curves.

    python examples/train_folder.py                          # a few minutes on two cores
    python examples/train_folder.py --vgg16 vgg16.pth        # + FCN-8s from torchvision's VGG16 weights

The VGG16 file is torchvision's state_dict, saved on a machine that has the weights:
``torch.save(torchvision.models.vgg16(weights="IMAGENET1K_V1").state_dict(), "vgg16.pth")``. U-Net has no
pretrained encoder (its paper trains it from scratch), so it runs from scratch only.

The photos: water (smooth random regions, muddy brown to grey-blue, with ripples and glints) over textured land
(greens and browns) with roads and rooftops, some of the roofs standing in the water; images of varied sizes
(96-160 x 72-120 pixels), so the command line's resizing is exercised as on real photos. Sample i is a pure
function of (seed, i).
"""

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from segops.data import SegmentationFolder
from segops.train import METRICS, evaluate, format_table, load_batch, metric_cells
from segops.transforms import evaluation_transform


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=160, help="photos in the folder (default 160)")
    parser.add_argument("--epochs", type=int, default=12, help="epochs per run (default 12)")
    parser.add_argument("--size", type=int, default=64, help="the networks see SIZE x SIZE images (default 64)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--base-width", type=int, default=16, help="the from-scratch networks' width (paper: 64)")
    parser.add_argument("--models", nargs="+", default=["fcn8s", "unet"], choices=["fcn8s", "unet"])
    parser.add_argument("--vgg16", type=Path, help="torchvision's vgg16 state_dict: also FCN-8s from it")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("demo_output") / "folder", help="where it all goes")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------------- the photos


def smooth_field(height, width, generator, waves=4, low=1.0, high=3.0):
    """A random smooth field [H, W] in about -1..1: a sum of `waves` plane waves of 1-3 cycles across the image."""
    ys, xs = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    field = torch.zeros(height, width)
    for _ in range(waves):
        angle = 2 * math.pi * float(torch.rand((), generator=generator))
        cycles = low + (high - low) * float(torch.rand((), generator=generator))
        phase = 2 * math.pi * float(torch.rand((), generator=generator))
        field += torch.sin(2 * math.pi * cycles * (xs * math.cos(angle) + ys * math.sin(angle)) + phase)
    return field / math.sqrt(waves / 2)


def flood_photo(index, seed=0):
    """(image uint8 [H, W, 3], water mask bool [H, W]) of photo `index`."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)

    def uniform(low, high, shape=()):
        return low + (high - low) * torch.rand(shape, generator=g)

    height, width = int(torch.randint(72, 121, (), generator=g)), int(torch.randint(96, 161, (), generator=g))
    # Land: a green-to-brown base, patchy at two scales, with pixel noise.
    land_colour = torch.tensor([0.35, 0.45, 0.2]) + uniform(-0.12, 0.12, (3,))
    patches = 0.08 * smooth_field(height, width, g, 5, 3, 8) + 0.04 * smooth_field(height, width, g, 5, 10, 20)
    image = land_colour.view(3, 1, 1) + patches + 0.04 * torch.randn(3, height, width, generator=g)
    # Roads: a few straight grey bands.
    ys, xs = torch.meshgrid(torch.arange(height).float(), torch.arange(width).float(), indexing="ij")
    for _ in range(int(torch.randint(0, 3, (), generator=g))):
        angle = float(uniform(0, math.pi))
        offset = float(uniform(-0.3, 0.3)) * width
        distance = (xs - width / 2) * math.cos(angle) + (ys - height / 2) * math.sin(angle) - offset
        image = torch.where(
            distance.abs() < float(uniform(1.5, 3.5)), torch.tensor([0.5, 0.5, 0.48]).view(3, 1, 1), image
        )
    # Water: where a smooth field passes a level that floods 15 to 60% of the photo.
    field = smooth_field(height, width, g)
    water = field > torch.quantile(field.flatten(), float(uniform(0.4, 0.85)))
    water_colour = torch.tensor([0.45, 0.38, 0.28]) + uniform(0, 1) * torch.tensor([-0.1, 0.02, 0.15])
    ripple_angle = float(uniform(0, math.pi))
    ripples = torch.sin(float(uniform(0.8, 1.6)) * (xs * math.cos(ripple_angle) + ys * math.sin(ripple_angle)))
    surface = water_colour.view(3, 1, 1) + 0.05 * ripples + 0.06 * field.clamp(-1, 1)
    surface = surface + 0.03 * torch.randn(3, height, width, generator=g)
    surface = torch.where(torch.rand(height, width, generator=g) < 0.01, torch.full((3, 1, 1), 0.85), surface)  # glints
    image = torch.where(water, surface, image)
    # Rooftops, some in the water: not water.
    for _ in range(int(torch.randint(2, 7, (), generator=g))):
        top, left = (
            int(torch.randint(0, height - 8, (), generator=g)),
            int(torch.randint(0, width - 10, (), generator=g)),
        )
        h, w = int(torch.randint(6, 16, (), generator=g)), int(torch.randint(8, 20, (), generator=g))
        roof = [torch.tensor([0.6, 0.25, 0.2]), torch.tensor([0.55, 0.55, 0.55]), torch.tensor([0.8, 0.78, 0.7])]
        colour = roof[int(torch.randint(0, 3, (), generator=g))] + uniform(-0.05, 0.05, (3,))
        image[:, top : top + h, left : left + w] = colour.view(3, 1, 1) + 0.03 * torch.randn(3, 1, 1, generator=g)
        water[top : top + h, left : left + w] = False
    image = (image.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0)
    return image, water


def write_flood_folder(root, count, seed=0):
    """The Kaggle flood-area layout: metadata.csv (Image,Mask), Image/i.jpg, Mask/i.png with 0 and 255."""
    (root / "Image").mkdir(parents=True, exist_ok=True)
    (root / "Mask").mkdir(parents=True, exist_ok=True)
    rows = ["Image,Mask"]
    for i in range(count):
        image, water = flood_photo(i, seed)
        Image.fromarray(image.numpy()).save(root / "Image" / f"{i}.jpg", quality=90)
        Image.fromarray((water.to(torch.uint8) * 255).numpy()).save(root / "Mask" / f"{i}.png")
        rows.append(f"{i}.jpg,{i}.png")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")


# ------------------------------------------------------------------------------------------------ the runs


def run(command):
    print("$ " + " ".join(map(str, command)), file=sys.stderr, flush=True)
    subprocess.run([str(part) for part in command], check=True)


def majority_baseline(args, data):
    """The training masks' most frequent class predicted everywhere, scored on the validation images as the runs
    are (the same split, size and metrics)."""
    common = dict(num_classes=2, val_fraction=0.2, seed=args.seed)
    train_set = SegmentationFolder(data, "train", transform=evaluation_transform(args.size), **common)
    val_set = SegmentationFolder(data, "val", transform=evaluation_transform(args.size), **common)
    counts = sum(torch.bincount(train_set[i][1].flatten(), minlength=2) for i in range(len(train_set)))
    majority = int(counts.argmax())
    batches = (load_batch(val_set, range(i, min(i + 8, len(val_set)))) for i in range(0, len(val_set), 8))
    constant = lambda images: torch.full((images.shape[0], *images.shape[-2:]), majority)  # noqa: E731
    return ("dry land" if majority == 0 else "water"), evaluate(constant, batches, 2)


def plot_curves(path, histories):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (losses, ious) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, epochs in histories.items():
        numbers = [e["epoch"] for e in epochs]
        losses.plot(numbers, [e["loss"] for e in epochs], marker="o", markersize=3, label=name)
        ious.plot(numbers, [100 * e["mean_iou"] for e in epochs], marker="o", markersize=3, label=name)
    losses.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="loss per epoch")
    ious.set(xlabel="epoch", ylabel="mean IU (%), validation", title="mean IU per epoch")
    for axis in (losses, ious):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv=None):
    args = parse_args(argv)
    data = args.output / "data"
    started = time.perf_counter()
    write_flood_folder(data, args.images, args.seed)
    print(f"wrote {args.images} photos and masks to {data} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
    common = ["--data", data, "--num-classes", 2, "--epochs", args.epochs, "--size", args.size]
    common += ["--batch-size", args.batch_size, "--val-split", 0.2, "--seed", args.seed, "--overwrite"]
    runs = {f"{model} from scratch": [model, "--base-width", args.base_width] for model in args.models}
    if args.vgg16 is not None:
        runs["fcn8s from VGG16"] = ["fcn8s", "--backbone", args.vgg16]  # VGG16's widths: base width 64
    histories, seconds = {}, {}
    for name, (model, *options) in runs.items():
        out = args.output / name.replace(" ", "-")
        started = time.perf_counter()
        run([sys.executable, "-m", "segops.train", "--model", model, *options, *common, "--out", out])
        seconds[name] = time.perf_counter() - started
        histories[name] = json.loads((out / "metrics.json").read_text())["epochs"]
    last = args.output / f"{next(iter(runs)).replace(' ', '-')}"
    images = [data / "Image" / f"{i}.jpg" for i in range(min(4, args.images))]
    run(
        [
            sys.executable,
            "-m",
            "segops.predict",
            "--checkpoint",
            last / "checkpoint.pt",
            *images,
            "--crf",
            "--out",
            args.output / "masks",
        ]
    )
    majority, baseline = majority_baseline(args, data)
    header = ["run", "epochs", "train (s)", *(title for _, title in METRICS)]
    rows = [[f"baseline: {majority} everywhere", "-", "-", *metric_cells(baseline)]]
    rows += [[name, len(h), f"{seconds[name]:.0f}", *metric_cells(h[-1])] for name, h in histories.items()]
    print(format_table(header, rows))
    plot_curves(args.output / "loss_curves.png", histories)
    print(
        f"wrote {args.output / 'loss_curves.png'}, each run's predictions.png and {args.output / 'masks'}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()

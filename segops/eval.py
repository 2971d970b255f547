"""Evaluates a network that segops.train trained on a folder of images and masks, from the command line:

    python -m segops.eval --checkpoint runs/fcn8s/checkpoint.pt --data DIR

prints FCN's metric table (pixel accuracy, mean accuracy, mean IU and f.w. IU, Long et al. 2015) and each class's
IU, for the checkpoint's validation images of DIR (``--split val``: its held-out share, or VOC's val.txt), its
training images (``--split train``) or every image (``--split all``: a separate test folder). Images and masks are
resized to the training size (``--size`` to change it) and grayscale mask values map to classes as in training.
"""

import argparse
import sys
from pathlib import Path

import torch

from segops._cli import default_device, run_command
from segops.data import SegmentationFolder
from segops.train import METRICS, evaluate, format_table, load_batch, load_checkpoint, metric_cells
from segops.train import model_from_checkpoint
from segops.transforms import evaluation_transform

__all__ = ["main"]


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="segops.eval", description="Prints the metric table of a checkpoint.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="OUT/checkpoint.pt of segops.train")
    parser.add_argument("--data", required=True, type=Path, help="the dataset folder")
    parser.add_argument("--split", choices=("val", "train", "all"), default="val", help="which images (default val)")
    parser.add_argument("--size", type=int, help="images are resized to SIZE x SIZE (default: the training size)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where there is one)")
    return parser.parse_args(argv)


@torch.no_grad()
def _evaluate(args) -> None:
    checkpoint = load_checkpoint(args.checkpoint)
    config = checkpoint["config"]
    dataset = SegmentationFolder(
        args.data,
        None if args.split == "all" else args.split,
        num_classes=config["num_classes"],
        transform=evaluation_transform(args.size or config["size"]),
        val_fraction=config["val_split"],
        seed=config["seed"],
        mask_values=config.get("mask_values"),
        ignore_index=config["ignore_index"],
    )
    print(dataset.summary, file=sys.stderr)
    device = torch.device(args.device or default_device())
    model = model_from_checkpoint(checkpoint).to(device)
    starts = range(0, len(dataset), args.batch_size)
    batches = (load_batch(dataset, range(s, min(s + args.batch_size, len(dataset)))) for s in starts)
    metrics = evaluate(
        lambda images: model(images)["out"], batches, config["num_classes"], config["ignore_index"], device
    )
    header = ["checkpoint", "epoch", "split", "images", *(title for _, title in METRICS)]
    row = [args.checkpoint, checkpoint["epoch"], args.split, len(dataset), *metric_cells(metrics)]
    print(format_table(header, [row]))
    print()
    iou = [f"{100 * v:.1f}" if v == v else "-" for v in metrics["iou"].tolist()]  # NaN: a class seen nowhere
    print(format_table(["class", "IU"], enumerate(iou)))


def main(argv=None) -> int:
    """``python -m segops.eval``; `argv` as sys.argv[1:] (``--help`` lists the options)."""
    return run_command("segops.eval", _evaluate, _parse_args(argv))


if __name__ == "__main__":
    main()

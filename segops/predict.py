"""Segments images with a network that segops.train trained, from the command line:

    python -m segops.predict --checkpoint runs/fcn8s/checkpoint.pt photo.jpg more/*.jpg --out masks [--crf]

writes OUT/NAME.png for each image NAME.*: a palette PNG of the image's size whose indices are the predicted classes
and whose colours are Pascal VOC's (segops.data.label_colours). The network sees the image resized to the training
size; its logits are resized back bilinearly. ``--crf`` refines them with segops' dense CRF (segops.dense_crf, 5
mean-field steps, pydensecrf's default kernels) on the full-size image before the labels are taken.
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

import segops
from segops._cli import UsageError, default_device, run_command
from segops.data import label_colours, read_image
from segops.train import load_checkpoint, model_from_checkpoint, save_atomically
from segops.transforms import evaluation_transform

__all__ = ["main", "predict"]


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="segops.predict", description="Writes colour masks of images.")
    parser.add_argument("--checkpoint", required=True, type=Path, help="OUT/checkpoint.pt of segops.train")
    parser.add_argument("images", nargs="+", type=Path, help="image files")
    parser.add_argument("--out", required=True, type=Path, help="the folder the masks go to")
    parser.add_argument("--crf", action="store_true", help="refine with segops' dense CRF (5 mean-field steps)")
    parser.add_argument("--size", type=int, help="the network's input size (default: the training size)")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where there is one)")
    return parser.parse_args(argv)


@torch.no_grad()
def predict(model, image: torch.Tensor, size: int, crf: bool = False) -> torch.Tensor:
    """Labels Tensor[H, W] int64 of image Tensor[3, H, W] (RGB in 0..1) by `model` ({"out": logits}) at size x
    size, its logits resized back to H x W; `crf` refines them with segops.dense_crf (5 steps, default kernels) on
    the image in 0..255 first."""
    device = next(model.parameters()).device
    height, width = image.shape[-2:]
    inputs, _ = evaluation_transform(size)(image, torch.zeros(height, width, dtype=torch.int64))
    logits = model(inputs[None].to(device))["out"]
    logits = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
    if crf:
        logits = segops.dense_crf(logits.float(), image[None].to(device) * 255, num_iters=5)
    return logits.argmax(1)[0].cpu()


def _predict(args) -> None:
    stems = {}
    for path in args.images:
        if path.stem in stems:
            raise UsageError(f"{path} and {stems[path.stem]} would both be written to {args.out / path.stem}.png")
        stems[path.stem] = path
    checkpoint = load_checkpoint(args.checkpoint)
    if args.crf and checkpoint["config"]["num_classes"] < 2:
        raise UsageError("--crf needs a model of at least 2 classes")
    model = model_from_checkpoint(checkpoint).to(torch.device(args.device or default_device()))
    size = args.size or checkpoint["config"]["size"]
    palette = label_colours().flatten().tolist()
    from PIL import Image

    for path in args.images:
        labels = predict(model, read_image(path), size, args.crf)
        mask = Image.fromarray(labels.to(torch.uint8).numpy())
        mask.putpalette(palette)
        target = args.out / f"{path.stem}.png"
        save_atomically(target, lambda temporary: mask.save(temporary, format="PNG"))
        print(f"wrote {target}", file=sys.stderr)


def main(argv=None) -> int:
    """``python -m segops.predict``; `argv` as sys.argv[1:] (``--help`` lists the options)."""
    return run_command("segops.predict", _predict, _parse_args(argv))


if __name__ == "__main__":
    main()

"""Trains segops' salient-object detection networks (BASNet, PoolNet and DCL) on synthetic salient objects
(segops.data.SyntheticSalientObjects) on the CPU, scores them with segops.metrics.SaliencyMetrics (MAE, max F-measure,
S-measure) against a location prior, and saves a PNG grid of images, ground truth and saliency maps.

    python examples/train_saliency.py            # all three models, a few minutes on two cores

Each model is trained from scratch with its paper's loss: BASNet with its hybrid BCE + SSIM + IoU loss over the
refined map and every side output (segops.models.basnet_loss), PoolNet and DCL with binary cross-entropy. DCL is
scored with and without its dense-CRF refinement (segops.dense_crf).
"""

import argparse
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from segops import models
from segops.data import SyntheticSalientObjects
from segops.metrics import SaliencyMetrics
from train_segmentation import batch, draw_grid, normalise, train

# The papers' networks, narrower where the builder allows so that all three train in minutes on two cores: BASNet's
# decoder at 32 channels (ResNet-34 encoder), PoolNet's top-down path at 64 (ResNet-50), DCL on VGG16 at base_width 16.
BUILDERS = {
    "basnet": (lambda: models.basnet(width=32), models.basnet_loss),
    "poolnet": (lambda: models.poolnet(width=64), F.binary_cross_entropy),
    "dcl": (lambda: models.dcl(base_width=16), F.binary_cross_entropy),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--steps", type=int, default=150, help="Adam steps per model (default 150)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels, >= 64 (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--eval-samples", type=int, default=64, help="test images (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where the PNG grid goes")
    args = parser.parse_args(argv)
    args.optimizer = "adam"
    return args


def saliency_predictor(model):
    """images in 0..1 -> saliency probabilities [N, 1, H, W]; BASNet's refined map (its first output)."""

    def predict(images):
        output = model(normalise(images))
        return output[0] if isinstance(output, tuple) else output

    return predict


def crf_predictor(model):
    """DCL's evaluation with its dense-CRF refinement switched on (on the images in 0..255)."""

    def predict(images):
        model.crf = True
        try:
            return model(normalise(images), images * 255)
        finally:
            model.crf = False

    return predict


def location_prior(args):
    """The baseline: every image's saliency map is the mean of the training masks (where objects tend to be)."""
    train_set = SyntheticSalientObjects(min(256, args.steps * args.batch_size), args.size, seed=args.seed)
    prior = batch(train_set, range(len(train_set)))[1].mean(0, keepdim=True)
    return lambda images: prior.expand(images.shape[0], -1, -1, -1)


def evaluate(predict, dataset, batch_size=8):
    metrics = SaliencyMetrics()
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            images, masks = batch(dataset, range(start, min(start + batch_size, len(dataset))))
            metrics.update(predict(images), masks)
    return metrics.compute()


def print_table(rows):
    print("| model | train (s) | MAE | max F | S-measure |\n|---|---:|---:|---:|---:|")
    for name, seconds, m in rows:
        train_seconds = "-" if seconds is None else f"{seconds:.0f}"
        print(f"| {name} | {train_seconds} | {m['mae']:.3f} | {m['max_f']:.3f} | {m['s_measure']:.3f} |")


def main(argv=None):
    args = parse_args(argv)
    if args.size < 64:
        raise SystemExit(f"--size must be at least 64 (the networks' deepest stride is 32), got {args.size}")
    print(
        f"training {', '.join(args.models)} for {args.steps} steps of {args.batch_size} {args.size}x{args.size} "
        f"images, {torch.get_num_threads()} thread(s)",
        file=sys.stderr,
    )
    train_set = SyntheticSalientObjects(args.steps * args.batch_size, args.size, seed=args.seed)
    test_set = SyntheticSalientObjects(args.eval_samples, args.size, seed=args.seed + 1)
    rows = [("baseline: location prior (mean training mask)", None, evaluate(location_prior(args), test_set))]
    predictors = []
    for name in args.models:
        build, loss_fn = BUILDERS[name]
        model, seconds = train(name, args, build=build, dataset=train_set, loss_fn=loss_fn)
        predict = saliency_predictor(model)
        rows.append((name, seconds, evaluate(predict, test_set)))
        predictors.append((name, predict))
        if name == "dcl":
            rows.append(("dcl + dense CRF", None, evaluate(crf_predictor(model), test_set)))
            predictors.append(("dcl + CRF", crf_predictor(model)))
    print_table(rows)
    images, masks = batch(test_set, range(4))
    grey = dict(cmap="gray", vmin=0, vmax=1)
    columns = [("image", images.permute(0, 2, 3, 1), {}), ("ground truth", masks[:, 0], grey)]
    with torch.no_grad():
        columns += [(name, predict(images)[:, 0], grey) for name, predict in predictors]
    path = args.output / "saliency.png"
    draw_grid(path, columns)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()

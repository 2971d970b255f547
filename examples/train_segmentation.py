"""Trains segops' segmentation models on synthetic shapes (segops.data.SyntheticShapes) on the CPU, evaluates them
with segops.metrics against the majority-class baseline, refines DeepLab's output with segops' dense CRF, and saves
a PNG grid of images, ground truth and predictions.

    python examples/train_segmentation.py                                   # all four models, a few minutes
    torchrun --standalone --nproc_per_node=2 examples/train_segmentation.py # the same, data-parallel (gloo)

Data parallelism: each process takes an equal, contiguous share of every global batch and DistributedDataParallel
averages the gradients, so training equals single-process training on the global batch wherever a model's
computation on one image does not depend on the other images of its batch: true of FCN-8s here (no batch norm, and
dropout off), not of the batch-normalised models, whose statistics then come from each process's share.
Evaluation is sharded too, and the confusion matrices are summed across processes (SegmentationMetrics.all_reduce).
"""

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import segops
from segops import models
from segops.data import CLASS_NAMES, SyntheticShapes
from segops.losses import segmentation_loss
from segops.train import METRICS, ProgressBar, draw_grid, format_table, init_distributed, metric_cells, train_epoch
from segops.train import evaluate as evaluate_batches
from segops.train import load_batch as batch

NUM_CLASSES = SyntheticShapes.num_classes
IMAGENET_MEAN = torch.tensor(models.deeplab.IMAGENET_MEAN).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor(models.deeplab.IMAGENET_STD).view(1, 3, 1, 1)

# The demo's networks: the papers' architectures, narrower where the builder allows (base_width 16 instead of 64) so
# that all five train in minutes on two cores; DeepLab v2 is the published one on ResNet-50. No dropout: the data
# are unlimited.
BUILDERS = {
    "fcn8s": lambda: models.fcn8s(NUM_CLASSES, base_width=16, dropout=0.0),
    "segnet": lambda: models.segnet(NUM_CLASSES, base_width=16),
    "deconvnet": lambda: models.deconvnet(NUM_CLASSES, base_width=16),
    "unet": lambda: models.unet(NUM_CLASSES, base_width=16, batch_norm=True),
    "deeplabv2": lambda: models.deeplabv2(NUM_CLASSES, depth=50),
}

# Dense CRF settings tried on the validation images (DeepLab cross-validated its CRF the same way): bandwidths in
# pixels and in 0..255 colour units, for 64x64 images with pixel noise of about 20 colour units.
CRF_GRID = dict(appearance_sxy=(5.0, 10.0, 20.0), appearance_srgb=(10.0, 20.0, 40.0), appearance_weight=(3.0, 6.0))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(BUILDERS), choices=list(BUILDERS))
    parser.add_argument("--steps", type=int, default=150, help="optimiser steps per model (default 150)")
    parser.add_argument("--batch-size", type=int, default=8, help="global batch, split across processes")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate (default 1e-3 Adam, 1e-2 SGD)")
    parser.add_argument("--optimizer", choices=("adam", "sgd"), default="adam")
    parser.add_argument("--eval-samples", type=int, default=64, help="test images (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="where the PNG grid goes")
    parser.add_argument("--save-state", type=Path, default=None, help="save the trained state_dicts here")
    parser.add_argument("--no-eval", action="store_true", help="train only (no metrics, CRF or picture)")
    return parser.parse_args(argv)


def normalise(images):
    return (images - IMAGENET_MEAN) / IMAGENET_STD


def train(name, args, rank=0, world=1, build=None, dataset=None, loss_fn=None):
    """Trains one model for args.steps Adam (or SGD) steps on the global batches of `dataset` (each process its
    share); returns (the model, unwrapped, in eval mode, seconds). By default the model is BUILDERS[name], the data
    SyntheticShapes and the loss cross-entropy; loss_fn(outputs, targets) replaces it."""
    torch.manual_seed(args.seed)  # the same initial weights in every process (DDP broadcasts rank 0's anyway)
    model = (build or BUILDERS[name])()
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    lr = args.lr or (1e-3 if args.optimizer == "adam" else 1e-2)
    optimiser = (
        torch.optim.Adam(model.parameters(), lr=lr)
        if args.optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    )
    if dataset is None:
        dataset = SyntheticShapes(args.steps * args.batch_size, args.size, seed=args.seed)
    share = args.batch_size // world
    starts = (step * args.batch_size + rank * share for step in range(args.steps))
    batches = (
        (normalise(images), targets) for images, targets in (batch(dataset, range(s, s + share)) for s in starts)
    )
    # The semantic models' {"out", "aux"} (segmentation_loss), or what a given loss_fn takes (saliency maps).
    progress = ProgressBar(args.steps, f"{name:10s}", enabled=rank == 0)
    seconds = train_epoch(trained, optimiser, batches, loss_fn or segmentation_loss, progress)["seconds"]
    progress.close()
    return model.eval(), seconds


def evaluate(predict, dataset, rank, world, batch_size=8):
    """segops.metrics over this process's share of `dataset`, summed across processes."""
    indices = list(range(rank, len(dataset), world))
    batches = (batch(dataset, indices[start : start + batch_size]) for start in range(0, len(indices), batch_size))
    return evaluate_batches(predict, batches, NUM_CLASSES)


def crf_predictor(model, settings):
    """DeepLab's logits refined by segops.dense_crf (5 mean-field steps) on the image in 0..255."""

    def predict(images):
        return segops.dense_crf(model(normalise(images))["out"], images * 255, num_iters=5, **settings)

    return predict


def tune_crf(model, dataset, rank, world):
    """The CRF_GRID setting with the best mean IU on `dataset` (validation images)."""
    best = None
    for values in itertools.product(*CRF_GRID.values()):
        settings = dict(zip(CRF_GRID, values))
        score = evaluate(crf_predictor(model, settings), dataset, rank, world)["mean_iou"]
        if best is None or score > best[0]:
            best = (score, settings)
    return best[1]


def majority_baseline(args, rank, world, test_set):
    """Predicts the training set's most frequent class everywhere."""
    train_set = SyntheticShapes(min(256, args.steps * args.batch_size), args.size, seed=args.seed)
    counts = sum(torch.bincount(train_set[i][1].flatten(), minlength=NUM_CLASSES) for i in range(len(train_set)))
    majority = int(counts.argmax())
    return CLASS_NAMES[majority], evaluate(
        lambda images: torch.full((images.shape[0], *images.shape[-2:]), majority, dtype=torch.int64),
        test_set,
        rank,
        world,
    )


def print_table(rows, baseline_miou):
    header = ["model", "train (s)", *(title for _, title in METRICS), "mean IU - baseline"]
    cells = [
        [
            name,
            "-" if seconds is None else f"{seconds:.0f}",
            *metric_cells(m),
            f"{100 * (m['mean_iou'] - baseline_miou):+.1f}",
        ]
        for name, seconds, m in rows
    ]
    print(format_table(header, cells))


def save_grid(path, test_set, predictors, count=4):
    """Rows: test images; columns: image, ground truth, then each predictor's labels."""
    images, labels = batch(test_set, range(count))
    label_style = dict(cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
    columns = [("image", images.permute(0, 2, 3, 1), {}), ("ground truth", labels, label_style)]
    with torch.no_grad():
        columns += [(name, predict(images).argmax(1), label_style) for name, predict in predictors]
    draw_grid(path, columns)


def main(argv=None):
    args = parse_args(argv)
    rank, world, _ = init_distributed("cpu")
    if args.batch_size % world:
        raise SystemExit(f"--batch-size must be a multiple of the number of processes ({world}), got {args.batch_size}")
    if rank == 0:
        print(
            f"training {', '.join(args.models)} for {args.steps} steps of {args.batch_size} {args.size}x"
            f"{args.size} images on {world} process(es), {torch.get_num_threads()} thread(s) each",
            file=sys.stderr,
        )
    trained = {name: train(name, args, rank, world) for name in args.models}
    if args.save_state is not None and rank == 0:
        torch.save({name: model.state_dict() for name, (model, _) in trained.items()}, args.save_state)
    if not args.no_eval:
        test_set = SyntheticShapes(args.eval_samples, args.size, seed=args.seed + 1)
        majority, baseline = majority_baseline(args, rank, world, test_set)
        rows = [(f"baseline: majority class ({majority})", None, baseline)]
        predictors = []
        for name, (model, seconds) in trained.items():
            predict = (lambda m: lambda images: m(normalise(images))["out"])(model)
            rows.append((name, seconds, evaluate(predict, test_set, rank, world)))
            predictors.append((name, predict))
            if name.startswith("deeplab"):
                settings = tune_crf(model, SyntheticShapes(16, args.size, seed=args.seed + 2), rank, world)
                refine = crf_predictor(model, settings)
                rows.append(
                    (
                        f"{name} + dense CRF ({', '.join(f'{k} {v:g}' for k, v in settings.items())})",
                        None,
                        evaluate(refine, test_set, rank, world),
                    )
                )
                predictors.append((f"{name} + CRF", refine))
        if rank == 0:
            print_table(rows, baseline["mean_iou"])
            path = args.output / "predictions.png"
            save_grid(path, test_set, predictors)
            print(f"wrote {path}", file=sys.stderr)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

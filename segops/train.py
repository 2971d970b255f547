"""Trains a segmentation network on a folder of images and masks (segops.data.SegmentationFolder), from the command
line:

    python -m segops.train --model fcn8s --data DIR --num-classes 2 --epochs 10 --out runs/fcn8s
    torchrun --standalone --nproc_per_node=2 -m segops.train ...   # data-parallel (gloo on CPUs, NCCL on GPUs)

(installed as ``segops-train`` too). Each epoch shows a progress bar (loss and throughput) on stderr and a row of
FCN's metric table (pixel accuracy, mean accuracy, mean IU, f.w. IU, on the validation images) on stdout, and writes
``OUT/checkpoint.pt`` (model, optimiser, epoch, config), ``OUT/metrics.json`` and ``OUT/predictions.png``, each
atomically. ``--resume`` continues from the checkpoint's epoch. A folder that cannot be used stops the command with
``segops.train: error: <the file and what is wrong>`` and exit status 2.

The pieces are public for scripts of their own (examples/train_segmentation.py uses them): build_model,
train_epoch, evaluate, ProgressBar, init_distributed, load_batch, save_atomically, load_checkpoint, draw_grid and
the metric table's format_table and metric_cells.
"""

import argparse
import inspect
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from segops import models
from segops._cli import CheckpointError, UsageError, default_device, run_command
from segops.data import SegmentationFolder, label_colours
from segops.losses import segmentation_loss
from segops.metrics import SegmentationMetrics
from segops.models.deeplab import unnormalise
from segops.transforms import evaluation_transform, training_transform

__all__ = [
    "METRICS",
    "MODELS",
    "ProgressBar",
    "build_model",
    "draw_grid",
    "evaluate",
    "format_table",
    "init_distributed",
    "load_batch",
    "load_checkpoint",
    "main",
    "metric_cells",
    "model_from_checkpoint",
    "save_atomically",
    "save_predictions",
    "train_epoch",
]

# The semantic segmentation builders of segops.models that the command line trains (each maps [N, 3, H, W] images
# to {"out": logits}, plus "aux" for PSPNet).
MODELS = ("fcn32s", "fcn16s", "fcn8s", "unet", "segnet", "deconvnet", "deeplabv2", "deeplabv3", "pspnet")

# FCN's metric table (Long et al. 2015, section 5): SegmentationMetrics' keys and the column titles.
METRICS = (
    ("pixel_accuracy", "pixel acc"),
    ("mean_accuracy", "mean acc"),
    ("mean_iou", "mean IU"),
    ("fw_iou", "f.w. IU"),
)

IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------- the reusable pieces


def build_model(name: str, num_classes: int, base_width: Optional[int] = None, backbone=None) -> nn.Module:
    """segops.models' builder `name` (one of MODELS) for num_classes classes and RGB images; `base_width` narrows the
    networks that have one (FCN, U-Net, SegNet, DeconvNet), `backbone` (a state_dict file) goes to the builder's
    backbone weights (torchvision's vgg16 for FCN, vgg16_bn for SegNet and DeconvNet, resnet101 for DeepLab and
    PSPNet). Raises ValueError for an option the builder does not take."""
    return getattr(models, name)(num_classes, **_model_options(name, base_width, backbone))


def _model_options(name: str, base_width: Optional[int], backbone) -> Dict[str, object]:
    """build_model's keyword arguments for the builder, checked."""
    if name not in MODELS:
        raise ValueError(f"build_model: model must be one of {', '.join(MODELS)}, got {name!r}")
    options = {}
    for option, value, what in (
        ("base_width", base_width, "has no base width"),
        ("backbone", backbone, "takes no backbone weights"),
    ):
        if value is not None:
            if not _takes(name, option):
                others = ", ".join(m for m in MODELS if _takes(m, option))
                raise ValueError(f"{name} {what}; models that take {option}: {others}")
            options[option] = value
    return options


def _takes(name: str, option: str) -> bool:
    """Whether segops.models' builder `name` takes `option` (FCN's builders pass **options on to FCN)."""
    parameters = inspect.signature(getattr(models, name)).parameters
    if option in parameters:
        return True
    return option == "base_width" and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())


def model_from_checkpoint(checkpoint: Dict) -> nn.Module:
    """The trained network of a checkpoint that segops.train wrote (load_checkpoint), in eval mode."""
    config = checkpoint["config"]
    model = build_model(config["model"], config["num_classes"], config.get("base_width"))
    model.load_state_dict(checkpoint["model"])
    return model.eval()


class ProgressBar:
    """A progress bar on a text stream (stderr by default): redrawn in place (carriage return) after every step
    when the stream is a terminal, written once as a whole line by ``close()`` otherwise (logs get one line per
    bar). ``enabled=False`` writes nothing (the other processes of a data-parallel run)."""

    def __init__(self, total: int, description: str = "", stream=None, width: int = 30, enabled: bool = True):
        self.total, self.description, self.width, self.enabled = total, description, width, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.live = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done, self.text, self.drawn = 0, "", 0
        self.started = time.perf_counter()

    def line(self) -> str:
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(self.width * fraction)
        bar = "#" * filled + "." * (self.width - filled)
        seconds = time.perf_counter() - self.started
        return f"{self.description} [{bar}] {self.done}/{self.total} {self.text} {seconds:.1f} s".strip()

    def update(self, steps: int = 1, text: str = "") -> None:
        self.done += steps
        self.text = text or self.text
        if self.live:
            self._write("\r")

    def close(self, text: Optional[str] = None) -> None:
        if text is not None:
            self.text = text
        if self.enabled:
            self._write("\r" if self.live else "")
            print(file=self.stream, flush=True)

    def _write(self, prefix: str) -> None:
        line = self.line()
        print(prefix + line.ljust(self.drawn), end="", file=self.stream, flush=True)
        self.drawn = len(line)


def init_distributed(device="cpu") -> Tuple[int, int, torch.device]:
    """(rank, world size, this process's device): torchrun's environment (WORLD_SIZE > 1) starts a process group,
    NCCL with one GPU per process (LOCAL_RANK) for a CUDA device, gloo otherwise; else a single process."""
    device = torch.device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return dist.get_rank(), dist.get_world_size(), device
    return 0, 1, device


def load_batch(dataset, indices: Iterable[int]) -> Tuple[Tensor, Tensor]:
    """The samples of `dataset` at `indices`, stacked: (images [N, ...], targets [N, ...])."""
    images, targets = zip(*(dataset[i] for i in indices))
    return torch.stack(images), torch.stack(targets)


def train_epoch(
    model: nn.Module,
    optimiser: torch.optim.Optimizer,
    batches: Iterable[Tuple[Tensor, Tensor]],
    loss_fn: Callable = segmentation_loss,
    progress: Optional[ProgressBar] = None,
    device=None,
) -> Dict[str, float]:
    """One pass of optimiser steps over `batches` of (inputs, targets): loss_fn(model(inputs), targets), backward,
    step. Returns ``loss`` (the mean over the images), ``images``, ``seconds`` and ``images_per_second``, all over
    every process of a data-parallel run; `progress` is updated after each step (with this process's throughput)."""
    model.train()
    total, count = 0.0, 0
    started = time.perf_counter()
    for inputs, targets in batches:
        if device is not None:
            inputs, targets = inputs.to(device), targets.to(device)
        loss = loss_fn(model(inputs), targets)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        total += loss.item() * inputs.shape[0]
        count += inputs.shape[0]
        if progress is not None:
            rate = count / max(time.perf_counter() - started, 1e-9)
            progress.update(1, f"loss {loss.item():.3f} {rate:.1f} img/s")
    seconds = time.perf_counter() - started
    sums = torch.tensor([total, float(count)], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        sums = sums.to(device if device is not None else "cpu")
        dist.all_reduce(sums)
    mean = (sums[0] / sums[1]).item() if sums[1] > 0 else float("nan")
    images = int(sums[1].item())
    return {"loss": mean, "images": images, "seconds": seconds, "images_per_second": images / max(seconds, 1e-9)}


@torch.no_grad()
def evaluate(
    predict: Callable[[Tensor], Tensor],
    batches: Iterable[Tuple[Tensor, Tensor]],
    num_classes: int,
    ignore_index: Optional[int] = None,
    device=None,
) -> Dict[str, object]:
    """segops.metrics.SegmentationMetrics over `batches` of (inputs, labels [N, H, W]): predict(inputs) gives logits
    [N, K, H, W] or labels. The confusion matrices of a data-parallel run's processes are summed, so each process
    may pass its own share. Returns SegmentationMetrics.compute()'s dict."""
    metrics = SegmentationMetrics(num_classes, ignore_index, device=device)
    for inputs, labels in batches:
        if device is not None:
            inputs, labels = inputs.to(device), labels.to(device)
        metrics.update(predict(inputs), labels)
    metrics.all_reduce()
    return metrics.compute()


def metric_cells(metrics: Dict[str, object]) -> List[str]:
    """FCN's four metrics of a SegmentationMetrics.compute() dict as percentages with one decimal (METRICS' order)."""
    return [f"{100 * metrics[key]:.1f}" for key, _ in METRICS]


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table: the first column left-aligned, the others right-aligned."""
    return "\n".join([_table_row(header), "|---|" + "---:|" * (len(header) - 1), *map(_table_row, rows)])


def _table_row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def save_atomically(path, write: Callable[[str], None]) -> None:
    """Calls write(temporary path) for a file beside `path` (same folder, same suffix) and renames it onto `path`
    (os.replace, atomic), so that `path` holds its old content or the whole new one, never a part: an error while
    writing leaves it as it was, and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    try:
        write(temporary)
        umask = os.umask(0)  # read it (mkstemp's file is private to its owner; a file open() makes is not)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def load_checkpoint(path, map_location="cpu") -> Dict:
    """A checkpoint that segops.train wrote: a dict with ``model`` and ``optimizer`` (state_dicts), ``epoch`` (the
    last one completed), ``config`` and ``history`` (each epoch's record of metrics.json). Raises a ValueError
    naming the file if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch.load's errors have no common type (pickle, zip, unpickler)
        raise CheckpointError(
            f"{path}: not a checkpoint torch.load can read ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(checkpoint, dict) or not {"model", "config", "epoch"} <= set(checkpoint):
        raise CheckpointError(f"{path}: not a segops.train checkpoint (needs model, config and epoch entries)")
    return checkpoint


def draw_grid(path, columns) -> None:
    """Writes a PNG of images in a grid (atomically): `columns` is a list of (title, images [rows, H, W] or
    [rows, H, W, 3], imshow's keyword arguments), one column each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(columns[0][1])
    figure, axes = plt.subplots(count, len(columns), figsize=(2 * len(columns), 2 * count), squeeze=False)
    for col, (title, values, style) in enumerate(columns):
        for row in range(count):
            axis = axes[row][col]
            axis.imshow(values[row].numpy(), **style)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[0][col].set_title(title, fontsize=9)
    figure.tight_layout()
    save_atomically(path, lambda temporary: figure.savefig(temporary, dpi=100))
    plt.close(figure)


@torch.no_grad()
def save_predictions(path, model: nn.Module, dataset, count: int = 4, device=None) -> None:
    """A PNG grid (draw_grid) of the first `count` samples of `dataset` (ImageNet-normalised images and label
    masks): the image, the ground truth and the model's prediction, classes in Pascal VOC's colours
    (label_colours; ignored pixels in its boundary colour)."""
    images, labels = load_batch(dataset, range(min(count, len(dataset))))
    model.eval()
    predicted = model(images.to(device) if device is not None else images)["out"].argmax(1).cpu()
    colours = label_colours()
    rgb = (unnormalise(images) / 255).permute(0, 2, 3, 1)
    draw_grid(
        path,
        [
            ("image", rgb, {}),
            ("ground truth", colours[labels.clamp(0, 255)], {}),
            ("prediction", colours[predicted.clamp(0, 255)], {}),
        ],
    )


# ------------------------------------------------------------------------------------------------ the command line


def _positive(kind):
    def parse(text):
        value = kind(text)
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def _fraction(text):
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


# The training settings a checkpoint records; --resume takes them from it (a different value given is an error).
_DEFAULTS = {"base_width": None, "size": 256, "batch_size": 8, "lr": 1e-3, "val_split": 0.1, "seed": 0}


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog="segops.train",
        description="Trains a segmentation network of segops.models on a folder of images and masks.",
        epilog="Folder layouts: metadata.csv (columns Image,Mask; files in the folder or in Image/ and Mask/), Pascal "
        "VOC (JPEGImages/, SegmentationClass/, ImageSets/Segmentation/{train,val}.txt), or images/ + masks/ with "
        "matching file stems. Palette masks: indices are classes (255 ignored); grayscale masks: sorted values are "
        "classes (0/255 -> 0/1).",
    )
    parser.add_argument("--model", required=True, choices=MODELS, help="a builder of segops.models")
    parser.add_argument("--data", required=True, type=Path, help="the dataset folder")
    parser.add_argument("--num-classes", required=True, type=_positive(int), help="K, the background included")
    parser.add_argument("--epochs", type=_positive(int), default=10, help="the epoch to train up to (default 10)")
    parser.add_argument("--batch-size", type=_positive(int), help="global batch, split across processes (default 8)")
    parser.add_argument("--size", type=_positive(int), help="images are resized to SIZE x SIZE (default 256)")
    parser.add_argument("--lr", type=_positive(float), help="Adam's learning rate (default 1e-3)")
    parser.add_argument("--base-width", type=_positive(int), help="narrower FCN/U-Net/SegNet/DeconvNet (paper: 64)")
    parser.add_argument("--backbone", type=Path, help="backbone weights to start from: a local state_dict file")
    parser.add_argument(
        "--val-split", type=_fraction, help="share of the images held out for validation (default 0.1; VOC: val.txt)"
    )
    parser.add_argument("--seed", type=int, help="seeds the split, the shuffling and the augmentation (default 0)")
    parser.add_argument(
        "--out", type=Path, help="where checkpoint.pt, metrics.json and predictions.png go (runs/MODEL)"
    )
    parser.add_argument("--resume", action="store_true", help="continue OUT/checkpoint.pt from its last epoch")
    parser.add_argument("--overwrite", action="store_true", help="start again over an existing OUT/checkpoint.pt")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda where there is one)")
    args = parser.parse_args(argv)
    if args.out is None:
        args.out = Path("runs") / args.model
    return args


def _json_safe(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, Tensor):
        return [_json_safe(v) for v in value.tolist()]
    return value


def _config(args, resumed: Optional[Dict]) -> Dict:
    """The run's settings: the command line's over _DEFAULTS, or the resumed checkpoint's (a differing value is an
    error)."""
    given = {key: getattr(args, key) for key in _DEFAULTS}
    if resumed is None:
        config = {key: _DEFAULTS[key] if value is None else value for key, value in given.items()}
        config.update(model=args.model, num_classes=args.num_classes)
        config["backbone"] = str(args.backbone) if args.backbone is not None else None
        return config
    config = dict(resumed["config"])
    given.update(model=args.model, num_classes=args.num_classes)
    differing = [
        f"--{key.replace('_', '-')} {value} (the checkpoint's: {config.get(key)})"
        for key, value in given.items()
        if value is not None and value != config.get(key)
    ]
    if differing:
        raise UsageError(f"--resume: the command line differs from the checkpoint: {', '.join(differing)}")
    return config


def _shares(order: List[int], batch_size: int, rank: int, world: int) -> List[List[int]]:
    """This process's contiguous share of each full global batch of `order` (a last partial batch is dropped)."""
    share = batch_size // world
    return [
        order[start + rank * share : start + (rank + 1) * share]
        for start in range(0, len(order) - batch_size + 1, batch_size)
    ]


def _train(args) -> None:
    rank, world, device = init_distributed(args.device or default_device())
    leader = rank == 0
    checkpoint_path = args.out / "checkpoint.pt"
    resumed = None
    if args.resume:
        if not checkpoint_path.is_file():
            raise UsageError(f"--resume: {checkpoint_path} does not exist")
        resumed = load_checkpoint(checkpoint_path)
    elif checkpoint_path.exists() and not args.overwrite:
        raise UsageError(
            f"{checkpoint_path} exists: --resume continues it, --overwrite starts again over it, or choose another "
            "--out"
        )
    config = _config(args, resumed)
    if config["size"] < 64:
        raise UsageError(f"--size must be at least 64 (the networks' deepest stride is 32), got {config['size']}")
    if config["batch_size"] % world:
        raise UsageError(f"--batch-size must be a multiple of the {world} processes, got {config['batch_size']}")
    try:  # before reading the folder: a mistake in the options shows at once
        _model_options(config["model"], config["base_width"], None if resumed else args.backbone)
    except ValueError as error:
        raise UsageError(str(error)) from None
    common = dict(
        num_classes=config["num_classes"],
        val_fraction=config["val_split"],
        seed=config["seed"],
        ignore_index=IGNORE_INDEX,
        mask_values=config.get("mask_values"),
    )
    train_set = SegmentationFolder(args.data, "train", transform=training_transform(config["size"]), **common)
    common["mask_values"] = train_set.mask_values
    val_set = SegmentationFolder(args.data, "val", transform=evaluation_transform(config["size"]), **common)
    config.update(data=str(args.data.resolve()), layout=train_set.layout, mask_kind=train_set.mask_kind)
    config.update(mask_values=train_set.mask_values, ignore_index=IGNORE_INDEX)
    batch_size = config["batch_size"]
    if len(train_set) < batch_size:
        batch_size = len(train_set) - len(train_set) % world
        if batch_size == 0:
            raise UsageError(f"{len(train_set)} training image(s) cannot be shared by {world} processes")
    if leader:
        print(f"train: {train_set.summary}\nval: {val_set.summary}", file=sys.stderr)
    torch.manual_seed(config["seed"])  # the initial weights: the same in every process and every run
    try:
        model = build_model(
            config["model"], config["num_classes"], config["base_width"], None if resumed else args.backbone
        )
    except (ValueError, OSError, RuntimeError, KeyError) as error:
        what = f" with --backbone {args.backbone}" if args.backbone is not None and not resumed else ""
        raise UsageError(f"{config['model']}{what}: {error}") from None
    model.to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config["lr"])
    history, first = [], 1
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimiser.load_state_dict(resumed["optimizer"])
        history, first = list(resumed.get("history", [])), resumed["epoch"] + 1
    if first > args.epochs:
        if leader:
            print(
                f"{checkpoint_path} has already trained {first - 1} epoch(s) (--epochs {args.epochs})", file=sys.stderr
            )
        return
    trained = model
    if world > 1:
        trained = nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if leader:
        print(
            f"training {config['model']} on {device} ({world} process(es)): epochs {first}..{args.epochs}, "
            f"{batch_size} images per step, {len(train_set) // batch_size} steps per epoch",
            file=sys.stderr,
        )
        print(format_table(["epoch", "loss", *(title for _, title in METRICS), "img/s"], []), flush=True)
    shard = list(range(rank, len(val_set), world))  # evaluation is sharded, the confusion matrices summed
    val_batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
    for epoch in range(first, args.epochs + 1):
        torch.manual_seed(config["seed"] * 1_000_003 + epoch)  # dropout: resuming repeats an uninterrupted run
        train_set.set_epoch(epoch)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config["seed"] + epoch))
        steps = _shares(order.tolist(), batch_size, rank, world)
        progress = ProgressBar(len(steps), f"epoch {epoch}/{args.epochs}", enabled=leader)
        record = train_epoch(
            trained, optimiser, (load_batch(train_set, s) for s in steps), segmentation_loss, progress, device
        )
        model.eval()
        metrics = evaluate(
            lambda images: model(images)["out"],
            (load_batch(val_set, s) for s in val_batches),
            config["num_classes"],
            IGNORE_INDEX,
            device,
        )
        progress.close(f"loss {record['loss']:.3f} {record['images_per_second']:.1f} img/s")
        record = {"epoch": epoch, **record, **{key: _json_safe(value) for key, value in metrics.items()}}
        history.append(record)
        if leader:
            row = [epoch, f"{record['loss']:.4f}", *metric_cells(metrics), f"{record['images_per_second']:.1f}"]
            print(_table_row(row), flush=True)
            state = {
                "model": model.state_dict(),
                "optimizer": optimiser.state_dict(),
                "epoch": epoch,
                "config": config,
                "history": history,
            }
            save_atomically(checkpoint_path, lambda path: torch.save(state, path))
            text = json.dumps({"config": config, "epochs": history}, indent=1)
            save_atomically(args.out / "metrics.json", lambda path: Path(path).write_text(text + "\n"))
            save_predictions(args.out / "predictions.png", model, val_set, device=device)
    if leader:
        print(
            f"wrote {checkpoint_path}, {args.out / 'metrics.json'} and {args.out / 'predictions.png'}", file=sys.stderr
        )


def main(argv=None) -> int:
    """``python -m segops.train`` (``segops-train``); `argv` as sys.argv[1:] (``--help`` lists the options)."""
    return run_command("segops.train", _train, _parse_args(argv))


if __name__ == "__main__":
    main()

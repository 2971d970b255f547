"""examples/train_segmentation.py: the synthetic dataset, a run of the whole script, and data-parallel training
under torchrun (2 processes, gloo) equal to single-process training on the same global batch."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segops.data import CLASS_COLOURS, SyntheticSalientObjects, SyntheticShapes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_segmentation.py"


def _run(args, tmp_path):
    # One thread per process: two processes on two cores, and the same arithmetic in both runs.
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_synthetic_shapes_are_reproducible_and_labelled_by_colour():
    dataset = SyntheticShapes(20, size=48, seed=3)
    image, labels = dataset[7]
    assert image.shape == (3, 48, 48) and labels.shape == (48, 48) and labels.dtype == torch.int64
    assert 0 <= image.min() and image.max() <= 1
    again, again_labels = SyntheticShapes(20, size=48, seed=3)[7]
    assert torch.equal(image, again) and torch.equal(labels, again_labels)
    assert not torch.equal(labels, SyntheticShapes(20, size=48, seed=4)[7][1])
    # Every class appears over the dataset, and each shape's pixels are near its class colour (jitter + noise).
    all_labels = torch.stack([dataset[i][1] for i in range(len(dataset))])
    assert set(all_labels.unique().tolist()) == {0, 1, 2, 3}
    for i in range(len(dataset)):
        image, labels = dataset[i]
        for label in labels.unique().tolist():
            if label > 0:
                mean = image[:, labels == label].mean(1)
                assert (mean - torch.tensor(CLASS_COLOURS[label - 1])).abs().max() < 0.3


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: SyntheticShapes(-1), ValueError, "num_samples must be an int >= 0, got -1"),
        (lambda: SyntheticShapes(4, size=8), ValueError, "size must be an int >= 16, got 8"),
        (lambda: SyntheticShapes(4)[4], IndexError, "index 4 out of range for 4 samples"),
        (
            lambda: SyntheticShapes(4, shapes_per_image=(0, 2)),
            ValueError,
            r"shapes_per_image must be a tuple \(lowest, highest\) of ints with 1 <= lowest <= highest, got \(0, 2\)",
        ),
        (lambda: SyntheticShapes(4, shapes_per_image=(3, 2)), ValueError, r"got \(3, 2\)"),
    ],
)
def test_synthetic_shapes_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_salient_objects_are_one_shape_and_its_mask():
    dataset = SyntheticSalientObjects(12, size=64, seed=5)
    shapes = SyntheticShapes(12, size=64, seed=5, shapes_per_image=(1, 1))
    for i in range(len(dataset)):
        image, mask = dataset[i]
        same_image, labels = shapes[i]
        assert mask.shape == (1, 64, 64) and mask.dtype == torch.float32 and torch.equal(image, same_image)
        assert torch.equal(mask[0], (labels > 0).float())
        assert len(labels.unique()) == 2  # the background and one shape
        # The object is 1/4 to 2/3 of the image across, partly clipped at the border at most.
        assert 0.01 < mask.mean() < 0.5


@pytest.mark.slow  # the demos train every network for a few steps: tens of seconds
def test_the_script_trains_evaluates_and_draws(tmp_path):
    result = _run(
        [
            sys.executable,
            str(SCRIPT),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--eval-samples",
            "4",
            "--output",
            str(tmp_path),
        ],
        tmp_path,
    )
    table = result.stdout
    for row in (
        "baseline: majority class (background)",
        "| fcn8s |",
        "| segnet |",
        "| deconvnet |",
        "| unet |",
        "| deeplabv2 |",
        "deeplabv2 + dense CRF",
    ):
        assert row in table
    assert (tmp_path / "predictions.png").stat().st_size > 0


@pytest.mark.slow  # the demos train every network for a few steps: tens of seconds
def test_the_saliency_script_trains_evaluates_and_draws(tmp_path):
    result = _run(
        [
            sys.executable,
            str(ROOT / "examples" / "train_saliency.py"),
            "--steps",
            "2",
            "--batch-size",
            "2",
            "--eval-samples",
            "4",
            "--output",
            str(tmp_path),
        ],
        tmp_path,
    )
    for row in (
        "| baseline: location prior (mean training mask) |",
        "| basnet |",
        "| poolnet |",
        "| dcl |",
        "| dcl + dense CRF |",
    ):
        assert row in result.stdout
    assert (tmp_path / "saliency.png").stat().st_size > 0


@pytest.mark.slow  # the demos train every network for a few steps: tens of seconds
def test_two_process_training_equals_single_process_training(tmp_path):
    """FCN-8s (no batch norm, dropout off) with SGD: each process's share of the global batch of 4 and DDP's
    gradient average give the gradient of the mean loss over the whole batch, so 3 steps under torchrun equal
    3 single-process steps up to float rounding of the sums."""
    common = [str(SCRIPT), "--models", "fcn8s", "--steps", "3", "--batch-size", "4", "--optimizer", "sgd", "--no-eval"]
    _run([sys.executable, *common, "--save-state", "single.pt"], tmp_path)
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            *common,
            "--save-state",
            "ddp.pt",
        ],
        tmp_path,
    )
    single = torch.load(tmp_path / "single.pt")["fcn8s"]
    ddp = torch.load(tmp_path / "ddp.pt")["fcn8s"]
    spec = importlib.util.spec_from_file_location("train_segmentation", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    torch.manual_seed(0)
    initial = script.BUILDERS["fcn8s"]().state_dict()
    assert single.keys() == ddp.keys()
    moved = 0
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-7, msg=key)
        moved += not torch.equal(single[key], initial[key])
    assert moved > len(single) // 2  # training changed most tensors: the equality is not of untouched weights


def test_roi_ablation_targets_fill_their_boxes_and_the_script_runs(tmp_path):
    spec = importlib.util.spec_from_file_location("roi_ablation", ROOT / "examples" / "roi_ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ablation)
    images, boxes, masks = ablation.make_batch(6, torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, 128, 128) and boxes.shape == (6, 5) and masks.shape == (6, 1, 14, 14)
    assert torch.equal(boxes[:, 0], torch.arange(6.0))
    # A box is its shape's exact extent: the shape reaches every side of the box's grid.
    for mask in masks[:, 0]:
        assert mask[0].max() > 0 and mask[-1].max() > 0 and mask[:, 0].max() > 0 and mask[:, -1].max() > 0
        assert 0.3 < mask.mean() <= 1  # a rectangle fills its box
    result = _run(
        [sys.executable, str(ROOT / "examples" / "roi_ablation.py"), "--steps", "2", "--test-images", "4"], tmp_path
    )
    for variant in ("| RoIPool |", "| RoIAlign (aligned=False) |", "| RoIAlign (aligned=True) |"):
        assert variant in result.stdout


def test_demo_sh_runs_the_folder_part_and_rejects_others(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh"), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage: " in result.stderr and "segmentation|saliency|roi_ablation|folder" in result.stderr
    assert "[folder]=examples/train_folder.py" in (ROOT / "scripts" / "demo.sh").read_text()


def test_the_flood_photos_are_reproducible_with_water_masks():
    spec = importlib.util.spec_from_file_location("train_folder", ROOT / "examples" / "train_folder.py")
    folder = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(folder)
    sizes = set()
    for index in range(6):
        image, water = folder.flood_photo(index, seed=1)
        again, again_water = folder.flood_photo(index, seed=1)
        assert torch.equal(image, again) and torch.equal(water, again_water)
        height, width = water.shape
        assert image.shape == (height, width, 3) and image.dtype == torch.uint8 and water.dtype == torch.bool
        assert 72 <= height <= 120 and 96 <= width <= 160
        assert 0.05 < water.float().mean() < 0.7
        sizes.add((height, width))
    assert len(sizes) > 1


@pytest.mark.slow  # writes a folder and trains two networks through the command line: about a minute
def test_the_folder_demo_trains_through_the_command_line_and_reports(tmp_path):
    result = _run(
        [
            sys.executable,
            str(ROOT / "examples" / "train_folder.py"),
            *("--images", "10", "--epochs", "2", "--batch-size", "4", "--base-width", "4"),
            *("--output", str(tmp_path / "out")),
        ],
        tmp_path,
    )
    out = tmp_path / "out"
    lines = (out / "data" / "metadata.csv").read_text().splitlines()
    assert lines[0] == "Image,Mask" and lines[1] == "0.jpg,0.png" and len(lines) == 11
    assert "| run | epochs | train (s) | pixel acc | mean acc | mean IU | f.w. IU |" in result.stdout
    for row in ("| baseline: ", "| fcn8s from scratch | 2 |", "| unet from scratch | 2 |"):
        assert row in result.stdout
    for run in ("fcn8s-from-scratch", "unet-from-scratch"):
        assert {"checkpoint.pt", "metrics.json", "predictions.png"} <= {p.name for p in (out / run).iterdir()}
    assert (out / "loss_curves.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "masks").iterdir()) == ["0.png", "1.png", "2.png", "3.png"]

"""examples/train_segmentation.py: the synthetic dataset, a run of the whole script, and data-parallel training
under torchrun (2 processes, gloo) equal to single-process training on the same global batch. The other demos
(train_saliency.py, roi_ablation.py, train_folder.py) run at a tiny size; roi_ablation.py's data, keypoint targets
and metrics (PCK, OKS, OKS-based AP) are checked against hand-computed values."""

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segops.data import CLASS_COLOURS, SyntheticSalientObjects, SyntheticShapes

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "train_segmentation.py"


def _example(name):
    """examples/<name>.py as a module (main() not run)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    script = _example("train_segmentation")
    torch.manual_seed(0)
    initial = script.BUILDERS["fcn8s"]().state_dict()
    assert single.keys() == ddp.keys()
    moved = 0
    for key in single:
        torch.testing.assert_close(ddp[key], single[key], rtol=1e-5, atol=1e-7, msg=key)
        moved += not torch.equal(single[key], initial[key])
    assert moved > len(single) // 2  # training changed most tensors: the equality is not of untouched weights


def test_roi_ablation_targets_fill_their_boxes_and_the_script_runs(tmp_path):
    ablation = _example("roi_ablation")
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
    assert "|folder|keypoints [ARGS...]" in result.stderr  # the keypoint ablation: roi_ablation.py --task keypoints
    assert '[keypoints]="--task keypoints"' in (ROOT / "scripts" / "demo.sh").read_text()


def test_the_flood_photos_are_reproducible_with_water_masks():
    folder = _example("train_folder")
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


def test_keypoint_ablation_houses_have_their_vertices_as_keypoints():
    ablation = _example("roi_ablation")
    images, boxes, keypoints, areas = ablation.make_keypoint_batch(6, torch.Generator().manual_seed(0))
    assert images.shape == (6, 3, 128, 128) and boxes.shape == (6, 5) and keypoints.shape == (6, 5, 2)
    assert torch.equal(boxes[:, 0], torch.arange(6.0))
    # The box is the vertices' extent; the vertices sit at sub-pixel positions, inside the image.
    assert torch.equal(boxes[:, 1:3], keypoints.min(1).values) and torch.equal(boxes[:, 3:], keypoints.max(1).values)
    assert (keypoints.frac() != 0).all() and (keypoints > 0).all() and (keypoints < 128).all()
    assert (areas > 100).all() and (areas < (boxes[:, 3] - boxes[:, 1]) * (boxes[:, 4] - boxes[:, 2])).all()
    # The vertices in the template's order, clockwise on the screen (a positive shoelace sum with y down): apex, right
    # eave, right base, left base, left eave; the apex above the bases, the right ones right of the left ones.
    x, y = keypoints.unbind(-1)
    signed = 0.5 * (x * y.roll(-1, 1) - x.roll(-1, 1) * y).sum(1)
    torch.testing.assert_close(signed, areas)
    assert (y[:, 0] < y[:, 2:4].min(1).values).all() and (x[:, 1] > x[:, 4]).all() and (x[:, 2] > x[:, 3]).all()


def test_polygon_mask_and_area_on_hand_cases():
    ablation = _example("roi_ablation")
    ys, xs = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(6) + 0.5, indexing="ij")
    square = torch.tensor(
        [[1.0, 1.0], [4.0, 1.0], [4.0, 3.0], [1.0, 3.0]]
    )  # pixels (1..3, 1..2) have their centres in it
    expected = torch.zeros(6, 6, dtype=torch.bool)
    expected[1:3, 1:4] = True
    assert torch.equal(ablation.polygon_mask(square, xs, ys), expected)
    assert torch.equal(ablation.polygon_mask(square.flip(0), xs, ys), expected)  # either orientation
    assert ablation.polygon_area(square).item() == 6.0
    triangle = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])  # below the anti-diagonal: x + y < 6
    assert torch.equal(ablation.polygon_mask(triangle, xs, ys), xs + ys < 6)
    assert ablation.polygon_area(triangle).item() == 18.0


def test_keypoint_bins_and_decoding_on_hand_cases():
    ablation = _example("roi_ablation")
    boxes = torch.tensor([[0, 10.0, 20.0, 38.0, 48.0]])  # 28 x 28 pixels: one pixel per bin of a 28x28 heatmap
    keypoints = torch.tensor([[[10.0, 20.0], [24.5, 21.2], [38.0, 48.0], [9.0, 50.0]]])
    # floor((x - x1) * 28 / 28), clamped to the grid (a keypoint on or past the far edge: the last bin), row * 28 + col
    bins = ablation.keypoint_bins(keypoints, boxes, 28)
    assert bins.tolist() == [[0, 1 * 28 + 14, 27 * 28 + 27, 27 * 28 + 0]]
    # A heatmap peaked at those bins decodes to their centres; the score is the mean peak probability.
    heatmaps = torch.full((1, 4, 28, 28), -1e4)
    heatmaps.view(1, 4, -1)[0, torch.arange(4), bins[0]] = 0.0
    decoded, scores = ablation.decode_keypoints(heatmaps, boxes)
    assert decoded.tolist() == [[[10.5, 20.5], [24.5, 21.5], [37.5, 47.5], [10.5, 47.5]]]
    assert scores.tolist() == [1.0]
    assert torch.equal(ablation.keypoint_bins(decoded, boxes, 28), bins)
    # The loss is the cross-entropy over the 28 x 28 bins: log(784) for flat heatmaps.
    loss = ablation.keypoint_loss(torch.zeros(1, 4, 28, 28), boxes, keypoints)
    assert loss.item() == pytest.approx(math.log(784))


def test_pck_and_oks_on_hand_cases():
    ablation = _example("roi_ablation")
    boxes = torch.tensor([[0, 0.0, 0.0, 30.0, 40.0]])  # diagonal 50: PCK@0.05 within 2.5, PCK@0.1 within 5
    truth = torch.tensor([[[5.0, 5.0], [10.0, 10.0], [20.0, 20.0], [25.0, 30.0]]], dtype=torch.float64)
    errors = torch.tensor([[[0.0, 0.0], [1.2, 1.6], [2.4, 3.2], [3.6, 4.8]]], dtype=torch.float64)  # 0, 2, 4, 6 away
    assert ablation.pck(truth + errors, truth, boxes, 0.05) == 0.5
    assert ablation.pck(truth + errors, truth, boxes, 0.1) == 0.75
    # OKS = mean exp(-d^2 / (2 s^2 k^2)): with s^2 = 100 and k = 0.1, s^2 k^2 = 1; distances 0, 2, 4, 6.
    similarity = ablation.oks(truth + errors, truth, torch.tensor([100.0]), k=0.1)
    expected = (1 + math.exp(-2) + math.exp(-8) + math.exp(-18)) / 4
    assert similarity.shape == (1,) and similarity.item() == pytest.approx(expected, rel=1e-12)
    # A per-keypoint k: the second keypoint's k = 0.2 gives exp(-2 / 4).
    k = torch.tensor([0.1, 0.2, 0.1, 0.1], dtype=torch.float64)
    expected = (1 + math.exp(-0.5) + math.exp(-8) + math.exp(-18)) / 4
    assert ablation.oks(truth + errors, truth, torch.tensor([100.0]), k=k).item() == pytest.approx(expected, rel=1e-12)
    assert ablation.oks(truth, truth, torch.tensor([100.0])).item() == 1.0


def test_oks_ap_on_hand_cases():
    """Three predictions ranked by score have OKS 0.62, 0.97, 0.4. At thresholds .50, .55, .60 the first two are
    true positives: recall 1/3, 2/3, 2/3 and precision 1, 1, 2/3, so the 101 recall levels read precision 1 up to
    0.66 (67 levels) and 0 beyond: AP 67/101. At .65 to .95 only the second is: recall 0, 1/3, 1/3 and precision 0,
    1/2, 1/3, made non-increasing 1/2, 1/2, 1/3, so levels 0 to 0.33 (34) read 1/2: AP 17/101."""
    ablation = _example("roi_ablation")
    scores = torch.tensor([0.7, 0.9, 0.8])
    similarities = torch.tensor([0.4, 0.62, 0.97], dtype=torch.float64)
    ap = ablation.oks_ap(similarities, scores)
    expected = torch.tensor([67 / 101] * 3 + [17 / 101] * 7, dtype=torch.float64)
    torch.testing.assert_close(ap, expected, rtol=1e-12, atol=0)
    assert ablation.oks_ap(torch.ones(5, dtype=torch.float64), torch.rand(5)).tolist() == [1.0] * 10
    assert ablation.oks_ap(torch.zeros(5, dtype=torch.float64), torch.rand(5)).tolist() == [0.0] * 10


def test_keypoint_ablation_runs_and_reports_metrics_in_0_1(capsys):
    ablation = _example("roi_ablation")
    rows = ablation.main(["--task", "keypoints", "--steps", "2", "--batch-size", "2", "--test-images", "4"])
    assert [name for name, _, _ in rows] == ["RoIPool", "RoIAlign (aligned=False)", "RoIAlign (aligned=True)"]
    printed = capsys.readouterr().out
    assert "| pooling | AP^kp (%) | AP^kp_50 (%) | AP^kp_75 (%) | PCK@0.05 (%) | PCK@0.1 (%) | train (s) |" in printed
    for name, metrics, seconds in rows:
        assert f"| {name} |" in printed
        assert list(metrics) == ["AP^kp", "AP^kp_50", "AP^kp_75", "PCK@0.05", "PCK@0.1"]
        assert all(math.isfinite(value) and 0 <= value <= 1 for value in metrics.values()), metrics
        assert seconds > 0

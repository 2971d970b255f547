"""The command lines segops.train, segops.eval and segops.predict on a small folder written to a temporary
directory (tests/folder_testing.py): what a run shows and writes, --resume, bad folders (exit status 2, a message
naming the file, no traceback, nothing in --out lost), the metric table, colour masks with and without the dense
CRF; and the pieces segops.train shares with examples/train_segmentation.py."""

import functools
import io
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import segops.eval
import segops.predict
import segops.train
from folder_testing import write_folder
from segops import models
from segops.data import label_colours, read_image

ROOT = Path(__file__).resolve().parents[1]
# U-Net (no batch norm, no dropout) at base width 4: a training step of two 64x64 images takes milliseconds.
TINY = ["--model", "unet", "--base-width", "4", "--num-classes", "2", "--size", "64", "--batch-size", "2"]
TINY += ["--val-split", "0.25", "--device", "cpu"]
METRIC_TITLES = ("pixel acc", "mean acc", "mean IU", "f.w. IU")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: the networks are tiny, and two threads on a machine whose two cores are busy run ten times
    slower (each waits for the other at every operation)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(data, out, *extra):
    return segops.train.main([*TINY, "--data", str(data), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("flood")
    write_folder(root, "metadata.csv", count=8, size=32)
    return root


@pytest.fixture(scope="module")
def run(folder, tmp_path_factory):
    """One epoch of training: (its --out folder, stdout, stderr)."""
    out = tmp_path_factory.mktemp("run") / "out"
    stdout, stderr = io.StringIO(), io.StringIO()
    with _redirect(stdout, stderr):
        assert _train(folder, out, "--epochs", "1") == 0
    return out, stdout.getvalue(), stderr.getvalue()


class _redirect:
    def __init__(self, stdout, stderr):
        self.streams = (stdout, stderr)

    def __enter__(self):
        self.saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = self.streams

    def __exit__(self, *exc):
        sys.stdout, sys.stderr = self.saved


def test_a_run_shows_progress_and_the_metric_table(run):
    _, stdout, stderr = run
    assert "| epoch | loss | pixel acc | mean acc | mean IU | f.w. IU | img/s |" in stdout
    row = [line for line in stdout.splitlines() if line.startswith("| 1 |")]
    assert len(row) == 1 and len(row[0].split("|")) == 9
    assert "train: 6 images in" in stderr and "val: 2 images in" in stderr
    assert "masks: grayscale values [0, 255] -> classes [0, 1]" in stderr
    # Not a terminal: the progress bar is one line per epoch, with the loss and the throughput.
    bar = [line for line in stderr.splitlines() if line.startswith("epoch 1/1 [")]
    assert len(bar) == 1 and "3/3" in bar[0] and "loss " in bar[0] and "img/s" in bar[0] and "\r" not in stderr


def test_a_run_writes_checkpoint_metrics_and_predictions(run, folder):
    out, stdout, _ = run
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert set(checkpoint) == {"model", "optimizer", "epoch", "config", "history"} and checkpoint["epoch"] == 1
    config = checkpoint["config"]
    assert config["model"] == "unet" and config["num_classes"] == 2 and config["base_width"] == 4
    assert config["size"] == 64 and config["mask_values"] == [0, 255] and config["layout"] == "metadata.csv"
    assert config["data"] == str(folder.resolve())
    assert checkpoint["optimizer"]["state"]  # Adam's moments: the optimiser stepped
    model = models.unet(2, base_width=4)
    model.load_state_dict(checkpoint["model"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"] == config and len(metrics["epochs"]) == 1
    record = metrics["epochs"][0]
    for key in ("epoch", "loss", "seconds", "images_per_second", "pixel_accuracy", "mean_accuracy", "mean_iou"):
        assert key in record
    assert record["epoch"] == 1 and record["images"] == 6 and len(record["iou"]) == 2
    assert 0 <= record["pixel_accuracy"] <= 1 and record["loss"] > 0
    row = [line for line in stdout.splitlines() if line.startswith("| 1 |")][0]
    assert f"| {100 * record['mean_iou']:.1f} |" in row
    assert checkpoint["history"] == metrics["epochs"]
    with Image.open(out / "predictions.png") as picture:
        assert picture.format == "PNG" and picture.width > 300 and picture.height > 300
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "predictions.png"]


def test_resume_continues_at_the_next_epoch_as_an_uninterrupted_run(run, folder, tmp_path):
    out = tmp_path / "resumed"
    shutil.copytree(run[0], out)
    assert _train(folder, out, "--epochs", "2", "--resume") == 0
    resumed = torch.load(out / "checkpoint.pt", weights_only=True)
    assert resumed["epoch"] == 2 and [r["epoch"] for r in resumed["history"]] == [1, 2]
    assert len(json.loads((out / "metrics.json").read_text())["epochs"]) == 2
    assert _train(folder, tmp_path / "straight", "--epochs", "2") == 0
    straight = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    assert resumed["history"][1]["loss"] == straight["history"][1]["loss"]
    # Nothing left to do: the checkpoint is untouched.
    before = (out / "checkpoint.pt").read_bytes()
    assert _train(folder, out, "--epochs", "2", "--resume") == 0
    assert (out / "checkpoint.pt").read_bytes() == before


def _fails(capsys, main, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr
    return stderr


def test_resume_and_out_mistakes_are_errors(run, folder, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    before = (out / "checkpoint.pt").read_bytes()
    stderr = _fails(capsys, segops.train.main, [*TINY, "--data", str(folder), "--out", str(out)])
    assert stderr.startswith(f"segops.train: error: {out / 'checkpoint.pt'} exists: --resume continues it")
    argv = [*TINY, "--data", str(folder), "--out", str(out), "--resume", "--lr", "0.5"]
    stderr = _fails(capsys, segops.train.main, argv)
    assert "--resume: the command line differs from the checkpoint: --lr 0.5 (the checkpoint's: 0.001)" in stderr
    argv = [*TINY, "--data", str(folder), "--out", str(tmp_path / "none"), "--resume"]
    assert "checkpoint.pt does not exist" in _fails(capsys, segops.train.main, argv)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    argv = [*TINY, "--data", str(folder), "--out", str(tmp_path / "bad"), "--resume"]
    assert "bad/checkpoint.pt: not a checkpoint torch.load can read" in _fails(capsys, segops.train.main, argv)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "metrics.json", "predictions.png"]


def _copy_with(folder, tmp_path, spoil):
    data = tmp_path / "data"
    shutil.copytree(folder, data)
    return data, spoil(data)


def _missing_mask(data):
    (data / "Mask" / "s03.png").unlink()
    return "Image/s03.jpg: its mask 's03.png' (metadata.csv, line 5) not found"


def _mask_of_another_size(data):
    Image.fromarray(np.zeros((30, 32), np.uint8)).save(data / "Mask" / "s02.png")
    return "Mask/s02.png: the mask is 32x30 (width x height) but its image"


def _unreadable_image(data):
    (data / "Image" / "s04.jpg").write_bytes(b"GIF89a, not quite")
    return "Image/s04.jpg: cannot read the image"


def _wrong_header(data):
    (data / "metadata.csv").write_text((data / "metadata.csv").read_text().replace("Image,Mask", "img,mask"))
    return "metadata.csv: the header must be 'Image,Mask' (the columns of image and mask file names), got 'img,mask'"


def _value_beyond_num_classes(data):
    raw = np.array(Image.open(data / "Mask" / "s05.png"))
    raw[0, 0] = 128
    Image.fromarray(raw).save(data / "Mask" / "s05.png")
    return "Mask/s05.png: mask value 128 makes 3 grayscale values in the masks ([0, 128, 255] -> classes 0..2)"


@pytest.mark.parametrize(
    "spoil",
    [_missing_mask, _mask_of_another_size, _unreadable_image, _wrong_header, _value_beyond_num_classes],
    ids=lambda f: f.__name__[1:],
)
def test_a_bad_folder_stops_training_with_a_message_and_loses_nothing(run, folder, tmp_path, capsys, spoil):
    data, message = _copy_with(folder, tmp_path, spoil)
    out = tmp_path / "out"
    shutil.copytree(run[0], out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    # Starting again over the run (--overwrite) or continuing it (--resume): the files stay as they were.
    stderr = _fails(capsys, segops.train.main, [*TINY, "--data", str(data), "--out", str(out), "--overwrite"])
    assert stderr.startswith("segops.train: error: ") and message in stderr
    stderr = _fails(
        capsys, segops.train.main, [*TINY, "--data", str(data), "--out", str(out), "--resume", "--epochs", "2"]
    )
    if spoil is _value_beyond_num_classes:  # the checkpoint's mapping of grayscale values holds
        message = "Mask/s05.png: mask value 128 is none of the grayscale values [0, 255] that map to classes"
    assert stderr.startswith("segops.train: error: ") and message in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_module_command_exits_2_without_a_traceback(folder, tmp_path):
    data, message = _copy_with(folder, tmp_path, _missing_mask)
    command = [sys.executable, "-m", "segops.train", *TINY, "--data", str(data), "--out", str(tmp_path / "out")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("segops.train: error: ") and message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_checkpoints_are_written_atomically(tmp_path):
    path = tmp_path / "checkpoint.pt"
    segops.train.save_atomically(path, lambda temporary: torch.save({"epoch": 1}, temporary))
    before = path.read_bytes()

    def fail(temporary):
        Path(temporary).write_bytes(before[:10])  # part of a file, then the disk fills
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        segops.train.save_atomically(path, fail)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
    (tmp_path / "plain").write_bytes(b"")  # the permissions of a file written the ordinary way
    assert path.stat().st_mode == (tmp_path / "plain").stat().st_mode


def test_model_options_reach_the_builders(folder, tmp_path, capsys, monkeypatch):
    seen = {}
    original = models.fcn32s

    @functools.wraps(original)
    def recording(num_classes, backbone=None, **options):
        seen.update(num_classes=num_classes, backbone=backbone, **options)
        return original(num_classes, **options)

    monkeypatch.setattr(models, "fcn32s", recording)
    argv = [*TINY, "--data", str(folder), "--out", str(tmp_path / "fcn"), "--epochs", "1"]
    argv[argv.index("unet")] = "fcn32s"
    with _redirect(io.StringIO(), io.StringIO()):
        assert segops.train.main([*argv, "--backbone", "vgg16.pth"]) == 0
    assert seen == {"num_classes": 2, "backbone": Path("vgg16.pth"), "base_width": 4}
    monkeypatch.undo()
    argv_unet = [*TINY, "--data", str(folder), "--out", str(tmp_path / "unet"), "--backbone", "vgg16.pth"]
    stderr = _fails(capsys, segops.train.main, argv_unet)
    assert stderr.startswith("segops.train: error: unet takes no backbone weights; models that take backbone: fcn32s")
    argv[argv.index("fcn32s")] = "fcn8s"
    argv[argv.index(str(tmp_path / "fcn"))] = str(tmp_path / "fcn8s")
    stderr = _fails(capsys, segops.train.main, [*argv, "--backbone", str(tmp_path / "missing.pth")])
    assert f"segops.train: error: fcn8s with --backbone {tmp_path / 'missing.pth'}: " in stderr
    argv[argv.index("fcn8s")] = "deeplabv3"
    stderr = _fails(capsys, segops.train.main, argv)
    assert stderr.startswith("segops.train: error: deeplabv3 has no base width; models that take base_width: fcn32s,")


def test_eval_prints_the_metric_table_of_the_validation_images(run, folder, capsys):
    out = run[0]
    assert segops.eval.main(["--checkpoint", str(out / "checkpoint.pt"), "--data", str(folder), "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    header, _, row, _, iou_header, _, *iou_rows = stdout.splitlines()
    assert header == "| checkpoint | epoch | split | images | pixel acc | mean acc | mean IU | f.w. IU |"
    record = json.loads((out / "metrics.json").read_text())["epochs"][-1]
    # The same images, transform and weights as the run's own validation: the same numbers.
    expected = [f"{100 * record[key]:.1f}" for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")]
    assert row.split(" | ")[1:] == ["1", "val", "2", *expected[:-1], expected[-1] + " |"]
    assert iou_header == "| class | IU |" and len(iou_rows) == 2
    argv = ["--checkpoint", str(out / "checkpoint.pt"), "--data", str(folder), "--split", "all", "--device", "cpu"]
    assert segops.eval.main(argv) == 0
    assert "| all | 8 |" in capsys.readouterr().out


def test_eval_and_predict_errors(run, folder, tmp_path, capsys):
    stderr = _fails(capsys, segops.eval.main, ["--checkpoint", str(tmp_path / "none.pt"), "--data", str(folder)])
    assert stderr.startswith("segops.eval: error: ") and "none.pt: no such checkpoint" in stderr
    data, message = _copy_with(folder, tmp_path, _wrong_header)
    stderr = _fails(capsys, segops.eval.main, ["--checkpoint", str(run[0] / "checkpoint.pt"), "--data", str(data)])
    assert message in stderr
    argv = ["--checkpoint", str(run[0] / "checkpoint.pt"), str(data / "Image" / "s04.jpg"), "--out", str(tmp_path)]
    (data / "Image" / "s04.jpg").write_bytes(b"")
    assert "s04.jpg: cannot read the image" in _fails(capsys, segops.predict.main, argv)


@pytest.mark.parametrize("crf", [False, True], ids=["plain", "crf"])
def test_predict_writes_colour_masks_of_each_images_size(run, folder, tmp_path, crf):
    big = tmp_path / "big.png"
    Image.fromarray(np.full((70, 90, 3), 120, np.uint8)).save(big)
    images = [folder / "Image" / "s00.jpg", big]
    argv = ["--checkpoint", str(run[0] / "checkpoint.pt"), *map(str, images), "--out", str(tmp_path / "masks")]
    with _redirect(io.StringIO(), io.StringIO()):
        assert segops.predict.main([*argv, "--device", "cpu"] + (["--crf"] if crf else [])) == 0
    checkpoint = segops.train.load_checkpoint(run[0] / "checkpoint.pt")
    model = segops.train.model_from_checkpoint(checkpoint)
    for image in images:
        with Image.open(tmp_path / "masks" / f"{image.stem}.png") as mask:
            assert mask.mode == "P" and mask.size == Image.open(image).size
            assert mask.getpalette()[: 3 * 256] == label_colours().flatten().tolist()
            labels = torch.from_numpy(np.array(mask)).long()
        assert set(labels.unique().tolist()) <= {0, 1}
        expected = segops.predict.predict(model, read_image(image), 64, crf=crf)
        assert torch.equal(labels, expected)


def test_progress_bar_redraws_in_place_on_a_terminal_only():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    log, terminal = io.StringIO(), Terminal()
    for stream in (log, terminal):
        bar = segops.train.ProgressBar(3, "epoch 1/2", stream=stream, width=10)
        for step in range(3):
            bar.update(1, f"loss {step}")
        bar.close("done")
    assert log.getvalue().count("\n") == 1 and "\r" not in log.getvalue()
    assert log.getvalue().startswith("epoch 1/2 [##########] 3/3 done ")
    assert terminal.getvalue().count("\r") == 4 and terminal.getvalue().endswith("\n")
    assert "[###.......] 1/3 loss 0" in terminal.getvalue()
    silent = io.StringIO()
    segops.train.ProgressBar(2, stream=silent, enabled=False).close()
    assert silent.getvalue() == ""


def test_command_line_defaults():
    args = segops.train._parse_args(["--model", "fcn8s", "--data", "d", "--num-classes", "3"])
    config = segops.train._config(args, None)
    assert (args.epochs, args.out, args.resume, args.overwrite) == (10, Path("runs") / "fcn8s", False, False)
    assert config == {
        "base_width": None,
        "size": 256,
        "batch_size": 8,
        "lr": 1e-3,
        "val_split": 0.1,
        "seed": 0,
        "model": "fcn8s",
        "num_classes": 3,
        "backbone": None,
    }


def test_the_global_batch_is_shared_by_the_processes(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(segops.train, "init_distributed", lambda device: (0, 2, torch.device("cpu")))
    argv = [*TINY, "--data", str(folder), "--out", str(tmp_path), "--batch-size", "3"]
    stderr = _fails(capsys, segops.train.main, argv)
    assert stderr == "segops.train: error: --batch-size must be a multiple of the 2 processes, got 3\n"
    assert segops.train._shares(list(range(10)), 4, 0, 2) == [[0, 1], [4, 5]]  # a last partial batch is dropped
    assert segops.train._shares(list(range(10)), 4, 1, 2) == [[2, 3], [6, 7]]


def test_segops_train_is_an_installed_command():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"segops-train": "segops.train:main"}


def test_format_table_and_metric_cells():
    metrics = {"pixel_accuracy": 0.9, "mean_accuracy": 0.756, "mean_iou": 0.5, "fw_iou": 0.81234}
    assert segops.train.metric_cells(metrics) == ["90.0", "75.6", "50.0", "81.2"]
    table = segops.train.format_table(["model", *METRIC_TITLES], [["a", *segops.train.metric_cells(metrics)]])
    assert table.splitlines() == [
        "| model | pixel acc | mean acc | mean IU | f.w. IU |",
        "|---|---:|---:|---:|---:|",
        "| a | 90.0 | 75.6 | 50.0 | 81.2 |",
    ]


@pytest.mark.slow  # two processes under torchrun: about half a minute
def test_two_process_training_equals_single_process_training(folder, tmp_path):
    """U-Net without batch norm or dropout, 2 epochs under torchrun (2 processes, gloo) and in one process: each
    process's share of the global batch of 2 and DDP's gradient average give the single-process gradient, the
    sharded validation's summed confusion matrices its metrics. Exactly so only where no pixel is ignored (each
    process averages its loss over its own counted pixels): the runs go through a script that leaves out the random
    scaling, whose crops of shrunken images pad the masks with ignored pixels."""
    script = tmp_path / "train_unpadded.py"
    script.write_text(
        "import segops.train\n"
        "from segops.transforms import Compose, Normalize, RandomHorizontalFlip, Resize\n"
        "segops.train.training_transform = lambda size: Compose([Resize(size), RandomHorizontalFlip(), Normalize()])\n"
        "segops.train.main()\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    arguments = [*TINY, "--data", str(folder), "--epochs", "2"]
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for out, launcher in (("single", []), ("ddp", torchrun)):
        command = [sys.executable, *launcher, str(script), *arguments, "--out", str(tmp_path / out)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        if out == "ddp":  # one process shows and writes
            assert result.stdout.count("| 2 |") == 1 and "2 process(es)" in result.stderr
    single = torch.load(tmp_path / "single" / "checkpoint.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    torch.manual_seed(0)  # the runs' initial weights (--seed 0)
    initial = models.unet(2, base_width=4).state_dict()
    moved = 0
    for key, value in single["model"].items():
        torch.testing.assert_close(ddp["model"][key], value, rtol=1e-5, atol=1e-6)
        moved += not torch.equal(value, initial[key])
    assert moved > len(single["model"]) // 2
    for a, b in zip(single["history"], ddp["history"], strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["images"] == b["images"] == 6
        for key in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"):
            assert a[key] == b[key]

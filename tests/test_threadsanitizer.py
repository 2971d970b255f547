"""Races between GPU threads, seen without a GPU: scripts/tsan.sh builds the kernel emulation with each launch on
several OS threads and real atomics (csrc/common/emulation.h), under ThreadSanitizer, and runs the emulation tests
against it. The full tier runs that script (test_emulation_tests_are_race_free_under_threadsanitizer); inside it,
the tests below plant a race and check that it is reported."""

import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNDER_TSAN = bool(os.environ.get("SEGOPS_EMULATION_LIBRARY")) and "libtsan" in os.environ.get("LD_PRELOAD", "")
RACE_REPORT = "WARNING: ThreadSanitizer: data race"

# Two overlapping boxes on a small map: every input pixel under both receives adds from threads of both boxes,
# which the shuffled launch spreads over the workers.
ROI_ALIGN_BACKWARD = """
import os, sys, torch
torch.ops.load_library(os.environ["SEGOPS_EMULATION_LIBRARY"])
emulated = torch.ops.segops_emulation
emulated.plant_plain_atomic_add(sys.argv[1] == "plant")
grad = torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(0))
rois = torch.tensor([[0, 0.0, 0.0, 9.0, 9.0], [0, 2.0, 2.0, 11.0, 11.0]])
out = emulated._roi_align_backward(grad, rois, 1.0, 7, 7, 1, 4, 12, 12, 2, True, False, [4], [32])
print(float(out.sum()))
"""


def run_roi_align_backward(mode):
    """Runs ROI_ALIGN_BACKWARD under scripts/tsan.sh's options, with the reports on stderr, not in report files."""
    options = os.environ["TSAN_OPTIONS"].split(":")
    env = {**os.environ, "TSAN_OPTIONS": ":".join([o for o in options if not o.startswith("log_path=")])}
    return subprocess.run(
        [sys.executable, "-c", ROI_ALIGN_BACKWARD, mode], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


@pytest.mark.skipif(not UNDER_TSAN, reason="runs inside scripts/tsan.sh (the concurrent emulation)")
def test_a_plain_add_in_a_backward_scatter_is_reported_as_a_race():
    """The planted race: RoIAlign's backward scatter with its atomic adds made plain `+=`. ThreadSanitizer names
    the kernel and exits 66; the same launch with atomics is clean."""
    planted = run_roi_align_backward("plant")
    assert planted.returncode == 66, planted.stderr[-3000:]
    assert RACE_REPORT in planted.stderr
    assert "roi_align_backward_kernel" in planted.stderr
    clean = run_roi_align_backward("atomic")
    assert clean.returncode == 0, clean.stderr[-3000:]
    assert "ThreadSanitizer" not in clean.stderr


@pytest.mark.slow
@pytest.mark.skipif(UNDER_TSAN, reason="this is the test that starts scripts/tsan.sh")
def test_emulation_tests_are_race_free_under_threadsanitizer(tmp_path):
    """The emulation tests (every kernel, launch shape and dtype they cover, the layouts and the fuzzed backwards)
    pass with no ThreadSanitizer report, and the planted race above ran and was caught."""
    report = tmp_path / "tsan.xml"
    run = subprocess.run(
        ["scripts/tsan.sh", "-q", f"--junitxml={report}"],
        capture_output=True,
        text=True,
        timeout=1500,
        cwd=ROOT,
        env={k: v for k, v in os.environ.items() if k not in ("SEGOPS_EMULATION_LIBRARY", "LD_PRELOAD")},
    )
    output = run.stdout + run.stderr
    assert "WARNING: ThreadSanitizer" not in output, output[-5000:]
    assert run.returncode == 0, output[-5000:]
    cases = ElementTree.parse(report).getroot().iter("testcase")
    outcomes = {case.get("name"): [child.tag for child in case] for case in cases}
    assert len(outcomes) > 700
    assert not [name for name, tags in outcomes.items() if "failure" in tags or "error" in tags]
    assert outcomes["test_a_plain_add_in_a_backward_scatter_is_reported_as_a_race"] == []  # passed, not skipped

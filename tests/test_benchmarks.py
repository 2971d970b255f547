"""The CPU benchmark harness (python -m benchmarks) without a benchmark run: its peak-memory measurement against a
known allocation, and its tables' peak columns rendered from synthetic results."""

import pytest
import torch

from benchmarks import __main__ as bench

MACHINE = {"cpu": "test CPU", "cores": 2, "gpu": None, "torch": "2.x", "segops": "0.x"}


def _result(case, reference="torchvision", segops_peak_mb=0.5, reference_peak_mb=12.34, sweep=None):
    """One row of run_case's results (time_alone's where reference is None)."""
    compared = reference is not None
    return {
        "case": case,
        "reference": reference,
        "segops_ms": 2.0,
        "reference_ms": 6.0 if compared else None,
        "speedup": 3.0 if compared else None,
        "target": 2.0 if compared else None,
        "outputs_agree": True,
        "max_abs_diff": 0.0 if compared else None,
        "outliers": None,
        "agreement": None,
        "rounds_ms": {},
        "sweep": sweep,
        "bandwidth": None,
        "segops_peak_mb": segops_peak_mb,
        "reference_peak_mb": reference_peak_mb if compared else None,
    }


def _cells(line):
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


@pytest.fixture
def clear_refs():
    try:
        bench.CLEAR_REFS.write_text("5")
    except OSError as error:
        pytest.skip(f"{bench.CLEAR_REFS} is not writable here ({error}): no peak to measure")


def test_peak_rss_mb_sees_a_known_allocation(clear_refs):
    """A call that allocates and touches 200 MB (torch.ones of 50M float32) peaks at about 200 MB; a call that
    allocates nothing at about nothing; a 200 MB tensor the call frees before returning still counts; and a 1 MB
    output that malloc would serve from pages freed by earlier calls counts too."""
    assert bench.peak_rss_mb(lambda: torch.ones(50_000_000)) >= 190
    assert bench.peak_rss_mb(lambda: torch.ones(50_000_000).sum()) >= 190
    assert bench.peak_rss_mb(lambda: None) < 20
    if bench.MALLOC_TRIM is not None:  # glibc: the heap it would reuse is handed back first, so 1 MB shows
        for _ in range(10):
            torch.ones(250_000)
        assert 0.9 <= bench.peak_rss_mb(lambda: torch.ones(250_000)) < 20


def test_peak_rss_mb_is_none_without_clear_refs(monkeypatch, tmp_path):
    """Where the high-water mark cannot be reset, nothing is measured, and the table says so."""
    monkeypatch.setattr(bench, "CLEAR_REFS", tmp_path / "no such folder" / "clear_refs")
    assert bench.peak_rss_mb(lambda: torch.ones(1000)) is None
    results = [_result("roi_align 7x7 forward", segops_peak_mb=None, reference_peak_mb=None)]
    table = bench.markdown_table(results, MACHINE)
    assert "Peak memory: not measured" in table.splitlines()[0]
    assert _cells(table.splitlines()[-1])[-2:] == ["n/a", "n/a"]


def test_markdown_table_has_the_peak_columns_last():
    """The peak columns close every row (the columns before them, which the README's rows repeat, unchanged), for a
    compared case and for one timed alone."""
    results = [_result("roi_align 7x7 forward"), _result("model fcn8s forward", reference=None, segops_peak_mb=1234.56)]
    lines = bench.markdown_table(results, MACHINE).splitlines()
    assert lines[0].startswith("Measured on test CPU (2 threads, CPU only), torch 2.x, segops 0.x. Peak (MB): ")
    assert _cells(lines[2]) == [
        "case",
        "segops (ms)",
        "reference",
        "reference (ms)",
        "speedup",
        "target",
        "outputs agree (max abs diff)",
        "segops peak (MB)",
        "reference peak (MB)",
    ]
    assert len(_cells(lines[3])) == 9
    compared, alone = _cells(lines[4]), _cells(lines[5])
    assert compared == ["roi_align 7x7 forward", "2.0", "torchvision", "6.0", "3.00x", ">= 2x", "yes (0.0e+00)"] + [
        "0.500",
        "12.3",
    ]
    assert alone == ["model fcn8s forward", "2.0", "(no segops op: timed alone)", "", "", "", "", "1234.6", ""]


def test_sweep_table_has_the_peak_columns_last():
    sweep = {"op": "roi_align 7x7", "pass": "forward", "boxes": 16}
    lines = bench.sweep_table([_result("roi_align 7x7 forward, 16 boxes", sweep=sweep)]).splitlines()
    assert _cells(lines[0])[-2:] == ["segops peak (MB)", "torchvision peak (MB)"]
    assert _cells(lines[2]) == ["roi_align 7x7", "forward", "16", "2.0", "6.0", "3.00x", "0.500", "12.3"]


def test_markdown_table_names_the_cpus_vector_instructions_and_caps():
    """Float results and kernel choices differ between AVX2 and AVX-512 CPUs: the header says which ran, and which
    instruction-set caps the run set."""
    machine = dict(MACHINE, vector_isa="AVX2", isa_caps={"ONEDNN_MAX_CPU_ISA": "AVX2"})
    header = bench.markdown_table([_result("roi_align 7x7 forward")], machine).splitlines()[0]
    assert header.startswith("Measured on test CPU (AVX2, 2 threads, CPU only, ONEDNN_MAX_CPU_ISA=AVX2), torch 2.x")
    assert bench.machine_description()["vector_isa"] in ("AVX-512", "AVX2", "no AVX2")

"""python -m benchmarks: segops against the reference users would otherwise call, side by side in one process.

Each case is timed with torch.utils.benchmark (blocked_autorange, median), segops and the reference interleaved
over several rounds, each going first in every other round, so that machine noise hits both; the reported time is
the median over rounds and the speedup their ratio. After the timing rounds, the peak memory of one call of each
side is measured (peak_rss_mb). The compared outputs are checked for agreement in the same run. Writes a table (stdout
and Markdown), JSON, a PNG chart of the speedups and a log-log PNG of the box-count sweep to benchmarks/results/."""

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch
from torch.utils.benchmark import Timer

import segops
from benchmarks import conv_ops, crf_ops, flow_ops, model_ops, multi_level_ops, roi_ops, unpool_ops

RESULTS = Path(__file__).parent / "results"
# The default run: one case per op (its headline size) and one model row, a few minutes on 2 cores. `--full` runs every
# case (about half an hour), and writes where the docs' tables come from.
QUICK_CASES = (
    "roi_align 7x7 forward",
    "roi_align 7x7 forward+backward",
    "roi_pool 7x7 forward",
    "multi_scale_roi_align assign 7x7, 4-level FPN of 1x800x1216, 1000 boxes forward",
    "flow_warp [4, 256, 64, 128] forward",
    "max_unpool2d [4, 64, 64, 128] -> [4, 64, 128, 256] forward",
    "dilated_conv2d depthwise [2, 512, 64, 64] -> 512, 3x3, dilation 6 forward",
    "dilated_conv2d ASPP branch [2, 512, 64, 64] -> 256, 3x3, dilation 12 forward",
    "dense_crf 500x375 photo, 21 labels, 5 steps incl. lattice build",
    "model segnet [1, 3, 256, 256] forward",
)


def machine_description():
    cpu = platform.processor() or platform.machine()
    vector_isa = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and vector_isa is None:
                # The widest vector instructions the CPU has: oneDNN and segops pick kernels by them.
                flags = set(line.split(":", 1)[1].split())
                vector_isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    except OSError:
        pass
    return {
        "cpu": cpu,
        "vector_isa": vector_isa,
        "cores": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "segops": segops.__version__,
        "segops_cuda": segops.cuda_version(),
        "python": platform.python_version(),
        # Set to measure an older CPU's kernels on this one: ATen's vectorised kernels and oneDNN's honour these.
        "isa_caps": {
            name: os.environ[name] for name in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if name in os.environ
        },
    }


def median_seconds(fn, min_run_time):
    # Timer runs single-threaded unless told otherwise; both sides get the whole machine.
    timer = Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


CLEAR_REFS = Path("/proc/self/clear_refs")
PEAK_CALLS = 3
# glibc's malloc_trim, or None (another C library): hands the heap's freed pages back to the system.
MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None)


def _release_freed_memory():
    """Collect Python's garbage and return what malloc holds freed to the system (glibc), so that a call's
    allocations show as pages it faults in rather than as reuse of pages the process already holds."""
    gc.collect()
    if MALLOC_TRIM is not None:
        MALLOC_TRIM(0)


def _status_bytes(key):
    """A memory field of /proc/self/status (VmRSS, VmHWM: given in kB) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def peak_rss_mb(fn, calls=PEAK_CALLS):
    """The peak memory of one call of fn on the CPU, in MB (1e6 bytes): how far the process's resident set grew above
    what it held just before the call, at the call's highest point (its output included, kept alive until the peak is
    read); the largest over `calls` calls. None where it cannot be measured: /proc/self/clear_refs not writable (not
    Linux, Linux before 4.0, or a sandbox that forbids it).

    Each call: gc.collect() and glibc's malloc_trim(0), reset the high-water mark VmHWM to the current resident set
    (writing "5" to /proc/self/clear_refs), read VmRSS, call fn, read VmHWM; the call's peak is VmHWM - VmRSS before.
    It counts pages the call touched that the process did not already hold. Without the trim, glibc would serve the
    call from heap pages earlier calls freed but kept, and a call whose buffers fit in them would show nothing (a
    1 MB max_unpool2d output measured 0); after it, what remains uncounted is memory a cache keeps on purpose (a
    caching allocator's pool, oneDNN's scratchpads), and under another C library (no malloc_trim) freed heap too. The
    figure is measured after the timing rounds (every lazy initialisation done) and is the largest of several calls.
    The high-water mark is the whole process's, so other threads allocating meanwhile would count too (the harness
    runs one call at a time)."""
    peaks = []
    for _ in range(calls):
        _release_freed_memory()
        try:
            CLEAR_REFS.write_text("5")
        except OSError:
            return None
        before = _status_bytes("VmRSS")
        result = fn()
        peak = _status_bytes("VmHWM")
        del result
        peaks.append(max(0, peak - before) / 1e6)
    return max(peaks)


def compare(actual, expected, allowed_outliers=0.0, agreement=None):
    """Whether segops's result agrees with the reference's: (agrees, max abs diff, elements beyond the tolerance,
    elements, the note of a case's own `agreement` or None). Also used by the GPU table (benchmarks/gpu.py)."""
    # A tensor or a tuple of them (several gradients): they agree where every difference is within 1e-4 of the
    # reference's largest magnitude (a sum over 256 channels rounds at that scale, not at its smallest terms).
    pairs = list(zip(actual, expected)) if isinstance(expected, tuple) else [(actual, expected)]
    max_abs_diff = max((a.double() - e.double()).abs().max().item() for a, e in pairs)
    outliers = sum(
        ((a.double() - e.double()).abs() > 1e-4 * max(1.0, e.abs().max().item())).sum().item() for a, e in pairs
    )
    elements = sum(e.numel() for _, e in pairs)
    agrees = outliers <= allowed_outliers * elements
    note = None
    if agreement is not None:
        agrees, note = agreement(actual, expected)
    return agrees, max_abs_diff, outliers, elements, note


def run_case(case, rounds, min_run_time):
    name, target, ours, theirs = case.name, case.target, case.ours, case.theirs
    if theirs is None:
        return time_alone(case, rounds, min_run_time)
    expected, actual = theirs(), ours()  # also the warm-up of both
    agrees, max_abs_diff, outliers, elements, note = compare(actual, expected, case.allowed_outliers, case.agreement)
    times = {"segops": [], "reference": []}
    if case.bandwidth:
        times["copy"], times["fresh_copy"] = [], []
    for round_ in range(rounds):
        # Each side goes first in every other round: a side that runs after the other (its freed memory, its warm
        # caches) is not always the same one.
        sides = [("segops", ours), ("reference", theirs)]
        for key, fn in sides if round_ % 2 == 0 else reversed(sides):
            times[key].append(median_seconds(fn, min_run_time))
        if case.bandwidth:
            times["copy"].append(median_seconds(case.bandwidth["copy"], min_run_time))
            times["fresh_copy"].append(median_seconds(case.bandwidth["fresh_copy"], min_run_time))
    segops_s = statistics.median(times["segops"])
    reference_s = statistics.median(times["reference"])
    bandwidth = None
    if case.bandwidth:
        bandwidth = {
            "segops_gb_s": case.bandwidth["bytes"] / segops_s / 1e9,
            "copy_gb_s": case.bandwidth["copy_bytes"] / statistics.median(times["copy"]) / 1e9,
            "fresh_copy_gb_s": case.bandwidth["copy_bytes"] / statistics.median(times["fresh_copy"]) / 1e9,
        }
    # After the timing rounds: both sides' allocators in their steady state.
    segops_peak_mb, reference_peak_mb = peak_rss_mb(ours), peak_rss_mb(theirs)
    return {
        "case": name,
        "reference": case.reference,
        "segops_ms": segops_s * 1e3,
        "reference_ms": reference_s * 1e3,
        "speedup": reference_s / segops_s,
        "target": target,
        "outputs_agree": agrees,
        "max_abs_diff": max_abs_diff,
        "outliers": f"{outliers} of {elements}" if outliers and note is None else None,
        "agreement": note,
        "rounds_ms": {key: [t * 1e3 for t in value] for key, value in times.items()},
        "sweep": dict(zip(("op", "pass", "boxes"), case.sweep)) if case.sweep else None,
        "bandwidth": bandwidth,
        "segops_peak_mb": segops_peak_mb,
        "reference_peak_mb": reference_peak_mb,
    }


def time_alone(case, rounds, min_run_time):
    """A case with no reference (a model using no segops operator): its time only."""
    case.ours()  # warm-up
    times = [median_seconds(case.ours, min_run_time) for _ in range(rounds)]
    return {
        "case": case.name,
        "reference": None,
        "segops_ms": statistics.median(times) * 1e3,
        "reference_ms": None,
        "speedup": None,
        "target": None,
        "outputs_agree": True,
        "max_abs_diff": None,
        "outliers": None,
        "agreement": None,
        "rounds_ms": {"segops": [t * 1e3 for t in times]},
        "sweep": None,
        "bandwidth": None,
        "segops_peak_mb": peak_rss_mb(case.ours),
        "reference_peak_mb": None,
    }


def _ms(value):
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def _mb(value):
    """A peak-memory cell: MB as the times are written (one decimal from 1 MB, else three); "n/a" where unmeasured."""
    return "n/a" if value is None else _ms(value)


def _peak_cells(r):
    """The two peak-memory cells closing a row: segops's, the reference's (empty for a case timed alone)."""
    reference = "" if r["reference"] is None else _mb(r.get("reference_peak_mb"))
    return f" {_mb(r.get('segops_peak_mb'))} | {reference} |"


def peak_note(results):
    """The table's sentence on what the peak columns mean, or why they are empty."""
    if results and all(r.get("segops_peak_mb") is None for r in results):
        return f"Peak memory: not measured ({CLEAR_REFS} is not writable, so VmHWM cannot be reset)."
    return (
        f"Peak (MB): the resident memory one call adds at its highest point, beyond what the process already held "
        f"(VmHWM after the call less VmRSS before it, VmHWM reset through {CLEAR_REFS}"
        + (", freed heap returned by malloc_trim first" if MALLOC_TRIM is not None else "")
        + f"; the largest of {PEAK_CALLS} calls after the timing rounds)."
    )


def sweep_table(results):
    """Markdown table of the box-count sweep: per op and pass, time against K for both, and the ratio."""
    rows = sorted(
        (r for r in results if r["sweep"]), key=lambda r: (r["sweep"]["op"], r["sweep"]["pass"], r["sweep"]["boxes"])
    )
    lines = [
        "| op | pass | boxes K | segops (ms) | torchvision (ms) | speedup | segops peak (MB) | torchvision peak (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        sweep = r["sweep"]
        lines.append(
            f"| {sweep['op']} | {sweep['pass']} | {sweep['boxes']} | {_ms(r['segops_ms'])} | "
            f"{_ms(r['reference_ms'])} | {r['speedup']:.2f}x |" + _peak_cells(r)
        )
    return "\n".join(lines)


def bandwidth_table(results):
    """Markdown table of the memory-bound cases: segops's bytes per second beside a copy's, same rounds: into a tensor
    allocated once (warm pages: the machine's practical limit) and into a fresh one, as an op's output is (its page
    faults included)."""
    lines = [
        "| case | segops (GB/s) | copy into a warm tensor (GB/s) | segops / warm copy "
        "| copy into a fresh tensor (GB/s) | segops / fresh copy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.get("bandwidth"):
            b = r["bandwidth"]
            lines.append(
                f"| {r['case']} | {b['segops_gb_s']:.1f} | {b['copy_gb_s']:.1f} | "
                f"{b['segops_gb_s'] / b['copy_gb_s']:.2f} | {b['fresh_copy_gb_s']:.1f} | "
                f"{b['segops_gb_s'] / b['fresh_copy_gb_s']:.2f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown_table(results, machine):
    lines = [
        f"Measured on {machine['cpu']} ("
        + (f"{machine['vector_isa']}, " if machine.get("vector_isa") else "")
        + f"{machine['cores']} threads"
        + (f", {machine['gpu']}" if machine["gpu"] else ", CPU only")
        + "".join(f", {name}={value}" for name, value in machine.get("isa_caps", {}).items())
        + f"), torch {machine['torch']}, segops {machine['segops']}. "
        + peak_note(results),
        "",
        "| case | segops (ms) | reference | reference (ms) | speedup | target | outputs agree (max abs diff) "
        "| segops peak (MB) | reference peak (MB) |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        if r["reference"] is None:
            lines.append(
                f"| {r['case']} | {_ms(r['segops_ms'])} | (no segops op: timed alone) | | | | |" + _peak_cells(r)
            )
            continue
        lines.append(
            f"| {r['case']} | {_ms(r['segops_ms'])} | {r['reference']} | {_ms(r['reference_ms'])} | "
            f"{r['speedup']:.2f}x | "
            f">= {r['target']:.2g}x | {'yes' if r['outputs_agree'] else 'NO'} ({r['max_abs_diff']:.1e}"
            + (f"; beyond 1e-4 at {r['outliers']} elements, kinks" if r.get("outliers") else "")
            + (f"; {r['agreement']}" if r.get("agreement") else "")
            + ") |"
            + _peak_cells(r)
        )
    return "\n".join(lines)


def save_chart(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = [r for r in results if r["speedup"] is not None]
    names = [r["case"] for r in results]
    figure, axes = plt.subplots(figsize=(12, 0.4 * len(names) + 1.5))
    bars = axes.barh(names, [r["speedup"] for r in results], color="#4c72b0")
    axes.scatter([r["target"] for r in results], names, marker="|", s=300, color="#c44e52", label="target", zorder=3)
    axes.axvline(1.0, color="grey", linewidth=0.8)
    axes.set_xscale("log")  # speedups from 0.7x to 16x stay readable side by side
    axes.bar_label(bars, fmt="%.2fx", padding=3)
    axes.invert_yaxis()
    axes.set_xlabel("speedup, log scale (higher is better)")
    axes.set_title("segops vs the reference users would otherwise call (named in the table), CPU, same run")
    axes.legend(loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def save_sweep_chart(results, path):
    """Log-log time against box count, segops and torchvision, one panel per op, forward and forward+backward."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [r for r in results if r["sweep"]]
    ops = sorted({r["sweep"]["op"] for r in swept})
    if not ops:
        return
    figure, axes = plt.subplots(1, len(ops), figsize=(6 * len(ops), 4.5), squeeze=False)
    for axis, op in zip(axes[0], ops):
        for pass_, style in [("forward", "-"), ("forward+backward", "--")]:
            points = sorted(
                (r["sweep"]["boxes"], r) for r in swept if r["sweep"]["op"] == op and r["sweep"]["pass"] == pass_
            )
            if not points:
                continue
            boxes = [k for k, _ in points]
            axis.plot(
                boxes, [r["segops_ms"] for _, r in points], style, marker="o", color="#4c72b0", label=f"segops {pass_}"
            )
            axis.plot(
                boxes,
                [r["reference_ms"] for _, r in points],
                style,
                marker="s",
                color="#c44e52",
                label=f"torchvision {pass_}",
            )
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("boxes K")
        axis.set_ylabel("time per call (ms)")
        axis.set_title(f"{op}, input [2, 256, 200, 304]")
        axis.grid(True, which="both", linewidth=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per case (default 3)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per blocked_autorange (default 1)")
    parser.add_argument(
        "--full",
        action="store_true",
        help=f"every case (default: the {len(QUICK_CASES)} representative ones, written to OUTPUT/quick/)",
    )
    parser.add_argument(
        "--filter", action="append", default=[], help="only cases whose name contains this text (repeat: any of them)"
    )
    parser.add_argument("--exclude", action="append", default=[], help="not the cases whose name contains this text")
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder for latest.json/.md/.png")
    args = parser.parse_args(argv)
    quick = not args.full and not args.filter  # --filter picks from every case
    if quick:
        args.output = args.output / "quick"

    machine = machine_description()
    results = []
    families = (roi_ops, multi_level_ops, flow_ops, unpool_ops, conv_ops, crf_ops, model_ops)
    print(
        f"segops benchmarks ({'representative cases; --full for all' if quick else 'every case'}), "
        f"{machine['cores']} threads:",
        file=sys.stderr,
        flush=True,
    )
    for case in (case for family in families for case in family.cases()):
        picked = any(text in case.name for text in args.filter or [""])
        if not picked or any(text in case.name for text in args.exclude) or (quick and case.name not in QUICK_CASES):
            continue
        print(f"  {case.name} ...", end="", file=sys.stderr, flush=True)
        results.append(run_case(case, args.rounds, args.min_run_time))
        r = results[-1]
        print(
            f" segops {_ms(r['segops_ms'])} ms"
            + (f", {case.reference} {_ms(r['reference_ms'])} ms, {r['speedup']:.2f}x" if r["speedup"] else "")
            + f"; peak segops {_mb(r['segops_peak_mb'])} MB"
            + (f", {case.reference} {_mb(r['reference_peak_mb'])} MB" if r["speedup"] else ""),
            file=sys.stderr,
            flush=True,
        )
    if quick:
        missing = {name for name in QUICK_CASES if name not in {r["case"] for r in results}}
        if not crf_ops.available():  # without the optional pydensecrf (said above)
            missing = {name for name in missing if not name.startswith("dense_crf")}
        if missing:
            raise SystemExit(f"benchmarks: QUICK_CASES names no case: {sorted(missing)}")
    table = markdown_table(results, machine)
    if not quick and any(r["sweep"] for r in results):
        table += "\n\nBox-count sweep:\n\n" + sweep_table(results)
    if bandwidth_table(results):
        table += "\n\nMemory-bound cases (bytes read and written per second):\n\n" + bandwidth_table(results)
    memory = None
    if any(r["case"].startswith("dense_crf") for r in results):
        memory = crf_ops.peak_memory()
        table += (
            f"\n\nPeak memory of dense_crf on a 2048x1024 image, 19 labels, 5 steps (one process): "
            f"{memory['peak_gb']:.2f} GB (before the call: {memory['inputs_gb']:.2f} GB; the bar: 4 GB)."
        )
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(
        json.dumps({"machine": machine, "results": results, "dense_crf_memory": memory}, indent=2) + "\n"
    )
    (args.output / "latest.md").write_text(table + "\n")
    save_chart(results, args.output / "latest.png")
    written = "latest.md and latest.png"
    if not quick:
        save_sweep_chart(results, args.output / "sweep.png")
        written = "latest.md, latest.png and sweep.png"
    print(f"\nwrote {args.output / 'latest.json'}, {written}", file=sys.stderr)
    return 0 if all(r["outputs_agree"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

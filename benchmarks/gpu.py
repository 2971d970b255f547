"""python -m benchmarks.gpu: segops against the reference users would otherwise call, on a CUDA GPU.

One case per op at the CPU table's headline size (inputs made by the same builders, benchmarks/*_ops.py, then moved
to the GPU), forward and forward+backward, in PyTorch's default mode and under
torch.use_deterministic_algorithms(True). Each side is timed with torch.utils.benchmark (which synchronises the GPU),
segops and the reference interleaved over several rounds, the median over rounds reported with the ratio
reference / segops; the peak GPU memory of one call of each side, and the agreement of their outputs. A reference that
raises under the deterministic mode is recorded as refusing, and segops's result is then compared with the
reference's default-mode one. The dense CRF has no GPU reference: it is timed alone and compared with segops's own CPU
path. Writes latest.json and latest.md to benchmarks/results/gpu/ (scripts/gpu_check.sh runs it). Without a GPU, or
with a segops built without its CUDA kernels, it says so and exits with status 2."""

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
import torchvision

import segops
from benchmarks import conv_ops, crf_ops, flow_ops, multi_level_ops, roi_ops, unpool_ops
from benchmarks.__main__ import RESULTS, _ms, compare, machine_description, median_seconds
from segops import reference

OUTPUT = RESULTS / "gpu"
MODES = ("default", "deterministic")


class GpuCase(NamedTuple):
    """A GPU case. ours/theirs return the tensor(s) compared (the output, or the gradients of a forward+backward);
    theirs None: no GPU reference, segops timed alone and its result compared with `check()` (segops on the CPU)."""

    name: str
    ours: Callable
    theirs: Optional[Callable]
    reference: str
    check: Optional[Callable] = None
    allowed_outliers: float = 0.0  # as benchmarks.case.Case
    agreement: Optional[Callable] = None  # as benchmarks.case.Case


def _cuda(*tensors):
    return [t.cuda() for t in tensors]


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def roi_cases():
    """roi_align and roi_pool 7x7 on the CPU table's FPN level-2 map [2, 256, 200, 304], 512 boxes."""
    input, boxes = _cuda(*roi_ops.make_inputs())
    result = []
    for name, (ours, theirs) in [("roi_align 7x7", roi_ops._align(7)), ("roi_pool 7x7", roi_ops._pool(7))]:
        grad = torch.randn(roi_ops.NUM_BOXES, roi_ops.CHANNELS, 7, 7, generator=_generator(1)).cuda()
        op = name.split()[0]
        result += [
            GpuCase(
                f"{name} forward",
                lambda o=ours: o(input, boxes),
                lambda t=theirs: t(input, boxes),
                f"torchvision {op}",
            ),
            GpuCase(
                f"{name} forward+backward",
                lambda o=ours, g=grad: roi_ops._forward_backward(o, input, boxes, g),
                lambda t=theirs, g=grad: roi_ops._forward_backward(t, input, boxes, g),
                f"torchvision {op}",
            ),
        ]
    return result


def multi_level_cases():
    """The issue's case: one 800x1216 image's 4-level FPN, 1000 boxes, mode "assign" against MultiScaleRoIAlign."""
    batch, num_boxes = 1, 1000
    maps, rois = multi_level_ops.make_pyramid(batch, num_boxes)
    maps, rois = _cuda(*maps), rois.cuda()
    ours, theirs = multi_level_ops._assign_ops(batch)
    grad = torch.randn(num_boxes, multi_level_ops.CHANNELS, 7, 7, generator=_generator(1)).cuda()
    label = f"multi_scale_roi_align assign 7x7, 4-level FPN of {batch}x800x1216, {num_boxes} boxes"
    reference_name = "torchvision MultiScaleRoIAlign"
    return [
        GpuCase(f"{label} forward", lambda: ours(maps, rois), lambda: theirs(maps, rois), reference_name),
        GpuCase(
            f"{label} forward+backward",
            lambda: multi_level_ops._gradients(ours, maps, rois, grad),
            lambda: multi_level_ops._gradients(theirs, maps, rois, grad),
            reference_name,
        ),
    ]


def conv_cases():
    """The CPU table's two headline dilated convolutions (its first two CASES): the ASPP branch and the depthwise."""
    result = []
    for name, shape, out_channels, kernel, dilation, groups, *_ in conv_ops.CASES[:2]:
        input, weight, bias, grad = _cuda(*conv_ops._inputs(shape, out_channels, kernel, groups))
        kwargs = dict(padding=dilation * (kernel - 1) // 2, dilation=dilation, groups=groups)
        label = f"dilated_conv2d {name} {list(shape)} -> {out_channels}, {kernel}x{kernel}, dilation {dilation}"
        result += [
            GpuCase(
                f"{label} forward",
                lambda i=input, w=weight, b=bias, k=kwargs: segops.dilated_conv2d(i, w, b, **k),
                lambda i=input, w=weight, b=bias, k=kwargs: F.conv2d(i, w, b, **k),
                "F.conv2d (cuDNN)",
            ),
            GpuCase(
                f"{label} forward+backward (input, weight)",
                lambda i=input, w=weight, b=bias, g=grad, k=kwargs: conv_ops._gradients(
                    segops.dilated_conv2d, i, w, b, g, k
                ),
                lambda i=input, w=weight, b=bias, g=grad, k=kwargs: conv_ops._gradients(F.conv2d, i, w, b, g, k),
                "F.conv2d (cuDNN)",
            ),
        ]
    return result


def flow_cases():
    """Deep Feature Flow's warp [4, 256, 64, 128] against F.grid_sample fed by a grid built from the flow."""
    feature, flow, _ = _cuda(*flow_ops.make_inputs())
    shape = (flow_ops.BATCH, flow_ops.CHANNELS, flow_ops.HEIGHT, flow_ops.WIDTH)
    grad = torch.randn(shape, generator=_generator(1)).cuda()
    name = f"flow_warp {list(shape)}"
    return [
        GpuCase(
            f"{name} forward",
            lambda: segops.flow_warp(feature, flow),
            lambda: reference.flow_warp(feature, flow),
            "F.grid_sample",
            allowed_outliers=flow_ops.KINKS,
        ),
        GpuCase(
            f"{name} forward+backward (feature, flow)",
            lambda: flow_ops._gradients(segops.flow_warp, (feature, flow), grad),
            lambda: flow_ops._gradients(reference.flow_warp, (feature, flow), grad),
            "F.grid_sample",
            allowed_outliers=flow_ops.KINKS,
        ),
    ]


def unpool_cases():
    """SegNet's decoder: [4, 64, 128, 256] pooled 2x2, unpooled against F.max_unpool2d."""
    values, indices, grad = _cuda(*unpool_ops._pooled(unpool_ops.SHAPE, 2, 2, 0))
    size = unpool_ops.SHAPE[-2:]

    def ours(x):
        return segops.max_unpool2d(x, indices, 2, 2, 0, size)

    def theirs(x):
        return F.max_unpool2d(x, indices, 2, 2, 0, size)

    name = f"max_unpool2d {list(values.shape)} -> {list(unpool_ops.SHAPE)}"
    return [
        GpuCase(f"{name} forward", lambda: ours(values), lambda: theirs(values), "F.max_unpool2d"),
        GpuCase(
            f"{name} forward+backward",
            lambda: unpool_ops._grad(ours, values, grad),
            lambda: unpool_ops._grad(theirs, values, grad),
            "F.max_unpool2d",
        ),
    ]


def _crf_image(height, width):
    """scikit-image's coffee photograph as the CPU table uses it, or (without scikit-image) a synthetic image of
    flat regions: (uint8 Tensor[1, 3, H, W], its description)."""
    try:
        image = torch.from_numpy(crf_ops.photograph(height, width)).permute(2, 0, 1)[None].contiguous()
        return image, "photo"
    except ImportError:
        coarse = torch.rand(1, 3, 12, 16, generator=_generator(0)) * 255
        image = F.interpolate(coarse, size=(height, width), mode="nearest").to(torch.uint8)
        return image, "synthetic image"


def _crf_unary_gradient(unary, image, grad):
    leaf = unary.detach().requires_grad_()
    return torch.autograd.grad(segops.dense_crf(leaf, image, crf_ops.ITERATIONS), leaf, grad)[0]


def crf_cases():
    """The CPU table's dense CRF (500x375, 21 labels, 5 steps, lattice build included), timed alone; forward checked
    against segops on the CPU by arg-max labels (the issue's bar), forward+backward by the unary's gradient."""
    height, width, labels = 375, 500, 21
    image, source = _crf_image(height, width)
    unary = crf_ops.logits(labels, height, width)
    grad = torch.randn(1, labels, height, width, generator=_generator(1))
    unary_gpu, image_gpu, grad_gpu = _cuda(unary, image, grad)
    steps = crf_ops.ITERATIONS
    name = f"dense_crf {width}x{height} {source}, {labels} labels, {steps} steps incl. lattice build"
    alone = "(none: timed alone)"
    return [
        GpuCase(
            f"{name} forward",
            lambda: segops.dense_crf(unary_gpu, image_gpu, steps),
            None,
            alone,
            check=lambda: segops.dense_crf(unary, image, steps),
            agreement=crf_ops.label_agreement,
        ),
        GpuCase(
            f"{name} forward+backward (unary)",
            lambda: _crf_unary_gradient(unary_gpu, image_gpu, grad_gpu),
            None,
            alone,
            check=lambda: _crf_unary_gradient(unary, image, grad),
        ),
    ]


FAMILIES = (roi_cases, multi_level_cases, conv_cases, flow_cases, unpool_cases, crf_cases)


@contextlib.contextmanager
def algorithms(mode):
    """PyTorch's default mode, or torch.use_deterministic_algorithms(True) (nondeterministic ops raise)."""
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(mode == "deterministic")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


class Refusal(NamedTuple):
    message: str


def attempt(fn, mode):
    """fn()'s result; under the deterministic mode a RuntimeError (an op without a deterministic implementation, or
    one that fails for want of one) is a Refusal instead."""
    try:
        result = fn()
        torch.cuda.synchronize()
        return result
    except RuntimeError as error:
        if mode != "deterministic":
            raise
        return Refusal(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)


def peak_memory_mb(fn):
    """The peak GPU memory of one call, less what was allocated before it (the inputs), in MB."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    result = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak / 1e6


def _equal(a, b):
    pairs = list(zip(a, b)) if isinstance(a, (tuple, list)) else [(a, b)]
    return all(torch.equal(x, y) for x, y in pairs)


def run_mode(case, mode, rounds, min_run_time, default_reference, cpu_result):
    """One case in one mode: {"segops": side, "reference": side or None, agreement...}; a side is its median time
    (ms), its rounds, its peak memory (MB), or its refusal."""
    with algorithms(mode):
        sides = {"segops": case.ours}
        if case.theirs is not None:
            sides["reference"] = case.theirs
        outputs = {side: attempt(fn, mode) for side, fn in sides.items()}  # also the warm-up
        result = {"mode": mode, "repeatable": None}
        for side, output in outputs.items():
            if isinstance(output, Refusal):
                result[side] = {"ms": None, "rounds_ms": None, "peak_mb": None, "refuses": output.message}
            else:
                result[side] = {"ms": None, "rounds_ms": [], "peak_mb": peak_memory_mb(sides[side]), "refuses": None}
        timed = [side for side in sides if result[side]["refuses"] is None]
        for _ in range(rounds):
            for side in timed:  # segops, then the reference: interleaved
                result[side]["rounds_ms"].append(median_seconds(sides[side], min_run_time) * 1e3)
        for side in timed:
            result[side]["ms"] = statistics.median(result[side]["rounds_ms"])
        ours = outputs["segops"]
        if mode == "deterministic" and not isinstance(ours, Refusal):
            result["repeatable"] = _equal(ours, case.ours())  # a second call, bit for bit
    theirs = outputs.get("reference")
    against = "reference"
    if case.theirs is None:
        theirs, against = cpu_result, "segops on the CPU"
    elif isinstance(theirs, Refusal):
        theirs, against = default_reference, "the reference's default-mode result"
    if isinstance(ours, Refusal) or theirs is None or isinstance(theirs, Refusal):
        result.update(outputs_agree=None, max_abs_diff=None, outliers=None, agreement=None, compared_with=None)
    else:
        if case.theirs is None:  # to the CPU, where the check was made
            ours = tuple(t.cpu() for t in ours) if isinstance(ours, tuple) else ours.cpu()
        agrees, max_abs_diff, outliers, elements, note = compare(ours, theirs, case.allowed_outliers, case.agreement)
        result.update(
            outputs_agree=agrees,
            max_abs_diff=max_abs_diff,
            outliers=f"{outliers} of {elements}" if outliers and note is None else None,
            agreement=note,
            compared_with=against,
        )
    reference_ms = result.get("reference", {}) or {}
    both = result["segops"]["ms"] is not None and reference_ms.get("ms") is not None
    result["ratio"] = reference_ms["ms"] / result["segops"]["ms"] if both else None
    return result, outputs.get("reference")


def run_case(case, rounds, min_run_time):
    """Both modes of a case (default first: its reference result stands in where the deterministic mode refuses)."""
    cpu_result = None
    if case.check is not None:
        cpu_result = case.check()
    entry = {"case": case.name, "reference": case.reference, "modes": []}
    default_reference = None
    for mode in MODES:
        result, reference_output = run_mode(case, mode, rounds, min_run_time, default_reference, cpu_result)
        if mode == "default":
            default_reference = reference_output
        entry["modes"].append(result)
    return entry


def failures(results):
    """What makes the run fail: segops disagreeing, refusing, or not repeating itself bit for bit."""
    found = []
    for entry in results:
        for r in entry["modes"]:
            where = f"{entry['case']} ({r['mode']})"
            if r["segops"]["refuses"]:
                found.append(f"{where}: segops refuses: {r['segops']['refuses']}")
            if r["outputs_agree"] is False:
                found.append(f"{where}: outputs disagree (max abs diff {r['max_abs_diff']:.2e})")
            if r["repeatable"] is False:
                found.append(f"{where}: segops's deterministic result differs between two calls")
    return found


def _cell_ms(side):
    if side is None:
        return ""
    return "refuses" if side["refuses"] else _ms(side["ms"])


def _cell_ratio(r):
    return "" if r["ratio"] is None else f"{r['ratio']:.2f}x"


def _cell_mb(side):
    return "" if side is None or side["peak_mb"] is None else f"{side['peak_mb']:.1f}"


def _agreement_cell(r):
    if r["outputs_agree"] is None:
        text = "not compared"
    else:
        text = f"{'yes' if r['outputs_agree'] else 'NO'} ({r['max_abs_diff']:.1e}"
        text += f"; beyond 1e-4 at {r['outliers']} elements" if r["outliers"] else ""
        text += f"; {r['agreement']}" if r["agreement"] else ""
        text += f"; vs {r['compared_with']}" if r["compared_with"] != "reference" else ""
        text += ")"
    if r["repeatable"] is not None:
        text += "; bitwise repeatable" if r["repeatable"] else "; NOT repeatable"
    return text


def markdown_table(results, machine, settings):
    lines = [
        f"Measured on {machine['gpu']} (compute capability {machine['gpu_capability']}, CUDA {machine['cuda']}, "
        f"cuDNN {machine['cudnn']}), {machine['cpu']}, torch {machine['torch']}, torchvision "
        f"{machine['torchvision']}, segops {machine['segops']}: float32 without TF32 on both sides, medians of "
        f"{settings['rounds']} interleaved rounds. Ratio: reference time / segops time (above 1: segops is faster). "
        "Peak: the GPU memory one call allocates beyond its inputs.",
        "",
        "| case | mode | segops (ms) | reference | reference (ms) | ratio | segops peak (MB) | reference peak (MB) "
        "| outputs agree (max abs diff) |",
        "|---|---|---:|---|---:|---:|---:|---:|---|",
    ]
    refusals = []
    for entry in results:
        for r in entry["modes"]:
            ours, theirs = r["segops"], r.get("reference")
            lines.append(
                f"| {entry['case']} | {r['mode']} | {_cell_ms(ours)} | {entry['reference']} | {_cell_ms(theirs)} | "
                f"{_cell_ratio(r)} | {_cell_mb(ours)} | {_cell_mb(theirs)} | "
                f"{_agreement_cell(r)} |"
            )
            for side, name in ((ours, "segops"), (theirs, entry["reference"])):
                if side is not None and side["refuses"]:
                    message = side["refuses"].split(". ")[0]  # the first sentence says which op refuses
                    refusals.append(f"- {entry['case']}, {name} ({r['mode']}): {message}")
    if refusals:
        lines += ["", "Refusals under `torch.use_deterministic_algorithms(True)`:", ""] + refusals
    return "\n".join(lines)


def no_gpu_reason():
    """Why this cannot run here, or None."""
    if not torch.cuda.is_available():
        return (
            "no CUDA GPU is visible (torch.cuda.is_available() is False"
            + ("" if torch.version.cuda else f"; torch {torch.__version__} is a CPU-only build")
            + "): the GPU benchmark needs one; nothing was measured"
        )
    if segops.cuda_version() is None:
        return (
            "segops was built without its CUDA kernels (segops.cuda_version() is None): build it with FORCE_CUDA=1, "
            "e.g. by scripts/gpu_check.sh"
        )
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case and mode (default 5)")
    parser.add_argument("--min-run-time", type=float, default=0.2, help="seconds per blocked_autorange (default 0.2)")
    parser.add_argument("--filter", default="", help="only cases whose name contains this text")
    parser.add_argument("--output", type=Path, default=OUTPUT, help="folder for latest.json/.md (default: %(default)s)")
    args = parser.parse_args(argv)
    reason = no_gpu_reason()
    if reason is not None:
        print(f"benchmarks.gpu: {reason}", file=sys.stderr)
        return 2

    # Both sides in IEEE float32, as the tests compare them (tests/conftest.py): PyTorch lets cuDNN's convolutions use
    # TF32 by default (~1e-3 relative error). The legacy flags: mixing them with the fp32_precision ones makes
    # torch's own reads of them raise.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    machine = machine_description()
    machine.update(
        gpu_capability=".".join(map(str, torch.cuda.get_device_capability())),
        gpu_memory_gb=torch.cuda.get_device_properties(0).total_memory / 1e9,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version(),
        torchvision=torchvision.__version__,
    )
    settings = {
        "rounds": args.rounds,
        "min_run_time_s": args.min_run_time,
        "tf32": False,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "modes": list(MODES),
    }
    print(f"segops GPU benchmarks on {machine['gpu']}:", file=sys.stderr, flush=True)
    results = []
    for family in FAMILIES:
        cases = [case for case in family() if args.filter in case.name]
        for case in cases:
            print(f"  {case.name} ...", end="", file=sys.stderr, flush=True)
            results.append(run_case(case, args.rounds, args.min_run_time))
            print(
                "".join(
                    f" {r['mode']}: segops {_cell_ms(r['segops'])} ms"
                    + (f", reference {_cell_ms(r['reference'])}" if r.get("reference") else "")
                    + (f", {r['ratio']:.2f}x;" if r["ratio"] else ";")
                    for r in results[-1]["modes"]
                ),
                file=sys.stderr,
                flush=True,
            )
        del cases  # the family's inputs
        torch.cuda.empty_cache()
    table = markdown_table(results, machine, settings)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "latest.json").write_text(
        json.dumps({"machine": machine, "settings": settings, "results": results}, indent=2) + "\n"
    )
    (args.output / "latest.md").write_text(table + "\n")
    print(f"\nwrote {args.output / 'latest.json'} and latest.md", file=sys.stderr)
    found = failures(results)
    for failure in found:
        print(f"benchmarks.gpu: FAILED: {failure}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())

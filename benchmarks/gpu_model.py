"""python -m benchmarks.gpu_model: what segops' CUDA kernels do with GPU memory, measured without a GPU.

Each case runs the CUDA kernels in the host emulation (segops._emulation) with the warp memory tracer on
(csrc/emulation/memory_trace.h): every global load and store of a launch, grouped into warps of 32 threads and into
one request per load or store instruction, as a GPU issues them. Per kernel the table gives the sector efficiency of
its loads and of its stores (the fewest 32-byte sectors the requested bytes could occupy / the sectors touched:
1.00 is perfectly coalesced, 0.12 is one useful float per sector), the bytes it moves through DRAM (its distinct
sectors: each moved once, as if the caches kept a sector between its uses, which they nearly do for stencils and
local gathers; an uncoalesced access still moves whole sectors), and the time those bytes take at an H100's
3.35 TB/s (a roofline: these kernels are memory-bound; where a case's FLOPs at 67 TFLOP/s FP32 take longer,
that). Beside each case, the same estimate for the
reference a user would otherwise call, where its bytes are known: torchvision's RoIAlign and F.grid_sample read the
input they sample and write their output; F.max_unpool2d and a depthwise F.conv2d (cuDNN) are taken at the floor,
reading their input once and writing their output once. Large launches are sampled (one run of 64 consecutive warps
in --warp-stride); efficiencies are ratios over the sampled warps, bytes are scaled back up.

Shapes are the CPU benchmark table's (benchmarks/*_ops.py), float32, contiguous and channels_last."""

import argparse
import json
import sys
from typing import Callable, NamedTuple

import torch

H100_BANDWIDTH = 3.35e12  # bytes/s
H100_FP32 = 67e12  # FLOP/s
GRID, BLOCK = [132 * 32], [256]  # CudaLaunch's grid on an H100 (132 SMs, 32 blocks each, 256 threads)


class GpuModelCase(NamedTuple):
    name: str
    run: Callable  # (emulation ops) -> None: the launches traced
    reference: str
    reference_bytes: int  # what the reference moves at best
    flops: float = 0.0


def emulation():
    try:
        import segops._emulation  # noqa: F401
    except ImportError:
        sys.exit("benchmarks.gpu_model: segops._emulation is not built (SEGOPS_BUILD_EMULATION=1)")
    ops = torch.ops.segops_emulation
    if not hasattr(ops, "memtrace_begin"):
        sys.exit("benchmarks.gpu_model: this segops._emulation has no memory tracer (a sanitizer build?)")
    return ops


def trace(ops, run, warp_stride):
    """[{kernel, loads, stores, atomics, same_address_atomics}] of the launches run(ops) makes."""
    ops.memtrace_begin(warp_stride)
    try:
        run(ops)
    finally:
        records = json.loads(ops.memtrace_end())
    return records


def efficiency(totals):
    return totals["fewest_sectors"] / totals["sectors"] if totals["sectors"] else None


def kernel_name(record):
    return record["kernel"].split("(")[0].removeprefix("void ").replace("segops::", "")


def dram_bytes(record, warp_stride):
    """DRAM bytes of a launch: its distinct sectors (each read or written once, caches holding it between uses;
    uncoalesced requests still cost their whole sectors), scaled back up from the sampled warps."""
    return record["distinct_sectors"] * 32 * warp_stride


def _nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def cases(layout: str):
    """The benchmark table's shapes (float32) in `layout` ("contiguous" or "channels_last")."""
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def randn(*shape):
        return (
            torch.randn(*shape, generator=g).contiguous(memory_format=fmt)
            if len(shape) == 4
            else torch.randn(*shape, generator=g)
        )

    result = []
    # roi_align 7x7 on an FPN level-2 map, 512 boxes (benchmarks/roi_ops.py).
    feature = randn(2, 256, 200, 304)
    xy = torch.rand(512, 2, generator=g) * torch.tensor([1100.0, 700.0])
    wh = torch.rand(512, 2, generator=g) * 300 + 16
    boxes = torch.cat([torch.randint(0, 2, (512, 1), generator=g).float(), xy, xy + wh], dim=1)
    out_bytes = 512 * 256 * 49 * 4
    result.append(
        GpuModelCase(
            "roi_align 7x7, [2, 256, 200, 304], 512 boxes, forward",
            lambda ops: ops.roi_align(feature, boxes, 0.25, 7, 7, 2, True, GRID, BLOCK),
            "torchvision roi_align",
            _nbytes(feature) + out_bytes,
        )
    )
    # flow_warp [4, 256, 64, 128] (benchmarks/flow_ops.py): a smooth flow of a few pixels.
    frame = randn(4, 256, 64, 128)
    coarse = torch.randn(4, 2, 4, 8, generator=g) * 4
    flow = torch.nn.functional.interpolate(coarse, size=(64, 128), mode="bilinear")
    result.append(
        GpuModelCase(
            "flow_warp [4, 256, 64, 128], forward",
            lambda ops: ops.flow_warp(frame, flow, None, GRID, BLOCK),
            "F.grid_sample",
            2 * _nbytes(frame) + _nbytes(flow),
        )
    )
    # max_unpool2d [4, 64, 64, 128] -> [4, 64, 128, 256] (benchmarks/unpool_ops.py).
    source = randn(4, 64, 128, 256)
    pooled, indices = torch.nn.functional.max_pool2d(source, 2, return_indices=True)
    pooled, indices = pooled.contiguous(memory_format=fmt), indices.contiguous(memory_format=fmt)
    result.append(
        GpuModelCase(
            "max_unpool2d [4, 64, 64, 128] -> [4, 64, 128, 256], forward",
            lambda ops: ops.max_unpool2d(pooled, indices, 128, 256, GRID, BLOCK),
            "F.max_unpool2d (floor: read input and indices, write output)",
            _nbytes(pooled, indices, source),
        )
    )
    # dilated_conv2d depthwise [2, 512, 64, 64], 3x3, dilation 6 (benchmarks/conv_ops.py).
    x = randn(2, 512, 64, 64)
    weight = torch.randn(512, 1, 3, 3, generator=g)
    grad = torch.randn(2, 512, 64, 64, generator=g)
    geometry = ([1, 1], [6, 6], [6, 6], 512)
    result.append(
        GpuModelCase(
            "dilated_conv2d depthwise [2, 512, 64, 64], 3x3, dilation 6, forward",
            lambda ops: ops.dilated_conv2d(x, weight, None, *geometry, GRID, BLOCK),
            "F.conv2d (floor: read input, write output)",
            2 * _nbytes(x),
            flops=2 * 9 * x.numel(),
        )
    )
    result.append(
        GpuModelCase(
            "dilated_conv2d depthwise [2, 512, 64, 64], 3x3, dilation 6, backward",
            lambda ops: ops._dilated_conv2d_backward(
                grad, x, weight, *geometry, [True, True, False], True, GRID, BLOCK
            ),
            "F.conv2d backward (floor: read grad and input, write grad_input)",
            3 * _nbytes(x),
            flops=4 * 9 * x.numel(),
        )
    )
    return result


def model(layouts=("contiguous", "channels_last"), warp_stride=64, only=None):
    """Rows {case, layout, kernel, load_efficiency, store_efficiency, bytes, time_us, reference, ...}."""
    ops = emulation()
    rows = []
    for layout in layouts:
        for case in cases(layout):
            if only and only not in case.name:
                continue
            records = trace(ops, case.run, warp_stride)
            total = 0.0
            for record in records:
                moved = dram_bytes(record, warp_stride)
                seconds = moved / H100_BANDWIDTH
                total += seconds
                rows.append(
                    dict(
                        case=case.name,
                        layout=layout,
                        kernel=kernel_name(record),
                        load_efficiency=efficiency(record["loads"]),
                        store_efficiency=efficiency(record["stores"]),
                        atomics=record["atomics"] * warp_stride,
                        bytes=moved,
                        time_us=seconds * 1e6,
                    )
                )
            compute = case.flops / H100_FP32
            reference_us = max(case.reference_bytes / H100_BANDWIDTH, compute) * 1e6
            rows.append(
                dict(
                    case=case.name,
                    layout=layout,
                    kernel="(all segops kernels)",
                    time_us=max(total, compute) * 1e6,
                    reference=case.reference,
                    reference_bytes=case.reference_bytes,
                    reference_us=reference_us,
                )
            )
    return rows


def _fmt(value, spec):
    return "" if value is None else format(value, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warp-stride", type=int, default=64, help="trace one warp in this many (default 64)")
    parser.add_argument("--filter", default=None, help="only the cases whose name contains this")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    rows = model(warp_stride=args.warp_stride, only=args.filter)
    print("| case | layout | kernel | loads | stores | MB moved | H100 µs | reference | reference µs |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['case']} | {row['layout']} | {row['kernel']} | {_fmt(row.get('load_efficiency'), '.2f')} | "
            f"{_fmt(row.get('store_efficiency'), '.2f')} | {_fmt(row.get('bytes', 0) / 1e6 or None, '.1f')} | "
            f"{_fmt(row['time_us'], '.1f')} | {row.get('reference', '')} | {_fmt(row.get('reference_us'), '.1f')} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()

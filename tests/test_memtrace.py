"""The warp memory tracer (csrc/emulation/memory_trace.h): the CUDA kernels run in the host emulation with every
global load and store recorded, grouped into warps and into one request per instruction, and judged by sector
efficiency (the fewest 32-byte sectors a request's bytes could occupy / the sectors it touches). Checked here: its
counts on accesses whose efficiency is known by arithmetic, that it catches a planted uncoalesced access, and the
coalescing of every kernel on small shapes, those below 80% listed with the reason."""

import json

import pytest
import torch
import torch.nn.functional as F

import segops  # noqa: F401  (registers torch.ops.segops)

from conftest import emulation_module

GRID, BLOCK = [64], [256]


@pytest.fixture(scope="module")
def emulated():
    ops = emulation_module()
    if not hasattr(ops, "memtrace_begin"):
        pytest.skip("segops._emulation was built without the memory tracer (a sanitizer build)")
    return ops


def traced(emulated, run):
    """{kernel name: record} of the launches run() makes (a kernel launched twice: its last launch)."""
    emulated.memtrace_begin(1)
    try:
        run()
    finally:
        records = json.loads(emulated.memtrace_end())
    return {r["kernel"].split("(")[0].removeprefix("void ").replace("segops::", ""): r for r in records}


def efficiency(totals):
    return totals["fewest_sectors"] / totals["sectors"] if totals["sectors"] else None


def test_counts_of_known_accesses(emulated):
    """A 1x1 depthwise convolution is a scaled copy: in NCHW each warp reads and writes 32 consecutive floats (4
    sectors, all useful); walked in the output's order over a channels_last input (C = 16: channels 64 bytes apart)
    each lane reads a sector of its own, 4 useful bytes of 32: 1/8."""
    x = torch.randn(2, 16, 8, 32)
    weight = torch.randn(16, 1, 1, 1)
    records = traced(
        emulated, lambda: emulated.dilated_conv2d(x, weight, None, [1, 1], [0, 0], [1, 1], 16, GRID, BLOCK)
    )
    (record,) = records.values()
    elements = x.numel()
    assert record["loads"]["requested_bytes"] == 2 * elements * 4  # the input and the weight
    assert record["stores"]["requested_bytes"] == elements * 4
    assert record["stores"]["sectors"] == elements * 4 // 32 and efficiency(record["stores"]) == 1.0
    assert record["atomics"] == 0
    nhwc = x.contiguous(memory_format=torch.channels_last)
    emulated.force_output_thread_order(True)
    try:
        records = traced(
            emulated, lambda: emulated.dilated_conv2d(nhwc, weight, None, [1, 1], [0, 0], [1, 1], 16, GRID, BLOCK)
        )
    finally:
        emulated.force_output_thread_order(False)
    (record,) = records.values()
    # Per warp: the input (32 sectors for 128 bytes) and the weight (one float, broadcast: 1 sector for 4 bytes).
    warps = elements // 32
    assert record["loads"]["sectors"] == warps * (32 + 1)
    assert record["loads"]["fewest_sectors"] == warps * (4 + 1)


def test_atomics_and_same_address_atomics_are_counted(emulated):
    """roi_pool's atomic backward adds each bin's gradient at its argmax; a constant input makes every bin's argmax
    its window's first pixel, so overlapping boxes send several lanes of a warp to one address."""
    x = torch.ones(1, 1, 16, 16)
    rois = torch.tensor([[0, 0.0, 0.0, 15.0, 15.0]] * 4)
    _, argmax = emulated.roi_pool(x, rois, 1.0, 2, 2, GRID, BLOCK)
    grad = torch.ones(4, 1, 2, 2)
    records = traced(
        emulated, lambda: emulated._roi_pool_backward(grad, rois, argmax, 1.0, 2, 2, 1, 1, 16, 16, False, GRID, BLOCK)
    )
    record = records["roi_pool_backward_kernel<float>"]
    assert record["atomics"] == 16  # 4 boxes x 4 bins, one warp
    assert record["same_address_atomics"] == 12  # 4 distinct argmaxes, each hit by 4 lanes


@pytest.mark.parametrize("kernel_order", ["chosen", "planted: output order"])
def test_a_planted_uncoalesced_access_is_caught(emulated, kernel_order):
    """The depthwise convolution walks a channels_last input channel-fastest; walking it in the output's order
    instead (the planted change) reads each lane's channel a pixel's worth of bytes apart."""
    x = torch.randn(2, 64, 16, 24).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(64, 1, 3, 3)
    emulated.force_output_thread_order(kernel_order != "chosen")
    try:
        records = traced(
            emulated, lambda: emulated.dilated_conv2d(x, weight, None, [1, 1], [2, 2], [2, 2], 64, GRID, BLOCK)
        )
    finally:
        emulated.force_output_thread_order(False)
    (record,) = records.values()
    loads = efficiency(record["loads"])
    if kernel_order == "chosen":
        assert loads > 0.95
    else:
        assert loads < 0.25


def _cases():
    """name -> callable(emulated) of small versions of the benchmark cases, contiguous and channels_last."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 24, 32, generator=g)
    nhwc = x.contiguous(memory_format=torch.channels_last)
    rois = torch.tensor([[0, 1.5, 2.0, 30.0, 20.0], [1, 5.0, 3.0, 20.0, 40.0], [0, 10.0, 10.0, 50.0, 45.0]] * 4)
    grad_bins = torch.randn(12, 64, 7, 7, generator=g)
    flow = F.interpolate(torch.randn(2, 2, 3, 4, generator=g) * 3, size=(24, 32), mode="bilinear")
    grad_map = torch.randn(2, 64, 24, 32, generator=g)
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    weight = torch.randn(64, 1, 3, 3, generator=g)
    dense_weight, dense_grad = torch.randn(32, 64, 3, 3, generator=g), torch.randn(2, 32, 24, 32, generator=g)
    features = torch.rand(1, 24 * 32, 5, generator=g) * 5
    values = torch.rand(1, 24 * 32, 21, generator=g)
    conv = ([1, 1], [2, 2], [2, 2])
    cases = {}
    for layout, map_ in (("nchw", x), ("nhwc", nhwc)):
        cases[f"roi_align forward {layout}"] = lambda e, m=map_: e.roi_align(m, rois, 0.5, 7, 7, 2, True, GRID, BLOCK)
        cases[f"flow_warp forward {layout}"] = lambda e, m=map_: e.flow_warp(m, flow, None, GRID, BLOCK)
        cases[f"depthwise forward {layout}"] = lambda e, m=map_: e.dilated_conv2d(
            m, weight, None, *conv, 64, GRID, BLOCK
        )
        cases[f"depthwise backward {layout}"] = lambda e, m=map_: e._dilated_conv2d_backward(
            grad_map, m, weight, *conv, 64, [True] * 3, True, GRID, BLOCK
        )
    for deterministic in (False, True):
        tag = "deterministic" if deterministic else "atomic"
        cases[f"roi_align backward {tag}"] = lambda e, d=deterministic: e._roi_align_backward(
            grad_bins, rois, 0.5, 7, 7, 2, 64, 24, 32, 2, True, d, GRID, BLOCK
        )
        cases[f"flow_warp backward {tag}"] = lambda e, d=deterministic: e._flow_warp_backward(
            grad_map, x, flow, None, d, GRID, BLOCK
        )
    cases["roi_pool forward nchw"] = lambda e: e.roi_pool(x, rois, 0.5, 7, 7, GRID, BLOCK)
    cases["roi_pool forward nhwc"] = lambda e: e.roi_pool(nhwc, rois, 0.5, 7, 7, GRID, BLOCK)
    score_maps = torch.randn(2, 2 * 7 * 7, 24, 32, generator=g)  # position-sensitive: 2 channels of 7 x 7 bins
    grad_ps = torch.randn(12, 2, 7, 7, generator=g)
    cases["ps_roi_align forward"] = lambda e: e.ps_roi_align(score_maps, rois, 0.5, 7, 7, 2, GRID, BLOCK)
    cases["ps_roi_pool forward"] = lambda e: e.ps_roi_pool(score_maps, rois, 0.5, 7, 7, GRID, BLOCK)
    for deterministic in (False, True):
        tag = "deterministic" if deterministic else "atomic"
        cases[f"ps_roi_align backward {tag}"] = lambda e, d=deterministic: e._ps_roi_align_backward(
            grad_ps, rois, 0.5, 7, 7, 2, 98, 24, 32, 2, d, GRID, BLOCK
        )
        cases[f"ps_roi_pool backward {tag}"] = lambda e, d=deterministic: e._ps_roi_pool_backward(
            grad_ps, rois, 0.5, 7, 7, 2, 98, 24, 32, d, GRID, BLOCK
        )
    cases["max_unpool2d forward"] = lambda e: e.max_unpool2d(pooled, indices, 24, 32, GRID, BLOCK)
    cases["max_unpool2d backward"] = lambda e: e._max_unpool2d_backward(x, indices, GRID, BLOCK)
    cases["dilated_conv2d general backward, deterministic"] = lambda e: e._dilated_conv2d_backward(
        dense_grad, x, dense_weight, *conv, 1, [True] * 3, True, GRID, BLOCK
    )
    cases["permutohedral lattice build"] = lambda e: e.permutohedral_lattice(features, GRID, BLOCK)
    lattice = torch.ops.segops.permutohedral_lattice(features)  # the CPU build's lattice: the GPU filter takes it
    cases["permutohedral filter"] = lambda e: e.permutohedral_filter(values, *lattice, False, GRID, BLOCK)
    cases["dense_crf_softmax"] = lambda e: e.dense_crf_softmax(
        values, [values, values], torch.tensor([3.0, 10.0]), GRID, BLOCK
    )
    return cases


CASES = _cases()

# The kernels whose loads or stores are below 80% sector efficiency on these shapes, and why. The test fails when the
# list is wrong either way.
BELOW_80 = {
    # Bilinear samples of a box (a warp: consecutive bins of one channel, sampling across the box) or of a flow.
    ("roi_align forward nchw", "roi_align_forward_kernel<false, false, float>"): "bilinear samples across a box",
    ("flow_warp forward nchw", "flow_warp_forward_kernel<float, int, false>"): "bilinear samples along a flow",
    ("flow_warp backward atomic", "flow_warp_backward_flow_kernel<float, int>"): "bilinear samples along a flow",
    ("flow_warp backward deterministic", "flow_warp_backward_flow_kernel<float, int>"): "bilinear samples",
    ("flow_warp backward deterministic", "flow_warp_backward_feature_gather_kernel<float, int>"): "sorted pixels",
    ("roi_pool forward nchw", "roi_pool_forward_kernel<float, false>"): "a bin's window per thread",
    ("roi_align backward deterministic", "roi_gather_kernel<RoIAlignGather<float>, float>"): "the RoIs' bins",
    ("ps_roi_align backward deterministic", "roi_gather_kernel<PSRoIGather<PSRoIAlignOp<float>, float>, float>"): (
        "the RoIs' bins"
    ),
    # Position-sensitive pooling: consecutive bins read consecutive score maps, a plane apart (as in R-FCN's kernel).
    ("ps_roi_align forward", "ps_roi_forward_kernel<PSRoIAlignOp<float>, float>"): "each bin its own score map",
    ("ps_roi_pool forward", "ps_roi_forward_kernel<PSRoIPoolOp<float>, float>"): "each bin its own score map",
    # Channel-fastest walks of channels_last inputs: coalesced reads, stores a plane apart into NCHW outputs (the
    # depthwise convolution's output keeps the input's memory format, and is at 1.00 both ways).
    ("roi_align forward nhwc", "roi_align_forward_kernel<false, true, float>"): "NCHW output of an NHWC walk",
    ("flow_warp forward nhwc", "flow_warp_forward_kernel<float, int, true>"): "NCHW output of an NHWC walk",
    ("roi_pool forward nhwc", "roi_pool_forward_kernel<float, true>"): "NCHW output of an NHWC walk",
    # The depthwise weight gradient's ordered sum: in NCHW, a thread reads its (channel, tap)'s row of partials.
    ("depthwise backward nchw", "dilated_conv_ordered_sum_kernel<float, false>"): "one thread per partial-sum row",
    # channels_last: loads coalesced; the C x taps weight-gradient stores land taps apart (1 per N * Wo loads).
    ("depthwise backward nhwc", "dilated_conv_ordered_sum_kernel<float, true>"): "the [C, kH, kW] stores",
    # Stencils: a tap's row read is shifted off the sector boundaries (its fifth sector is the next warp's: an L1
    # hit on a GPU), and border lanes skip taps; 0.73-0.78 on these 24x32 maps, 0.79-0.86 on the benchmark's.
    ("depthwise forward nchw", "dilated_conv_depthwise_kernel<float, int, false>"): "stencil taps off sector bounds",
    ("depthwise backward nchw", "dilated_conv_depthwise_input_grad_kernel<float, int, false>"): "stencil taps",
    ("dilated_conv2d general backward, deterministic", "dilated_conv_im2col_kernel<float, int>"): "stencil taps",
    ("dilated_conv2d general backward, deterministic", "dilated_conv_col2im_kernel<float, int>"): "stencil taps",
    # Gathers at data-dependent positions: unpooling winners, lattice hash tables and neighbours.
    ("max_unpool2d forward", "max_unpool_forward_kernel<float, int>"): "the input at each output's winner",
    ("max_unpool2d backward", "max_unpool_backward_kernel<float, int>"): "the gradient at each winner's position",
    ("permutohedral lattice build", "lattice_embed_kernel<float, 5>"): "a point's d+1 keys per thread",
    ("permutohedral lattice build", "lattice_insert_kernel"): "hash-table probes",
    ("permutohedral lattice build", "lattice_owner_kernel"): "hash-table probes",
    ("permutohedral lattice build", "lattice_number_kernel"): "owners' vertex numbers",
    ("permutohedral lattice build", "lattice_neighbour_kernel"): "hash-table probes",
    ("permutohedral lattice build", "lattice_offsets_kernel"): "binary searches",
    ("permutohedral filter", "lattice_splat_kernel<float>"): "each vertex's entries' points",
    ("permutohedral filter", "lattice_blur_kernel<float>"): "neighbouring vertices' rows",
    ("permutohedral filter", "lattice_slice_kernel<float>"): "each point's d+1 vertices' rows",
    # A pixel's labels per thread: lanes read rows of L values, L apart.
    ("dense_crf_softmax", "crf_softmax_kernel<float>"): "a pixel's labels per thread",
}


@pytest.mark.parametrize("case", CASES)
def test_sector_efficiency_of_every_kernel(emulated, case):
    records = traced(emulated, lambda: CASES[case](emulated))
    assert records, "no launch traced"
    for kernel, record in records.items():
        # Kernels of a handful of requests (one thread per RoI, footprints) move nothing that matters.
        efficiencies = [
            efficiency(t) for t in (record["loads"], record["stores"]) if t["requests"] >= 16 and t["sectors"]
        ]
        below = bool(efficiencies) and min(efficiencies) < 0.8
        key = (case, kernel)
        assert below == (key in BELOW_80), (key, [round(e, 3) for e in efficiencies], BELOW_80.get(key))


def test_the_gpu_model_table(emulated):
    """python -m benchmarks.gpu_model on one of its cases: every kernel row has its efficiencies and bytes, and the
    case's total beside its reference's."""
    from benchmarks import gpu_model

    rows = gpu_model.model(layouts=("contiguous",), warp_stride=16, only="max_unpool2d")
    kernels = [row for row in rows if row["kernel"] != "(all segops kernels)"]
    assert {row["kernel"] for row in kernels} == {
        "max_unpool_winner_kernel<int>",
        "max_unpool_forward_kernel<float, int>",
    }
    for row in kernels:
        assert 0 < row["load_efficiency"] <= 1 and row["bytes"] > 0 and row["time_us"] > 0
    (total,) = [row for row in rows if row["kernel"] == "(all segops kernels)"]
    assert total["reference_us"] > 0 and total["time_us"] >= total["reference_us"] * 0.5

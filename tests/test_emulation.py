"""The CUDA kernels themselves, run on the CPU by emulated launches (csrc/common/emulation.h), against the CPU
path: this covers the kernels' index arithmetic, bounds tests and grid-stride loops, not only the shared math.
Forward kernels compute each output exactly as the CPU path does, so they must agree bitwise; backward kernels
scatter in another order (into a float32 buffer for half types, as on the GPU), except the deterministic RoI
backwards (torch.use_deterministic_algorithms), which gather in the CPU path's order and must agree with it bitwise
for every launch shape."""

import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import segops

from conftest import CONCURRENT_EMULATION, emulation_module
from op_testing import DEGENERATE_BOXES, random_rois
from segops.ops._checks import accumulation_dtype

# (grid, block): a single thread, a block smaller than a warp, grids far smaller than the work (so every thread
# runs many grid-stride iterations), and grids larger than the work (idle threads).
LAUNCHES = [((1,), (1,)), ((1,), (7,)), ((3,), (32,)), ((2,), (256,)), ((97,), (256,))]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BACKWARD_TOLERANCE = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float64: dict(rtol=1e-12, atol=1e-12),
    torch.float16: dict(rtol=1e-2, atol=1e-2),
    torch.bfloat16: dict(rtol=5e-2, atol=5e-2),
}


@pytest.fixture(scope="module")
def emulated():
    return emulation_module()


@pytest.fixture(params=["32-bit indices", "64-bit indices"])
def index_width(request, emulated):
    """Runs a test of kernels templated on their index type (common/kernel.h's with_index_type) twice: with the
    32-bit indices that a GPU would use at these sizes, and forced to the 64-bit instantiation."""
    emulated.force_64bit_indices(request.param == "64-bit indices")
    yield request.param
    emulated.force_64bit_indices(False)


def make_case(dtype, *, seed=0, batch_size=2, channels=3, height=7, width=9, num_rois=9, spatial_scale=0.5):
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(batch_size, channels, height, width, generator=g).to(dtype)
    rois = random_rois(num_rois, batch_size, height / spatial_scale, width / spatial_scale, generator=g).to(dtype)
    return input, rois


SHAPES = {
    "random boxes": dict(),
    "no boxes": dict(num_rois=0),
    "one-pixel-wide map": dict(width=1),
    "one-pixel-high map": dict(height=1),
    "single channel, many boxes": dict(channels=1, num_rois=40),
}


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("aligned,sampling_ratio", [(True, 2), (False, -1)])
def test_roi_align_kernels(emulated, launch, dtype, shape, aligned, sampling_ratio):
    grid, block = launch
    input, rois = make_case(dtype, **SHAPES[shape])
    params = (0.5, 3, 4, sampling_ratio, aligned)
    expected = torch.ops.segops.roi_align(input, rois, *params)
    assert torch.equal(emulated.roi_align(input, rois, *params, grid, block), expected)

    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    shape_args = (0.5, 3, 4, *input.shape)
    expected_grad = torch.ops.segops._roi_align_backward(grad, rois, *shape_args, sampling_ratio, aligned)
    atomic = emulated._roi_align_backward(grad, rois, *shape_args, sampling_ratio, aligned, False, grid, block)
    torch.testing.assert_close(atomic, expected_grad, **BACKWARD_TOLERANCE[dtype])
    gathered = emulated._roi_align_backward(grad, rois, *shape_args, sampling_ratio, aligned, True, grid, block)
    assert torch.equal(gathered, expected_grad)


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_roi_pool_kernels(emulated, launch, dtype, shape):
    grid, block = launch
    input, rois = make_case(dtype, **SHAPES[shape])
    expected, expected_argmax = torch.ops.segops.roi_pool(input, rois, 0.5, 3, 4)
    actual, actual_argmax = emulated.roi_pool(input, rois, 0.5, 3, 4, grid, block)
    assert torch.equal(actual, expected) and torch.equal(actual_argmax, expected_argmax)

    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    shape_args = (0.5, 3, 4, *input.shape)
    expected_grad = torch.ops.segops._roi_pool_backward(grad, rois, expected_argmax, *shape_args)
    atomic = emulated._roi_pool_backward(grad, rois, expected_argmax, *shape_args, False, grid, block)
    torch.testing.assert_close(atomic, expected_grad, **BACKWARD_TOLERANCE[dtype])
    gathered = emulated._roi_pool_backward(grad, rois, expected_argmax, *shape_args, True, grid, block)
    assert torch.equal(gathered, expected_grad)


@pytest.mark.parametrize("launch", [((1,), (5,)), ((4,), (64,))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernels_on_degenerate_boxes(emulated, launch, dtype):
    # Zero-area, reversed, outside, enormous and far-away boxes, with adaptive and dense fixed sampling.
    grid, block = launch
    input, _ = make_case(dtype)
    rois = torch.tensor([*DEGENERATE_BOXES, [0, 17.0, 0.0, 17.0 + 1e-6, 13.0]], dtype=dtype)
    for sampling_ratio in (-1, 64):
        params = (0.5, 3, 2, sampling_ratio, True)
        expected = torch.ops.segops.roi_align(input, rois, *params)
        assert torch.equal(emulated.roi_align(input, rois, *params, grid, block), expected)
        grad = torch.ones_like(expected)
        shape_args = (0.5, 3, 2, *input.shape, sampling_ratio, True)
        expected_grad = torch.ops.segops._roi_align_backward(grad, rois, *shape_args)
        tolerance = {}
        if CONCURRENT_EMULATION and sampling_ratio > 0 and dtype == torch.float32:
            # Atomic adds in the threads' order, which scripts/tsan.sh shuffles: grad is ones and bilinear weights are
            # >= 0, so two orders of an element's n nonnegative terms agree within 2(n - 1)u relatively, with n at
            # most every sample of every bin (a zero-size box puts all its samples on one point).
            terms = len(rois) * 3 * 2 * sampling_ratio**2
            tolerance = dict(rtol=2 * terms * 2.0**-24, atol=0.0)
        torch.testing.assert_close(
            emulated._roi_align_backward(grad, rois, *shape_args, False, grid, block), expected_grad, **tolerance
        )
        assert torch.equal(emulated._roi_align_backward(grad, rois, *shape_args, True, grid, block), expected_grad)
    expected, argmax = torch.ops.segops.roi_pool(input, rois, 0.5, 3, 2)
    actual, actual_argmax = emulated.roi_pool(input, rois, 0.5, 3, 2, grid, block)
    assert torch.equal(actual, expected) and torch.equal(actual_argmax, argmax)
    grad = torch.randn(expected.shape, dtype=dtype, generator=torch.Generator().manual_seed(1))
    expected_grad = torch.ops.segops._roi_pool_backward(grad, rois, argmax, 0.5, 3, 2, *input.shape)
    torch.testing.assert_close(
        emulated._roi_pool_backward(grad, rois, argmax, 0.5, 3, 2, *input.shape, False, grid, block), expected_grad
    )
    assert torch.equal(
        emulated._roi_pool_backward(grad, rois, argmax, 0.5, 3, 2, *input.shape, True, grid, block), expected_grad
    )


BAD_ROWS = [
    ("batch index out of range", 0, 5.0),
    ("fractional batch index", 0, 0.5),
    ("NaN batch index", 0, float("nan")),
    ("infinite coordinate", 3, float("inf")),
    ("NaN coordinate", 2, float("nan")),
]


@pytest.mark.parametrize("bad_row", BAD_ROWS, ids=lambda case: case[0])
def test_kernels_validate_rows_with_a_device_side_assert(emulated, bad_row):
    # The GPU path checks rois values in the kernels (no host synchronisation): a bad row is a device-side assert,
    # raised after the launch, as CUDA reports it. The CPU path names the row instead (tests/test_roi_*.py).
    _, column, value = bad_row
    input, rois = make_case(torch.float32)
    rois[2, column] = value
    output, argmax = torch.ops.segops.roi_pool(input, make_case(torch.float32)[1], 0.5, 3, 4)
    grad = torch.ones_like(output)
    shape_args = (0.5, 3, 4, *input.shape)
    calls = [
        ("roi_align", lambda: emulated.roi_align(input, rois, 0.5, 3, 4, 2, True, [2], [32])),
        ("roi_pool", lambda: emulated.roi_pool(input, rois, 0.5, 3, 4, [2], [32])),
    ]
    for deterministic in (False, True):
        calls += [
            (
                "_roi_align_backward",
                lambda: emulated._roi_align_backward(grad, rois, *shape_args, 2, True, deterministic, [2], [32]),
            ),
            (
                "_roi_pool_backward",
                lambda: emulated._roi_pool_backward(grad, rois, argmax, *shape_args, deterministic, [2], [32]),
            ),
        ]
    for op, call in calls:
        message = (
            rf"device-side assert triggered: {op}: rois\[k, 0\] \(batch index\) must be an integer in \[0, N\) "
            rf"and rois\[k, 1:5\] \(box\) finite for every k"
        )
        with pytest.raises(RuntimeError, match=message):
            call()


def _pyramid_case(dtype, num_rois=12, seed=0):
    """Three maps of a pyramid (one of them empty for "no pixels"), boxes on all of them, each box's map."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(2, 3, h, w, generator=g).to(dtype) for h, w in ((12, 14), (6, 7), (3, 4))]
    rois = random_rois(num_rois, 2, 24, 28, generator=g).to(dtype)
    levels = torch.randint(0, 3, (num_rois,), generator=g)
    return maps, rois, levels


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("num_rois", [12, 0])
def test_multi_scale_roi_align_kernels(emulated, launch, dtype, num_rois):
    grid, block = launch
    maps, rois, levels = _pyramid_case(dtype, num_rois)
    params = ([0.5, 0.25, 0.125], 3, 2, 2, True)
    expected = torch.ops.segops.multi_scale_roi_align(maps, rois, levels, *params)
    assert torch.equal(emulated.multi_scale_roi_align(maps, rois, levels, *params, grid, block), expected)

    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    shape_args = ([0.5, 0.25, 0.125], 3, 2, 2, 3, [m.shape[2] for m in maps], [m.shape[3] for m in maps], 2, True)
    expected_grads = torch.ops.segops._multi_scale_roi_align_backward(grad, rois, levels, *shape_args)
    atomic = emulated._multi_scale_roi_align_backward(grad, rois, levels, *shape_args, False, grid, block)
    gathered = emulated._multi_scale_roi_align_backward(grad, rois, levels, *shape_args, True, grid, block)
    for actual, deterministic, expected in zip(atomic, gathered, expected_grads, strict=True):
        torch.testing.assert_close(actual, expected, **BACKWARD_TOLERANCE[dtype])
        assert torch.equal(deterministic, expected)


@pytest.mark.parametrize("launch", LAUNCHES[1:4], ids=str)
def test_roi_align_kernels_read_channels_last_maps_in_place(emulated, launch):
    """channels_last maps (each FPN level of multi_scale_roi_align, roi_align's and roi_pool's one) are read where
    they lie, walked channel-fastest: outputs equal the NCHW ones bitwise, and the call allocates its output and
    nothing of the maps' size (a copy to NCHW would add every map's bytes)."""
    grid, block = launch
    maps, rois, levels = _pyramid_case(torch.float32, 40)
    params = ([0.5, 0.25, 0.125], 3, 2, 2, True)
    expected = torch.ops.segops.multi_scale_roi_align(maps, rois, levels, *params)
    nhwc = [m.contiguous(memory_format=torch.channels_last) for m in maps]
    actual, allocated = _peak_cpu_allocation(
        lambda: emulated.multi_scale_roi_align(nhwc, rois, levels, *params, grid, block)
    )
    assert torch.equal(actual, expected)
    assert allocated < expected.numel() * expected.element_size() + sum(m.numel() * m.element_size() for m in maps)
    single = torch.ops.segops.roi_align(maps[0], rois, 0.5, 3, 2, 2, True)
    assert torch.equal(emulated.roi_align(nhwc[0], rois, 0.5, 3, 2, 2, True, grid, block), single)
    # RoIPool too: values and argmaxes (plane indices, whatever the layout).
    pooled, argmax = torch.ops.segops.roi_pool(maps[0], rois, 0.5, 3, 2)
    (actual_pooled, actual_argmax), allocated = _peak_cpu_allocation(
        lambda: emulated.roi_pool(nhwc[0], rois, 0.5, 3, 2, grid, block)
    )
    assert torch.equal(actual_pooled, pooled) and torch.equal(actual_argmax, argmax)
    assert allocated < 2 * pooled.numel() * 4 + maps[0].numel() * 4


@pytest.mark.parametrize("bad", ["level 3", "level -1", "batch index"])
def test_multi_scale_kernels_validate_rows_and_levels(emulated, bad):
    maps, rois, levels = _pyramid_case(torch.float32)
    if bad == "batch index":
        rois[4, 0] = 2.0
        message = (
            r"rois\[k, 0\] \(batch index\) must be an integer in \[0, N\) and rois\[k, 1:5\] \(box\) "
            r"finite for every k"
        )
    else:
        levels[4] = 3 if bad == "level 3" else -1
        message = r"levels\[k\] must be in \[0, L\) \(a feature map\) for every k"
    params = ([0.5, 0.25, 0.125], 3, 2, 2, True)
    with pytest.raises(RuntimeError, match="device-side assert triggered: multi_scale_roi_align: " + message):
        emulated.multi_scale_roi_align(maps, rois, levels, *params, [2], [32])
    grad = torch.ones(len(rois), 3, 3, 2)
    shape_args = ([0.5, 0.25, 0.125], 3, 2, 2, 3, [12, 6, 3], [14, 7, 4], 2, True)
    for deterministic in (False, True):
        with pytest.raises(
            RuntimeError, match="device-side assert triggered: _multi_scale_roi_align_backward: " + message
        ):
            emulated._multi_scale_roi_align_backward(grad, rois, levels, *shape_args, deterministic, [2], [32])


def test_emulated_kernels_ignore_forged_argmax(emulated):
    # Only an argmax inside its bin's window carries a gradient, as on the CPU: out of range or elsewhere on the
    # map (where a gather over windows would never look), it is ignored.
    input = torch.randn(1, 2, 8, 8)
    rois = torch.tensor([[0.0, 0.0, 0.0, 6.0, 6.0]])  # bins of 2x2 pixels at spatial_scale 0.5
    output, argmax = emulated.roi_pool(input, rois, 0.5, 2, 2, [2], [32])
    forged = torch.full_like(argmax, 10**6)
    forged[0, 0, 0, 0] = 9  # pixel (1, 1): in bin (0, 0)'s window
    forged[0, 0, 0, 1] = 8  # pixel (1, 0): in range, but outside bin (0, 1)'s window
    forged[0, 1, 1, 1] = 63  # pixel (7, 7): outside the box
    expected = torch.zeros(1, 2, 8, 8)
    expected[0, 0, 1, 1] = 1
    cpu = torch.ops.segops._roi_pool_backward(torch.ones_like(output), rois, forged, 0.5, 2, 2, *input.shape)
    assert torch.equal(cpu, expected)
    for deterministic in (False, True):
        assert torch.equal(
            emulated._roi_pool_backward(
                torch.ones_like(output), rois, forged, 0.5, 2, 2, *input.shape, deterministic, [2], [32]
            ),
            expected,
        )
    with pytest.raises(RuntimeError, match=r"segops_emulation: grid dimensions must be in \[1, 65535\], got \[0\]"):
        emulated.roi_align(input, rois, 0.5, 3, 4, 2, True, [0], [32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deterministic_roi_backwards_span_channel_blocks_and_equal_the_cpu_bitwise(emulated, dtype):
    # 37 channels: three blocks of the gather, the last one partial; 40 overlapping boxes of adaptive and dense
    # fixed sampling on two maps of a pyramid. Every launch shape must give the CPU backward's bits.
    g = torch.Generator().manual_seed(5)
    maps = [torch.randn(2, 37, 11, 13, generator=g).to(dtype), torch.randn(2, 37, 6, 7, generator=g).to(dtype)]
    rois = random_rois(40, 2, 22, 26, generator=g).to(accumulation_dtype(dtype))
    levels = torch.randint(0, 2, (40,), generator=g)
    grad = torch.randn(40, 37, 3, 4, generator=g).to(dtype)
    for sampling_ratio in (-1, 5):
        single = (grad, rois, 0.5, 3, 4, 2, 37, 11, 13, sampling_ratio, False)
        pyramid = (grad, rois, levels, [0.5, 0.25], 3, 4, 2, 37, [11, 6], [13, 7], sampling_ratio, True)
        expected = torch.ops.segops._roi_align_backward(*single)
        expected_levels = torch.ops.segops._multi_scale_roi_align_backward(*pyramid)
        for grid, block in LAUNCHES:
            assert torch.equal(emulated._roi_align_backward(*single, True, grid, block), expected)
            actual_levels = emulated._multi_scale_roi_align_backward(*pyramid, True, grid, block)
            assert all(torch.equal(a, e) for a, e in zip(actual_levels, expected_levels, strict=True))
    _, argmax = torch.ops.segops.roi_pool(maps[0], rois, 0.5, 3, 4)
    expected = torch.ops.segops._roi_pool_backward(grad, rois, argmax, 0.5, 3, 4, 2, 37, 11, 13)
    for grid, block in LAUNCHES:
        assert torch.equal(
            emulated._roi_pool_backward(grad, rois, argmax, 0.5, 3, 4, 2, 37, 11, 13, True, grid, block), expected
        )


def _relative_error(actual, expected):
    return ((actual.double() - expected).abs().max() / expected.abs().max()).item()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_precision_backward_accumulates_in_float(emulated, dtype):
    # 300 overlapping boxes of 40-60 px on a 64x64 map: thousands of contributions per pixel. Accumulating them in
    # the gradient's own dtype (as half atomics would) gave errors 100x the CPU path's; the GPU kernels must
    # accumulate in float too, and stay within twice the CPU path's error of the float64 result.
    g = torch.Generator().manual_seed(0)
    input = torch.randn(1, 2, 64, 64, generator=g).to(dtype)
    top_left = torch.rand(300, 2, generator=g) * 20
    size = 40 + torch.rand(300, 2, generator=g) * 20
    rois = torch.cat([torch.zeros(300, 1), top_left, top_left + size], dim=1)
    grad = torch.rand(300, 2, 7, 7, generator=g).to(dtype)
    shape_args = (1.0, 7, 7, *input.shape)

    exact = torch.ops.segops._roi_align_backward(grad.double(), rois.double(), *shape_args, 2, True)
    cpu = torch.ops.segops._roi_align_backward(grad, rois, *shape_args, 2, True)
    gpu = emulated._roi_align_backward(grad, rois, *shape_args, 2, True, False, [8], [128])
    assert gpu.dtype == dtype
    assert _relative_error(gpu, exact) <= 2 * _relative_error(cpu, exact)

    output, argmax = torch.ops.segops.roi_pool(input, rois, 1.0, 7, 7)
    exact = torch.ops.segops._roi_pool_backward(grad.double(), rois.double(), argmax, *shape_args)
    cpu = torch.ops.segops._roi_pool_backward(grad, rois, argmax, *shape_args)
    gpu = emulated._roi_pool_backward(grad, rois, argmax, *shape_args, False, [8], [128])
    assert _relative_error(gpu, exact) <= 2 * _relative_error(cpu, exact)


def _flow_case(dtype, scale, *, seed=0, channels=3, height=7, width=9, out_h=6, out_w=8, max_flow=4.0):
    g = torch.Generator().manual_seed(seed)
    feature = torch.randn(2, channels, height, width, generator=g).to(dtype)
    flow = (torch.rand(2, 2, out_h, out_w, generator=g) * 2 - 1) * max_flow  # float32 flow for every dtype
    if dtype == torch.float64:
        flow = flow.double()
    flow[0, 0, 0, :3] = torch.tensor([0.0, -1.0, float(width)])  # on a pixel, on and past the borders
    flow[1, 1, 2, 2] = float("nan")
    scale_channels = {"none": 0, "channel": channels, "shared": 1}[scale]
    scale_tensor = torch.rand(2, scale_channels, out_h, out_w, generator=g).to(dtype) + 0.5 if scale_channels else None
    grad = torch.randn(2, channels, out_h, out_w, generator=g).to(dtype)
    return feature, flow, scale_tensor, grad


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("scale", ["none", "channel", "shared"])
def test_flow_warp_kernels(index_width, emulated, launch, dtype, scale):
    grid, block = launch
    feature, flow, scale_tensor, grad = _flow_case(dtype, scale)
    for layout in ("contiguous", "channels_last"):
        x = feature.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else feature
        # The forward and the flow/scale gradients compute exactly as the CPU path does.
        assert torch.equal(
            emulated.flow_warp(x, flow, scale_tensor, grid, block),
            torch.ops.segops.flow_warp(feature, flow, scale_tensor),
        )
        expected = torch.ops.segops._flow_warp_backward(grad, feature, flow, scale_tensor)
        for deterministic in (False, True):
            actual = emulated._flow_warp_backward(grad, x, flow, scale_tensor, deterministic, grid, block)
            torch.testing.assert_close(actual[0], expected[0], **BACKWARD_TOLERANCE[dtype])
            assert torch.equal(actual[1], expected[1]) and torch.equal(actual[2], expected[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_flow_warp_deterministic_feature_gradient_is_bitwise_equal_across_grids(index_width, emulated, dtype):
    # Large flows pile many samples onto few pixels. The gather path sums them in a fixed order whatever the launch,
    # so every grid shape (each runs the work items in another order) gives the same bits.
    feature, flow, scale_tensor, grad = _flow_case(
        dtype, "shared", channels=4, height=5, width=6, out_h=12, out_w=11, max_flow=9.0
    )
    results = [
        emulated._flow_warp_backward(grad, feature, flow, scale_tensor, True, grid, block)[0]
        for grid, block in LAUNCHES
    ]
    assert all(torch.equal(result, results[0]) for result in results[1:])


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_flow_warp_half_precision_feature_gradient_accumulates_in_float(emulated, dtype):
    # A flow that gathers a 64x64 output onto a 6x6 corner: each feature pixel receives ~100 contributions.
    g = torch.Generator().manual_seed(1)
    feature = torch.randn(1, 2, 64, 64, generator=g).to(dtype)
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    flow = torch.stack([xs * (5 / 64) - xs, ys * (5 / 64) - ys]).unsqueeze(0) + 0.01 * torch.rand(
        1, 2, 64, 64, generator=g
    )
    grad = torch.rand(1, 2, 64, 64, generator=g).to(dtype)
    exact = torch.ops.segops._flow_warp_backward(grad.double(), feature.double(), flow.double(), None)[0]
    cpu = torch.ops.segops._flow_warp_backward(grad, feature, flow, None)[0]
    for deterministic in (False, True):
        gpu = emulated._flow_warp_backward(grad, feature, flow, None, deterministic, [8], [128])[0]
        assert gpu.dtype == dtype
        assert _relative_error(gpu, exact) <= 2 * _relative_error(cpu, exact)


def _unpool_case(dtype, *, seed=0, shape=(2, 3, 9, 11), kernel=3, stride=2, padding=1, channels_last=False):
    """Values and indices of an overlapping max pool (duplicated indices) of a random map, distinct values."""
    g = torch.Generator().manual_seed(seed)
    _, indices = torch.nn.functional.max_pool2d(
        torch.randn(shape, generator=g), kernel, stride, padding, return_indices=True
    )
    values = torch.randn(indices.shape, generator=g).to(dtype)
    if channels_last:
        values, indices = (t.contiguous(memory_format=torch.channels_last) for t in (values, indices))
    return values, indices, shape[2], shape[3]


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
def test_max_unpool_kernels_equal_the_cpu_path_bitwise(index_width, emulated, launch, dtype, channels_last):
    # Duplicated indices: a racy scatter would pick other winners on other grids.
    grid, block = launch
    values, indices, out_h, out_w = _unpool_case(dtype, channels_last=channels_last)
    expected = torch.ops.segops.max_unpool2d(values, indices, out_h, out_w)
    actual = emulated.max_unpool2d(values, indices, out_h, out_w, grid, block)
    assert torch.equal(actual, expected) and actual.stride() == expected.stride()
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected_grad = torch.ops.segops._max_unpool2d_backward(grad, indices)
    actual_grad = emulated._max_unpool2d_backward(grad, indices, grid, block)
    assert torch.equal(actual_grad, expected_grad) and actual_grad.stride() == expected_grad.stride()


@pytest.mark.parametrize("shape", [(0, 3, 4, 4), (2, 0, 4, 4), (2, 3, 0, 4), (1, 1, 1, 1)], ids=str)
def test_max_unpool_kernels_on_empty_and_single_pixel_maps(emulated, shape):
    values, indices = torch.randn(shape), torch.zeros(shape, dtype=torch.int64)
    out_h, out_w = shape[2:]
    for grid, block in LAUNCHES[:3]:
        expected = torch.ops.segops.max_unpool2d(values, indices, out_h + 1, out_w + 1)
        assert torch.equal(emulated.max_unpool2d(values, indices, out_h + 1, out_w + 1, grid, block), expected)
        grad = torch.ones(expected.shape)
        assert torch.equal(
            emulated._max_unpool2d_backward(grad, indices, grid, block),
            torch.ops.segops._max_unpool2d_backward(grad, indices),
        )


@pytest.mark.parametrize("bad", [16, -1, 2**33], ids=str)
def test_max_unpool_kernels_assert_on_an_index_out_of_range_and_never_write_through_it(index_width, emulated, bad):
    values = torch.randn(2, 3, 2, 2)
    indices = torch.zeros(2, 3, 2, 2, dtype=torch.int64)
    indices[1, 2, 1, 0] = bad
    message = (
        rf"device-side assert triggered: max_unpool2d: an index is outside \[0, Ho \* Wo\) of its output "
        rf"plane \(printed: max_unpool2d: indices\[1, 2, 1, 0\] = {bad} is outside \[0, Ho \* Wo\) = \[0, 16\)"
    )
    for grid, block in LAUNCHES:
        with pytest.raises(RuntimeError, match=message):
            emulated.max_unpool2d(values, indices, 4, 4, grid, block)
        with pytest.raises(
            RuntimeError, match=message.replace(r"printed: max_unpool2d", r"printed: _max_unpool2d_backward")
        ):
            emulated._max_unpool2d_backward(torch.randn(2, 3, 4, 4), indices, grid, block)


# (input [N, C, H, W], C_out, kernel, stride, padding, dilation, groups): the GEMM path (plain, grouped with asymmetric
# tuples) and the depthwise kernels (stride 1 and 2).
CONV_CASES = {
    "dense": ((2, 3, 7, 9), 4, (3, 3), (1, 1), (2, 2), (2, 2), 1),
    "grouped": ((1, 4, 8, 7), 6, (3, 2), (2, 1), (1, 3), (2, 3), 2),
    "depthwise": ((2, 3, 9, 8), 3, (3, 3), (1, 1), (3, 3), (3, 3), 3),
    "depthwise strided": ((1, 2, 9, 10), 2, (3, 5), (2, 3), (2, 0), (1, 2), 2),
}


def _conv_case(dtype, name, seed=0):
    shape, out_channels, kernel, stride, padding, dilation, groups = CONV_CASES[name]
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(shape, generator=g).to(dtype)
    weight = torch.randn(out_channels, shape[1] // groups, *kernel, generator=g).to(dtype)
    bias = torch.randn(out_channels, generator=g).to(dtype)
    return input, weight, bias, (list(stride), list(padding), list(dilation), groups)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", CONV_CASES)
def test_dilated_conv_kernels_match_the_cpu_path_and_are_bitwise_equal_across_grids(index_width, emulated, dtype, name):
    """The backward in deterministic mode: segops' kernels in both cases (im2col, GEMMs, col2im in the general one).
    The general case's forward is ATen's convolution on the GPU (cuDNN there, oneDNN in the emulation)."""
    input, weight, bias, args = _conv_case(dtype, name)
    expected = torch.ops.segops.dilated_conv2d(input, weight, bias, *args)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected_grads = torch.ops.segops._dilated_conv2d_backward(grad, input, weight, *args, [True, True, True])
    runs = []
    for grid, block in LAUNCHES:
        out = emulated.dilated_conv2d(input, weight, bias, *args, grid, block)
        grads = emulated._dilated_conv2d_backward(grad, input, weight, *args, [True] * 3, True, grid, block)
        runs.append((out, *grads))
    for run in runs[1:]:  # no atomics: the grid changes nothing
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))
    # Depthwise forward sums run in the CPU path's order; the weight and bias gradients sum in another fixed order.
    depthwise = name.startswith("depthwise")
    assert torch.equal(runs[0][0], expected if depthwise else F.conv2d(input, weight, bias, *args))
    for actual, reference in zip(runs[0][1:], expected_grads):
        torch.testing.assert_close(actual, reference, **BACKWARD_TOLERANCE[dtype])


def test_dilated_conv_kernels_with_padding_and_stride_past_31_bits(emulated):
    """Small tensors, but padding and stride near 2^31: the kernels must not take 32-bit index math (their
    coordinate arithmetic would wrap and drop taps), whatever the tensors' sizes allow."""
    big = 2**31 - 1
    input = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    weight = torch.randn(2, 1, 1, 1)
    args = ([big + 1, 1], [big, 0], [1, 1], 2)
    expected = torch.ops.segops.dilated_conv2d(input, weight, None, *args)
    assert torch.equal(emulated.dilated_conv2d(input, weight, None, *args, (2,), (32,)), expected)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1))
    expected_grads = torch.ops.segops._dilated_conv2d_backward(grad, input, weight, *args, [True, True, False])
    actual_grads = emulated._dilated_conv2d_backward(grad, input, weight, *args, [True, True, False], True, (2,), (32,))
    for actual, reference in zip(actual_grads[:2], expected_grads[:2]):
        torch.testing.assert_close(actual, reference)
    assert expected_grads[0].abs().sum() > 0  # taps that read the input exist: a wrapped index would drop them


@pytest.mark.parametrize("name", ["dense", "grouped"])
def test_dilated_conv_general_backward_is_atens_outside_deterministic_mode(emulated, name):
    input, weight, bias, args = _conv_case(torch.float32, name)
    grad = torch.randn(F.conv2d(input, weight, bias, *args).shape, generator=torch.Generator().manual_seed(1))
    stride, padding, dilation, groups = args
    expected = torch.ops.aten.convolution_backward(
        grad, input, weight, [weight.shape[0]], stride, padding, dilation, False, [0, 0], groups, [True] * 3
    )
    actual = emulated._dilated_conv2d_backward(grad, input, weight, *args, [True] * 3, False, (3,), (32,))
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


def test_dilated_conv_kernels_read_channels_last_and_strided_inputs(index_width, emulated):
    from op_testing import layouts

    for layout in ("channels_last", "strided"):
        for name in ("dense", "depthwise"):
            input, weight, bias, args = _conv_case(torch.float32, name)
            strided = layouts(input)[layout]
            expected = torch.ops.segops.dilated_conv2d(input, weight, bias, *args)
            actual = emulated.dilated_conv2d(strided, weight, bias, *args, (3,), (32,))
            # In the input's memory format, as F.conv2d's (the channel-fastest walk writes channels_last in place).
            layout_of_conv2d = F.conv2d(strided, weight, bias, *args).stride()
            assert actual.stride() == layout_of_conv2d
            if name == "depthwise":
                assert torch.equal(actual, expected)
            else:  # ATen's convolution (oneDNN here) reads channels_last in its own order
                torch.testing.assert_close(actual, expected)
            grad = torch.randn(expected.shape)
            expected_grads = torch.ops.segops._dilated_conv2d_backward(grad, input, weight, *args, [True] * 3)
            actual_grads = emulated._dilated_conv2d_backward(
                grad, strided, weight, *args, [True] * 3, True, (3,), (32,)
            )
            for a, e in zip(actual_grads, expected_grads):
                torch.testing.assert_close(a, e)
            assert actual_grads[0].stride() == strided.contiguous(memory_format=suggest_memory_format(strided)).stride()


# Permutohedral lattice: points with many shared and many distinct vertices (the hash table's collisions, the
# numbering's atomics), d = 2 and 5 as the dense CRF's kernels, 1 and 3 images; d = 10 past the embedding kernels
# compiled for each d.
LATTICE_CASES = {
    "d2": (1, 300, 2, 6.0),
    "d5 batch": (3, 200, 5, 10.0),
    "d3 dense": (2, 400, 3, 2.0),
    "d10 (the generic embedding kernel)": (1, 150, 10, 2.0),
    "d5 halves": (1, 203, 5, -3.0),  # negative spread: multiples of 1/2 around 0, rounding ties and -0.0 in the math
}


def _lattice_features(name, dtype, seed=0):
    batch, points, dims, spread = LATTICE_CASES[name]
    uniform = torch.rand(batch, points, dims, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if spread < 0:
        return torch.round(uniform * 4 * spread) / 2 - spread
    return uniform * spread


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", LATTICE_CASES, ids=str)
def test_lattice_kernels_equal_the_cpu_path_bitwise(emulated, launch, dtype, case):
    """The GPU build (compare-and-swap hash table, atomic-min owners, a cumulative sum) numbers the vertices as
    the CPU does, whatever the schedule; its vertex rows are the bound N*(d+1), the CPU's the vertex count."""
    grid, block = launch
    features = _lattice_features(case, dtype)
    expected = torch.ops.segops.permutohedral_lattice(features)
    actual = emulated.permutohedral_lattice(features, grid, block)
    rows = expected[2].shape[1]
    vertex_ids, weights, neighbours, offsets, entries, num_vertices = actual
    assert neighbours.shape[1] == features.shape[1] * (features.shape[2] + 1)
    assert torch.equal(vertex_ids, expected[0]) and torch.equal(weights, expected[1])
    assert torch.equal(neighbours[:, :rows], expected[2]) and (neighbours[:, rows:] == -1).all()
    assert torch.equal(offsets[:, : rows + 1], expected[3])
    assert torch.equal(entries, expected[4]) and torch.equal(num_vertices, expected[5])
    g = torch.Generator().manual_seed(1)
    # Channels: a CRF's labels, 21 in vectors, 1-5 below a float vector's width (the CPU's narrow sums).
    for channels in (21, 5, 3, 2, 1):
        values = torch.rand(features.shape[0], features.shape[1], channels, generator=g, dtype=dtype)
        for adjoint in (False, True):
            reference = torch.ops.segops.permutohedral_filter(values, *expected, adjoint)
            # Either lattice, the GPU's (bound rows) or the CPU's, filters bitwise as the CPU path does.
            assert torch.equal(emulated.permutohedral_filter(values, *actual, adjoint, grid, block), reference)
            assert torch.equal(emulated.permutohedral_filter(values, *expected, adjoint, grid, block), reference)


@pytest.mark.parametrize("case", LATTICE_CASES, ids=str)
def test_lattice_filter_kernels_touch_no_row_past_the_vertex_count(emulated, case):
    """The GPU lattice's vertex rows are the bound N*(d+1), most of them dead: the splat and blur kernels must neither
    store to nor read them. Buffers filled with NaN stay NaN there, and the output is the CPU path's, bitwise."""
    features = _lattice_features(case, torch.float32)
    lattice = emulated.permutohedral_lattice(features, (3,), (32,))
    num_vertices = lattice[5]
    values = torch.rand(features.shape[0], features.shape[1], 4, generator=torch.Generator().manual_seed(2))
    expected = torch.ops.segops.permutohedral_filter(values, *torch.ops.segops.permutohedral_lattice(features), False)
    out, *buffers = emulated.permutohedral_filter_buffers(values, *lattice, False, float("nan"), (3,), (32,))
    assert torch.equal(out, expected)
    for image, live in enumerate(num_vertices.tolist()):
        assert live < buffers[0].shape[1]  # the case has dead rows to test
        for buffer in buffers:
            assert torch.isnan(buffer[image, live:]).all()
            assert not torch.isnan(buffer[image, :live]).any()


def _peak_cpu_allocation(fn):
    """fn's result and the high-water mark of what it allocates on the CPU beyond what was allocated before, from
    the profiler's allocation events (each carries the allocator's running total)."""
    from torch._C._profiler import _EventType

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as profile:
        result = fn()

    def walk(nodes):
        for node in nodes:
            yield node
            yield from walk(node.children)

    tree = profile.profiler.kineto_results.experimental_event_tree()
    nodes = sorted((node for node in walk(tree) if node.tag == _EventType.Allocation), key=lambda n: n.start_time_ns)
    allocations = [node.extra_fields for node in nodes if str(node.extra_fields.device) == "cpu"]
    assert allocations, "the profiler recorded no allocation"
    before = allocations[0].total_allocated - allocations[0].alloc_size
    return result, max(e.total_allocated for e in allocations) - before


def test_dense_crf_cuda_path_memory_for_a_cityscapes_batch(emulated):
    """The GPU lattice's vertex rows are the bound N*(d+1) (so that nothing waits for the vertex count): a batch of
    8 Cityscapes frames, [8, 19, 1024, 2048], filtered whole would need over 20 GB. dense_crf filters the images in
    turn. Its peak extra memory (beyond the output) on the CUDA path is measured here from that path's own
    allocations: the CUDA launchers' host code and kernels, emulated, run on 8 images of 32x32 in place of the CPU
    ops, with every allocation recorded. Each of them is linear in the pixels (the hash table too: its capacity, the
    power of two >= 2 N (d+1), is 16 N and 8 N at 32x32 as at 1024x2048) but the sort's scratch, which cub's radix
    sort on the GPU sizes at twice its keys and values (int32, int64), added here. The bound is 8 GB."""
    batch, labels, side = 8, 19, 32
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(batch, labels, side, side, generator=g) * 3
    image = (torch.rand(batch, 3, side, side, generator=g) * 255).to(torch.uint8)
    expected = segops.dense_crf(unary, image)
    grid, block = (64,), (128,)
    library = torch.library.Library("segops", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Overriding a previously registered kernel")
            library.impl("permutohedral_lattice", lambda f: emulated.permutohedral_lattice(f, grid, block), "CPU")
            library.impl(
                "permutohedral_filter",
                lambda *args, adjoint=False: emulated.permutohedral_filter(*(args + (adjoint,))[:8], grid, block),
                "CPU",
            )
            library.impl("dense_crf_softmax", lambda u, m, w: emulated.dense_crf_softmax(u, m, w, grid, block), "CPU")
        with torch.no_grad():
            actual, peak = _peak_cpu_allocation(lambda: segops.dense_crf(unary, image))
    finally:
        library._destroy()
    assert torch.equal(actual, expected)  # the GPU kernels' dense CRF is the CPU's, bitwise
    pixels, scale = 1024 * 2048, 1024 * 2048 // (side * side)
    sort_scratch = 2 * (4 + 8) * pixels * (5 + 1)  # the appearance lattice's N (d+1) entries
    extra = (peak - unary.numel() * unary.element_size()) * scale + sort_scratch
    one_filter = 2 * pixels * (5 + 1) * labels * 4  # two vertex buffers of one image's appearance filter
    assert one_filter < extra <= 8 * 2**30, f"{extra / 2**30:.2f} GiB"


def test_lattice_kernels_on_empty_inputs(emulated):
    for shape in [(2, 0, 3), (0, 5, 2)]:
        features = torch.zeros(shape)
        expected = torch.ops.segops.permutohedral_lattice(features)
        actual = emulated.permutohedral_lattice(features, (2,), (32,))
        assert torch.equal(actual[0], expected[0]) and torch.equal(actual[5], expected[5])
        values = torch.zeros(shape[0], shape[1], 4)
        assert emulated.permutohedral_filter(values, *actual, False, (2,), (32,)).shape == values.shape


def test_lattice_kernels_assert_on_bad_features(emulated):
    features = torch.rand(2, 10, 3)
    features[1, 4, 2] = float("nan")
    with pytest.raises(
        RuntimeError,
        match=r"device-side assert triggered: permutohedral_lattice: features must be "
        r"finite .*\(printed: .*point 14 \(flat over \[B, N\]\)",
    ):
        emulated.permutohedral_lattice(features, (3,), (32,))


@pytest.mark.parametrize(
    "field, index, value, message",
    [
        ("vertex_ids", (1, 3, 2), 10**6, "a vertex id is outside"),
        ("neighbours", (0, 1, 2, 0), 10**6, "a neighbour is outside"),
        ("splat_entries", (1, 0), 10**6, "a splat entry is outside"),
        ("splat_offsets", (0, 1), -5, "a splat list is outside splat_entries"),
        ("num_vertices", (0,), 10**6, r"num_vertices must be in \[0, M\]"),
    ],
)
def test_lattice_filter_kernels_assert_on_a_forged_lattice(emulated, field, index, value, message):
    features = torch.rand(2, 20, 3) * 3
    lattice = list(emulated.permutohedral_lattice(features, (2,), (64,)))
    position = ["vertex_ids", "weights", "neighbours", "splat_offsets", "splat_entries", "num_vertices"].index(field)
    lattice[position] = lattice[position].clone()
    lattice[position][index] = value
    for grid, block in LAUNCHES[:3]:
        with pytest.raises(RuntimeError, match="device-side assert triggered: permutohedral_filter: " + message):
            emulated.permutohedral_filter(torch.rand(2, 20, 2), *lattice, False, grid, block)


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("labels", [1, 3, 8, 21], ids="{} labels".format)
def test_crf_softmax_kernel_equals_the_cpu_path_bitwise(emulated, launch, dtype, labels):
    # 100 rows: the CPU's float path takes 96 of them 8 at a time transposed, the last 4 one by one.
    grid, block = launch
    g = torch.Generator().manual_seed(0)
    unary = torch.randn(2, 50, labels, generator=g, dtype=dtype) * 20
    for kernels in (0, 2):
        messages = [torch.randn(2, 50, labels, generator=g, dtype=dtype) for _ in range(kernels)]
        weights = torch.rand(kernels, generator=g, dtype=dtype)
        expected = torch.ops.segops.dense_crf_softmax(unary, messages, weights)
        assert torch.equal(emulated.dense_crf_softmax(unary, messages, weights, grid, block), expected)


@pytest.mark.parametrize("finite", [True, False], ids=["finite-weights", "an-infinite-weight"])
def test_depthwise_float_forward_rows_equal_the_kernel_bit_for_bit(emulated, finite):
    """The CPU's float forward sums blocks of 32 and 8 outputs in registers over zero-padded copies of the input rows,
    where a tap in the padding adds w * 0 to the sum. That changes no bit for finite weights; an infinite one would turn
    it into NaN, so such planes take the per-tap loop, which skips the padding as the kernel does. Rows of 43 to 77
    outputs cross both block sizes and end mid-block; a vertical stride of 2 and a kernel taller than the input
    (dilation 4: the ring of row copies holds the input's 6 rows) move the rows' ring. Padding and dilation of
    600,000 would need copies past the 4 MB a thread may take: the per-tap loop runs, with the same result."""
    g = torch.Generator().manual_seed(3)
    input = torch.randn(2, 3, 6, 45, generator=g)
    weight = torch.randn(3, 1, 3, 3, generator=g)
    bias = torch.randn(3, generator=g)
    if not finite:
        weight[1, 0, 0, 0] = float("inf")
    for (padding, dilation), stride in itertools.product(
        ((0, 1), (2, 2), (5, 3), (4, 4), (17, 1), (600_000, 600_000)), (1, 2)
    ):
        args = ([stride, 1], [padding, padding], [dilation, dilation], 3)
        expected = emulated.dilated_conv2d(input, weight, bias, *args, (2,), (32,))
        actual = torch.ops.segops.dilated_conv2d(input, weight, bias, *args)
        torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)
        if padding > 0:
            # Output (0, 0) reads the infinite tap in the padding: skipped, not inf * 0.
            assert torch.isfinite(actual[:, 1, 0, 0]).all()

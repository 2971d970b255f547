"""The CUDA kernels themselves, run on the CPU by emulated launches (csrc/common/emulation.h), against the CPU
path: this covers the kernels' index arithmetic, bounds tests and grid-stride loops, not only the shared math.
Forward kernels compute each output exactly as the CPU path does, so they must agree bitwise; backward kernels
scatter in another order (and, for half types, accumulate in the dtype, as the GPU's atomics do)."""

import pytest
import torch

from conftest import emulation_module
from roi_testing import random_rois

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
    actual_grad = emulated._roi_align_backward(grad, rois, *shape_args, sampling_ratio, aligned, grid, block)
    torch.testing.assert_close(actual_grad, expected_grad, **BACKWARD_TOLERANCE[dtype])


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
    actual_grad = emulated._roi_pool_backward(grad, rois, expected_argmax, *shape_args, grid, block)
    torch.testing.assert_close(actual_grad, expected_grad, **BACKWARD_TOLERANCE[dtype])


@pytest.mark.parametrize("launch", [((1,), (5,)), ((4,), (64,))], ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_kernels_on_degenerate_boxes(emulated, launch, dtype):
    # Zero-area, reversed, outside, enormous and far-away boxes, with adaptive and dense fixed sampling.
    grid, block = launch
    input, _ = make_case(dtype)
    rois = torch.tensor(
        [[0, 3, 3, 3, 3], [1, 100, 100, 120, 130], [0, -50, -50, -20, -30], [1, -1e6, -1e6, 1e6, 1e6],
         [0, 1e30, 1e30, 3e30, 3e30], [1, 2, 2, 1, 1], [0, 17.0, 0.0, 17.0 + 1e-6, 13.0]],
        dtype=dtype,
    )
    for sampling_ratio in (-1, 64):
        params = (0.5, 3, 2, sampling_ratio, True)
        expected = torch.ops.segops.roi_align(input, rois, *params)
        assert torch.equal(emulated.roi_align(input, rois, *params, grid, block), expected)
        grad = torch.ones_like(expected)
        shape_args = (0.5, 3, 2, *input.shape, sampling_ratio, True)
        torch.testing.assert_close(emulated._roi_align_backward(grad, rois, *shape_args, grid, block),
                                   torch.ops.segops._roi_align_backward(grad, rois, *shape_args))
    expected, argmax = torch.ops.segops.roi_pool(input, rois, 0.5, 3, 2)
    actual, actual_argmax = emulated.roi_pool(input, rois, 0.5, 3, 2, grid, block)
    assert torch.equal(actual, expected) and torch.equal(actual_argmax, argmax)


def test_emulated_kernels_reject_bad_rois_and_forged_argmax(emulated):
    input, rois = make_case(torch.float32)
    bad = rois.clone()
    bad[2, 0] = 5
    with pytest.raises(RuntimeError, match=r"roi_align: rois\[2, 0\] \(batch index\) must be an integer in \[0, 2\), got 5"):
        emulated.roi_align(input, bad, 0.5, 3, 4, 2, True, [2], [32])
    with pytest.raises(RuntimeError, match=r"roi_pool: rois\[2, 0\] \(batch index\) must be an integer"):
        emulated.roi_pool(input, bad, 0.5, 3, 4, [2], [32])
    output, argmax = emulated.roi_pool(input, rois, 0.5, 3, 4, [2], [32])
    forged = torch.full_like(argmax, 10**6)
    forged[0, 0, 0, 0] = 3
    grad_input = emulated._roi_pool_backward(torch.ones_like(output), rois, forged, 0.5, 3, 4, *input.shape, [2], [32])
    assert grad_input.sum() == 1
    with pytest.raises(RuntimeError, match=r"segops_emulation: grid dimensions must be in \[1, 65535\], got \[0\]"):
        emulated.roi_align(input, rois, 0.5, 3, 4, 2, True, [0], [32])

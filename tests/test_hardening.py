"""Hardening: every op called from several Python threads at once gives the serial results bit for bit; 1000
forward+backward calls of each op do not grow resident memory; offsets past 2^31 elements (expanded tensors that
do not allocate them) index correctly."""

import concurrent.futures
import os

import pytest
import torch

import segops
from segops.reference import flow_warp as reference_flow_warp


def _generator(seed):
    return torch.Generator().manual_seed(seed)


def _roi_inputs(seed, channels=8, size=32):
    g = _generator(seed)
    corners = torch.rand(16, 2, 2, generator=g) * 4 * size
    rois = torch.cat(
        [torch.randint(0, 2, (16, 1), generator=g).float(), corners.min(1).values, corners.max(1).values], dim=1
    )
    return torch.randn(2, channels, size, size, generator=g), rois


def _roi_align_step(seed):
    features, rois = _roi_inputs(seed)
    features.requires_grad_()
    out = segops.roi_align(features, rois, 7, 0.25, 2, True)
    out.square().sum().backward()
    return out.detach(), features.grad


def _roi_pool_step(seed):
    features, rois = _roi_inputs(seed)
    features.requires_grad_()
    out = segops.roi_pool(features, rois, 7, 0.25)
    out.square().sum().backward()
    return out.detach(), features.grad


def _multi_scale_step(seed):
    features, rois = _roi_inputs(seed)
    coarse = torch.randn(2, 8, 16, 16, generator=_generator(seed + 1))
    levels = [features.requires_grad_(), coarse.requires_grad_()]
    out = segops.multi_scale_roi_align(levels, rois, 7, [0.25, 0.125], 2, mode="all")
    out.square().sum().backward()
    return out.detach(), features.grad, coarse.grad


def _flow_warp_step(seed):
    g = _generator(seed)
    feature = torch.randn(2, 8, 24, 24, generator=g).requires_grad_()
    flow = (3 * torch.randn(2, 2, 24, 24, generator=g)).requires_grad_()
    scale = torch.rand(2, 8, 24, 24, generator=g).requires_grad_()
    out = segops.flow_warp(feature, flow, scale)
    out.square().sum().backward()
    return out.detach(), feature.grad, flow.grad, scale.grad


def _max_unpool_step(seed):
    x = torch.randn(2, 8, 24, 24, generator=_generator(seed))
    values, indices = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
    values.requires_grad_()
    out = segops.max_unpool2d(values, indices, 2)
    out.square().sum().backward()
    return out.detach(), values.grad


def _dilated_conv_step(seed):
    g = _generator(seed)
    x = torch.randn(2, 8, 24, 24, generator=g).requires_grad_()
    weight = torch.randn(8, 8, 3, 3, generator=g).requires_grad_()
    bias = torch.randn(8, generator=g).requires_grad_()
    out = segops.dilated_conv2d(x, weight, bias, padding=2, dilation=2)
    out.square().sum().backward()
    return out.detach(), x.grad, weight.grad, bias.grad


def _dense_crf_step(seed):
    g = _generator(seed)
    unary = torch.randn(1, 3, 20, 20, generator=g).requires_grad_()
    image = 255 * torch.rand(1, 3, 20, 20, generator=g)
    out = segops.dense_crf(unary, image, num_iters=3)
    out.square().sum().backward()
    return out.detach(), unary.grad


STEPS = {
    "roi_align": _roi_align_step,
    "roi_pool": _roi_pool_step,
    "multi_scale_roi_align": _multi_scale_step,
    "flow_warp": _flow_warp_step,
    "max_unpool2d": _max_unpool_step,
    "dilated_conv2d": _dilated_conv_step,
    "dense_crf": _dense_crf_step,
}


@pytest.mark.parametrize("name", STEPS)
def test_concurrent_calls_equal_serial_calls(name):
    step = STEPS[name]
    seeds = list(range(16))
    serial = [step(seed) for seed in seeds]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for _ in range(3):
            concurrent_results = list(pool.map(step, seeds))
            for expected, actual in zip(serial, concurrent_results):
                for e, a in zip(expected, actual):
                    assert torch.equal(e, a)


def _resident_bytes():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads /proc/self/statm (Linux)")
@pytest.mark.skipif(
    os.environ.get("SEGOPS_SANITIZED") == "1",
    reason="under AddressSanitizer (scripts/sanitize.sh), whose quarantine holds freed memory",
)
@pytest.mark.parametrize("name", STEPS)
def test_repeated_calls_do_not_grow_resident_memory(name):
    """1000 forward+backward calls after 200 of warm-up (allocator caches, thread pools): resident memory grows by
    less than 4 MiB (measured here: under 0.2 MiB), where a leak of one output per call (4.7 KiB for the dense CRF,
    24 to 49 KiB for the others) would add at least 4.6 MiB."""
    step = STEPS[name]
    for seed in range(200):
        step(seed % 4)
    before = _resident_bytes()
    for seed in range(1000):
        step(seed % 4)
    grown = _resident_bytes() - before
    assert grown < 4 * 2**20, f"{name}: resident memory grew by {grown / 2**20:.1f} MiB over 1000 calls"


def test_flow_warp_indexes_past_two_to_the_31():
    """A feature map of 2^31 + 2^25 elements as one plane expanded over channels (no allocation; flow_warp reads
    through the strides): the last channels' offsets pass 2^31, and every channel warps the same plane."""
    plane = torch.randn(1, 1, 2048, 2048, generator=_generator(0))
    channels = 2**31 // (2048 * 2048) + 8
    feature = plane.expand(1, channels, -1, -1)
    assert feature.numel() > 2**31
    flow = torch.full((1, 2, 4, 4), 1000.25)
    flow[0, 1] = 1500.75
    out = segops.flow_warp(feature, flow)
    expected = segops.flow_warp(plane, flow)[0, 0]
    assert torch.equal(out[0, 0], expected) and torch.equal(out[0, -1], expected)
    torch.testing.assert_close(expected, reference_flow_warp(plane, flow)[0, 0])


@pytest.mark.skipif(
    os.environ.get("SEGOPS_LARGE_MEMORY_TESTS") != "1", reason="allocates 4.3 GB (SEGOPS_LARGE_MEMORY_TESTS=1)"
)
@pytest.mark.parametrize("op", ["roi_align", "roi_pool"])
def test_roi_ops_index_past_two_to_the_31(op):
    """The RoI ops copy a strided input to a contiguous one, so this needs 2^31 real elements (bfloat16: 4.3 GB):
    a box on the last image, whose offsets pass 2^31, pools what the same box pools on a copy of that image."""
    image = torch.randn(1, 64, 64, 64, generator=_generator(0)).bfloat16()
    batch = 2**31 // image.numel() + 2
    features = image.expand(batch, -1, -1, -1).contiguous()
    rois = torch.tensor([[batch - 1, 3.2, 4.5, 40.1, 50.3]])
    pool = {
        "roi_align": lambda x, r: segops.roi_align(x, r, 7, 1.0, 2, True),
        "roi_pool": lambda x, r: segops.roi_pool(x, r, 7, 1.0),
    }[op]
    expected = pool(image, rois * torch.tensor([0, 1, 1, 1, 1]))
    assert torch.equal(pool(features, rois), expected)

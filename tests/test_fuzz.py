"""Property-based fuzzing (hypothesis) of every op: random shapes including zeros and ones, dtypes (valid and not),
memory layouts and strides, and hostile values (NaN, inf, negative and huge coordinates, batch indices and unpooling
indices out of range, mismatched dtypes). Every case either raises a Python exception that names the op, or
returns a result equal to an independent reference (torchvision, the warp's definition summed over every
pixel, max-unpooling's definition, F.conv2d) or, for
the dense CRF, one with the reference's invariants. For the RoIAlign and RoIPool ops, position-sensitive ones too,
the deterministic GPU backward (emulated, a gather) must also equal the CPU backward bit for bit.

Profiles: SEGOPS_FUZZ_PROFILE=fast (the default, in `./scripts/test.sh`: 30 cases per op, a fixed seed), full (the
default of `./scripts/test.sh --full`: 1,000 cases per op, a fixed seed) or long (10,000 cases per op, random seeds):
``SEGOPS_FUZZ_PROFILE=long ./scripts/test.sh tests/test_fuzz.py``."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import segops  # noqa: E402
from argument_layouts import LAYOUTS, in_layout  # noqa: E402
from conftest import emulation_module  # noqa: E402
from segops.ops._checks import accumulation_dtype  # noqa: E402
from segops.reference import flow_warp_brute_force, max_unpool2d_brute_force  # noqa: E402
from segops.reference import roi_align as reference_roi_align  # noqa: E402
from test_ps_roi import torchvision_ps_roi_pool  # noqa: E402  (torchvision's, its forward clipped to the map)

torchvision_ops = pytest.importorskip("torchvision.ops")

settings.register_profile(
    "fast", max_examples=30, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "long", max_examples=10_000, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
settings.register_profile(
    "full", max_examples=1_000, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
settings.load_profile(
    os.environ.get("SEGOPS_FUZZ_PROFILE", "full" if os.environ.get("SEGOPS_TEST_TIER") == "full" else "fast")
)

FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
DTYPES = FLOATS + (torch.int32,)  # int32: an unsupported dtype, which must be refused
# Hostile values, and the exceptions a refusal may raise (its message must name the op).
HOSTILE = (float("nan"), float("inf"), -float("inf"), 1e30, -1e30, -3.0)
REFUSALS = (ValueError, RuntimeError, TypeError, IndexError)


def _tensor(draw, shape, dtype, layout=None, low=-2.0, high=2.0):
    """A tensor of `shape` and `dtype`, values uniform in [low, high), in the given layout or a drawn one (any of
    argument_layouts.LAYOUTS: "expanded" repeats the first row)."""
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    values = (low + (high - low) * torch.rand(shape, generator=g)).to(dtype)
    return _laid_out(draw, values, layout)


def _laid_out(draw, tensor, layout=None):
    return in_layout(tensor, layout or draw(st.sampled_from(LAYOUTS)))


def _feature_map(draw, max_batch=3, max_channels=3, max_size=8, min_size=0):
    shape = (
        draw(st.integers(0, max_batch)),
        draw(st.integers(0, max_channels)),
        draw(st.integers(min_size, max_size)),
        draw(st.integers(min_size, max_size)),
    )
    return _tensor(draw, shape, draw(st.sampled_from(DTYPES)))


def _rois(draw, batch, size):
    """[K, 5] boxes: mostly valid, sometimes with a hostile coordinate or batch index."""
    count = draw(st.integers(0, 5))
    rows = []
    for _ in range(count):
        index = float(draw(st.integers(0, max(batch - 1, 0))))
        coords = [draw(st.floats(-4.0, size + 4.0, allow_nan=False)) for _ in range(4)]
        if draw(st.integers(0, 4)) == 0:  # hostile, one entry in five rows
            position = draw(st.integers(0, 4))
            value = draw(st.sampled_from(HOSTILE + (0.5, float(batch), -1.0)))
            if position == 0:
                index = value
            else:
                coords[position - 1] = value
        rows.append([index, *coords])
    dtype = draw(st.sampled_from((torch.float32, torch.float64)))
    return _laid_out(draw, torch.tensor(rows, dtype=dtype).reshape(count, 5))


def _set_one(draw, tensor, values):
    """`tensor` with one element set to a value drawn from `values` (an integer tensor only takes the values its dtype
    holds); a copy where elements share memory (an expanded tensor)."""
    value = draw(st.sampled_from(values))
    if tensor.is_floating_point():
        if math.isfinite(value) and abs(value) > torch.finfo(tensor.dtype).max:
            value = math.copysign(math.inf, value)  # what the dtype makes of it
    elif not (math.isfinite(value) and torch.iinfo(tensor.dtype).min <= value <= torch.iinfo(tensor.dtype).max):
        return tensor  # not representable
    if tensor.numel() == 0:
        return tensor
    if torch._debug_has_internal_overlap(tensor) != 0:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
    position = draw(st.integers(0, tensor.numel() - 1))
    tensor[tuple(int(i) for i in torch.unravel_index(torch.tensor(position), tensor.shape))] = value
    return tensor


def _refused_or(call, op, check):
    """Runs call(); a refusal must be a REFUSALS exception naming `op`; otherwise check(result) runs."""
    try:
        result = call()
    except REFUSALS as error:
        assert op in str(error), f"{type(error).__name__} without the op's name: {error}"
        return
    check(result)


def _finite_moderate(rois, size):
    """Whether every box is valid and moderate (the references loop over samples: huge boxes would take forever)."""
    return bool(torch.isfinite(rois).all()) and bool((rois[:, 1:].abs() <= size + 8).all())


def _as_computed(features, rois):
    """Features and boxes in the features' accumulation dtype, where the op computes (documented): the references
    then round the box geometry as the op does (a box edge rounding across a sample changes the sample count)."""
    dtype = accumulation_dtype(features.dtype)
    return features.to(dtype), rois.to(dtype)


def _close(actual, expected, dtype):
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=tolerance, atol=tolerance, equal_nan=True)


def _roi_case(draw):
    """(features, rois, output size, spatial scale) for roi_align and roi_pool."""
    features = _feature_map(draw)
    rois = _rois(draw, features.shape[0], features.shape[-1])
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    return features, rois, output_size, draw(st.sampled_from((1.0, 0.5)))


def _check_deterministic_gpu_backward(draw, backward, args, forward_out, features):
    """The deterministic GPU backward `backward` (emulated; it gathers where the default scatters) equals the CPU
    backward bit for bit on the same case, hostile boxes included: its pruning of RoIs, bins and samples must miss
    nothing. args: the CPU op's arguments after grad."""
    if forward_out.numel() == 0 or not features.is_floating_point():
        return
    emulated = getattr(emulation_module(), backward)
    grad = _tensor(draw, tuple(forward_out.shape), forward_out.dtype)
    launch = draw(st.sampled_from((([1], [1]), ([3], [32]), ([64], [256]))))
    assert torch.equal(emulated(grad, *args, True, *launch), getattr(torch.ops.segops, backward)(grad, *args))


def _comparable_roi_output(out, features, rois, output_size, out_channels=None):
    """Checks a RoI op's output shape (out_channels: the input's by default) and dtype; whether its values can be
    compared with a reference."""
    out_channels = features.shape[1] if out_channels is None else out_channels
    assert out.shape == (rois.shape[0], out_channels, *output_size) and out.dtype == features.dtype
    return _finite_moderate(rois, features.shape[-1]) and features.numel() > 0


@given(st.data())
def test_roi_align(data):
    features, rois, output_size, scale = _roi_case(data.draw)
    sampling, aligned = data.draw(st.integers(-1, 2)), data.draw(st.booleans())

    def check(out):
        if _comparable_roi_output(out, features, rois, output_size):
            maps, boxes = _as_computed(features, rois)
            # torchvision's CPU kernel cannot size its sample table for an aligned box of negative extent with
            # adaptive sampling (it raises); there, the pure-PyTorch reference.
            negative = bool((boxes[:, 3:] < boxes[:, 1:3]).any())
            reference = reference_roi_align if aligned and sampling <= 0 and negative else torchvision_ops.roi_align
            _close(out, reference(maps, boxes, output_size, scale, sampling, aligned), features.dtype)
        elif features.numel() > 0 and out.numel() > 0:  # huge boxes: averages of the map's bilinear values
            assert out.double().abs().max() <= features.double().abs().max() + 1e-6

    def check_with_backward(out):
        check(out)
        boxes = rois.to(accumulation_dtype(features.dtype))  # as segops.roi_align passes them
        args = (boxes, scale, *output_size, *features.shape, sampling, aligned)
        _check_deterministic_gpu_backward(data.draw, "_roi_align_backward", args, out, features)

    _refused_or(
        lambda: segops.roi_align(features, rois, output_size, scale, sampling, aligned),
        "roi_align",
        check_with_backward,
    )


@given(st.data())
def test_roi_pool(data):
    features, rois, output_size, scale = _roi_case(data.draw)

    def check(out):
        if _comparable_roi_output(out, features, rois, output_size):
            _close(out, torchvision_ops.roi_pool(*_as_computed(features, rois), output_size, scale), features.dtype)
        boxes = rois.to(accumulation_dtype(features.dtype))  # as segops.roi_pool passes them
        _, argmax = torch.ops.segops.roi_pool(features, boxes, scale, *output_size)
        args = (boxes, argmax, scale, *output_size, *features.shape)
        _check_deterministic_gpu_backward(data.draw, "_roi_pool_backward", args, out, features)

    _refused_or(lambda: segops.roi_pool(features, rois, output_size, scale), "roi_pool", check)


def _ps_case(draw):
    """(features, rois, output size, spatial scale) for the position-sensitive ops: C = C_out * PH * PW input channels,
    or, one case in five, a count the bins do not divide (to be refused)."""
    output_size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    bins = output_size[0] * output_size[1]
    channels = draw(st.integers(0, 10)) * bins  # up to 10 output channels: the CPU forward pools 8 at a time
    if bins > 1 and draw(st.integers(0, 4)) == 0:
        channels += draw(st.integers(1, bins - 1))
    shape = (draw(st.integers(0, 3)), channels, draw(st.integers(0, 8)), draw(st.integers(0, 8)))
    features = _tensor(draw, shape, draw(st.sampled_from(DTYPES)))
    rois = _rois(draw, features.shape[0], features.shape[-1])
    return features, rois, output_size, draw(st.sampled_from((1.0, 0.5)))


def _ps_out_channels(features, output_size):
    return features.shape[1] // (output_size[0] * output_size[1])


@given(st.data())
def test_ps_roi_align(data):
    features, rois, output_size, scale = _ps_case(data.draw)
    sampling = data.draw(st.integers(-1, 2))

    def check(out):
        if _comparable_roi_output(out, features, rois, output_size, _ps_out_channels(features, output_size)):
            expected = torchvision_ops.ps_roi_align(*_as_computed(features, rois), output_size, scale, sampling)
            # torchvision divides 0 by 0 for a box without samples (the features are finite, so only there): segops
            # gives 0 (docs/operators.md).
            _close(out, torch.nan_to_num(expected, nan=0.0), features.dtype)
        boxes = rois.to(accumulation_dtype(features.dtype))  # as segops.ps_roi_align passes them
        args = (boxes, scale, *output_size, *features.shape, sampling)
        _check_deterministic_gpu_backward(data.draw, "_ps_roi_align_backward", args, out, features)

    _refused_or(lambda: segops.ps_roi_align(features, rois, output_size, scale, sampling), "ps_roi_align", check)


@given(st.data())
def test_ps_roi_pool(data):
    features, rois, output_size, scale = _ps_case(data.draw)

    def check(out):
        if _comparable_roi_output(out, features, rois, output_size, _ps_out_channels(features, output_size)):
            expected = torchvision_ps_roi_pool(*_as_computed(features, rois), output_size, scale)
            _close(out, expected, features.dtype)
        boxes = rois.to(accumulation_dtype(features.dtype))  # as segops.ps_roi_pool passes them
        args = (boxes, scale, *output_size, *features.shape)
        _check_deterministic_gpu_backward(data.draw, "_ps_roi_pool_backward", args, out, features)

    _refused_or(lambda: segops.ps_roi_pool(features, rois, output_size, scale), "ps_roi_pool", check)


@given(st.data())
def test_multi_scale_roi_align(data):
    draw = data.draw
    fine = _feature_map(draw, min_size=2)
    coarse = _tensor(
        draw,
        (fine.shape[0], fine.shape[1], fine.shape[2] // 2, fine.shape[3] // 2),
        draw(st.sampled_from((fine.dtype, torch.float64))),
    )
    rois = _rois(draw, fine.shape[0], fine.shape[-1])

    def check(out):
        assert out.shape == (rois.shape[0], 2, fine.shape[1], 2, 2)
        if _finite_moderate(rois, fine.shape[-1]) and fine.numel() > 0 and coarse.numel() > 0:
            for level, (features, scale) in enumerate(((fine, 1.0), (coarse, 0.5))):
                maps, boxes = _as_computed(features.to(out.dtype), rois)
                expected = torchvision_ops.roi_align(maps, boxes, 2, scale, 2, True)
                _close(out[:, level], expected, fine.dtype)

    _refused_or(
        lambda: segops.multi_scale_roi_align([fine, coarse], rois, 2, [1.0, 0.5], 2, True, mode="all"),
        "multi_scale_roi_align",
        check,
    )


@given(st.data())
def test_flow_warp(data):
    draw = data.draw
    feature = _feature_map(draw)
    out_h, out_w = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    flow_dtype = draw(st.sampled_from((feature.dtype, torch.float32, torch.float64)))
    flow = _tensor(draw, (feature.shape[0], 2, out_h, out_w), flow_dtype, low=-6.0, high=6.0)
    if draw(st.integers(0, 3)) == 0 and flow.numel() > 0:  # a hostile displacement
        flow = _set_one(draw, flow, HOSTILE)
    with_scale = draw(st.booleans())
    scale = (
        _tensor(draw, (feature.shape[0], 1, out_h, out_w), feature.dtype, None, 0.0, 1.0)
        if with_scale and feature.dtype in FLOATS
        else None
    )

    def check(out):
        assert out.shape == (feature.shape[0], feature.shape[1], out_h, out_w) and out.dtype == feature.dtype
        if out.numel() == 0:
            return
        # The definition summed over every pixel, on the finite displacements; a non-finite one samples nothing.
        finite = torch.isfinite(flow).all(1, keepdim=True)
        expected = flow_warp_brute_force(
            feature.double(), torch.where(finite, flow, 0).double(), None if scale is None else scale.double()
        )
        expected = torch.where(finite, expected, 0)
        _close(out, expected, feature.dtype)

    _refused_or(lambda: segops.flow_warp(feature, flow, scale), "flow_warp", check)


@given(st.data())
def test_max_unpool2d(data):
    draw = data.draw
    x = _feature_map(draw, min_size=1)
    kernel = draw(st.integers(1, 3))
    if x.dtype not in FLOATS or min(x.shape[-2:]) < kernel or x.numel() == 0:
        x = x.double() if x.dtype not in FLOATS else x
        values, indices = x, torch.zeros(x.shape, dtype=torch.int64)  # indices not from a pool
    else:
        values, indices = F.max_pool2d(x.float(), kernel, return_indices=True)
        values = values.to(x.dtype)
    output_size = (values.shape[-2] * kernel, values.shape[-1] * kernel)
    if draw(st.integers(0, 3)) == 0 and indices.numel() > 0:  # an index out of its plane
        indices = _set_one(draw, indices.clone(), (-1, output_size[0] * output_size[1], 2**40))
    if draw(st.integers(0, 5)) == 0:
        indices = indices.to(torch.int32)  # a wrong index dtype
    indices = _laid_out(draw, indices)

    def check(out):
        assert out.shape == (*values.shape[:2], *output_size)
        if indices.dtype == torch.int64 and values.numel() > 0:
            # The definition (duplicated indices: the largest input position wins), not F.max_unpool2d, whose
            # winner among duplicates is unspecified.
            expected = max_unpool2d_brute_force(values.double(), indices, output_size)
            _close(out, expected, values.dtype)

    _refused_or(lambda: segops.max_unpool2d(values, indices, kernel, output_size=output_size), "max_unpool2d", check)


@given(st.data())
def test_dilated_conv2d(data):
    draw = data.draw
    x = _feature_map(draw, max_channels=4)
    groups = draw(st.sampled_from((1, 2)))
    out_channels = draw(st.integers(0, 3)) * groups
    in_per_group = max(x.shape[1] // groups, 0)
    kernel = draw(st.integers(1, 3))
    weight = _tensor(
        draw, (out_channels, in_per_group, kernel, kernel), draw(st.sampled_from((x.dtype, torch.float32)))
    )
    bias = _tensor(draw, (out_channels,), weight.dtype) if draw(st.booleans()) else None
    stride, padding, dilation = draw(st.integers(1, 2)), draw(st.integers(0, 2)), draw(st.integers(1, 3))

    def check(out):
        # F.conv2d on the zero-padded input; where the padded map is empty or there are no input channels, F.conv2d
        # refuses or returns no channels (and refuses zero output channels), while the sum over nothing is 0: the
        # output is the bias.
        padded = F.pad(x.double(), [padding] * 4)
        span = dilation * (kernel - 1) + 1
        size = [(extent - span) // stride + 1 for extent in padded.shape[-2:]]
        if x.shape[1] == 0 or out_channels == 0 or 0 in padded.shape[-2:]:
            expected = torch.zeros(x.shape[0], out_channels, *size, dtype=torch.float64)
            if bias is not None:
                expected += bias.double().view(-1, 1, 1)
        else:
            expected = F.conv2d(
                padded, weight.double(), None if bias is None else bias.double(), stride, 0, dilation, groups
            )
        _close(out, expected, x.dtype)

    _refused_or(
        lambda: segops.dilated_conv2d(x, weight, bias, stride, padding, dilation, groups), "dilated_conv2d", check
    )


@given(st.data())
def test_dense_crf(data):
    draw = data.draw
    labels = draw(st.integers(1, 3))
    shape = (draw(st.integers(0, 2)), labels, draw(st.integers(0, 6)), draw(st.integers(0, 6)))
    unary = _tensor(draw, shape, draw(st.sampled_from(DTYPES)), low=-4.0, high=4.0)
    if draw(st.integers(0, 4)) == 0 and unary.numel() > 0:
        unary = _set_one(draw, unary, HOSTILE)
    image = _tensor(
        draw,
        (shape[0], 3, shape[2], shape[3]),
        draw(st.sampled_from((torch.float32, torch.uint8))),
        low=0.0,
        high=255.0,
    )
    num_iters = draw(st.integers(0, 3))

    def check(out):
        # The lattice approximates the Gaussian filter, so the O(N^2) reference is not equal; its invariants are:
        # probabilities summing to 1 per pixel, and num_iters 0 giving softmax(unary).
        assert out.shape == unary.shape and torch.isfinite(out).all()
        if out.numel() > 0:
            torch.testing.assert_close(out.sum(1), torch.ones_like(out.sum(1)), rtol=0, atol=1e-5)
            if num_iters == 0:
                torch.testing.assert_close(out, torch.softmax(unary, 1))

    _refused_or(lambda: segops.dense_crf(unary, image, num_iters), "dense_crf", check)

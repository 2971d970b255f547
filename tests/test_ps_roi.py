"""Position-sensitive RoIAlign and RoIPool (segops.ps_roi_align, segops.ps_roi_pool) against torchvision's, which
they replace: values and gradients over random configurations, box formats and layouts; their CUDA kernels under the
emulation; errors; and the call paths the other RoI ops' tests cover (torch.func, FX, export, ONNX and autocast
are in test_call_paths, test_export, test_onnx and test_autocast)."""

import itertools

import pytest
import torch
import torch.nn.functional as F
import torchvision

import segops
from conftest import DEVICES, emulation_module, requires_cuda
from tolerances import summation_bound
from op_testing import (
    DEGENERATE_BOXES,
    assert_bad_row_is_a_device_side_assert,
    assert_compiled_matches_eager,
    assert_cuda_path_does_not_synchronise,
    assert_double_backward_on_empty_map,
    assert_exports_with_dynamic_shapes,
    assert_raises_eager_and_fake,
    bad_argument_cases,
    bad_roi_value_cases,
    cuda_gradients_in_both_modes,
    layouts,
    make_case,
    non_contiguous,
    random_rois,
    rois_to_list,
)

OPS = {
    "ps_roi_align": (
        lambda x, b, size, scale: segops.ps_roi_align(x, b, size, scale, 2),
        lambda x, b, size, scale: torchvision.ops.ps_roi_align(x, b, size, scale, 2),
    ),
    "ps_roi_align adaptive": (
        lambda x, b, size, scale: segops.ps_roi_align(x, b, size, scale, -1),
        lambda x, b, size, scale: torchvision.ops.ps_roi_align(x, b, size, scale, -1),
    ),
    "ps_roi_pool": (segops.ps_roi_pool, lambda x, b, size, scale: torchvision_ps_roi_pool(x, b, size, scale)),
}


class _TorchvisionPSRoIPool(torch.autograd.Function):
    """torchvision's ps_roi_pool with its forward's windows clipped to the map, as R-FCN's own code, roi_pool and its
    own backward clip them.

    torchvision's forward clips each bin's window to [0, H - 1) x [0, W - 1), so it never reads the map's last row and
    column, while its backward spreads the gradient over windows clipped to the map: its gradient is not its forward's.
    With one more (zero) row and column the forward's clip falls on the map's edge; the backward is torchvision's."""

    @staticmethod
    def forward(ctx, input, boxes, output_size, spatial_scale):
        ctx.save_for_backward(input, boxes)
        ctx.arguments = (output_size, spatial_scale)
        return torchvision.ops.ps_roi_pool(F.pad(input, (0, 1, 0, 1)), boxes, output_size, spatial_scale)

    @staticmethod
    def backward(ctx, grad):
        input, boxes = ctx.saved_tensors
        with torch.enable_grad():
            x = input.detach().requires_grad_()
            (grad_input,) = torch.autograd.grad(torchvision.ops.ps_roi_pool(x, boxes, *ctx.arguments), x, grad)
        return grad_input, None, None, None


def torchvision_ps_roi_pool(input, boxes, output_size, spatial_scale=1.0):
    return _TorchvisionPSRoIPool.apply(input, boxes, output_size, spatial_scale)


def _case(seed, output_size, out_channels=2, **kwargs):
    """make_case with C = out_channels * PH * PW input channels."""
    return make_case(seed, channels=out_channels * output_size[0] * output_size[1], **kwargs)


def _no_samples(rois, output_size, spatial_scale):
    """(rows without samples under adaptive sampling: a zero or negative aligned width or height; the rows of those
    where torchvision divides 0 by 0, its sample count ceil(height / PH) * ceil(width / PW) being 0)."""
    width = rois[:, 3] * spatial_scale - rois[:, 1] * spatial_scale
    height = rois[:, 4] * spatial_scale - rois[:, 2] * spatial_scale
    count = (height / output_size[0]).ceil() * (width / output_size[1]).ceil()
    return (width <= 0) | (height <= 0), count == 0


def _grad_of(out):
    return (torch.arange(out.numel(), dtype=out.dtype, device=out.device).view_as(out) % 7) - 3


def _run(fn, input, rois, output_size, spatial_scale, grad_of=_grad_of):
    x = input.clone().requires_grad_()
    out = fn(x, rois, output_size, spatial_scale)
    out.backward(grad_of(out))
    return out.detach(), x.grad


def _max_gradient_terms(rois, output_size, spatial_scale, sampling_ratio):
    """The most terms ps_roi_align's backward adds into one input pixel: each box sends one bin per input channel,
    a bin's samples each send up to 4 weights (all 4 to one pixel where they are clamped at the border)."""
    if sampling_ratio > 0:
        samples = sampling_ratio * sampling_ratio
    else:
        size = (rois[:, 3:5] - rois[:, 1:3]).abs().double() * spatial_scale
        grid = (size / torch.tensor(output_size, dtype=torch.float64)).ceil().clamp(min=1)
        samples = int(grid.prod(dim=1).max())
    return 4 * samples * rois.shape[0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize(
    "output_size,spatial_scale", list(itertools.product([(7, 7), (3, 5), (1, 1)], [1.0, 0.5, 0.25]))
)
def test_forward_and_backward_equal_torchvision(device, dtype, name, output_size, spatial_scale):
    ours, theirs = OPS[name]
    for seed in range(3):
        input, rois = _case(seed, output_size, device=device, dtype=dtype, spatial_scale=spatial_scale, num_rois=12)
        expected, expected_grad = _run(theirs, input, rois, output_size, spatial_scale)
        actual, actual_grad = _run(ours, input, rois, output_size, spatial_scale)
        if name == "ps_roi_align adaptive":
            # torchvision's 0 / 0 for a box without samples; segops gives 0 and no gradient.
            empty, nan = _no_samples(rois, output_size, spatial_scale)
            assert torch.isnan(expected[nan]).all() and not torch.isnan(expected[~nan]).any()
            assert torch.equal(actual[empty], torch.zeros_like(actual[empty]))
            keep = ~empty
            expected, actual = expected[keep], actual[keep]
            expected_grad = _run(theirs, input, rois[keep], output_size, spatial_scale)[1]
            actual_grad = _run(ours, input, rois[keep], output_size, spatial_scale)[1]
        # The same sums in the same order: torchvision's results bit for bit.
        assert torch.equal(actual, expected)
        if name == "ps_roi_pool":  # each pixel receives grad / area from one bin per box, in box order
            assert torch.equal(actual_grad, expected_grad)
            continue
        # The same terms in the same order, but segops' are (grad / count) * weight and torchvision's
        # (grad * weight) / count: they differ by up to 4 roundings of a term, and each sum of n terms lies within
        # gamma_n * sum |terms| of the exact one (tolerances.summation_bound).
        if name == "ps_roi_align adaptive":
            rois = rois[keep]
        sampling_ratio = -1 if name == "ps_roi_align adaptive" else 2
        terms = _max_gradient_terms(rois, output_size, spatial_scale, sampling_ratio)
        magnitude = _run(theirs, input, rois, output_size, spatial_scale, lambda o: _grad_of(o).abs())[1].double()
        bound = 2 * summation_bound(magnitude, terms, dtype) + 2 * torch.finfo(dtype).eps * magnitude
        assert ((actual_grad - expected_grad).double().abs() <= bound).all()


def test_output_maps_each_bin_to_its_own_channel():
    # An independent check of the channel layout: input channel (c * PH + ph) * PW + pw is constant k, so bin
    # (ph, pw) of output channel c must read exactly that constant, whatever the box.
    ph, pw, out_channels = 3, 4, 2
    values = torch.arange(out_channels * ph * pw, dtype=torch.float64)
    input = values.view(1, -1, 1, 1).expand(1, -1, 9, 11).contiguous()
    rois = torch.tensor([[0, 1.0, 1.0, 8.0, 6.0], [0, 0.0, 0.0, 10.0, 8.0]], dtype=torch.float64)
    expected = values.view(out_channels, ph, pw).expand(2, -1, -1, -1)
    assert torch.equal(segops.ps_roi_pool(input, rois, (ph, pw)), expected)
    torch.testing.assert_close(segops.ps_roi_align(input, rois, (ph, pw), 1.0, 2), expected, rtol=1e-15, atol=0)


def test_ps_roi_pool_reads_the_maps_last_row_and_column():
    # A box on the last row and column: R-FCN (and segops) average those pixels; torchvision's window clip stops one
    # pixel short and returns 0. The reference is the mean of the window written out by hand.
    input = torch.arange(8 * 36, dtype=torch.float64).view(1, 8, 6, 6) / 7
    rois = torch.tensor([[0, 4.0, 4.0, 6.0, 6.0], [0, 5.0, 5.0, 5.0, 5.0]], dtype=torch.float64)
    out = segops.ps_roi_pool(input, rois, (2, 2), 1.0)
    # Box 1: pixels 4..5 in each axis, one per bin; box 2: a 1x1 box at pixel 5, every bin the same window.
    for c_out, ph, pw in itertools.product(range(2), range(2), range(2)):
        channel = (c_out * 2 + ph) * 2 + pw
        assert out[0, c_out, ph, pw] == input[0, channel, 4 + ph, 4 + pw]
        assert out[1, c_out, ph, pw] == input[0, channel, 5, 5]
    assert torch.equal(
        torchvision.ops.ps_roi_pool(input, rois, (2, 2), 1.0)[1], torch.zeros(2, 2, 2, dtype=torch.float64)
    )
    assert torch.equal(torchvision_ps_roi_pool(input, rois, (2, 2), 1.0), out)
    # torchvision's backward already spreads box 2's gradient onto pixel (5, 5): the gradient of segops' forward.
    x = input.clone().requires_grad_()
    torchvision.ops.ps_roi_pool(x, rois[1:], (2, 2), 1.0).sum().backward()
    assert (x.grad[0, :, 5, 5] == 1).all() and x.grad.sum() == 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("boxes_as", ["tensor", "list"])
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_layouts_and_box_formats(device, layout, boxes_as, name):
    ours, theirs = OPS[name]
    input, rois = _case(7, (3, 2), device=device, batch_size=3, num_rois=10)
    rois = rois[rois[:, 0].argsort(stable=True)]
    expected = theirs(input, rois, (3, 2), 0.5)
    boxes = rois if boxes_as == "tensor" else rois_to_list(rois, 3)
    assert torch.equal(ours(layouts(input)[layout], boxes, (3, 2), 0.5), expected)
    assert torch.equal(ours(input, non_contiguous(rois), (3, 2), 0.5), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(2))
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_align adaptive", "ps_roi_pool"])
def test_gradcheck(device, seed, name):
    input, rois = _case(seed, (2, 2), 1, device=device, dtype=torch.float64, height=5, width=6, num_rois=4)
    ours = OPS[name][0]
    fn = lambda x: ours(x, rois, (2, 2), 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (input.requires_grad_(),))
    assert torch.autograd.gradgradcheck(fn, (input,))


def test_functions_and_modules():
    input, rois = _case(3, (3, 4))
    assert torch.equal(
        segops.PSRoIAlignFunction.apply(input, rois, 0.5, 3, 4, 2),
        torchvision.ops.ps_roi_align(input, rois, (3, 4), 0.5, 2),
    )
    assert torch.equal(
        segops.PSRoIPoolFunction.apply(input, rois, 0.5, 3, 4), torchvision_ps_roi_pool(input, rois, (3, 4), 0.5)
    )
    align, pool = segops.PSRoIAlign((3, 4), 0.5, 2), segops.PSRoIPool(3, 0.5)
    assert repr(align) == "PSRoIAlign(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2)"
    assert repr(pool) == "PSRoIPool(output_size=(3, 3), spatial_scale=0.5)"
    assert torch.equal(align(input, rois), torchvision.ops.PSRoIAlign((3, 4), 0.5, 2)(input, rois))
    nine = _case(3, (3, 3))[0]
    assert torch.equal(pool(nine, rois), torchvision_ps_roi_pool(nine, rois, 3, 0.5))


def test_opcheck():
    input, rois = _case(0, (3, 2), dtype=torch.float64)
    ops = torch.ops.segops
    torch.library.opcheck(ops.ps_roi_align.default, (input.requires_grad_(), rois, 0.5, 3, 2, 2))
    torch.library.opcheck(ops.ps_roi_pool.default, (input, rois, 0.5, 3, 2))
    grad = torch.randn(rois.shape[0], 2, 3, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops._ps_roi_align_backward.default, (grad, rois, 0.5, 3, 2, 2, 12, 9, 11, 2))
    torch.library.opcheck(ops._ps_roi_pool_backward.default, (grad, rois, 0.5, 3, 2, 2, 12, 9, 11))


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_compile_fullgraph_and_export(name):
    ours = OPS[name][0]
    input, rois = _case(1, (3, 3), height=10, width=12)

    def head(x, boxes):
        return ours(x, boxes, (3, 3), 0.5).mean(dim=(2, 3))  # R-FCN's voting

    assert_compiled_matches_eager(head, input, rois)
    assert_exports_with_dynamic_shapes(head, input, rois)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_low_precision_accumulates_in_float32(device, dtype, name):
    # float16/bfloat16 features: interpolated and summed in float32, rounded once. So the output is float32 pooling of
    # the same rounded inputs, rounded; the gradient likewise.
    ours = OPS[name][0]
    input, rois = _case(5, (2, 2), device=device, num_rois=8)
    input_low = input.to(dtype).requires_grad_()
    x32 = input_low.detach().float().requires_grad_()
    out = ours(input_low, rois, (2, 2), 0.5)
    expected = ours(x32, rois, (2, 2), 0.5)
    assert out.dtype == dtype and torch.equal(out, expected.to(dtype))
    grad = torch.randn_like(expected).to(dtype)
    out.backward(grad)
    expected.backward(grad.float())
    assert torch.equal(input_low.grad, x32.grad.to(dtype))


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_empty_and_degenerate_inputs(name):
    ours, theirs = OPS[name]
    input = torch.randn(2, 8, 8, 8, requires_grad=True)
    empty = ours(input, torch.zeros(0, 5), (2, 2), 1.0)
    assert empty.shape == (0, 2, 2, 2)
    empty.sum().backward()
    assert torch.equal(input.grad, torch.zeros_like(input))
    rois = torch.tensor(DEGENERATE_BOXES, dtype=torch.float32)
    actual = ours(input, rois, (2, 2), 1.0)
    expected = theirs(input, rois, (2, 2), 1.0)
    assert torch.equal(actual, expected) and torch.isfinite(actual).all()
    (grad_input,) = torch.autograd.grad(actual.sum(), input)
    (expected_grad,) = torch.autograd.grad(expected.sum(), input)
    assert torch.equal(grad_input, expected_grad) and torch.isfinite(grad_input).all()
    assert ours(torch.randn(1, 0, 4, 4), torch.zeros(2, 5), 2, 1.0).shape == (2, 0, 2, 2)
    assert torch.equal(ours(torch.randn(1, 4, 0, 4), torch.zeros(1, 5), 2, 1.0), torch.zeros(1, 1, 2, 2))


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_double_backward_on_empty_map(name):
    ours = OPS[name][0]
    assert_double_backward_on_empty_map(lambda x, rois: ours(x, rois, (1, 2), 1.0))  # 2 channels: 1 x 1 x 2


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_backward_deterministic_across_runs_and_threads(threads, name):
    ours = OPS[name][0]
    input, rois = _case(11, (4, 4), height=20, width=24, num_rois=40, spatial_scale=1.0)
    grad = torch.randn(40, 2, 4, 4)
    previous = torch.get_num_threads()
    try:
        results = []
        for num_threads in (threads, 1, threads):
            torch.set_num_threads(num_threads)
            x = input.clone().requires_grad_()
            ours(x, rois, 4, 1.0).backward(grad)
            results.append(x.grad)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(result, results[0]) for result in results[1:])


def _call_kwargs(name):
    input, rois = make_case(0, height=10, width=12, num_rois=4, channels=6)  # 6 = 2 * 3 bins
    kwargs = dict(input=input, rois=rois, spatial_scale=0.5, pooled_height=2, pooled_width=3)
    if name == "ps_roi_align":
        kwargs["sampling_ratio"] = 2
    return kwargs


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_bad_arguments_eager_and_fake(name):
    op = getattr(torch.ops.segops, name)
    for _, mutate, message in bad_argument_cases(name):
        kwargs = _call_kwargs(name)
        mutate(kwargs)
        assert_raises_eager_and_fake(op, kwargs, message.replace(r"\[3, 10, 12\]", r"\[6, 10, 12\]"))
    kwargs = _call_kwargs(name)
    kwargs["input"] = kwargs["input"][:, :5]
    assert_raises_eager_and_fake(
        op,
        kwargs,
        rf"{name}: input channels must be a multiple of output_size\[0\] \* output_size\[1\] = 6 \(one score map "
        r"per bin of each output channel\), got 5",
    )
    backward = getattr(torch.ops.segops, f"_{name}_backward")
    extra = (2,) if name == "ps_roi_align" else ()
    with pytest.raises(
        RuntimeError, match=rf"_{name}_backward: grad must have shape \[4, 1, 2, 3\], got \[4, 2, 2, 3\]"
    ):
        backward(torch.ones(4, 2, 2, 3), kwargs["rois"], 0.5, 2, 3, 2, 6, 10, 12, *extra)
    with pytest.raises(RuntimeError, match=rf"_{name}_backward: input channels must be a multiple"):
        backward(torch.ones(4, 1, 2, 3), kwargs["rois"], 0.5, 2, 3, 2, 7, 10, 12, *extra)
    if name == "ps_roi_align":
        kwargs = _call_kwargs(name)
        kwargs["sampling_ratio"] = 257
        assert_raises_eager_and_fake(
            op, kwargs, r"ps_roi_align: sampling_ratio must be <= 0 \(adaptive\) or at most 256"
        )


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_bad_roi_values(name):
    op, backward = getattr(torch.ops.segops, name), getattr(torch.ops.segops, f"_{name}_backward")
    extra = (2,) if name == "ps_roi_align" else ()
    for _, row, column, value, message in bad_roi_value_cases(name):
        kwargs = _call_kwargs(name)
        kwargs["rois"][row, column] = value
        with pytest.raises(RuntimeError, match=message):
            op(**kwargs)
        with pytest.raises(RuntimeError, match=message.replace(name, f"_{name}_backward")):
            backward(torch.ones(4, 1, 2, 3), kwargs["rois"], 0.5, 2, 3, 2, 6, 10, 12, *extra)


def test_the_seed_sizes_equal_torchvision():
    # R-FCN's shapes: 7x7 bins of 21 classes on a stride-16 map, many overlapping boxes (each pixel gathers from many).
    g = torch.Generator().manual_seed(0)
    input = torch.randn(1, 7 * 7 * 21, 38, 50, generator=g)
    rois = random_rois(300, 1, 600, 800, generator=g, outside=0.0, degenerate=0.0)
    for name in ("ps_roi_align", "ps_roi_pool"):
        ours, theirs = OPS[name]
        expected, expected_grad = _run(theirs, input, rois, 7, 1 / 16)
        actual, actual_grad = _run(ours, input, rois, 7, 1 / 16)
        assert torch.equal(actual, expected)
        torch.testing.assert_close(actual_grad, expected_grad, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- emulated CUDA kernels

LAUNCHES = [((1,), (1,)), ((1,), (7,)), ((3,), (32,)), ((97,), (256,))]


@pytest.fixture(scope="module")
def emulated():
    return emulation_module()


def _emulated_calls(emulated, name, grid, block):
    """(forward, backward(grad, rois, input_shape, deterministic)) of the emulated kernels, and the CPU op pair."""
    extra = (2,) if name == "ps_roi_align" else ()
    forward = getattr(emulated, name)
    backward = getattr(emulated, f"_{name}_backward")
    return (
        lambda x, rois: forward(x, rois, 0.5, 3, 2, *extra, grid, block),
        lambda grad, rois, shape, det: backward(grad, rois, 0.5, 3, 2, *shape, *extra, det, grid, block),
        lambda x, rois: getattr(torch.ops.segops, name)(x, rois, 0.5, 3, 2, *extra),
        lambda grad, rois, shape: getattr(torch.ops.segops, f"_{name}_backward")(grad, rois, 0.5, 3, 2, *shape, *extra),
    )


@pytest.mark.parametrize("launch", LAUNCHES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
@pytest.mark.parametrize("shape", [dict(), dict(num_rois=0), dict(width=1), dict(num_rois=40, out_channels=1)], ids=str)
def test_emulated_kernels_equal_the_cpu_path(emulated, launch, dtype, name, shape):
    shape = dict(shape)
    out_channels = shape.pop("out_channels", 3)  # 18 input channels: blocks of the gather end part-full
    input, rois = make_case(0, channels=out_channels * 6, height=7, width=shape.pop("width", 9), **shape)
    input, rois = input.to(dtype), rois.to(torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)
    forward, backward, cpu_forward, cpu_backward = _emulated_calls(emulated, name, *launch)
    expected = cpu_forward(input, rois)
    assert torch.equal(forward(input, rois), expected)  # the same arithmetic in the same order
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    expected_grad = cpu_backward(grad, rois, input.shape)
    # Atomic adds: another order of the same float32 (or float64) sums.
    tolerance = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    if dtype in (torch.float16, torch.bfloat16):
        tolerance = dict(rtol=0, atol=2 * torch.finfo(dtype).eps * expected_grad.abs().max().item())
    torch.testing.assert_close(backward(grad, rois, input.shape, False).float(), expected_grad.float(), **tolerance)
    # The gather adds the CPU scatter's terms in its order: bit for bit, for every launch shape.
    assert torch.equal(backward(grad, rois, input.shape, True), expected_grad)


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_emulated_kernels_on_degenerate_boxes(emulated, name):
    input = torch.randn(2, 12, 8, 8, dtype=torch.float64)
    rois = torch.tensor(DEGENERATE_BOXES, dtype=torch.float64)
    forward, backward, cpu_forward, cpu_backward = _emulated_calls(emulated, name, (2,), (32,))
    expected = cpu_forward(input, rois)
    assert torch.equal(forward(input, rois), expected)
    grad = torch.randn_like(expected)
    expected_grad = cpu_backward(grad, rois, input.shape)
    assert torch.equal(backward(grad, rois, input.shape, True), expected_grad)
    torch.testing.assert_close(backward(grad, rois, input.shape, False), expected_grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
@pytest.mark.parametrize("which", ["forward", "backward", "deterministic backward"])
def test_emulated_kernels_assert_on_a_bad_row(emulated, name, which):
    input = torch.randn(2, 6, 8, 8)
    rois = torch.tensor([[0, 1.0, 1, 6, 6], [5, 0, 0, 4, 4]])
    forward, backward, _, _ = _emulated_calls(emulated, name, (2,), (32,))
    op = name if which == "forward" else f"_{name}_backward"
    call = {
        "forward": lambda: forward(input, rois),
        "backward": lambda: backward(torch.ones(2, 1, 3, 2), rois, input.shape, False),
        "deterministic backward": lambda: backward(torch.ones(2, 1, 3, 2), rois, input.shape, True),
    }[which]
    with pytest.raises(RuntimeError, match=rf"{op}: rois\[k, 0\] \(batch index\) must be an integer in \[0, N\)"):
        call()


# ------------------------------------------------------------------------------------------------------------- CUDA


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_cuda_matches_cpu_in_default_and_deterministic_modes(name):
    ours = OPS[name][0]
    input, rois = _case(2, (4, 4), 3, num_rois=30)
    expected = ours(input, rois, 4, 0.5)
    torch.testing.assert_close(ours(input.cuda(), rois.cuda(), 4, 0.5).cpu(), expected)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
    cpu_grad = torch.autograd.grad(ours(input.requires_grad_(), rois, 4, 0.5), input, grad)[0]

    def backward():
        x = input.detach().cuda().requires_grad_()
        return torch.autograd.grad(ours(x, rois.cuda(), 4, 0.5), x, grad.cuda())

    default, deterministic = cuda_gradients_in_both_modes(backward)
    torch.testing.assert_close(default[0].cpu(), cpu_grad)
    torch.testing.assert_close(deterministic[0].cpu(), cpu_grad)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph(name):
    ours = OPS[name][0]
    input, rois = _case(6, (4, 4), num_rois=12)
    assert_cuda_path_does_not_synchronise(lambda x, b: ours(x, b, 4, 0.5), input, rois)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("name", ["ps_roi_align", "ps_roi_pool"])
def test_cuda_bad_row_is_a_device_side_assert(name):
    assert_bad_row_is_a_device_side_assert(f"segops.{name}(x, rois, (1, 3), 1.0)")

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing._internal.common_utils import DeterministicGuard

import segops
from conftest import DEVICES, requires_cuda
from op_testing import assert_cuda_path_does_not_synchronise, assert_raises_eager_and_fake, layouts
from tolerances import assert_within_summation_bound

TOLERANCES = {
    torch.float32: dict(rtol=1e-4, atol=1e-4),
    torch.float64: dict(rtol=1e-10, atol=1e-10),
}

# (input [N, C, H, W], C_out, kernel, stride, padding, dilation, groups, bias): DeepLab's ASPP branches, asymmetric
# tuples, groups, no bias, batch 1, depthwise (stride 1 and 2, with multiplier 2 going through the GEMM), 1x1 kernels.
CONFIGS = [
    ((2, 6, 13, 11), 5, 3, 1, 2, 2, 1, True),
    ((1, 8, 17, 17), 4, 3, 1, 6, 6, 1, True),
    ((2, 4, 9, 12), 6, (3, 2), (2, 1), (1, 3), (2, 3), 2, False),
    ((3, 6, 8, 8), 6, 3, 2, 3, 3, 3, True),
    ((2, 5, 11, 9), 5, 3, 1, 4, 4, 5, True),
    ((2, 5, 11, 9), 5, (3, 5), (2, 3), (2, 0), (1, 2), 5, False),
    ((1, 4, 7, 10), 8, 3, 1, 1, 2, 4, True),
    ((2, 7, 6, 5), 3, 1, 1, 0, 1, 1, True),
    ((1, 3, 5, 5), 2, 5, 1, 0, 1, 1, True),
]


def make_case(config, *, seed=0, dtype=torch.float32, device="cpu"):
    shape, out_channels, kernel, stride, padding, dilation, groups, bias = config
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(shape, generator=g, dtype=torch.float64)
    weight = torch.randn(out_channels, shape[1] // groups, *kernel, generator=g, dtype=torch.float64)
    bias_tensor = torch.randn(out_channels, generator=g, dtype=torch.float64) if bias else None
    move = lambda t: None if t is None else t.to(device=device, dtype=dtype)  # noqa: E731
    return (
        move(input),
        move(weight),
        move(bias_tensor),
        dict(stride=stride, padding=padding, dilation=dilation, groups=groups),
    )


def forward_and_grads(fn, input, weight, bias, kwargs, grad_seed=1, grad=None):
    """fn's output and its gradients for input, weight (and bias) under an upstream grad drawn from grad_seed and
    rounded to the output's dtype (or the given grad)."""
    leaves = [t.detach().clone().requires_grad_() for t in (input, weight, bias) if t is not None]
    out = fn(*leaves, **kwargs) if bias is not None else fn(*leaves, None, **kwargs)
    if grad is None:
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    return (out, *torch.autograd.grad(out, leaves, grad.to(out)))


def assert_all_close(actual, expected, dtype):
    for a, e in zip(actual, expected, strict=True):
        torch.testing.assert_close(a, e, **TOLERANCES[dtype])


def assert_matches_float64_conv2d(actual, input, weight, bias, kwargs, grad_seed=1):
    """actual = forward_and_grads(...) in any dtype and on any device, judged against F.conv2d in float64 on the same
    operands (the upstream grad rounded to actual's dtype first), within the rounding bound of each result's sum:
    C_in / groups * kH * kW products (+ bias) per output, C_out / groups * kH * kW per input gradient and
    N * Ho * Wo per weight or bias gradient. The bound's magnitudes are the same sums of absolute values."""
    dtype = actual[0].dtype
    double = lambda t: None if t is None else t.detach().cpu().double()  # noqa: E731
    absolute = lambda t: None if t is None else t.abs()  # noqa: E731
    grad = torch.randn(actual[0].shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    grad = grad.to(dtype).double()
    operands = [double(t) for t in (input, weight, bias)]
    exact = forward_and_grads(F.conv2d, *operands, kwargs, grad=grad)
    magnitude = forward_and_grads(F.conv2d, *map(absolute, operands), kwargs, grad=grad.abs())
    n, _, out_h, out_w = exact[0].shape
    groups = kwargs.get("groups", 1)
    per_tap = weight.shape[2] * weight.shape[3]
    terms = [weight.shape[1] * per_tap + 1, weight.shape[0] // groups * per_tap, n * out_h * out_w, n * out_h * out_w]
    names = ["output", "grad_input", "grad_weight", "grad_bias"]
    for a, e, m, k, name in zip(actual, exact, magnitude, terms, names):
        assert_within_summation_bound(a.cpu(), e, m, k, name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_matches_conv2d(device, dtype, config):
    input, weight, bias, kwargs = make_case(config, dtype=dtype, device=device)
    actual = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    assert_matches_float64_conv2d(actual, input, weight, bias, kwargs)


@pytest.mark.parametrize("seed", range(12))
def test_random_configurations(seed):
    g = torch.Generator().manual_seed(100 + seed)
    r = lambda low, high: int(torch.randint(low, high + 1, (1,), generator=g))  # noqa: E731
    groups = [1, 2, 3][r(0, 2)]
    depthwise = r(0, 3) == 0
    channels = groups * r(1, 3)
    if depthwise:
        groups = channels
    out_channels = channels if depthwise else groups * r(1, 3)
    kernel, dilation, stride = (r(1, 4), r(1, 3)), (r(1, 4), r(1, 4)), (r(1, 3), r(1, 3))
    padding = (r(0, 4), r(0, 4))
    size = [max(r(1, 14), (kernel[d] - 1) * dilation[d] + 1 - 2 * padding[d]) for d in range(2)]
    config = ((r(1, 3), channels, *size), out_channels, kernel, stride, padding, dilation, groups, r(0, 1) == 1)
    input, weight, bias, kwargs = make_case(config, seed=seed, dtype=torch.float64)
    actual = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    assert_matches_float64_conv2d(actual, input, weight, bias, kwargs)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[4]], ids=["gemm", "depthwise"])
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_layouts_read_in_place_with_identical_results(config, layout, dtype):
    input, weight, bias, kwargs = make_case(config, dtype=dtype)
    expected = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    actual = forward_and_grads(segops.dilated_conv2d, layouts(input)[layout], weight, bias, kwargs)
    if config is CONFIGS[0] and dtype == torch.float32 and torch.backends.mkldnn.is_available():
        # The general case in float32 is oneDNN's convolution, which picks another kernel (another summation order)
        # for a channels_last input, as F.conv2d does: each layout within the rounding bound of the exact sums.
        assert_matches_float64_conv2d(expected, input, weight, bias, kwargs)
        assert_matches_float64_conv2d(actual, input, weight, bias, kwargs)
        return
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[4], CONFIGS[7]], ids=["gemm", "depthwise", "1x1"])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
def test_output_and_input_gradient_keep_the_input_memory_format_as_conv2d(config, layout):
    # channels_last in, channels_last out (and back), as F.conv2d does: a channels_last network stays channels_last.
    input, weight, bias, kwargs = make_case(config)
    variant = layouts(input)[layout] if layout != "contiguous" else input
    strides = {}
    for name, op in (("segops", segops.dilated_conv2d), ("conv2d", F.conv2d)):
        leaf = variant.detach().requires_grad_()
        output = op(leaf, weight, bias, **kwargs)
        output.backward(torch.ones_like(output))
        strides[name] = (output.stride(), leaf.grad.stride())
    assert strides["segops"] == strides["conv2d"], strides


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "strided"])
@pytest.mark.parametrize(
    "case",
    [
        ((2, 4, 6, 7), (4, 1, 3, 3), 4),  # depthwise
        ((2, 4, 6, 7), (6, 2, 3, 3), 2),  # grouped GEMM
        ((2, 4, 6, 7), (0, 4, 3, 3), 1),  # no output channels: the zero-size path
        ((0, 4, 6, 7), (6, 4, 3, 3), 1),  # no images
        ((2, 1, 6, 7), (3, 1, 3, 3), 1),  # one input channel
    ],
    ids=["depthwise", "grouped", "no-out-channels", "no-images", "one-channel"],
)
def test_fake_kernels_give_the_real_ops_strides(case, layout):
    """The fake kernels (what torch.compile and torch.export carry) give every output the strides the real op
    gives it, forward and backward for every output mask, in every input layout."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    input_shape, weight_shape, groups = case
    input = torch.randn(input_shape)
    input = layouts(input)[layout] if layout != "contiguous" and input.numel() else input
    weight = torch.randn(weight_shape)
    args = ([1, 1], [1, 1], [2, 2], groups)
    real = torch.ops.segops.dilated_conv2d(input, weight, None, *args)
    grad = torch.randn(real.shape)
    masks = [list(mask) for mask in itertools.product([False, True], repeat=3)]
    real_grads = [torch.ops.segops._dilated_conv2d_backward(grad, input, weight, *args, mask) for mask in masks]
    with FakeTensorMode() as mode:
        fake_input, fake_weight, fake_grad = (mode.from_tensor(t) for t in (input, weight, grad))
        fake = torch.ops.segops.dilated_conv2d(fake_input, fake_weight, None, *args)
        fake_grads = [
            torch.ops.segops._dilated_conv2d_backward(fake_grad, fake_input, fake_weight, *args, mask) for mask in masks
        ]
    assert (fake.shape, fake.stride()) == (real.shape, real.stride())
    for mask, reals, fakes in zip(masks, real_grads, fake_grads):
        for r, f in zip(reals, fakes):
            assert (f.shape, f.stride()) == (r.shape, r.stride()), mask


def test_chunked_columns_match_conv2d_and_stay_within_the_budget():
    # 256 * 9 * 64 * 64 column elements (9.4 M) exceed the 2^23 budget: two chunks of output rows per image.
    g = torch.Generator().manual_seed(0)
    input = torch.randn(2, 256, 64, 64, generator=g)
    weight = torch.randn(4, 256, 3, 3, generator=g) * 0.05
    kwargs = dict(padding=2, dilation=2)
    actual = forward_and_grads(segops.dilated_conv2d, input, weight, None, kwargs)
    assert_matches_float64_conv2d(actual, input, weight, None, kwargs)
    with torch.profiler.profile(profile_memory=True) as profile:
        segops.dilated_conv2d(input, weight, None, **kwargs)
    largest = max(event.cpu_memory_usage for event in profile.events())
    assert largest <= 4 * 2**23  # one float32 column buffer; the full columns would be 37.7 MB


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("config", [CONFIGS[2], CONFIGS[4], CONFIGS[5]], ids=["grouped", "depthwise", "depthwise-2"])
def test_gradcheck(device, config):
    shape, *rest = config
    small = ((2, shape[1], 7, 9), *rest)
    input, weight, bias, kwargs = make_case(small, dtype=torch.float64, device=device)
    leaves = tuple(t.requires_grad_() for t in (input, weight, bias) if t is not None)

    def fn(*args):
        return (
            segops.dilated_conv2d(*args, **kwargs) if bias is not None else segops.dilated_conv2d(*args, None, **kwargs)
        )

    assert torch.autograd.gradcheck(fn, leaves)


def test_double_backward_is_a_clear_error():
    input, weight, bias, kwargs = make_case(CONFIGS[0], dtype=torch.float64)
    input.requires_grad_()
    (grad,) = torch.autograd.grad(segops.dilated_conv2d(input, weight, bias, **kwargs).sum(), input, create_graph=True)
    with pytest.raises(RuntimeError, match="dilated_conv2d: double backward is not supported"):
        grad.sum().backward()


def test_opcheck():
    # float64 through segops' GEMM and depthwise paths; float32 through oneDNN's and tap by tap (TAP_BY_TAP, below).
    float64_cases = [(config, torch.float64) for config in (CONFIGS[0], CONFIGS[2], CONFIGS[4])]
    for config, dtype in float64_cases + [(CONFIGS[0], torch.float32), (TAP_BY_TAP[1], torch.float32)]:
        input, weight, bias, kwargs = make_case(config, dtype=dtype)
        pairs = [
            list(kwargs[k]) if isinstance(kwargs[k], tuple) else [kwargs[k]] * 2
            for k in ("stride", "padding", "dilation")
        ]
        args = (
            input.requires_grad_(),
            weight.requires_grad_(),
            None if bias is None else bias.requires_grad_(),
            *pairs,
            kwargs["groups"],
        )
        torch.library.opcheck(torch.ops.segops.dilated_conv2d.default, args)
        out = torch.ops.segops.dilated_conv2d(*args)
        grad = torch.randn(out.shape, dtype=dtype)
        for mask in ([True, True, True], [True, False, False], [False, True, bias is not None]):
            torch.library.opcheck(
                torch.ops.segops._dilated_conv2d_backward.default,
                (grad, input.detach(), weight.detach(), *pairs, kwargs["groups"], mask),
            )


def test_compile_fullgraph_matches_eager():
    input, weight, bias, kwargs = make_case(CONFIGS[1])

    def aspp_branch(x, w, b):
        return segops.dilated_conv2d(x, w, b, **kwargs).relu().mean(dim=1)

    expected = forward_and_grads(aspp_branch, input, weight, bias, {})
    actual = forward_and_grads(torch.compile(aspp_branch, fullgraph=True), input, weight, bias, {})
    assert_all_close(actual, expected, torch.float32)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("config", [CONFIGS[0], CONFIGS[4]], ids=["gemm", "depthwise"])
def test_low_precision_against_float32(dtype, config):
    # The same (rounded) inputs in float32: errors of a few units of the dtype's rounding of the result's scale.
    input, weight, bias, kwargs = make_case(config, dtype=dtype)
    actual = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    expected = forward_and_grads(segops.dilated_conv2d, input.float(), weight.float(), bias.float(), kwargs)
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e, rtol=8 * eps, atol=8 * eps * e.abs().max().item())


def test_empty_inputs():
    input = torch.randn(0, 4, 6, 6, requires_grad=True)
    weight = torch.randn(3, 4, 3, 3, requires_grad=True)
    bias = torch.randn(3, requires_grad=True)
    out = segops.dilated_conv2d(input, weight, bias, padding=1)
    expected = F.conv2d(input, weight, bias, padding=1)
    assert torch.equal(out, expected)
    grads = torch.autograd.grad(out.sum(), (input, weight, bias))
    expected_grads = torch.autograd.grad(expected.sum(), (input, weight, bias))
    for a, e in zip(grads, expected_grads):
        assert torch.equal(a, e)
    # No input channels: the output is the bias (F.conv2d returns a [2, 0, 6, 6] tensor instead).
    input = torch.randn(2, 0, 6, 6, requires_grad=True)
    weight = torch.randn(3, 0, 3, 3, requires_grad=True)
    out = segops.dilated_conv2d(input, weight, bias, padding=1)
    assert torch.equal(out, bias.detach().view(1, 3, 1, 1).expand(2, 3, 6, 6))
    grads = torch.autograd.grad(out.sum(), (input, weight, bias))
    assert grads[0].shape == input.shape and grads[1].shape == weight.shape
    assert torch.equal(grads[2], torch.full((3,), 72.0))
    # No output channels (which F.conv2d rejects): an empty output, zero gradients.
    input = torch.randn(2, 4, 6, 6, requires_grad=True)
    weight = torch.randn(0, 4, 3, 3, requires_grad=True)
    out = segops.dilated_conv2d(input, weight, None, padding=1)
    assert out.shape == (2, 0, 6, 6)
    out.sum().backward()
    assert torch.equal(input.grad, torch.zeros_like(input)) and weight.grad.shape == weight.shape


def inside_fraction(config):
    """The share of config's (output, tap) products whose input lies inside the image, counted by F.conv2d: a
    convolution of ones with ones counts, at each output, the taps reading inside."""
    shape, _, kernel, stride, padding, dilation, _, _ = config
    kernel = kernel if isinstance(kernel, tuple) else (kernel, kernel)
    counts = F.conv2d(torch.ones(1, 1, *shape[2:]), torch.ones(1, 1, *kernel), None, stride, padding, dilation)
    return counts.sum().item() / (counts.numel() * kernel[0] * kernel[1])


# The float32 general case with at most 60% of its products inside the input runs tap by tap (one GEMM per tap over
# the outputs it reads inside): an ASPP branch on a small map, taps wholly in the padding, stride 2 with a rectangular
# kernel and unequal dilations, DeepLab v3's rate 18 at output stride 16 (one tap inside).
TAP_BY_TAP = [
    CONFIGS[1],
    ((2, 6, 9, 10), 5, 3, 1, 6, 6, 1, True),
    ((1, 4, 5, 7), 3, 3, 1, 6, 6, 1, False),
    ((2, 5, 12, 11), 4, (3, 2), 2, (5, 4), (5, 7), 1, True),
    ((1, 16, 4, 4), 8, 3, 1, 18, 18, 1, True),
]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the path is chosen beside oneDNN's")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("config", TAP_BY_TAP, ids=str)
def test_tap_by_tap_matches_conv2d_in_every_layout(config, layout):
    assert inside_fraction(config) <= 0.6
    input, weight, bias, kwargs = make_case(config)
    actual = forward_and_grads(segops.dilated_conv2d, layouts(input)[layout], weight, bias, kwargs)
    assert_matches_float64_conv2d(actual, input, weight, bias, kwargs)
    # Fresh tensors, not views of a working buffer (autograd forbids in-place ops, such as a ReLU, on those).
    assert all(result._base is None for result in actual)
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    assert actual[0].is_contiguous(memory_format=memory_format) and actual[1].is_contiguous(memory_format=memory_format)


def aten_ops_called(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        fn()
    return {event.key for event in profile.key_averages()}


def aten_ops_of_forward_and_backward(input, weight, bias, kwargs):
    """The ATen ops dilated_conv2d's forward and its backward call (two sets), and the leaves, whose grads it set."""
    forward = aten_ops_called(lambda: segops.dilated_conv2d(input, weight, bias, **kwargs))
    leaves = [t.requires_grad_() for t in (input, weight, bias) if t is not None]
    output = segops.dilated_conv2d(input, weight, bias, **kwargs)
    backward = aten_ops_called(lambda: output.backward(torch.ones_like(output)))
    return forward, backward, leaves


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the path is chosen beside oneDNN's")
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("config", TAP_BY_TAP[1:] + [CONFIGS[0], CONFIGS[3], ((1, 4, 16, 16), 4, 3, 1, 4, 4, 1, True)])
def test_the_float32_general_case_runs_tap_by_tap_where_most_products_read_padding(config, deterministic):
    # Forward and backward: GEMMs and no oneDNN convolution exactly where at most 60% of the products read inside the
    # input (counted by brute force), outside deterministic mode; oneDNN otherwise (the backward under deterministic
    # mode is the im2col GEMM path, also without ATen's convolution: only the forward is checked there).
    input, weight, bias, kwargs = make_case(config)
    with DeterministicGuard(deterministic):
        forward, backward, leaves = aten_ops_of_forward_and_backward(input, weight, bias, kwargs)
    tap_by_tap = not deterministic and inside_fraction(config) <= 0.6 and config[6] == 1
    assert ("aten::convolution" not in forward) == tap_by_tap and ("aten::mm" in forward) == tap_by_tap
    if not deterministic:
        assert ("aten::convolution_backward" not in backward) == tap_by_tap and ("aten::mm" in backward) == tap_by_tap
    assert all(leaf.grad is not None for leaf in leaves)


# Weights of at least 32 MiB: FCN's fc6 shrunk to a 2x2 kernel on a 4x4 map, its fc7 at batch 2, and a kernel of 8x8
# with 64 output channels on either side of 64 output positions; a 1x1 weight 2 KiB short of 32 MiB.
WEIGHT_HEAVY = [
    ((1, 512, 4, 4), 4096, 2, 1, 0, 1, 1, True),
    ((2, 2048, 4, 4), 4096, 1, 1, 0, 1, 1, False),
    ((1, 2048, 15, 15), 64, 8, 1, 0, 1, 1, True),
    ((1, 2048, 15, 16), 64, 8, 1, 0, 1, 1, True),
    ((2, 2047, 4, 4), 4096, 1, 1, 0, 1, 1, False),
]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the path is chosen beside oneDNN's")
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("config", WEIGHT_HEAVY, ids=str)
def test_the_float32_general_case_runs_the_gemm_path_where_the_weight_outweighs_the_columns(config, deterministic):
    # The GEMM path (im2col + GEMM, no oneDNN weight reorder) exactly where the weight is at least 32 MiB and has at
    # least as many output channels as there are output positions (N * Ho * Wo), forward and backward; its results
    # within the summation bound of float64 F.conv2d.
    input, weight, bias, kwargs = make_case(config)
    out_positions = F.conv2d(input[:, :1], weight[:1, :1], None, **kwargs).numel()
    gemm_path = weight.numel() * weight.element_size() >= 32 * 2**20 and weight.shape[0] >= out_positions
    with DeterministicGuard(deterministic):
        forward, backward, leaves = aten_ops_of_forward_and_backward(input, weight, bias, kwargs)
        actual = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    assert ("aten::convolution" not in forward) == gemm_path
    assert ("aten::convolution_backward" not in backward) == (gemm_path or deterministic)
    assert all(leaf.grad is not None for leaf in leaves)
    assert_matches_float64_conv2d(actual, input, weight, bias, kwargs)


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the path is chosen beside oneDNN's")
def test_the_weight_heavy_gemm_path_gives_the_same_bits_in_every_layout():
    # The GEMM path reads every layout in place (im2col) and returns the input's memory format: the same bits as for
    # contiguous tensors, as docs/operators.md says of every path but oneDNN's and tap by tap.
    input, weight, bias, kwargs = make_case(WEIGHT_HEAVY[0])
    expected = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    channels_last = input.contiguous(memory_format=torch.channels_last)
    strided_weight = torch.empty(weight.shape[::-1]).permute(3, 2, 1, 0).copy_(weight)
    actual = forward_and_grads(segops.dilated_conv2d, channels_last, strided_weight, bias, kwargs)
    assert actual[0].is_contiguous(memory_format=torch.channels_last)
    for a, e in zip(actual, expected, strict=True):
        assert torch.equal(a, e)


# A batch of 8: where oneDNN's weight gradient splits its sum over the batch by thread count.
BATCH_8 = ((8, 16, 12, 12), 16, 3, 1, 2, 2, 1, True)


@pytest.mark.parametrize(
    "config, deterministic_mode",
    [(CONFIGS[1], True), (BATCH_8, True), (WEIGHT_HEAVY[1], False), (CONFIGS[4], False)],
    ids=["gemm", "gemm-batch-8", "gemm-weight-heavy", "depthwise"],
)
def test_deterministic_across_runs_and_threads(config, deterministic_mode):
    # The general case in float32 runs on oneDNN, bitwise equal run to run, its weight gradient not across thread
    # counts; deterministic mode gives the GEMM path's backward, equal across both, as is the GEMM path a weight that
    # outweighs the activations takes in any mode. The depthwise kernels always are.
    input, weight, bias, kwargs = make_case(config)
    threads = torch.get_num_threads()
    runs = []
    try:
        with DeterministicGuard(deterministic_mode):
            for n in (1, threads, threads):
                torch.set_num_threads(n)
                runs.append(forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        for a, b in zip(run, runs[0]):
            assert torch.equal(a, b)


def test_float32_general_case_is_bitwise_reproducible_run_to_run():
    input, weight, bias, kwargs = make_case(BATCH_8)
    first, second = (forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs) for _ in range(2))
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_module_is_conv2d_compatible():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, stride=2, padding=(4, 2), dilation=(4, 2), groups=2)
    torch.manual_seed(0)
    ours = segops.DilatedConv2d(8, 6, 3, stride=2, padding=(4, 2), dilation=(4, 2), groups=2)
    assert torch.equal(ours.weight, conv.weight) and torch.equal(ours.bias, conv.bias)  # same initialisation
    assert repr(ours) == repr(conv).replace("Conv2d", "DilatedConv2d", 1)
    assert list(ours.state_dict()) == list(conv.state_dict())
    x = torch.randn(2, 8, 15, 13)
    other = nn.Conv2d(8, 6, 3, stride=2, padding=(4, 2), dilation=(4, 2), groups=2)
    ours.load_state_dict(other.state_dict())
    torch.testing.assert_close(ours(x), other(x), **TOLERANCES[torch.float32])
    converted = segops.DilatedConv2d.from_conv(other)
    assert converted.weight is other.weight and converted.bias is other.bias
    torch.testing.assert_close(converted(x), other(x), **TOLERANCES[torch.float32])
    no_bias = segops.DilatedConv2d(4, 4, 3, dilation=6, padding=6, groups=4, bias=False)
    assert no_bias.bias is None and repr(no_bias) == (
        "DilatedConv2d(4, 4, kernel_size=(3, 3), stride=(1, 1), padding=(6, 6), dilation=(6, 6), groups=4, bias=False)"
    )
    torch.testing.assert_close(no_bias(x[:, :4]), F.conv2d(x[:, :4], no_bias.weight, None, 1, 6, 6, 4))
    with pytest.raises(ValueError, match="DilatedConv2d: padding_mode must be 'zeros', got 'reflect'"):
        segops.DilatedConv2d(4, 4, 3, padding_mode="reflect")
    with pytest.raises(ValueError, match="DilatedConv2d: padding must be an int or a pair of ints, got 'same'"):
        segops.DilatedConv2d(4, 4, 3, padding="same")
    for padding in ("same", "valid"):  # string padding becomes F.conv2d's numbers where they are symmetric
        conv = nn.Conv2d(4, 4, (3, 5), padding=padding, dilation=(2, 3))
        converted = segops.DilatedConv2d.from_conv(conv)
        torch.testing.assert_close(converted(x[:, :4]), conv(x[:, :4]), **TOLERANCES[torch.float32])
    with pytest.raises(ValueError, match=r"DilatedConv2d.from_conv: needs numeric or symmetric padding .*'same'"):
        segops.DilatedConv2d.from_conv(nn.Conv2d(4, 4, 4, padding="same", dilation=3))  # 9 = 4 + 5: asymmetric
    with pytest.raises(ValueError, match=r"needs numeric or symmetric padding .* padding_mode='reflect'"):
        segops.DilatedConv2d.from_conv(nn.Conv2d(4, 4, 3, padding=2, dilation=2, padding_mode="reflect"))


def test_function():
    input, weight, bias, kwargs = make_case(CONFIGS[0])
    out = segops.DilatedConv2dFunction.apply(input, weight, bias, [1, 1], [2, 2], [2, 2], 1)
    assert torch.equal(out, segops.dilated_conv2d(input, weight, bias, **kwargs))


def _kwargs():
    input, weight, bias, _ = make_case(CONFIGS[0])
    return dict(input=input, weight=weight, bias=bias, stride=[1, 1], padding=[2, 2], dilation=[2, 2], groups=1)


BAD_ARGUMENTS = [
    (
        "input 3-D",
        dict(input=torch.zeros(6, 13, 11)),
        r"dilated_conv2d: input must have shape \[N, C, H, W\], got \[6, 13, 11\]",
    ),
    (
        "input int",
        dict(input=torch.zeros(2, 6, 13, 11, dtype=torch.int64)),
        r"dilated_conv2d: input must be float32, float64, float16 or bfloat16, got Long",
    ),
    (
        "channels",
        dict(weight=torch.zeros(5, 4, 3, 3)),
        r"dilated_conv2d: weight must have shape \[C_out, C_in / groups, kH, kW\] with C_in / groups = 6, "
        r"C_out a multiple of groups \(1\) and kH, kW >= 1, got \[5, 4, 3, 3\]",
    ),
    ("groups divide", dict(groups=4), r"dilated_conv2d: groups must divide the input channels \(6\), got 4"),
    (
        "groups out",
        dict(groups=2, weight=torch.zeros(5, 3, 3, 3)),
        r"C_out a multiple of groups \(2\) and kH, kW >= 1, got \[5, 3, 3, 3\]",
    ),
    ("groups zero", dict(groups=0), r"dilated_conv2d: groups must be positive, got 0"),
    ("dilation zero", dict(dilation=[0, 1]), r"dilated_conv2d: dilation must be positive, got \[0, 1\]"),
    ("stride negative", dict(stride=[1, -2]), r"dilated_conv2d: stride must be positive, got \[1, -2\]"),
    ("padding negative", dict(padding=[-1, 0]), r"dilated_conv2d: padding must be non-negative, got \[-1, 0\]"),
    (
        "kernel too large",
        dict(dilation=[9, 2]),
        r"dilated_conv2d: the dilated kernel's height \(\(kH - 1\) \* dilation \+ 1 = 19\) must not exceed "
        r"the padded input's \(H \+ 2 \* padding = 17\)",
    ),
    (
        "weight dtype",
        dict(weight=torch.zeros(5, 6, 3, 3, dtype=torch.float64)),
        r"dilated_conv2d: weight must have the same dtype as input \(Float\), got Double",
    ),
    (
        "weight device",
        dict(weight=torch.zeros(5, 6, 3, 3, device="meta")),
        r"dilated_conv2d: weight must be on the same device as input \(cpu\), got meta",
    ),
    ("bias shape", dict(bias=torch.zeros(4)), r"dilated_conv2d: bias must have shape \[C_out\] = \[5\], got \[4\]"),
    (
        "bias dtype",
        dict(bias=torch.zeros(5, dtype=torch.float16)),
        r"dilated_conv2d: bias must have the same dtype as input \(Float\), got Half",
    ),
]


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=lambda case: case[0])
def test_bad_arguments_eager_and_fake(case):
    _, changes, message = case
    kwargs = _kwargs()
    kwargs.update(changes)
    assert_raises_eager_and_fake(torch.ops.segops.dilated_conv2d, kwargs, message)


def test_bad_backward_arguments_eager_and_fake():
    kwargs = _kwargs()
    del kwargs["bias"]
    op = torch.ops.segops._dilated_conv2d_backward
    for grad, message in [
        (
            torch.zeros(2, 5, 13, 10),
            r"_dilated_conv2d_backward: grad must have shape \[2, 5, 13, 11\], got \[2, 5, 13, 10\]",
        ),
        (
            torch.zeros(2, 5, 13, 11, dtype=torch.float64),
            r"_dilated_conv2d_backward: grad must have the same dtype as input \(Float\), got Double",
        ),
    ]:
        assert_raises_eager_and_fake(op, dict(grad=grad, **kwargs, output_mask=[True, True, True]), message)


def test_functional_errors_name_the_argument():
    input, weight, bias, _ = make_case(CONFIGS[0])
    with pytest.raises(RuntimeError, match=r"dilated_conv2d: dilation must be positive, got \[0, 0\]"):
        segops.dilated_conv2d(input, weight, bias, dilation=0)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("config", CONFIGS, ids=str)
def test_cuda_matches_cpu_deterministically_without_alert(config):
    input, weight, bias, kwargs = make_case(config)
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    torch.use_deterministic_algorithms(True)  # raises if any op on the path alerts
    try:
        runs = [
            forward_and_grads(segops.dilated_conv2d, cuda(input), cuda(weight), cuda(bias), kwargs) for _ in range(2)
        ]
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(*runs):
        assert torch.equal(a, b)
    assert_matches_float64_conv2d(runs[0], input, weight, bias, kwargs)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_low_precision(dtype):
    input, weight, bias, kwargs = make_case(CONFIGS[4], dtype=dtype, device="cuda")
    actual = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
    expected = forward_and_grads(F.conv2d, input.float(), weight.float(), bias.float(), kwargs)
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.float(), e, rtol=8 * eps, atol=8 * eps * e.abs().max().item())


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("groups, out_channels", [(1, 6), (4, 4)])  # the GEMM path and the depthwise kernels
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph(groups, out_channels):
    g = torch.Generator().manual_seed(0)
    input = torch.randn(2, 4, 12, 13, generator=g)
    weight, bias = torch.randn(out_channels, 4 // groups, 3, 3, generator=g), torch.randn(out_channels, generator=g)
    assert_cuda_path_does_not_synchronise(
        lambda x, w, b: segops.dilated_conv2d(x, w, b, 1, 2, 2, groups), input, weight, bias, grad_of=(0, 1, 2)
    )


def _relative_error(actual, exact):
    return ((actual.double().cpu() - exact).abs().max() / exact.abs().max()).item()


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("deterministic", [False, True], ids=["cudnn", "segops backward"])
def test_cuda_follows_cudnns_tf32_switch_as_conv2d(deterministic):
    """torch.backends.cudnn.allow_tf32 on: segops' results (forward, input and weight gradients; cuDNN's, or in
    deterministic mode segops' GEMMs on cuBLAS) err as F.conv2d's do, at TF32's precision (2^-11) where F.conv2d's
    do; off: at float32's (a 1152-term sum errs below 1e-5 relative)."""
    input, weight, bias, kwargs = make_case(((4, 128, 32, 32), 128, 3, 1, 2, 2, 1, True), device="cuda")
    exact = forward_and_grads(F.conv2d, *(t.cpu().double() for t in (input, weight, bias)), kwargs)
    for allow_tf32 in (True, False):
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, deterministic=False, allow_tf32=allow_tf32):
            torch.use_deterministic_algorithms(deterministic)
            try:
                ours = forward_and_grads(segops.dilated_conv2d, input, weight, bias, kwargs)
                theirs = forward_and_grads(F.conv2d, input, weight, bias, kwargs)
            finally:
                torch.use_deterministic_algorithms(False)
        for name, o, t, e in zip(["output", "grad_input", "grad_weight"], ours, theirs, exact):
            ours_error, their_error = _relative_error(o, e), _relative_error(t, e)
            if allow_tf32:
                assert ours_error <= 4 * their_error + 1e-5, (name, ours_error, their_error)
                assert their_error < 1e-4 or ours_error > 1e-5, (name, "TF32 not used", ours_error, their_error)
            else:
                assert ours_error < 1e-5, (name, ours_error)


@pytest.mark.skipif(torch.version.cuda is None, reason="a CPU-only build of torch")
def test_the_cublas_the_cuda_path_looks_up_is_loaded_with_torch():
    """The deterministic CUDA backward calls cuBLAS through torch's own copy, found by dlopen(RTLD_NOLOAD) of
    libcublas.so.<CUDA major> (csrc/common/cublas_gemm.cuh): importing torch must have loaded it, GPU or not."""
    import ctypes
    import os

    major = torch.version.cuda.split(".")[0]
    library = ctypes.CDLL(f"libcublas.so.{major}", mode=os.RTLD_NOLOAD | os.RTLD_NOW)
    for symbol in ("cublasGemmStridedBatchedEx", "cublasGetMathMode", "cublasSetMathMode"):
        assert getattr(library, symbol) is not None

import pytest
import torch

import segops
from segops import reference
from conftest import DEVICES, requires_cuda
from op_testing import assert_cuda_path_does_not_synchronise, assert_raises_eager_and_fake, layouts

TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


def make_case(
    seed,
    *,
    batch=2,
    channels=3,
    height=9,
    width=11,
    out_h=None,
    out_w=None,
    dtype=torch.float32,
    scale=None,
    max_flow=3.0,
    device="cpu",
):
    """feature [N, C, H, W], a smooth random flow [N, 2, Ho, Wo] of up to max_flow pixels (reaching past the
    borders), and scale None, "channel" ([N, C, Ho, Wo]) or "shared" ([N, 1, Ho, Wo])."""
    g = torch.Generator().manual_seed(seed)
    out_h = height if out_h is None else out_h
    out_w = width if out_w is None else out_w
    feature = torch.randn(batch, channels, height, width, generator=g, dtype=dtype)
    coarse = (torch.rand(batch, 2, 3, 3, generator=g, dtype=torch.float64) * 2 - 1) * max_flow
    flow = torch.nn.functional.interpolate(
        coarse, size=(max(out_h, 1), max(out_w, 1)), mode="bilinear", align_corners=True
    )[:, :, :out_h, :out_w]
    flow = (flow + 0.3 * torch.randn(flow.shape, generator=g, dtype=torch.float64)).to(dtype)
    scale_tensor = None
    if scale is not None:
        scale_channels = channels if scale == "channel" else 1
        scale_tensor = torch.rand(batch, scale_channels, out_h, out_w, generator=g, dtype=dtype) + 0.5
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return move(feature), move(flow), move(scale_tensor)


def forward_and_grads(fn, feature, flow, scale, grad_seed=7):
    """fn's output and the gradients of feature, flow and scale for a random output gradient."""
    inputs = [t.detach().clone().requires_grad_() for t in (feature, flow)]
    if scale is not None:
        inputs.append(scale.detach().clone().requires_grad_())
    out = fn(*inputs) if scale is not None else fn(*inputs, None)
    # Drawn in float64 and rounded, so that every dtype sees the same gradient.
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed), dtype=torch.float64)
    grad = grad.to(dtype=out.dtype, device=out.device)
    grads = torch.autograd.grad(out, inputs, grad)
    return (out, *grads)


SHAPES = {
    "same size": dict(),
    "larger output": dict(out_h=12, out_w=15),
    "smaller output": dict(out_h=4, out_w=5),
    "one channel": dict(channels=1, batch=1),
    "many channels": dict(channels=20, height=6, width=7),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [None, "channel", "shared"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_grid_sample(device, dtype, scale, shape):
    for seed in range(3):
        feature, flow, scale_tensor = make_case(seed, dtype=dtype, scale=scale, device=device, **SHAPES[shape])
        expected = forward_and_grads(reference.flow_warp, feature, flow, scale_tensor)
        actual = forward_and_grads(segops.flow_warp, feature, flow, scale_tensor)
        for a, e in zip(actual, expected):
            torch.testing.assert_close(a, e, **TOLERANCES[dtype])


@pytest.mark.parametrize("scale", [None, "channel"])
def test_integer_positions_and_borders_follow_grid_sample(scale):
    # Samples exactly on pixel centres, on the borders (0, W - 1), just inside and outside them (-1, W, -0.5,
    # W - 0.5) and far away. W - 1 and H - 1 are powers of two, so the reference's normalised grid is exact and
    # both sides see the same positions; the derivative there follows grid_sample's convention.
    feature, _, scale_tensor = make_case(1, height=9, width=17, dtype=torch.float64, scale=scale)
    positions_x = torch.tensor([0, 16, -1, 17, -0.5, 16.5, 3, 7.25, -30, 40], dtype=torch.float64)
    positions_y = torch.tensor([0, 8, -1, 9, -0.5, 8.5, 2, 5.75, 100, -7], dtype=torch.float64)
    sample_x = positions_x.view(1, -1).expand(10, -1)
    sample_y = positions_y.view(-1, 1).expand(-1, 10)
    flow = torch.stack([sample_x - torch.arange(10.0).view(1, 10), sample_y - torch.arange(10.0).view(10, 1)])
    flow = flow.unsqueeze(0).expand(2, -1, -1, -1).contiguous()
    if scale_tensor is not None:
        scale_tensor = torch.rand(2, 3, 10, 10, dtype=torch.float64) + 0.5
    expected = forward_and_grads(reference.flow_warp, feature, flow, scale_tensor)
    actual = forward_and_grads(segops.flow_warp, feature, flow, scale_tensor)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)


def test_matches_brute_force_definition():
    # The definition summed over every pixel, independent of grid_sample (and valid for 1-pixel maps).
    for seed, shape in enumerate([dict(), dict(height=1, width=5), dict(height=4, width=1), dict(out_h=3, out_w=7)]):
        feature, flow, scale_tensor = make_case(seed, dtype=torch.float64, scale="shared", **shape)
        torch.testing.assert_close(
            segops.flow_warp(feature, flow, scale_tensor),
            reference.flow_warp_brute_force(feature, flow, scale_tensor),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_zero_flow_is_the_identity(layout):
    feature, flow, _ = make_case(2, height=7, width=8)
    assert torch.equal(segops.flow_warp(layouts(feature)[layout], torch.zeros_like(flow)), feature)


@pytest.mark.parametrize("scale", [None, "channel"])
def test_layouts_are_read_in_place_with_identical_results(scale):
    feature, flow, scale_tensor = make_case(3, channels=5, scale=scale)
    expected = forward_and_grads(segops.flow_warp, feature, flow, scale_tensor)
    for layout in ("channels_last", "strided"):
        actual = forward_and_grads(segops.flow_warp, layouts(feature)[layout], flow, scale_tensor)
        for a, e in zip(actual, expected):
            assert torch.equal(a, e)


def test_nan_and_infinite_flow_sample_nothing():
    feature, flow, _ = make_case(4)
    flow[0, 0, 2, 3] = float("nan")
    flow[1, 1, 4, 5] = float("inf")
    flow[0, 1, 6, 7] = -float("inf")
    out, grad_feature, grad_flow = forward_and_grads(segops.flow_warp, feature, flow, None)
    bad = torch.zeros(2, 9, 11, dtype=torch.bool)
    bad[0, 2, 3] = bad[1, 4, 5] = bad[0, 6, 7] = True
    assert torch.equal(out.permute(1, 0, 2, 3)[:, bad], torch.zeros(3, 3))
    assert torch.isfinite(out).all() and torch.isfinite(grad_feature).all()
    assert torch.equal(grad_flow.permute(1, 0, 2, 3)[:, bad], torch.zeros(2, 3))
    good_flow = flow.masked_fill(bad.unsqueeze(1), 0.0)
    torch.testing.assert_close(
        out[~bad.unsqueeze(1).expand_as(out)], reference.flow_warp(feature, good_flow)[~bad.unsqueeze(1).expand_as(out)]
    )


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("scale", [None, "channel", "shared"])
def test_gradcheck(device, seed, scale):
    feature, flow, scale_tensor = make_case(
        seed, batch=2, channels=2, height=5, width=6, out_h=4, out_w=5, dtype=torch.float64, scale=scale, device=device
    )
    inputs = [feature.requires_grad_(), flow.requires_grad_()]
    if scale_tensor is not None:
        inputs.append(scale_tensor.requires_grad_())
    assert torch.autograd.gradcheck(lambda *args: segops.flow_warp(*args), tuple(inputs))


def test_double_backward_is_a_clear_error():
    feature, flow, _ = make_case(0, dtype=torch.float64)
    feature.requires_grad_()
    (grad_feature,) = torch.autograd.grad(segops.flow_warp(feature, flow).sum(), feature, create_graph=True)
    with pytest.raises(RuntimeError, match="flow_warp: double backward is not supported"):
        grad_feature.sum().backward()


def test_function_and_module():
    feature, flow, scale_tensor = make_case(5, scale="channel")
    expected = segops.flow_warp(feature, flow, scale_tensor)
    assert torch.equal(segops.FlowWarpFunction.apply(feature, flow, scale_tensor), expected)
    assert torch.equal(segops.FlowWarp()(feature, flow, scale_tensor), expected)
    assert repr(segops.FlowWarp()) == "FlowWarp(mode=bilinear, padding=zeros, flow in pixels (dx, dy))"
    x = feature.clone().requires_grad_()
    segops.FlowWarpFunction.apply(x, flow).sum().backward()
    torch.testing.assert_close(
        x.grad, torch.autograd.grad(segops.flow_warp(feature.requires_grad_(), flow).sum(), feature)[0]
    )


def test_opcheck():
    for scale in (None, "channel", "shared"):
        feature, flow, scale_tensor = make_case(0, dtype=torch.float64, scale=scale, out_h=5, out_w=6)
        args = (
            feature.requires_grad_(),
            flow.requires_grad_(),
            None if scale_tensor is None else scale_tensor.requires_grad_(),
        )
        torch.library.opcheck(torch.ops.segops.flow_warp.default, args)
        grad = torch.randn(2, 3, 5, 6, dtype=torch.float64)
        torch.library.opcheck(
            torch.ops.segops._flow_warp_backward.default, (grad, *[a.detach() if a is not None else None for a in args])
        )


def test_compile_fullgraph_matches_eager():
    feature, flow, scale_tensor = make_case(1, scale="shared")

    def head(x, f, s):
        return segops.flow_warp(x, f, s).relu().mean(dim=1)

    expected = forward_and_grads(lambda x, f, s: head(x, f, s), feature, flow, scale_tensor)
    actual = forward_and_grads(torch.compile(head, fullgraph=True), feature, flow, scale_tensor)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_against_float32(device, dtype):
    # The same (rounded) inputs in float32: errors of a few units of the dtype's rounding. Flow stays float32.
    feature, flow, scale_tensor = make_case(6, channels=4, scale="channel", device=device)
    feature_low, scale_low = feature.to(dtype), scale_tensor.to(dtype)
    actual = forward_and_grads(segops.flow_warp, feature_low, flow, scale_low)
    expected = forward_and_grads(segops.flow_warp, feature_low.float(), flow, scale_low.float())
    assert actual[0].dtype == dtype and actual[2].dtype == torch.float32
    eps = torch.finfo(dtype).eps
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.float(), e.to(a.dtype).float(), rtol=4 * eps, atol=4 * eps * e.abs().max().item())


def test_empty_inputs():
    for shape in [dict(batch=0), dict(channels=0), dict(out_h=0), dict(out_w=0)]:
        feature, flow, scale_tensor = make_case(0, scale="channel", **shape)
        out, *grads = forward_and_grads(segops.flow_warp, feature, flow, scale_tensor)
        assert out.shape == (feature.shape[0], feature.shape[1], flow.shape[2], flow.shape[3])
        assert all(g.shape == t.shape and not g.any() for g, t in zip(grads, (feature, flow, scale_tensor)))
    # A feature map with no pixels: nothing to sample, zeros.
    feature, flow, _ = make_case(0, height=4, width=5)
    empty_map = torch.zeros(2, 3, 0, 5, requires_grad=True)
    out = segops.flow_warp(empty_map, flow)
    assert torch.equal(out, torch.zeros(2, 3, 4, 5))
    out.sum().backward()
    assert empty_map.grad.shape == (2, 3, 0, 5)


@pytest.mark.parametrize("scale", [None, "shared", "channel"])
@pytest.mark.parametrize("batch, channels", [(8, 6), (1, 3), (3, 2)])
def test_backward_deterministic_across_runs_and_threads(scale, batch, channels):
    # Large flows pile many samples onto few pixels: the feature gradient sums many contributions per pixel. Few
    # channels with an image per thread take the one-pass backward: (1, 3) compares it (one thread) with the two
    # passes (two threads).
    feature, flow, scale_tensor = make_case(
        8, batch=batch, channels=channels, height=12, width=10, max_flow=8.0, scale=scale
    )
    previous = torch.get_num_threads()
    try:
        results = []
        for num_threads in (2, 1, 2):
            torch.set_num_threads(num_threads)
            results.append(forward_and_grads(segops.flow_warp, feature, flow, scale_tensor))
    finally:
        torch.set_num_threads(previous)
    for result in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(result, results[0]))


def _kwargs():
    feature, flow, scale_tensor = make_case(0, out_h=5, out_w=6, scale="channel")
    return dict(feature=feature, flow=flow, scale=scale_tensor)


BAD_ARGUMENTS = [
    (
        "feature 3-D",
        lambda a: a.update(feature=a["feature"][0]),
        r"flow_warp: feature must have shape \[N, C, H, W\], got \[3, 9, 11\]",
    ),
    (
        "feature int",
        lambda a: a.update(feature=a["feature"].long()),
        r"flow_warp: feature must be float32, float64, float16 or bfloat16, got Long",
    ),
    (
        "flow 3 channels",
        lambda a: a.update(flow=torch.zeros(2, 3, 5, 6)),
        r"flow_warp: flow must have shape \[N, 2, Ho, Wo\] with N = 2, got \[2, 3, 5, 6\]",
    ),
    (
        "flow batch",
        lambda a: a.update(flow=torch.zeros(3, 2, 5, 6)),
        r"flow_warp: flow must have shape \[N, 2, Ho, Wo\] with N = 2, got \[3, 2, 5, 6\]",
    ),
    (
        "flow 3-D",
        lambda a: a.update(flow=torch.zeros(2, 5, 6)),
        r"flow_warp: flow must have shape \[N, 2, Ho, Wo\] with N = 2, got \[2, 5, 6\]",
    ),
    (
        "flow dtype",
        lambda a: a.update(flow=a["flow"].double()),
        r"flow_warp: flow must have the same dtype as feature \(Float\), got Double",
    ),
    (
        "flow dtype, half feature",
        lambda a: a.update(feature=a["feature"].half(), flow=a["flow"].double(), scale=None),
        r"flow_warp: flow must have the same dtype as feature \(Half\) or Float, got Double",
    ),
    (
        "scale shape",
        lambda a: a.update(scale=torch.ones(2, 2, 5, 6)),
        r"flow_warp: scale must have shape \[N, C, Ho, Wo\] or \[N, 1, Ho, Wo\] = \[2, 3, 5, 6\] or "
        r"\[2, 1, 5, 6\], got \[2, 2, 5, 6\]",
    ),
    (
        "scale size",
        lambda a: a.update(scale=torch.ones(2, 3, 9, 11)),
        r"flow_warp: scale must have shape \[N, C, Ho, Wo\] or \[N, 1, Ho, Wo\] = \[2, 3, 5, 6\] or "
        r"\[2, 1, 5, 6\], got \[2, 3, 9, 11\]",
    ),
    (
        "scale dtype",
        lambda a: a.update(scale=a["scale"].double()),
        r"flow_warp: scale must have the same dtype as feature \(Float\), got Double",
    ),
]


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=lambda case: case[0])
def test_bad_arguments_eager_and_fake(case):
    _, mutate, message = case
    kwargs = _kwargs()
    mutate(kwargs)
    assert_raises_eager_and_fake(torch.ops.segops.flow_warp, kwargs, message)


def test_bad_backward_arguments_and_devices():
    kwargs = _kwargs()
    with pytest.raises(RuntimeError, match=r"flow_warp: flow must be on the same device as feature \(cpu\), got meta"):
        torch.ops.segops.flow_warp(kwargs["feature"], kwargs["flow"].to("meta"))
    with pytest.raises(RuntimeError, match=r"flow_warp: scale must be on the same device as feature \(cpu\), got meta"):
        torch.ops.segops.flow_warp(kwargs["feature"], kwargs["flow"], kwargs["scale"].to("meta"))
    backward = torch.ops.segops._flow_warp_backward
    cases = [
        (torch.ones(2, 3, 9, 11), r"_flow_warp_backward: grad must have shape \[2, 3, 5, 6\], got \[2, 3, 9, 11\]"),
        (
            torch.ones(2, 3, 5, 6, dtype=torch.float64),
            r"_flow_warp_backward: grad must have the same dtype as feature \(Float\), got Double",
        ),
    ]
    for grad, message in cases:
        assert_raises_eager_and_fake(backward, dict(grad=grad, **kwargs), message)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("scale", [None, "channel", "shared"])
def test_cuda_matches_cpu_and_deterministic_mode(scale):
    feature, flow, scale_tensor = make_case(9, channels=5, max_flow=6.0, scale=scale)
    expected = forward_and_grads(segops.flow_warp, feature, flow, scale_tensor)
    cuda = lambda t: None if t is None else t.cuda()  # noqa: E731
    actual = forward_and_grads(segops.flow_warp, cuda(feature), cuda(flow), cuda(scale_tensor))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a.cpu(), e)
    torch.use_deterministic_algorithms(True)  # the gather path, and no nondeterminism alert
    try:
        runs = [forward_and_grads(segops.flow_warp, cuda(feature), cuda(flow), cuda(scale_tensor)) for _ in range(2)]
    finally:
        torch.use_deterministic_algorithms(False)
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    for a, e in zip(runs[0], expected):
        torch.testing.assert_close(a.cpu(), e)


@requires_cuda
@pytest.mark.cuda
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph():
    g = torch.Generator().manual_seed(0)
    feature, flow, scale = (
        torch.randn(2, 3, 9, 11, generator=g),
        3 * torch.randn(2, 2, 9, 11, generator=g),
        torch.rand(2, 3, 9, 11, generator=g),
    )
    assert_cuda_path_does_not_synchronise(segops.flow_warp, feature, flow, scale, grad_of=(0, 1, 2))

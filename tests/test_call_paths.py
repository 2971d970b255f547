"""Every way users call an op: forward-mode AD and torch.func, gradcheck's forward and batched checks, PyTorch's own
OpInfo samples, FX, TorchScript, argument layouts and tensor kinds. References are PyTorch's and torchvision's ops;
where a reference has no forward mode (grid_sample, torchvision's RoI ops), its tangent is its reverse-mode Jacobian
contracted with the tangent."""

import warnings

import pytest
import torch
import torch.nn.functional as F
import torch.utils._pytree as pytree
import torchvision
from torch.autograd import gradcheck
from torch.func import hessian, jacfwd, jacrev, jvp, vmap

import segops
from conftest import DEVICES
from tolerances import assert_within_summation_bound

D = torch.float64


@pytest.fixture(autouse=True)
def _no_vmap_fallback():
    # Every op has its batching rule (segops/_vmap.py): PyTorch's per-sample fallback, which warns, must not run.
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="There is a performance drop")
        yield


def reference_jvp(fn, primals, tangents):
    """fn's tangent from its reverse-mode Jacobian: sum_i J_i . t_i."""
    jacobians = torch.autograd.functional.jacobian(fn, primals)
    out = fn(*primals)
    total = torch.zeros_like(out)
    for jacobian, tangent in zip(jacobians, tangents):
        total += (jacobian.reshape(out.numel(), -1) @ tangent.reshape(-1)).view_as(out)
    return total


def randn(*shape, seed=0, device="cpu"):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D).to(device)


BOXES = torch.tensor([[0, 1.0, 1.2, 6.3, 5.1], [1, 0.4, 2.0, 7.5, 7.7], [1, 3.0, 3.0, 3.5, 4.0]], dtype=D)


def roi_align_case(device="cpu"):
    boxes = BOXES.to(device)
    x = randn(2, 3, 8, 9, device=device)
    return (
        lambda z: segops.roi_align(z, boxes, 3, 1.0, 2, True),
        lambda z: torchvision.ops.roi_align(z, boxes, 3, 1.0, 2, True),
        (x,),
    )


def roi_pool_case(device="cpu"):
    boxes = BOXES.to(device)
    x = randn(2, 3, 8, 9, device=device)
    return (
        lambda z: segops.roi_pool(z, boxes, (2, 3), 1.0),
        lambda z: torchvision.ops.roi_pool(z, boxes, (2, 3), 1.0),
        (x,),
    )


def ps_roi_align_case(device="cpu"):
    boxes = BOXES.to(device)
    x = randn(2, 12, 8, 9, device=device)  # 2 output channels of 2 x 3 bins
    return (
        lambda z: segops.ps_roi_align(z, boxes, (2, 3), 1.0, 2),
        lambda z: torchvision.ops.ps_roi_align(z, boxes, (2, 3), 1.0, 2),
        (x,),
    )


def ps_roi_pool_case(device="cpu"):
    boxes = BOXES.to(device)
    x = randn(2, 12, 8, 9, device=device)
    return (
        lambda z: segops.ps_roi_pool(z, boxes, (2, 3), 1.0),
        # torchvision's forward clips its windows one pixel short of the map's edge (its backward does not); one more
        # row and column moves the clip there.
        lambda z: torchvision.ops.ps_roi_pool(F.pad(z, (0, 1, 0, 1)), boxes, (2, 3), 1.0),
        (x,),
    )


def multi_scale_case(device="cpu"):
    boxes = BOXES.to(device)
    maps = (randn(2, 3, 16, 16, seed=1, device=device), randn(2, 3, 8, 8, seed=2, device=device))
    scales = [0.5, 0.25]

    def reference(*features):
        return torch.stack([torchvision.ops.roi_align(f, boxes, 2, s, 2, False) for f, s in zip(features, scales)], 1)

    return (
        lambda *features: segops.multi_scale_roi_align(list(features), boxes, 2, scales, mode="all"),
        reference,
        maps,
    )


def max_unpool_case(device="cpu"):
    pooled, indices = F.max_pool2d(randn(2, 3, 8, 8, device=device), 2, return_indices=True)
    return (lambda z: segops.max_unpool2d(z, indices, 2), lambda z: F.max_unpool2d(z, indices, 2), (pooled,))


def conv_case(device="cpu"):
    kwargs = dict(stride=(1, 2), padding=2, dilation=2, groups=2)
    args = (randn(2, 4, 9, 9, device=device), randn(6, 2, 3, 3, seed=1, device=device), randn(6, seed=2, device=device))
    return (lambda *a: segops.dilated_conv2d(*a, **kwargs), lambda *a: F.conv2d(*a, **kwargs), args)


def depthwise_case(device="cpu"):
    args = (randn(2, 3, 7, 8, device=device), randn(3, 1, 3, 3, seed=1, device=device), randn(3, seed=2, device=device))
    return (lambda *a: segops.dilated_conv2d(*a, 1, 3, 3, 3), lambda *a: F.conv2d(*a, 1, 3, 3, 3), args)


def grid_sample_warp(feature, flow, scale):
    height, width = feature.shape[2:]
    out_h, out_w = flow.shape[2:]
    gx = (torch.arange(out_w, dtype=flow.dtype, device=flow.device) + flow[:, 0]) * 2 / (width - 1) - 1
    gy = (torch.arange(out_h, dtype=flow.dtype, device=flow.device).view(-1, 1) + flow[:, 1]) * 2 / (height - 1) - 1
    return F.grid_sample(feature, torch.stack([gx, gy], -1), align_corners=True) * scale


def flow_warp_case(device="cpu"):
    args = (
        randn(2, 3, 7, 8, device=device),
        randn(2, 2, 5, 6, seed=1, device=device) * 2,
        randn(2, 3, 5, 6, seed=2, device=device),
    )
    return segops.flow_warp, grid_sample_warp, args


CASES = {
    "roi_align": roi_align_case,
    "roi_pool": roi_pool_case,
    "ps_roi_align": ps_roi_align_case,
    "ps_roi_pool": ps_roi_pool_case,
    "multi_scale_roi_align": multi_scale_case,
    "max_unpool2d": max_unpool_case,
    "dilated_conv2d": conv_case,
    "dilated_conv2d-depthwise": depthwise_case,
    "flow_warp": flow_warp_case,
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_jvp_jacfwd_jacrev_vmap_equal_the_reference(name, device):
    ours, reference, primals = CASES[name](device)
    tangents = tuple(randn(*p.shape, seed=10 + i, device=device) for i, p in enumerate(primals))
    output, tangent = jvp(ours, primals, tangents)
    torch.testing.assert_close(output, reference(*primals))
    assert tangent.abs().sum() > 0
    torch.testing.assert_close(tangent, reference_jvp(reference, primals, tangents))
    # Forward mode outside torch.func too.
    import torch.autograd.forward_ad as fwAD

    with fwAD.dual_level():
        dual = ours(*(fwAD.make_dual(p, t) for p, t in zip(primals, tangents)))
        torch.testing.assert_close(fwAD.unpack_dual(dual).tangent, tangent)
    expected = torch.autograd.functional.jacobian(lambda z: reference(z, *primals[1:]), primals[0])
    torch.testing.assert_close(jacfwd(ours)(*primals), expected)
    torch.testing.assert_close(jacrev(ours)(*primals), expected)
    # vmap over each argument in turn, and over all of them, in a dimension other than the first.
    for which in [*range(len(primals)), None]:
        stacked = [torch.stack([p, t], 1) for p, t in zip(primals, tangents)]
        in_dims = tuple(1 if which in (None, i) else None for i in range(len(primals)))
        args = [s if d is not None else p for s, p, d in zip(stacked, primals, in_dims)]
        expected = torch.stack(
            [reference(*[a.select(1, b) if d is not None else a for a, d in zip(args, in_dims)]) for b in range(2)]
        )
        torch.testing.assert_close(vmap(ours, in_dims=in_dims)(*args), expected)


def test_vmap_over_boxes_loops_over_them():
    x = randn(2, 3, 8, 9)
    boxes = torch.stack([BOXES, BOXES + torch.tensor([0, 0.5, -0.5, 0.25, 1.0], dtype=D)])
    for ours, theirs in [
        (segops.roi_align, torchvision.ops.roi_align),
        (segops.roi_pool, torchvision.ops.roi_pool),
        (
            segops.ps_roi_pool,
            lambda z, b, size, scale: torchvision.ops.ps_roi_pool(F.pad(z, (0, 1, 0, 1)), b, size, scale),
        ),
    ]:
        batched = vmap(lambda b: ours(x, b, (1, 3), 0.5))(boxes)
        torch.testing.assert_close(batched, torch.stack([theirs(x, b, (1, 3), 0.5) for b in boxes]))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", CASES)
def test_gradcheck_forward_and_batched(name, device):
    ours, _, primals = CASES[name](device)
    leaves = tuple(p.clone().requires_grad_() for p in primals)
    # gradcheck's batched checks run PyTorch's legacy vmap, which has no fallback for ops taking or returning a
    # Tensor[] (multi_scale_roi_align and its backward); torch.func's vmap, jacfwd and jacrev of it are tested above.
    legacy_vmap_ok = name != "multi_scale_roi_align"
    assert gradcheck(
        ours,
        leaves,
        check_forward_ad=True,
        check_batched_grad=legacy_vmap_ok,
        check_batched_forward_grad=legacy_vmap_ok,
    )


@pytest.mark.parametrize(
    "name", ["roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool", "max_unpool2d", "multi_scale_roi_align"]
)
def test_hessian_of_the_twice_differentiable_ops(name):
    ours_all, reference_all, primals = CASES[name]()
    ours = lambda z: ours_all(z, *primals[1:])  # noqa: E731
    reference = lambda z: reference_all(z, *primals[1:])  # noqa: E731
    # torchvision's RoI ops are differentiable once: for sum(f(z)^3) with f linear, H = J^T diag(6 f(z)) J.
    z = primals[0]
    jacobian = torch.autograd.functional.jacobian(reference, z).reshape(-1, z.numel())
    expected = (jacobian.t() * (6 * reference(z).reshape(-1))) @ jacobian
    expected = expected.view(*z.shape, *z.shape)
    torch.testing.assert_close(hessian(lambda z: ours(z).pow(3).sum())(primals[0]), expected)


@pytest.mark.parametrize("name, op", [("dilated_conv2d", "dilated_conv2d"), ("flow_warp", "flow_warp")])
def test_second_order_derivatives_are_refused_by_name(name, op):
    ours, _, primals = CASES[name]()
    with pytest.raises(RuntimeError, match=f"{op}: forward-mode AD of its gradient"):
        hessian(lambda z: ours(z, *primals[1:]).pow(2).sum())(primals[0])
    leaf = primals[0].clone().requires_grad_()
    (grad,) = torch.autograd.grad(ours(leaf, *primals[1:]).pow(2).sum(), leaf, create_graph=True)
    with pytest.raises(RuntimeError, match=f"{op}: double backward is not supported"):
        torch.autograd.grad(grad.sum(), leaf)


def test_function_classes_work_under_torch_func():
    x = randn(2, 3, 8, 9)
    tangent = randn(2, 3, 8, 9, seed=1)
    rois = BOXES

    def ours(z):
        return segops.RoIAlignFunction.apply(z, rois, 1.0, 3, 3, 2, True)

    torch.testing.assert_close(
        jvp(ours, (x,), (tangent,))[1], torchvision.ops.roi_align(tangent, rois, 3, 1.0, 2, True)
    )
    torch.testing.assert_close(jacrev(ours)(x), jacfwd(ours)(x))
    # List arguments (strides, padding) under jvp of vmap: PyTorch's generated vmap rule of a Function's jvp
    # mishandles lists, which segops' Functions hand on as pytree leaves.
    weight = randn(4, 3, 3, 3, seed=2)

    def conv(z):
        return segops.DilatedConv2dFunction.apply(z, weight, None, [1, 1], [2, 2], [2, 2], 1)

    torch.testing.assert_close(
        jvp(vmap(conv), (x[None],), (tangent[None],))[1], F.conv2d(tangent, weight, None, 1, 2, 2)[None]
    )
    pooled, indices = F.max_pool2d(x[..., :8], 2, return_indices=True)
    unpool = lambda z: segops.MaxUnpool2dFunction.apply(z, indices, 8, 8)  # noqa: E731
    torch.testing.assert_close(jvp(unpool, (pooled,), (pooled,))[1], F.max_unpool2d(pooled, indices, 2))


def test_eager_apply_runs_an_old_style_twin_equal_to_the_function():
    """In eager mode OpFunction.apply runs an old-style twin of each Function (PyTorch binds a setup_context
    Function's arguments to its signature on every call, which costs more than a small op): the twin's gradient and
    tangent equal those of the Function itself, which torch.func runs, and an omitted default (flow_warp's scale)
    reaches setup_context filled in (None)."""
    x, flow, cotangent = randn(1, 2, 5, 6), randn(1, 2, 5, 6, seed=1), randn(1, 2, 5, 6, seed=2)
    flow_tangent = randn(1, 2, 5, 6, seed=3)

    def warp(z, f):
        return segops.FlowWarpFunction.apply(z, f)  # scale omitted

    leaf, flow_leaf = x.clone().requires_grad_(), flow.clone().requires_grad_()
    out = warp(leaf, flow_leaf)
    assert type(out.grad_fn)._forward_cls is segops.FlowWarpFunction._eager
    height, width = x.shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height, dtype=D), torch.arange(width, dtype=D), indexing="ij")
    grid = torch.stack([(xs + flow[:, 0]) * 2 / (width - 1) - 1, (ys + flow[:, 1]) * 2 / (height - 1) - 1], dim=-1)
    torch.testing.assert_close(out, F.grid_sample(x, grid, align_corners=True))
    grads = torch.autograd.grad(out, (leaf, flow_leaf), cotangent)
    _, pullback = torch.func.vjp(warp, x, flow)
    for eager, func in zip(grads, pullback(cotangent)):
        torch.testing.assert_close(eager, func, rtol=0, atol=0)
    with torch.autograd.forward_ad.dual_level():
        dual = warp(*(torch.autograd.forward_ad.make_dual(p, t) for p, t in ((x, cotangent), (flow, flow_tangent))))
        eager_tangent = torch.autograd.forward_ad.unpack_dual(dual).tangent
    torch.testing.assert_close(eager_tangent, jvp(warp, (x, flow), (cotangent, flow_tangent))[1], rtol=0, atol=0)


def test_raw_op_under_torch_func_says_what_to_call():
    x = randn(2, 3, 8, 9)
    with pytest.raises(RuntimeError, match="segops::roi_align: under torch.func transforms, differentiate the front"):
        jacrev(lambda z: torch.ops.segops.roi_align(z, BOXES, 1.0, 2, 2, 2, True))(x)


def test_dense_crf_forward_mode_and_torch_func_refusal():
    import torch.autograd.forward_ad as fwAD

    unary, image = randn(1, 3, 5, 6), torch.rand(1, 3, 5, 6, generator=torch.Generator().manual_seed(1)) * 255
    compatibility = torch.rand(3, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    tangent = randn(1, 3, 5, 6, seed=3)
    crf = lambda u: segops.dense_crf(u, image.to(D), 2, compatibility=compatibility)  # noqa: E731
    with fwAD.dual_level():
        out = crf(fwAD.make_dual(unary, tangent))
        forward = fwAD.unpack_dual(out).tangent
    # The reverse mode's Jacobian (the backward is checked against a brute-force CRF in test_dense_crf.py).
    torch.testing.assert_close(forward, reference_jvp(crf, (unary,), (tangent,)))
    assert gradcheck(crf, (unary.clone().requires_grad_(),), check_forward_ad=True)
    with pytest.raises(RuntimeError, match="dense_crf: torch.func transforms"):
        jvp(crf, (unary,), (tangent,))


# ------------------------------------------------------------------------------------------- PyTorch's OpInfo


def _op_info(name, variant=""):
    from torch.testing._internal.common_methods_invocations import op_db

    return next(op for op in op_db if op.name == name and op.variant_test_name == variant)


@pytest.mark.parametrize("variant", ["", "grad"])
def test_opinfo_max_unpool2d_samples(variant):
    info = _op_info("nn.functional.max_unpool2d", variant)
    checked = 0
    for sample in info.sample_inputs("cpu", D, requires_grad=True):
        indices = sample.args[0]
        ours = lambda z: segops.max_unpool2d(z, indices, **sample.kwargs)  # noqa: E731
        theirs = lambda z: F.max_unpool2d(z, indices, **sample.kwargs)  # noqa: E731
        torch.testing.assert_close(ours(sample.input), theirs(sample.input), rtol=0, atol=0)
        if variant == "grad":  # no duplicate indices (with them segops' gradient differs on purpose: docs/operators.md)
            primal = sample.input.detach()
            tangent = torch.randn_like(primal)
            torch.testing.assert_close(jvp(ours, (primal,), (tangent,))[1], jvp(theirs, (primal,), (tangent,))[1])
            grad = torch.randn_like(ours(primal))
            torch.testing.assert_close(torch.func.vjp(ours, primal)[1](grad), torch.func.vjp(theirs, primal)[1](grad))
            assert gradcheck(ours, (primal.clone().requires_grad_(),), check_forward_ad=True)
        checked += 1
    assert checked >= 3


def test_opinfo_conv2d_samples():
    checked = 0
    for sample in _op_info("nn.functional.conv2d").sample_inputs("cpu", D, requires_grad=True):
        padding = sample.kwargs.get("padding", 0)
        if sample.input.dim() != 4 or isinstance(padding, str):
            continue  # unbatched input and padding="same"/"valid" are F.conv2d's, not segops' (docs/deployment.md)
        weight, bias = sample.args[0], sample.args[1] if len(sample.args) > 1 else None
        kwargs = dict(sample.kwargs)
        primals = tuple(t.detach() for t in (sample.input, weight) + ((bias,) if bias is not None else ()))

        def ours(x, w, b=None):
            return segops.dilated_conv2d(x, w, b, **kwargs)

        def theirs(x, w, b=None):
            return F.conv2d(x, w, b, **kwargs)

        torch.testing.assert_close(ours(*primals), theirs(*primals))
        tangents = tuple(torch.randn_like(p) for p in primals)
        torch.testing.assert_close(jvp(ours, primals, tangents)[1], jvp(theirs, primals, tangents)[1])
        grad = torch.randn_like(theirs(*primals))
        torch.testing.assert_close(torch.func.vjp(ours, *primals)[1](grad), torch.func.vjp(theirs, *primals)[1](grad))
        checked += 1
    assert checked >= 3


# ------------------------------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("groups", [1, 4], ids=["gemm", "depthwise"])
@pytest.mark.parametrize("argument", ["input", "weight", "bias"])
def test_dilated_conv2d_reads_every_argument_in_every_layout(groups, argument):
    g = torch.Generator().manual_seed(0)
    dense = {
        "input": torch.randn(2, 4, 9, 10, generator=g),
        "weight": torch.randn(4, 4 // groups, 3, 3, generator=g),
        "bias": torch.randn(4, generator=g),
    }

    def run(**arguments):
        return segops.dilated_conv2d(arguments["input"], arguments["weight"], arguments["bias"], 1, 2, 2, groups)

    expected = F.conv2d(dense["input"], dense["weight"], dense["bias"], 1, 2, 2, groups)
    base = run(**dense)
    torch.testing.assert_close(base, expected)
    value = dense[argument]
    wide = torch.stack([value, torch.full_like(value, 1e4)], -1)
    variants = {
        "strided": wide[..., 0],
        "offset": torch.cat([torch.full((3,), 1e4), value.flatten()])[3:].view(value.shape),
        "transposed": value.transpose(0, -1).contiguous().transpose(0, -1),
        "expanded": value.flatten()[:1].expand(value.shape),
    }
    if value.dim() == 4:
        variants["channels_last"] = value.contiguous(memory_format=torch.channels_last)
    for name, variant in variants.items():
        arguments = {**dense, argument: variant}
        if name == "channels_last" and groups == 1 and torch.backends.mkldnn.is_available():
            # The general case in float32 is oneDNN's convolution, which picks another kernel (another summation
            # order) for a channels_last argument, as F.conv2d does; on AVX2 CPUs its bits differ. So: within the
            # rounding bound of each output's sum (C_in * 9 products and the bias).
            exact = F.conv2d(*(t.double() for t in dense.values()), 1, 2, 2, groups)
            magnitude = F.conv2d(*(t.double().abs() for t in dense.values()), 1, 2, 2, groups)
            assert_within_summation_bound(run(**arguments), exact, magnitude, 4 * 9 + 1, name)
            continue
        assert torch.equal(run(**arguments), run(**{**dense, argument: variant.contiguous()})), name


# ---------------------------------------------------------------------------------------- FX and TorchScript


class _Calls(torch.nn.Module):
    def forward(self, x, boxes, indices, flow):
        a = segops.roi_align(x, boxes, 2, 1.0, 2, True)
        b = segops.roi_pool(x, boxes, 2, 1.0)
        c = segops.max_unpool2d(x, indices, 2)
        d = segops.flow_warp(x, flow)
        e = segops.ps_roi_align(x, boxes, (1, 3), 1.0, 2) + segops.ps_roi_pool(x, boxes, (1, 3), 1.0)
        return a.sum() + b.sum() + c.sum() + d.sum() + e.sum()


def test_fx_traces_public_functions_and_modules_as_one_node():
    x = randn(2, 3, 8, 8).float()
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    flow = torch.zeros(2, 2, 4, 4)
    boxes = BOXES.float()
    traced = torch.fx.symbolic_trace(_Calls())
    targets = [node.target for node in traced.graph.nodes if node.op == "call_function"]
    for fn in (
        segops.roi_align,
        segops.roi_pool,
        segops.ps_roi_align,
        segops.ps_roi_pool,
        segops.max_unpool2d,
        segops.flow_warp,
    ):
        assert targets.count(fn) == 1, fn.__name__
    torch.testing.assert_close(traced(pooled, boxes, indices, flow), _Calls()(pooled, boxes, indices, flow))
    for module, args in [
        (segops.RoIAlign(2, 1.0, 2), (x, boxes)),
        (segops.RoIPool(2, 1.0), (x, boxes)),
        (segops.PSRoIAlign((1, 3), 1.0, 2), (x, boxes)),
        (segops.PSRoIPool((1, 3), 1.0), (x, boxes)),
        (segops.MaxUnpool2d(2), (pooled, indices)),
        (segops.FlowWarp(), (x, flow)),
        (segops.DilatedConv2d(3, 4, 3, padding=2, dilation=2), (x,)),
        (segops.MultiScaleRoIAlign(2, [1.0]), ([x], boxes)),
    ]:
        traced = torch.fx.symbolic_trace(module)
        calls = [
            n
            for n in traced.graph.nodes
            if n.op == "call_function" and getattr(n.target, "__module__", "").startswith("segops")
        ]
        assert len(calls) == 1, type(module).__name__
        torch.testing.assert_close(traced(*args), module(*args))


# Every image network (the detectors build on torchvision's detection models, which FX does not trace, and Deep
# Feature Flow's key-frame schedule is data-dependent).
NETWORKS = {
    "fcn8s": lambda m: m.fcn8s(3),
    "segnet": lambda m: m.segnet(3, base_width=4),
    "deconvnet": lambda m: m.deconvnet(3, base_width=4),
    "unet": lambda m: m.unet(3, base_width=4, depth=2),
    "deeplabv2": lambda m: m.deeplabv2(3, depth=50),
    "deeplabv2-crf": lambda m: m.deeplabv2(3, depth=50, crf="rnn"),
    "deeplabv3": lambda m: m.deeplabv3(3, depth=50),
    "pspnet": lambda m: m.pspnet(3, depth=50),
    "cam": lambda m: m.cam(3, depth=50),
    "dcl": lambda m: m.dcl(base_width=4),
    "basnet": lambda m: m.basnet(width=4),
    "poolnet": lambda m: m.poolnet(width=8),
    "ucn": lambda m: m.ucn(8, base_width=4),
}


@pytest.mark.parametrize("name", NETWORKS)
def test_fx_traces_every_image_network(name):
    import segops.models

    torch.manual_seed(0)
    model = NETWORKS[name](segops.models).eval()
    # DeepLab v2's optional RGB image (else un-normalised from the input) is fixed to None, as FX fixes optional args.
    traced = torch.fx.symbolic_trace(model, concrete_args={"rgb": None} if name.startswith("deeplabv2") else None)
    x = torch.rand(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected, actual = model(x), traced(x)
    for a, e in zip(pytree.tree_leaves(actual), pytree.tree_leaves(expected), strict=True):
        assert torch.equal(a, e)


def test_create_feature_extractor_on_segnet():
    import segops.models
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    model = segops.models.segnet(3, base_width=4).eval()
    _, nodes = get_graph_node_names(model)
    unpools = [node for node in nodes if "max_unpool2d" in node]
    assert len(unpools) == 5  # one node per decoder stage
    extractor = create_feature_extractor(model, return_nodes={unpools[-1]: "last_unpool", nodes[-1]: "logits"})
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        features = extractor(x)
        assert torch.equal(features["logits"], model(x)["out"])
    assert features["last_unpool"].shape == (1, 4, 32, 40)


def test_torchscript_roi_ops_equal_eager():
    x = randn(2, 3, 8, 9).float()
    boxes = BOXES.float()
    listed = [boxes[:1, 1:], boxes[1:, 1:]]
    for fn, args in [
        (segops.roi_align, (x, boxes, [2, 3], 0.5, 2, True)),
        (segops.roi_pool, (x, boxes, [2, 2], 1.0)),
        (segops.ps_roi_align, (x, boxes, [1, 3], 0.5, 2)),
        (segops.ps_roi_pool, (x, boxes, [1, 3], 1.0)),
    ]:
        scripted = torch.jit.script(fn)
        assert torch.equal(scripted(*args), fn(*args))
        assert torch.equal(scripted(x, listed, *args[2:]), fn(x, listed, *args[2:]))
    for module in (segops.RoIAlign((2, 3), 0.5, 2, True), segops.RoIPool(2, 1.0)):
        scripted = torch.jit.script(module)
        assert torch.equal(scripted(x, boxes), module(x, boxes))


def test_scripted_torchvision_maskrcnn_with_segops_equals_eager():
    import segops.models

    torch.manual_seed(0)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=128, max_size=160, box_score_thresh=0.0
    )
    segops.models.use_segops_roi_align(model).eval()
    scripted = torch.jit.script(model)
    images = [torch.rand(3, 128, 150, generator=torch.Generator().manual_seed(1))]
    with torch.no_grad():
        eager = model(images)
        _losses, detections = scripted(images)
    assert len(eager[0]["boxes"]) > 0
    for key in ("boxes", "scores", "labels", "masks"):
        torch.testing.assert_close(detections[0][key], eager[0][key])


# ----------------------------------------------------------------------------------------------- tensor kinds


def _kinds(dense):
    return {
        "quantized": torch.quantize_per_tensor(dense.float(), 0.1, 0, torch.quint8),
        "sparse": dense.to_sparse(),
        "complex": dense.to(torch.complex64),
        "nested": torch.nested.nested_tensor([dense[0], dense[0]]) if dense.dim() > 1 else None,
    }


@pytest.mark.parametrize("kind", ["quantized", "sparse", "complex", "nested"])
def test_tensor_kinds_get_the_ops_own_error(kind):
    x = torch.randn(2, 3, 8, 8)
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    calls = {
        "roi_align": lambda v: segops.roi_align(v, BOXES.float(), 2),
        "roi_pool": lambda v: segops.roi_pool(v, BOXES.float(), 2),
        "ps_roi_align": lambda v: segops.ps_roi_align(v, BOXES.float(), (1, 3)),
        "ps_roi_pool": lambda v: segops.ps_roi_pool(v, BOXES.float(), (1, 3)),
        "multi_scale_roi_align": lambda v: segops.multi_scale_roi_align([v], BOXES.float(), 2, [1.0]),
        "max_unpool2d": lambda v: segops.max_unpool2d(v, indices, 2),
        "dilated_conv2d": lambda v: segops.dilated_conv2d(v, torch.randn(4, 3, 3, 3)),
        "flow_warp": lambda v: segops.flow_warp(v, torch.zeros(2, 2, 8, 8)),
        "dense_crf": lambda v: segops.dense_crf(v, torch.zeros(2, 3, 8, 8)),
    }
    for op, call in calls.items():
        value = _kinds(pooled if op == "max_unpool2d" else x)[kind]
        with pytest.raises(RuntimeError, match=f"{op}: .* must be a dense \\(strided\\) real tensor, got a {kind}"):
            call(value)


def test_torchscript_of_the_other_roi_and_dense_ops():
    x = randn(2, 3, 9, 10).float()
    weight, bias = randn(4, 3, 3, 3, seed=1).float(), randn(4, seed=2).float()
    scripted = torch.jit.script(segops.dilated_conv2d)
    assert torch.equal(
        scripted(x, weight, bias, [1, 2], [2, 2], [2, 2], 1), segops.dilated_conv2d(x, weight, bias, (1, 2), 2, 2)
    )
    module = segops.DilatedConv2d(3, 4, 3, padding=2, dilation=2)
    assert torch.equal(torch.jit.script(module)(x), module(x))
    flow = randn(2, 2, 5, 6, seed=3).float()
    assert torch.equal(torch.jit.script(segops.flow_warp)(x, flow, None), segops.flow_warp(x, flow))
    assert torch.equal(torch.jit.script(segops.FlowWarp())(x, flow), segops.flow_warp(x, flow))
    pyramid = [randn(2, 3, 16, 16, seed=4).float(), randn(2, 3, 8, 8, seed=5).float()]
    boxes = BOXES.float() * torch.tensor([1.0, 2, 2, 2, 2])
    for mode in ("assign", "all"):
        module = segops.MultiScaleRoIAlign(2, [0.5, 0.25], mode=mode)
        assert torch.equal(torch.jit.script(module)(pyramid, boxes), module(pyramid, boxes))


@pytest.mark.parametrize("name", ["max_unpool2d", "MaxUnpool2d", "multi_scale_roi_align", "dense_crf", "DenseCRF"])
def test_torchscript_refuses_the_rest_by_name(name):
    target = getattr(segops, name)
    target = target(2) if name == "MaxUnpool2d" else target(3) if name == "DenseCRF" else target
    message = f"{name}: TorchScript is not supported; use torch.compile or torch.export"
    with pytest.raises(RuntimeError, match=message):
        torch.jit.script(target)


def test_dense_crf_function_refuses_torch_func_by_name():
    unary = randn(1, 12, 3)
    lattice = segops.PermutohedralLattice.build(randn(1, 12, 2, seed=1)).normalized()
    weights = randn(1, seed=2)

    def step(u):
        return segops.DenseCRFFunction.apply(u, torch.softmax(u, -1), weights, None, (lattice,))

    torch.testing.assert_close(step(unary).sum(-1), torch.ones(1, 12, dtype=D))
    with pytest.raises(RuntimeError, match="DenseCRFFunction: torch.func transforms .* not supported"):
        jacrev(step)(unary)


def test_global_poolings_script_and_the_others_refuse_by_name():
    from segops import pooling

    x = randn(2, 3, 5, 6)
    for fn in (pooling.global_avg_pool, pooling.global_max_pool):
        assert torch.equal(torch.jit.script(fn)(x), fn(x))
    for fn in (pooling.lse_pool, pooling.class_activation_maps):
        with pytest.raises(RuntimeError, match=f"{fn.__name__}: TorchScript is not supported"):
            torch.jit.script(fn)

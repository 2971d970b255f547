"""Every tensor argument of every op (backward ops included), in every layout, gives the contiguous call's result bit
for bit: on the CPU kernels and on the CUDA kernels emulated on the host."""

import pytest
import torch
import torch.nn.functional as F

import segops

from argument_layouts import LAYOUTS, in_layout
from conftest import CONCURRENT_EMULATION, emulation_module
from tolerances import summation_bound

LAUNCH = ([3], [32])  # a grid far smaller than the work: every thread runs several grid-stride iterations
# Emulated ops whose kernels sum floats with atomic adds (their default, non-deterministic backwards).
ATOMIC_SUMS = {
    "_roi_align_backward",
    "_multi_scale_roi_align_backward",
    "_flow_warp_backward",
    "_ps_roi_align_backward",
    "_ps_roi_pool_backward",
}


def _cases(lattice_op):
    """name -> (op name, tensors by argument name, args(tensors), extra emulated arguments before grid and block)."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    x = randn(2, 3, 7, 9)
    rois = torch.tensor([[0, 1.0, 1.0, 5.0, 6.0], [1, 0.5, 2.0, 8.0, 6.0], [1, 2.0, 0.0, 4.0, 3.0]])
    _, argmax = torch.ops.segops.roi_pool(x, rois, 1.0, 2, 3)
    levels = torch.tensor([0, 1, 0])
    pooled, indices = F.max_pool2d(randn(2, 3, 8, 10), 2, return_indices=True)
    feature, flow, scale = randn(2, 3, 7, 9), randn(2, 2, 5, 6) * 2, randn(2, 3, 5, 6)
    # Two identical point sets, so that a lattice tensor expanded from the first is still a valid lattice.
    points = randn(1, 20, 3).repeat(2, 1, 1)
    lattice = lattice_op(points)
    lattice_names = ("vertex_ids", "weights", "neighbours", "splat_offsets", "splat_entries", "num_vertices")
    step_tensors = {
        "unary": randn(2, 20, 4),
        "q": randn(1, 20, 4).repeat(2, 1, 1),
        "kernel_weights": randn(1),
        **{f"{name}[0]": tensor for name, tensor in zip(lattice_names, lattice)},
    }

    def step_arguments(t):
        return (t["unary"], t["q"], t["kernel_weights"], *([t[f"{name}[0]"]] for name in lattice_names))

    cases = {
        "roi_align": ("roi_align", dict(input=x, rois=rois), lambda t: (t["input"], t["rois"], 1.0, 2, 3, 2, True), ()),
        "_roi_align_backward": (
            "_roi_align_backward",
            dict(grad=randn(3, 3, 2, 3), rois=rois),
            lambda t: (t["grad"], t["rois"], 1.0, 2, 3, 2, 3, 7, 9, 2, True),
            (False,),
        ),
        "roi_pool": ("roi_pool", dict(input=x, rois=rois), lambda t: (t["input"], t["rois"], 1.0, 2, 3), ()),
        "_roi_pool_backward": (
            "_roi_pool_backward",
            dict(grad=randn(3, 3, 2, 3), rois=rois, argmax=argmax),
            lambda t: (t["grad"], t["rois"], t["argmax"], 1.0, 2, 3, 2, 3, 7, 9),
            (False,),
        ),
        # x's 3 channels as 1 output channel of 1 x 3 bins.
        "ps_roi_align": ("ps_roi_align", dict(input=x, rois=rois), lambda t: (t["input"], t["rois"], 1.0, 1, 3, 2), ()),
        "_ps_roi_align_backward": (
            "_ps_roi_align_backward",
            dict(grad=randn(3, 1, 1, 3), rois=rois),
            lambda t: (t["grad"], t["rois"], 1.0, 1, 3, 2, 3, 7, 9, 2),
            (False,),
        ),
        "ps_roi_pool": ("ps_roi_pool", dict(input=x, rois=rois), lambda t: (t["input"], t["rois"], 1.0, 1, 3), ()),
        "_ps_roi_pool_backward": (
            "_ps_roi_pool_backward",
            dict(grad=randn(3, 1, 1, 3), rois=rois),
            lambda t: (t["grad"], t["rois"], 1.0, 1, 3, 2, 3, 7, 9),
            (False,),
        ),
        "multi_scale_roi_align": (
            "multi_scale_roi_align",
            {"features[0]": randn(2, 3, 8, 8), "features[1]": randn(2, 3, 4, 4), "rois": rois, "levels": levels},
            lambda t: ([t["features[0]"], t["features[1]"]], t["rois"], t["levels"], [1.0, 0.5], 2, 2, 2, False),
            (),
        ),
        "_multi_scale_roi_align_backward": (
            "_multi_scale_roi_align_backward",
            dict(grad=randn(3, 3, 2, 2), rois=rois, levels=levels),
            lambda t: (t["grad"], t["rois"], t["levels"], [1.0, 0.5], 2, 2, 2, 3, [8, 4], [8, 4], 2, False),
            (False,),
        ),
        "max_unpool2d": (
            "max_unpool2d",
            dict(input=pooled, indices=indices),
            lambda t: (t["input"], t["indices"], 8, 10),
            (),
        ),
        "_max_unpool2d_backward": (
            "_max_unpool2d_backward",
            dict(grad=randn(2, 3, 8, 10), indices=indices),
            lambda t: (t["grad"], t["indices"]),
            (),
        ),
        "flow_warp": (
            "flow_warp",
            dict(feature=feature, flow=flow, scale=scale),
            lambda t: (t["feature"], t["flow"], t["scale"]),
            (),
        ),
        "_flow_warp_backward": (
            "_flow_warp_backward",
            dict(grad=randn(2, 3, 5, 6), feature=feature, flow=flow, scale=scale),
            lambda t: (t["grad"], t["feature"], t["flow"], t["scale"]),
            (False,),
        ),
        "permutohedral_lattice": ("permutohedral_lattice", dict(features=points), lambda t: (t["features"],), ()),
        "permutohedral_filter": (
            "permutohedral_filter",
            dict(values=randn(1, 20, 4).repeat(2, 1, 1), **dict(zip(lattice_names, lattice))),
            lambda t: (t["values"], *(t[name] for name in lattice_names), False),
            (),
        ),
        "dense_crf_softmax": (
            "dense_crf_softmax",
            {"unary": randn(2, 20, 4), "messages[0]": randn(2, 20, 4), "weights": randn(1)},
            lambda t: (t["unary"], [t["messages[0]"]], t["weights"]),
            (),
        ),
        "_dense_crf_step": ("_dense_crf_step", step_tensors, step_arguments, ()),
        # The last step's [B, L, N] result.
        "_dense_crf_step-labels_first": ("_dense_crf_step", step_tensors, lambda t: (*step_arguments(t), True), ()),
    }
    # (path, groups, C_out, (H, W), stride, padding and dilation, output (Ho, Wo)); tap by tap: rate 4 on a 5x6 map,
    # 26% of the products inside the input (the float32 general case's GEMM per tap).
    convs = (
        ("gemm", 1, 6, (9, 10), [1, 2], 2, (9, 5)),
        ("grouped-gemm", 3, 6, (9, 10), [1, 2], 2, (9, 5)),
        ("depthwise", 3, 3, (9, 10), [1, 2], 2, (9, 5)),
        ("tap-by-tap", 1, 6, (5, 6), [1, 1], 4, (5, 6)),
    )
    for path, groups, out_channels, size, stride, rate, out_size in convs:
        conv = dict(input=randn(2, 3, *size), weight=randn(out_channels, 3 // groups, 3, 3))
        geometry = (stride, [rate, rate], [rate, rate], groups)
        cases[f"dilated_conv2d-{path}"] = (
            "dilated_conv2d",
            dict(conv, bias=randn(out_channels)),
            lambda t, a=geometry: (t["input"], t["weight"], t["bias"], *a),
            (),
        )
        cases[f"_dilated_conv2d_backward-{path}"] = (
            "_dilated_conv2d_backward",
            dict(conv, grad=randn(2, out_channels, *out_size)),
            lambda t, a=geometry: (t["grad"], t["input"], t["weight"], *a, [True, True, True]),
            (True,),  # emulated: the deterministic backward, segops' kernels on every path
        )
    return cases


CASES = list(_cases(torch.ops.segops.permutohedral_lattice))
# The general convolution in float32 on the CPU is oneDNN's, which takes another kernel (another summation order) for
# channels_last tensors, as F.conv2d does: equal to rounding there.
ONEDNN_CASES = (
    {
        f"{op}-{path}"
        for op in ("dilated_conv2d", "_dilated_conv2d_backward")
        for path in ("gemm", "grouped-gemm", "tap-by-tap")
    }
    if torch.backends.mkldnn.is_available()
    else set()
)
ONEDNN_TERMS = 90


def _flat(result):
    return list(result) if isinstance(result, (tuple, list)) else [result]


@pytest.mark.parametrize("backend", ["cpu", "emulated"])
@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout != "contiguous"])
@pytest.mark.parametrize("case", CASES)
def test_every_tensor_argument_in_every_layout(backend, layout, case):
    if backend == "emulated" and case in (
        "dilated_conv2d-gemm",
        "dilated_conv2d-grouped-gemm",
        "dilated_conv2d-tap-by-tap",
    ):
        pytest.skip("on CUDA the general convolution's forward is ATen's (cuDNN), not a segops kernel")
    if backend == "emulated" and case.startswith("_dense_crf_step"):
        pytest.skip("a CPU kernel only: on CUDA the dense CRF's steps are permutohedral_filter and dense_crf_softmax")
    if backend == "emulated":
        emulated = emulation_module()
        lattice_op = lambda points: emulated.permutohedral_lattice(points, *LAUNCH)  # noqa: E731
    else:
        lattice_op = torch.ops.segops.permutohedral_lattice
    op_name, tensors, build, extra = _cases(lattice_op)[case]

    def run(arguments):
        if backend == "cpu":
            return _flat(getattr(torch.ops.segops, op_name)(*build(arguments)))
        return _flat(getattr(emulated, op_name)(*build(arguments), *extra, *LAUNCH))

    for name, tensor in tensors.items():
        variant = in_layout(tensor, layout)
        actual = run({**tensors, name: variant})
        expected = run({**tensors, name: variant.contiguous()})
        onednn = backend == "cpu" and case in ONEDNN_CASES and layout == "channels_last"
        # The op on its operands' absolute values, in float64: each result's sum of |products|.
        magnitudes = run({k: v.abs().double() for k, v in tensors.items()}) if onednn else None
        for index, (a, e) in enumerate(zip(actual, expected, strict=True)):
            if backend == "emulated" and CONCURRENT_EMULATION and op_name in ATOMIC_SUMS:
                torch.testing.assert_close(a, e, msg=f"{op_name}: {name} as {layout}")
            elif onednn:
                # Two float32 sums of the same products in different orders: each within its rounding bound of the
                # exact sum (at most 90 products: the weight gradient over 2 x 9 x 5 outputs), on any CPU.
                bound = 2 * summation_bound(magnitudes[index], ONEDNN_TERMS, torch.float32)
                assert ((a.double() - e.double()).abs() <= bound).all(), f"{op_name}: {name} as {layout}"
            else:
                assert torch.equal(a, e), f"{op_name}: {name} as {layout}"


@pytest.mark.parametrize("layout", [layout for layout in LAYOUTS if layout != "contiguous"])
def test_dense_crf_reads_unary_image_and_compatibility_in_every_layout(layout):
    g = torch.Generator().manual_seed(0)
    arguments = dict(
        unary=torch.randn(2, 3, 6, 7, generator=g),
        image=torch.rand(2, 3, 6, 7, generator=g) * 255,
        compatibility=torch.rand(3, 3, generator=g),
    )
    for name, tensor in arguments.items():
        variant = in_layout(tensor, layout)
        actual = segops.dense_crf(num_iters=2, **{**arguments, name: variant})
        expected = segops.dense_crf(num_iters=2, **{**arguments, name: variant.contiguous()})
        assert torch.equal(actual, expected), f"dense_crf: {name} as {layout}"

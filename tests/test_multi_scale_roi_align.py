"""segops.multi_scale_roi_align: "assign" against torchvision's MultiScaleRoIAlign, and both modes against
segops.roi_align per map (the same arithmetic: bitwise), gradients to every map, gradcheck, opcheck, compile, the
FPN level rule, and every error message, eager and fake."""

import pytest
import torch
import torchvision
from torchvision.ops import poolers

import segops
from conftest import requires_cuda
from op_testing import (
    assert_cuda_path_does_not_synchronise,
    assert_raises_eager_and_fake,
    cuda_gradients_in_both_modes,
    random_rois,
)

SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]
IMAGE = (256, 320)  # height, width


def pyramid(dtype=torch.float32, batch_size=2, channels=5, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    maps = [
        torch.randn(batch_size, channels, int(IMAGE[0] * s), int(IMAGE[1] * s), generator=g, dtype=dtype)
        for s in SCALES
    ]
    return [m.to(memory_format=torch.channels_last) for m in maps] if channels_last else maps


def fpn_boxes(num_rois, batch_size=2, dtype=torch.float32, seed=1):
    """Boxes from 7 to 600 pixels across, so that every level gets some, plus random_rois' hostile ones."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.exp(torch.empty(num_rois, 2, dtype=torch.float64).uniform_(2.0, 6.4, generator=g))
    corners = torch.rand(num_rois, 2, generator=g, dtype=torch.float64) * torch.tensor([IMAGE[1], IMAGE[0]])
    batch = torch.randint(0, batch_size, (num_rois, 1), generator=g).to(torch.float64)
    rois = torch.cat([batch, corners, corners + sizes], dim=1)
    hostile = random_rois(6, batch_size, IMAGE[0], IMAGE[1], dtype=torch.float64, generator=g)
    return torch.cat([rois, hostile]).to(dtype)


def test_fpn_levels_are_torchvisions():
    rois = fpn_boxes(200)
    mapper = poolers.initLevelMapper(2, 5)
    expected = mapper([rois[rois[:, 0] == n, 1:] for n in range(2)])
    order = torch.cat([torch.where(rois[:, 0] == n)[0] for n in range(2)])
    actual = segops.fpn_levels(rois, SCALES)[order]
    assert torch.equal(actual, expected)
    assert set(actual.tolist()) == {0, 1, 2, 3}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_assign_mode_equals_torchvisions_multi_scale_roi_align(dtype, sampling_ratio):
    features = pyramid(dtype)
    rois = fpn_boxes(60, dtype=dtype)
    boxes = [rois[rois[:, 0] == n, 1:] for n in range(2)]
    reference = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, sampling_ratio)
    expected = reference(dict(zip("0123", features)), boxes, [IMAGE, IMAGE])
    actual = segops.multi_scale_roi_align(features, boxes, 7, SCALES, sampling_ratio=sampling_ratio)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("aligned", [False, True])
def test_both_modes_equal_roi_align_per_map_bitwise(dtype, channels_last, aligned):
    features = pyramid(dtype, channels_last=channels_last)
    rois = fpn_boxes(40, dtype=segops.ops._checks.accumulation_dtype(dtype))
    levels = segops.fpn_levels(rois, SCALES)
    assigned = segops.multi_scale_roi_align(features, rois, (3, 4), SCALES, aligned=aligned)
    every = segops.multi_scale_roi_align(features, rois, (3, 4), SCALES, aligned=aligned, mode="all")
    assert assigned.shape == (len(rois), 5, 3, 4) and every.shape == (len(rois), 4, 5, 3, 4)
    for level, (feature, scale) in enumerate(zip(features, SCALES)):
        on_map = segops.roi_align(feature, rois, (3, 4), scale, 2, aligned)
        assert torch.equal(every[:, level], on_map)
        assert torch.equal(assigned[levels == level], on_map[levels == level])


def test_gradients_reach_every_map_and_equal_roi_aligns():
    features = [f.double().requires_grad_() for f in pyramid()]
    rois = fpn_boxes(40, dtype=torch.float64)
    grad = torch.randn(len(rois), 4, 5, 3, 3, dtype=torch.float64)
    every = segops.multi_scale_roi_align(features, rois, 3, SCALES, mode="all")
    actual = torch.autograd.grad(every, features, grad)
    for level, (feature, scale) in enumerate(zip(features, SCALES)):
        expected = torch.autograd.grad(segops.roi_align(feature, rois, 3, scale, 2), feature, grad[:, level])[0]
        # Each (map, image, channel) plane sums its RoIs in the same order as roi_align's backward.
        assert torch.equal(actual[level], expected)
        assert actual[level].abs().sum() > 0


def test_gradcheck_and_gradgradcheck():
    g = torch.Generator().manual_seed(3)
    features = [
        torch.randn(1, 2, size, size + 1, generator=g, dtype=torch.float64, requires_grad=True) for size in (8, 4, 2)
    ]
    rois = torch.tensor(
        [[0, 1.0, 2.0, 20.0, 25.0], [0, 0.0, 0.0, 31.0, 31.0], [0, 5.0, 5.0, 9.0, 8.0]], dtype=torch.float64
    )
    levels = torch.tensor([0, 2, 1])

    def pool(*maps):
        return torch.ops.segops.multi_scale_roi_align(list(maps), rois, levels, [0.25, 0.125, 0.0625], 2, 3, 2, True)

    assert torch.autograd.gradcheck(pool, features)
    assert torch.autograd.gradgradcheck(pool, features)


def test_opcheck_and_compile():
    features = pyramid(channels=3)
    rois = fpn_boxes(12)
    levels = segops.fpn_levels(rois, SCALES)
    args = (features, rois, levels, SCALES, 2, 2, 2, False)
    torch.library.opcheck(torch.ops.segops.multi_scale_roi_align, args)
    grad = torch.randn(len(rois), 3, 2, 2)
    backward_args = (
        grad,
        rois,
        levels,
        SCALES,
        2,
        2,
        2,
        3,
        [f.shape[2] for f in features],
        [f.shape[3] for f in features],
        2,
        False,
    )
    torch.library.opcheck(torch.ops.segops._multi_scale_roi_align_backward, backward_args)

    def head(maps, rois):
        return segops.multi_scale_roi_align(maps, rois, 2, SCALES, mode="all").square().sum()

    eager = [f.clone().requires_grad_() for f in features]
    compiled = [f.clone().requires_grad_() for f in features]
    expected, actual = head(eager, rois), torch.compile(head, fullgraph=True)(compiled, rois)
    torch.testing.assert_close(actual, expected)
    expected.backward()
    actual.backward()
    for a, e in zip(compiled, eager):
        torch.testing.assert_close(a.grad, e.grad)


def test_module_and_function():
    features, rois = pyramid(), fpn_boxes(10)
    module = segops.MultiScaleRoIAlign(7, SCALES, mode="all")
    assert repr(module) == (
        "MultiScaleRoIAlign(output_size=(7, 7), spatial_scales=[0.25, 0.125, 0.0625, 0.03125], "
        "sampling_ratio=2, aligned=False, mode='all')"
    )
    torch.testing.assert_close(
        module(features, rois), segops.multi_scale_roi_align(features, rois, 7, SCALES, mode="all")
    )
    levels = segops.fpn_levels(rois, SCALES)
    torch.testing.assert_close(
        segops.MultiScaleRoIAlignFunction.apply(rois, levels, SCALES, 7, 7, 2, False, *features),
        segops.multi_scale_roi_align(features, rois, 7, SCALES),
    )


def test_empty_inputs():
    features = pyramid()
    assert segops.multi_scale_roi_align(features, torch.zeros(0, 5), 3, SCALES).shape == (0, 5, 3, 3)
    assert segops.multi_scale_roi_align(features, torch.zeros(0, 5), 3, SCALES, mode="all").shape == (0, 4, 5, 3, 3)
    empty_map = [torch.zeros(2, 5, 0, 4, requires_grad=True), torch.randn(2, 5, 3, 3, requires_grad=True)]
    rois = torch.tensor([[0, 0.0, 0.0, 8.0, 8.0]])
    out = segops.multi_scale_roi_align(empty_map, rois, 2, [0.5, 0.25], mode="all")
    assert torch.equal(out[:, 0], torch.zeros(1, 5, 2, 2))
    out.sum().backward()
    assert empty_map[0].grad.shape == (2, 5, 0, 4) and empty_map[1].grad.abs().sum() > 0


def _call(
    features=None,
    rois=None,
    levels=None,
    spatial_scales=SCALES,
    pooled_height=2,
    pooled_width=2,
    sampling_ratio=2,
    aligned=False,
):
    features = pyramid(channels=3) if features is None else features
    rois = fpn_boxes(4) if rois is None else rois
    levels = torch.zeros(len(rois), dtype=torch.int64) if levels is None else levels
    return dict(
        features=features,
        rois=rois,
        levels=levels,
        spatial_scales=spatial_scales,
        pooled_height=pooled_height,
        pooled_width=pooled_width,
        sampling_ratio=sampling_ratio,
        aligned=aligned,
    )


OP = "multi_scale_roi_align"
maps = pyramid(channels=3)
ERRORS = [
    (_call(features=[]), f"{OP}: features must hold 1 to 8 maps, got 0"),
    (_call(features=maps * 3), "features must hold 1 to 8 maps, got 12"),
    (_call(features=[maps[0], maps[1][0]]), r"features\[1\] must have shape \[N, C, H, W\], got \[3, 32, 40\]"),
    (
        _call(features=[maps[0], maps[1].long()]),
        r"features\[1\] must be float32, float64, float16 or bfloat16, got Long",
    ),
    (
        _call(features=[maps[0], maps[1].double()]),
        r"features\[1\] must have the dtype of features\[0\] \(Float\), "
        r"got Double",
    ),
    (
        _call(features=[maps[0], maps[1][:, :2]]),
        r"features\[1\] must have the N and C of features\[0\] \(2, 3\), "
        r"got \[2, 2, 32, 40\]",
    ),
    (_call(rois=torch.zeros(3, 4)), r"rois must have shape \[K, 5\], got \[3, 4\]"),
    (_call(spatial_scales=SCALES[:3]), r"spatial_scales must have one entry per feature map \(4\), got 3"),
    (_call(spatial_scales=[0.25, -1.0, 0.5, 0.5]), "spatial_scale must be a finite number >= 0, got -1"),
    (_call(pooled_height=0), r"output_size must be >= 1 in both dimensions, got \(0, 2\)"),
    (_call(sampling_ratio=1000), "sampling_ratio must be <= 0 \\(adaptive\\) or at most 256, got 1000"),
    (
        _call(levels=torch.zeros(3, dtype=torch.int64)),
        r"levels must have shape \[K\] = \[10\] \(one per rois row\), "
        r"got \[3\]",
    ),
    (_call(levels=torch.zeros(10, dtype=torch.int32)), "levels must be int64, got Int"),
]


@pytest.mark.parametrize("kwargs, message", ERRORS, ids=[m[:40] for _, m in ERRORS])
def test_errors_eager_and_fake(kwargs, message):
    assert_raises_eager_and_fake(torch.ops.segops.multi_scale_roi_align, kwargs, message)


def test_backward_errors_eager_and_fake():
    rois = fpn_boxes(4)
    levels = torch.zeros(len(rois), dtype=torch.int64)
    op = torch.ops.segops._multi_scale_roi_align_backward
    base = dict(
        grad=torch.zeros(len(rois), 3, 2, 2),
        rois=rois,
        levels=levels,
        spatial_scales=SCALES[:2],
        pooled_height=2,
        pooled_width=2,
        batch_size=2,
        channels=3,
        heights=[8, 4],
        widths=[8, 4],
        sampling_ratio=2,
        aligned=False,
    )
    for change, message in [
        (dict(heights=[8]), "heights and widths must have 1 to 8 entries each, got 1 and 2"),
        (dict(grad=torch.zeros(len(rois), 3, 2, 3)), r"grad must have shape \[10, 3, 2, 2\], got \[10, 3, 2, 3\]"),
        (
            dict(heights=[8, -1]),
            r"input shapes must be non-negative, got N = 2, C = 3, heights \[8, -1\], "
            r"widths \[8, 4\]",
        ),
        (dict(spatial_scales=SCALES), r"spatial_scales must have one entry per feature map \(2\), got 4"),
    ]:
        assert_raises_eager_and_fake(op, {**base, **change}, f"_multi_scale_roi_align_backward: {message}")


def test_bad_values_are_named_on_the_cpu():
    rois = fpn_boxes(4)
    with pytest.raises(RuntimeError, match=r"levels\[2\] must be in \[0, 4\) \(a feature map\), got 4"):
        torch.ops.segops.multi_scale_roi_align(
            pyramid(), rois, torch.tensor([0, 1, 4, 0, 0, 0, 0, 0, 0, 0]), SCALES, 2, 2, 2, False
        )
    rois[1, 0] = 7
    with pytest.raises(RuntimeError, match=r"rois\[1, 0\] \(batch index\) must be an integer in \[0, 2\), got 7"):
        segops.multi_scale_roi_align(pyramid(), rois, 2, SCALES)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: segops.multi_scale_roi_align(pyramid(), fpn_boxes(3), 2, SCALES, mode="any"),
            "mode must be 'assign' or 'all', got 'any'",
        ),
        (
            lambda: segops.multi_scale_roi_align(torch.randn(1, 2, 3, 3), fpn_boxes(3), 2, SCALES),
            "features must be a non-empty list of Tensor",
        ),
        (lambda: segops.fpn_levels(fpn_boxes(3), [0.3, 0.1]), "spatial_scales must be powers of 2"),
        (lambda: segops.MultiScaleRoIAlign(7, SCALES, mode="x"), "mode must be 'assign' or 'all', got 'x'"),
    ],
)
def test_front_end_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu_in_default_and_deterministic_modes():
    features, rois = pyramid(), fpn_boxes(50)
    leaves = [f.requires_grad_() for f in features]
    expected = segops.multi_scale_roi_align(leaves, rois, 7, SCALES, mode="all")
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
    cpu_grads = torch.autograd.grad(expected, leaves, grad)
    actual = segops.multi_scale_roi_align([f.detach().cuda() for f in features], rois.cuda(), 7, SCALES, mode="all")
    torch.testing.assert_close(actual.cpu(), expected.detach(), rtol=1e-5, atol=1e-5)

    def backward():
        cuda = [f.detach().cuda().requires_grad_() for f in features]
        return torch.autograd.grad(
            segops.multi_scale_roi_align(cuda, rois.cuda(), 7, SCALES, mode="all"), cuda, grad.cuda()
        )

    for grads in cuda_gradients_in_both_modes(backward):
        for actual_grad, expected_grad in zip(grads, cpu_grads, strict=True):
            torch.testing.assert_close(actual_grad.cpu(), expected_grad, rtol=1e-5, atol=1e-5)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["assign", "all"])
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph(mode):
    g = torch.Generator().manual_seed(0)
    fine, coarse = torch.randn(2, 3, 32, 40, generator=g), torch.randn(2, 3, 16, 20, generator=g)
    rois = random_rois(10, 2, 128, 160, generator=g)
    assert_cuda_path_does_not_synchronise(
        lambda a, b, r: segops.multi_scale_roi_align([a, b], r, 3, [0.25, 0.125], mode=mode),
        fine,
        coarse,
        rois,
        grad_of=(0, 1),
    )

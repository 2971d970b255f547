import itertools

import pytest
import torch
import torchvision

import segops
from segops import reference
from conftest import DEVICES, requires_cuda
from op_testing import (  # noqa: I001
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
    rois_to_list,
)

TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


CONFIGS = list(
    itertools.product(
        [False, True],  # aligned
        [-1, 0, 1, 2],  # sampling_ratio
        [(7, 7), (3, 5), (1, 1)],  # output_size
        [1.0, 0.5, 0.25],  # spatial_scale
    )
)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned,sampling_ratio,output_size,spatial_scale", CONFIGS)
def test_forward_matches_torchvision(device, dtype, aligned, sampling_ratio, output_size, spatial_scale):
    for seed in range(3):
        input, rois = make_case(seed, device=device, dtype=dtype, spatial_scale=spatial_scale)
        expected = torchvision.ops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
        actual = segops.roi_align(input, rois, output_size, spatial_scale, sampling_ratio, aligned)
        if device == "cpu":  # same arithmetic in the same order as torchvision's CPU kernel
            assert torch.equal(actual, expected)
        else:
            torch.testing.assert_close(actual, expected, **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2), (True, -1), (False, 3)])
def test_backward_matches_torchvision(device, aligned, sampling_ratio):
    for seed in range(4):
        input, rois = make_case(seed, device=device, dtype=torch.float64, spatial_scale=0.5)
        grad = torch.randn(rois.shape[0], input.shape[1], 4, 3, dtype=torch.float64, device=device)
        grads = []
        for fn in (torchvision.ops.roi_align, segops.roi_align):
            x = input.clone().requires_grad_()
            fn(x, rois, (4, 3), 0.5, sampling_ratio, aligned).backward(grad)
            grads.append(x.grad)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("boxes_as", ["tensor", "list"])
def test_layouts_and_box_formats(device, layout, boxes_as):
    input, rois = make_case(7, device=device, batch_size=3, num_rois=10)
    rois = rois[rois[:, 0].argsort(stable=True)]
    expected = torchvision.ops.roi_align(input, rois, (5, 4), 0.5, 2, True)
    boxes = rois if boxes_as == "tensor" else rois_to_list(rois, 3)
    actual = segops.roi_align(layouts(input)[layout], boxes, (5, 4), 0.5, 2, True)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(segops.roi_align(input, non_contiguous(rois), (5, 4), 0.5, 2, True), expected)


@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2), (True, 0)])
def test_forward_and_backward_match_reference(aligned, sampling_ratio):
    # segops.reference is written independently of torchvision and of the kernels (matrix form).
    for seed in range(3):
        input, rois = make_case(seed, dtype=torch.float64, spatial_scale=0.5)
        x_ref = input.clone().requires_grad_()
        x_seg = input.clone().requires_grad_()
        expected = reference.roi_align(x_ref, rois, (4, 3), 0.5, sampling_ratio, aligned)
        actual = segops.roi_align(x_seg, rois, (4, 3), 0.5, sampling_ratio, aligned)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(expected)
        expected.backward(grad)
        actual.backward(grad)
        torch.testing.assert_close(x_seg.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("aligned,sampling_ratio", [(False, -1), (True, 2)])
def test_gradcheck(device, seed, aligned, sampling_ratio):
    input, rois = make_case(seed, device=device, dtype=torch.float64, channels=2, height=6, width=7, num_rois=4)
    input.requires_grad_()
    fn = lambda x: segops.roi_align(x, rois, (3, 2), 0.5, sampling_ratio, aligned)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (input,))
    assert torch.autograd.gradgradcheck(fn, (input,))


def test_function_and_module():
    input, rois = make_case(3)
    input.requires_grad_()
    out = segops.RoIAlignFunction.apply(input, rois, 0.5, 3, 4, 2, True)
    torch.testing.assert_close(out, torchvision.ops.roi_align(input, rois, (3, 4), 0.5, 2, True))
    out.sum().backward()
    expected_grad = torch.autograd.grad(segops.roi_align(input, rois, (3, 4), 0.5, 2, True).sum(), input)[0]
    torch.testing.assert_close(input.grad, expected_grad)
    module = segops.RoIAlign((3, 4), 0.5, 2, aligned=True)
    assert repr(module) == "RoIAlign(output_size=(3, 4), spatial_scale=0.5, sampling_ratio=2, aligned=True)"
    torch.testing.assert_close(module(input, rois), out)


def test_opcheck():
    input, rois = make_case(0, dtype=torch.float64)
    torch.library.opcheck(torch.ops.segops.roi_align.default, (input.requires_grad_(), rois, 0.5, 3, 2, 2, True))
    grad = torch.randn(rois.shape[0], 3, 3, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.segops._roi_align_backward.default, (grad, rois, 0.5, 3, 2, 2, 3, 9, 11, 2, True))


def test_compile_fullgraph_matches_eager():
    input, rois = make_case(1)

    def head(x, boxes):
        return segops.roi_align(x, boxes, (3, 3), 0.5, 2, True).relu().sum(dim=(2, 3))

    assert_compiled_matches_eager(head, input, rois)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_against_float32(device, dtype):
    # Same (rounded) inputs in float32: the error may not exceed a few units of the dtype's rounding.
    input, rois = make_case(5, device=device, channels=4, num_rois=8)
    input_low, rois_low = input.to(dtype), rois.to(dtype)
    input_low.requires_grad_()
    out = segops.roi_align(input_low, rois_low, (4, 4), 0.5, 2, True)
    x32 = input_low.detach().float().requires_grad_()
    expected = segops.roi_align(x32, rois_low.float(), (4, 4), 0.5, 2, True)
    assert out.dtype == dtype
    tolerance = dict(rtol=2 * torch.finfo(dtype).eps, atol=2 * torch.finfo(dtype).eps)
    torch.testing.assert_close(out.float(), expected.to(dtype).float(), **tolerance)
    grad = torch.randn_like(expected).to(dtype)
    out.backward(grad)
    expected.backward(grad.float())
    torch.testing.assert_close(input_low.grad.float(), x32.grad.to(dtype).float(), **tolerance)


def test_empty_and_degenerate_inputs():
    input = torch.randn(2, 3, 8, 8, requires_grad=True)
    empty = segops.roi_align(input, torch.zeros(0, 5), (2, 2), 1.0, 2, True)
    assert empty.shape == (0, 3, 2, 2)
    empty.sum().backward()
    assert torch.equal(input.grad, torch.zeros_like(input))
    assert segops.roi_align(input, [torch.zeros(0, 4), torch.zeros(0, 4)], 2).shape == (0, 3, 2, 2)
    assert segops.roi_align(input, [], 2).shape == (0, 3, 2, 2)
    # Zero-area, fully outside, huge and far-away boxes.
    rois = torch.tensor(DEGENERATE_BOXES, dtype=torch.float32)
    for aligned, sampling_ratio in itertools.product([False, True], [-1, 2]):
        expected = torchvision.ops.roi_align(input, rois[:3], 3, 1.0, sampling_ratio, aligned)
        actual = segops.roi_align(input, rois, 3, 1.0, sampling_ratio, aligned)
        torch.testing.assert_close(actual[:3], expected)
        assert torch.isfinite(actual).all()
    (grad_input,) = torch.autograd.grad(segops.roi_align(input, rois, 3, 1.0, -1, True).sum(), input)
    assert torch.isfinite(grad_input).all()
    # No channels, or an empty feature map: defined, zero outputs.
    assert segops.roi_align(torch.randn(1, 0, 4, 4), torch.zeros(2, 5), 2).shape == (2, 0, 2, 2)
    assert torch.equal(segops.roi_align(torch.randn(1, 2, 0, 4), torch.zeros(1, 5), 2), torch.zeros(1, 2, 2, 2))


@pytest.mark.parametrize("threads", [1, 2])
def test_backward_deterministic_across_runs_and_threads(threads):
    input, rois = make_case(11, height=20, width=24, channels=5, num_rois=40, spatial_scale=1.0)
    grad = torch.randn(40, 5, 4, 4)
    previous = torch.get_num_threads()
    try:
        results = []
        for num_threads in (threads, 1, threads):
            torch.set_num_threads(num_threads)
            x = input.clone().requires_grad_()
            segops.roi_align(x, rois, 4, 1.0, -1, True).backward(grad)
            results.append((segops.roi_align(input, rois, 4, 1.0, -1, True), x.grad))
    finally:
        torch.set_num_threads(previous)
    for out, grad_input in results[1:]:
        assert torch.equal(out, results[0][0])
        assert torch.equal(grad_input, results[0][1])


def _call_kwargs():
    input, rois = make_case(0, height=10, width=12, num_rois=4)
    return dict(
        input=input, rois=rois, spatial_scale=0.5, pooled_height=2, pooled_width=3, sampling_ratio=2, aligned=True
    )


@pytest.mark.parametrize("case", bad_argument_cases("roi_align"), ids=lambda case: case[0])
def test_bad_arguments_eager_and_fake(case):
    _, mutate, message = case
    kwargs = _call_kwargs()
    mutate(kwargs)
    assert_raises_eager_and_fake(torch.ops.segops.roi_align, kwargs, message)


@pytest.mark.parametrize("case", bad_roi_value_cases("roi_align"), ids=lambda case: case[0])
def test_bad_roi_values(case):
    _, row, column, value, message = case
    kwargs = _call_kwargs()
    kwargs["rois"][row, column] = value
    with pytest.raises(RuntimeError, match=message):
        torch.ops.segops.roi_align(**kwargs)
    grad = torch.ones(4, 3, 2, 3)
    with pytest.raises(RuntimeError, match=message.replace("roi_align", "_roi_align_backward")):
        torch.ops.segops._roi_align_backward(grad, kwargs["rois"], 0.5, 2, 3, 2, 3, 10, 12, 2, True)


def test_low_precision_input_keeps_float32_boxes():
    # bfloat16 cannot hold batch index 257 or sub-pixel coordinates near 1000 px: boxes stay float32.
    input = torch.randn(300, 2, 6, 6)
    rois = torch.tensor([[257, 1.3, 2.7, 1003.1, 1004.9], [3, 0.5, 0.5, 4.25, 3.75]])
    expected = segops.roi_align(input.bfloat16().float(), rois, 2, 0.005, 2, True)
    actual = segops.roi_align(input.bfloat16(), rois, 2, 0.005, 2, True)
    torch.testing.assert_close(actual.float(), expected.bfloat16().float(), rtol=0, atol=0)
    assert torch.ops.segops.roi_align(input.half(), rois, 0.005, 2, 2, 2, True).dtype == torch.float16


def test_absurd_sampling_and_scale_are_rejected_or_bounded():
    input, rois = make_case(0)
    for op in (torch.ops.segops.roi_align,):
        assert_raises_eager_and_fake(
            op,
            dict(
                input=input,
                rois=rois,
                spatial_scale=0.5,
                pooled_height=2,
                pooled_width=2,
                sampling_ratio=257,
                aligned=True,
            ),
            r"roi_align: sampling_ratio must be <= 0 \(adaptive\) or at most 256, got 257",
        )
    # Tiny bins sampled densely at the border, and boxes scaled past float's range: defined, finite outputs.
    edge = torch.tensor([[0, 22.0, 0.0, 22.0 + 1e-6, 18.0], [1, 0.0, 0.0, 1e30, 1e30]])
    out = segops.roi_align(input, edge, 3, 0.5, 256, True)
    assert torch.isfinite(out).all()
    assert torch.isfinite(segops.roi_align(input, edge, 3, 1e300, -1, True)).all()


def test_bad_arguments_of_public_api():
    input, rois = make_case(0)
    with pytest.raises(RuntimeError, match="roi_align: rois must be on the same device as input"):
        torch.ops.segops.roi_align(input, rois.to("meta"), 1.0, 2, 2, 2, True)
    with pytest.raises(
        ValueError, match=r"roi_align: output_size must be an int or a pair of ints \(height, width\), got \(2, 2, 2\)"
    ):
        segops.roi_align(input, rois, (2, 2, 2))
    with pytest.raises(
        ValueError, match=r"roi_align: output_size must be an int or a pair of ints \(height, width\), got \(2.0, 2\)"
    ):
        segops.roi_align(input, rois, (2.0, 2))
    assert segops.roi_align(input, rois, torch.Size([2, 3])).shape == (6, 3, 2, 3)
    with pytest.raises(
        ValueError, match=r"roi_align: boxes\[1\] must be a Tensor\[L, 4\] \(x1, y1, x2, y2\), got \[3, 5\]"
    ):
        segops.roi_align(input, [torch.zeros(2, 4), torch.zeros(3, 5)], 2)
    with pytest.raises(
        ValueError, match="roi_align: boxes must be a Tensor\\[K, 5\\] or a list of Tensor\\[L, 4\\], got str"
    ):
        segops.roi_align(input, "boxes", 2)
    with pytest.raises(
        RuntimeError, match=r"_roi_align_backward: grad must have shape \[6, 3, 2, 2\], got \[6, 3, 2, 3\]"
    ):
        torch.ops.segops._roi_align_backward(torch.ones(6, 3, 2, 3), rois, 1.0, 2, 2, 2, 3, 9, 11, 2, True)


@requires_cuda
@pytest.mark.cuda
def test_cuda_matches_cpu_in_default_and_deterministic_modes():
    input, rois = make_case(2, num_rois=30, channels=19)  # 19 channels: a partial block of the gather
    expected = segops.roi_align(input, rois, 4, 0.5, -1, True)
    torch.testing.assert_close(segops.roi_align(input.cuda(), rois.cuda(), 4, 0.5, -1, True).cpu(), expected)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
    cpu_grad = torch.autograd.grad(segops.roi_align(input.requires_grad_(), rois, 4, 0.5, -1, True), input, grad)[0]

    def backward():
        x = input.detach().cuda().requires_grad_()
        return torch.autograd.grad(segops.roi_align(x, rois.cuda(), 4, 0.5, -1, True), x, grad.cuda())

    for grads in cuda_gradients_in_both_modes(backward):
        torch.testing.assert_close(grads[0].cpu(), cpu_grad)


def test_double_backward_on_empty_map():
    assert_double_backward_on_empty_map(lambda x, rois: segops.roi_align(x, rois, 2, 1.0, 2, True))


def test_export_with_dynamic_height_width_and_boxes():
    input, rois = make_case(4, height=10, width=12)
    assert_exports_with_dynamic_shapes(lambda x, b: segops.roi_align(x, b, (3, 2), 0.5, 2, True), input, rois)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("channels", [1, 15, 16, 17, 37])
@pytest.mark.parametrize("num_rois", [1, 5])
def test_channel_blocks_and_few_boxes_match_torchvision_bitwise(layout, channels, num_rois):
    # The NCHW forward works in blocks of 16 channels and splits one RoI over both cores; the NHWC forward splits
    # it by bin rows. Partial blocks and single boxes must not change a bit.
    input, rois = make_case(9, channels=channels, num_rois=num_rois, height=13, width=10)
    expected = torchvision.ops.roi_align(input, rois, (5, 3), 0.5, -1, True)
    assert torch.equal(segops.roi_align(layouts(input)[layout], rois, (5, 3), 0.5, -1, True), expected)


def test_backward_in_chunks_of_boxes_matches_torchvision():
    # 2,100 boxes of 512 dense taps each: more than one chunk of taps (1 << 20) in the CPU backward, which keeps
    # memory bounded whatever K and sampling_ratio are; the chunks must not change the per-plane order of sums.
    g = torch.Generator().manual_seed(3)
    input = torch.randn(2, 1, 5, 6, dtype=torch.float64, generator=g)
    corners = torch.rand(2100, 2, generator=g, dtype=torch.float64) * 4
    rois = torch.cat([torch.randint(0, 2, (2100, 1), generator=g).double(), corners, corners + 1.5], dim=1)
    grad = torch.randn(2100, 1, 1, 1, dtype=torch.float64, generator=g)
    grads = []
    for fn in (torchvision.ops.roi_align, segops.roi_align):
        x = input.clone().requires_grad_()
        fn(x, rois, 1, 1.0, 256, True).backward(grad)
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-12)


@requires_cuda
@pytest.mark.cuda
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph():
    input, rois = make_case(6, num_rois=12)
    assert_cuda_path_does_not_synchronise(lambda x, b: segops.roi_align(x, b, 4, 0.5, 2, True), input, rois)


@requires_cuda
@pytest.mark.cuda
def test_cuda_bad_row_is_a_device_side_assert():
    assert_bad_row_is_a_device_side_assert("segops.roi_align(x, rois, 2, 1.0, 2, True)")
    assert_bad_row_is_a_device_side_assert(
        "torch.ops.segops._roi_align_backward(torch.ones(2, 3, 2, 2, device='cuda'), rois, 1.0, 2, 2, 2, 3, 8, 8, 2, "
        "True)"
    )

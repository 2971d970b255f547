import itertools

import pytest
import torch
import torchvision

import segops
from segops import reference
from conftest import DEVICES, requires_cuda
from op_testing import (
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


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "output_size,spatial_scale", list(itertools.product([(7, 7), (3, 5), (1, 1)], [1.0, 0.5, 0.25]))
)
def test_forward_and_backward_match_torchvision(device, dtype, output_size, spatial_scale):
    for seed in range(3):
        input, rois = make_case(seed, device=device, dtype=dtype, spatial_scale=spatial_scale)
        outputs, grads = [], []
        for fn in (torchvision.ops.roi_pool, segops.roi_pool):
            x = input.clone().requires_grad_()
            out = fn(x, rois, output_size, spatial_scale)
            out.backward(torch.arange(out.numel(), dtype=dtype, device=device).view_as(out) % 7)
            outputs.append(out)
            grads.append(x.grad)
        assert torch.equal(outputs[1], outputs[0])
        torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=0)


def test_matches_reference():
    # segops.reference is written independently of torchvision and of the kernels.
    for seed in range(4):
        input, rois = make_case(seed, dtype=torch.float64)
        x_ref = input.clone().requires_grad_()
        x_seg = input.clone().requires_grad_()
        expected = reference.roi_pool(x_ref, rois, (4, 3), 0.5)
        actual = segops.roi_pool(x_seg, rois, (4, 3), 0.5)
        assert torch.equal(actual, expected)
        grad = torch.randn_like(expected)
        expected.backward(grad)
        actual.backward(grad)
        torch.testing.assert_close(x_seg.grad, x_ref.grad, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
@pytest.mark.parametrize("boxes_as", ["tensor", "list"])
def test_layouts_and_box_formats(device, layout, boxes_as):
    input, rois = make_case(7, device=device, batch_size=3, num_rois=10)
    rois = rois[rois[:, 0].argsort(stable=True)]
    expected = torchvision.ops.roi_pool(input, rois, (5, 4), 0.5)
    boxes = rois if boxes_as == "tensor" else rois_to_list(rois, 3)
    assert torch.equal(segops.roi_pool(layouts(input)[layout], boxes, (5, 4), 0.5), expected)
    assert torch.equal(segops.roi_pool(input, non_contiguous(rois), (5, 4), 0.5), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_gradcheck(device, seed):
    input, rois = make_case(seed, device=device, dtype=torch.float64, channels=2, height=6, width=7, num_rois=4)
    input.requires_grad_()
    fn = lambda x: segops.roi_pool(x, rois, (3, 2), 0.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (input,))
    assert torch.autograd.gradgradcheck(fn, (input,))


def test_function_and_module():
    input, rois = make_case(3)
    output, argmax = segops.RoIPoolFunction.apply(input, rois, 0.5, 3, 4)
    assert torch.equal(output, torchvision.ops.roi_pool(input, rois, (3, 4), 0.5))
    assert argmax.dtype == torch.int32 and not argmax.requires_grad
    module = segops.RoIPool((3, 4), 0.5)
    assert repr(module) == "RoIPool(output_size=(3, 4), spatial_scale=0.5)"
    assert torch.equal(module(input, rois), output)


def test_opcheck():
    input, rois = make_case(0, dtype=torch.float64)
    torch.library.opcheck(torch.ops.segops.roi_pool.default, (input.requires_grad_(), rois, 0.5, 3, 2))
    _, argmax = torch.ops.segops.roi_pool(input, rois, 0.5, 3, 2)
    grad = torch.randn(rois.shape[0], 3, 3, 2, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(torch.ops.segops._roi_pool_backward.default, (grad, rois, argmax, 0.5, 3, 2, 2, 3, 9, 11))


def test_compile_fullgraph_matches_eager():
    input, rois = make_case(1)

    def head(x, boxes):
        return segops.roi_pool(x, boxes, (3, 3), 0.5).sum(dim=(2, 3))

    assert_compiled_matches_eager(head, input, rois)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_is_exact(device, dtype):
    # Max pooling only selects values: the result equals float32 pooling of the same rounded inputs exactly.
    input, rois = make_case(5, device=device, channels=4, num_rois=8)
    input_low, rois_low = input.to(dtype).requires_grad_(), rois.to(dtype)
    x32 = input_low.detach().float().requires_grad_()
    out = segops.roi_pool(input_low, rois_low, (4, 4), 0.5)
    expected = segops.roi_pool(x32, rois_low.float(), (4, 4), 0.5)
    assert out.dtype == dtype and torch.equal(out.float(), expected)
    grad = torch.randn_like(expected).to(dtype)
    out.backward(grad)
    expected.backward(grad.float())
    torch.testing.assert_close(input_low.grad.float(), x32.grad.to(dtype).float(), rtol=0, atol=0)


def test_empty_and_degenerate_inputs():
    input = torch.randn(2, 3, 8, 8, requires_grad=True)
    empty = segops.roi_pool(input, torch.zeros(0, 5), (2, 2))
    assert empty.shape == (0, 3, 2, 2)
    empty.sum().backward()
    assert torch.equal(input.grad, torch.zeros_like(input))
    rois = torch.tensor(
        [
            [0, 3, 3, 3, 3],
            [1, 100, 100, 120, 130],
            [0, -50, -50, -20, -30],
            [1, 2, 2, 1, 1],
            [1, -1e6, -1e6, 1e6, 1e6],
            [0, 1e30, 1e30, 3e30, 3e30],
        ],
        dtype=torch.float32,
    )
    expected = torchvision.ops.roi_pool(input, rois[:5], 3)
    actual = segops.roi_pool(input, rois, 3)
    assert torch.equal(actual[:5], expected)
    assert torch.equal(actual[5], torch.zeros(3, 3, 3))
    (grad_input,) = torch.autograd.grad(actual.sum(), input)
    assert torch.isfinite(grad_input).all()
    assert segops.roi_pool(torch.randn(1, 0, 4, 4), torch.zeros(2, 5), 2).shape == (2, 0, 2, 2)
    assert torch.equal(segops.roi_pool(torch.randn(1, 2, 0, 4), torch.zeros(1, 5), 2), torch.zeros(1, 2, 2, 2))


def test_spatial_scale_past_float_range_is_defined():
    input, rois = make_case(0)
    out = segops.roi_pool(input, rois, 2, 1e300)  # box * scale overflows float32 to inf, 0 * scale to NaN
    assert torch.isfinite(out).all()


def test_nan_and_infinite_inputs_follow_torchvision():
    input = torch.randn(1, 2, 6, 6)
    input[0, 0, :3, :3] = float("nan")
    input[0, 1, 3:, 3:] = -float("inf")
    rois = torch.tensor([[0, 0, 0, 5, 5], [0, 0, 0, 2, 2], [0, 3, 3, 5, 5]], dtype=torch.float32)
    assert torch.equal(segops.roi_pool(input, rois, 2), torchvision.ops.roi_pool(input, rois, 2))


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
            segops.roi_pool(x, rois, 4, 1.0).backward(grad)
            results.append(x.grad)
    finally:
        torch.set_num_threads(previous)
    assert all(torch.equal(result, results[0]) for result in results[1:])


def _call_kwargs():
    input, rois = make_case(0, height=10, width=12, num_rois=4)
    return dict(input=input, rois=rois, spatial_scale=0.5, pooled_height=2, pooled_width=3)


@pytest.mark.parametrize("case", bad_argument_cases("roi_pool"), ids=lambda case: case[0])
def test_bad_arguments_eager_and_fake(case):
    _, mutate, message = case
    kwargs = _call_kwargs()
    mutate(kwargs)
    assert_raises_eager_and_fake(torch.ops.segops.roi_pool, kwargs, message)


@pytest.mark.parametrize("case", bad_roi_value_cases("roi_pool"), ids=lambda case: case[0])
def test_bad_roi_values(case):
    _, row, column, value, message = case
    kwargs = _call_kwargs()
    _, argmax = torch.ops.segops.roi_pool(**kwargs)
    kwargs["rois"][row, column] = value
    with pytest.raises(RuntimeError, match=message):
        torch.ops.segops.roi_pool(**kwargs)
    with pytest.raises(RuntimeError, match=message.replace("roi_pool", "_roi_pool_backward")):
        torch.ops.segops._roi_pool_backward(torch.ones(4, 3, 2, 3), kwargs["rois"], argmax, 0.5, 2, 3, 2, 3, 10, 12)


def test_backward_rejects_foreign_argmax_and_ignores_indices_outside_the_bins_window():
    input = torch.randn(1, 1, 8, 8)
    rois = torch.tensor([[0.0, 0.0, 0.0, 6.0, 6.0]])  # bins of 2x2 pixels at spatial_scale 0.5
    _, argmax = torch.ops.segops.roi_pool(input, rois, 0.5, 2, 2)
    grad = torch.ones(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match=r"_roi_pool_backward: argmax must be the int32 tensor of grad's shape"):
        torch.ops.segops._roi_pool_backward(grad, rois, argmax.long(), 0.5, 2, 2, 1, 1, 8, 8)
    # Bin (0, 0) points at pixel (1, 1), in its window; bin (0, 1) at (1, 0), outside its window; the others out of
    # range. Only the first carries a gradient (the GPU's gather looks only inside windows: all paths agree).
    forged = torch.tensor([[[[9, 8], [10**6, -1]]]], dtype=torch.int32)
    grad_input = torch.ops.segops._roi_pool_backward(grad, rois, forged, 0.5, 2, 2, 1, 1, 8, 8)
    expected = torch.zeros(1, 1, 8, 8)
    expected[0, 0, 1, 1] = 1
    assert torch.equal(grad_input, expected)


@requires_cuda
@pytest.mark.cuda
def test_cuda_matches_cpu_in_default_and_deterministic_modes():
    input, rois = make_case(2, num_rois=30, channels=19)  # 19 channels: a partial block of the gather
    expected = segops.roi_pool(input, rois, 4, 0.5)
    assert torch.equal(segops.roi_pool(input.cuda(), rois.cuda(), 4, 0.5).cpu(), expected)
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(3))
    cpu_grad = torch.autograd.grad(segops.roi_pool(input.requires_grad_(), rois, 4, 0.5), input, grad)[0]

    def backward():
        x = input.detach().cuda().requires_grad_()
        return torch.autograd.grad(segops.roi_pool(x, rois.cuda(), 4, 0.5), x, grad.cuda())

    default, deterministic = cuda_gradients_in_both_modes(backward)
    torch.testing.assert_close(default[0].cpu(), cpu_grad)
    assert torch.equal(deterministic[0].cpu(), cpu_grad)  # sums of the same values in the CPU's order


def test_double_backward_on_empty_map():
    assert_double_backward_on_empty_map(lambda x, rois: segops.roi_pool(x, rois, 2, 1.0))


def test_export_with_dynamic_height_width_and_boxes():
    # The fake kernel's int32-plane check must not turn into a guard that bounds H and W.
    input, rois = make_case(4, height=10, width=12)
    assert_exports_with_dynamic_shapes(lambda x, b: segops.roi_pool(x, b, (3, 2), 0.5), input, rois)


@requires_cuda
@pytest.mark.cuda
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph():
    input, rois = make_case(6, num_rois=12)
    assert_cuda_path_does_not_synchronise(lambda x, b: segops.roi_pool(x, b, 4, 0.5), input, rois)


@requires_cuda
@pytest.mark.cuda
def test_cuda_bad_row_is_a_device_side_assert():
    assert_bad_row_is_a_device_side_assert("segops.roi_pool(x, rois, 2, 1.0)")

import pytest
import torch
import torch.nn.functional as F

import segops
from segops import reference
from conftest import DEVICES, requires_cuda
from op_testing import assert_cuda_path_does_not_synchronise, assert_raises_eager_and_fake, layouts

# (input size [N, C, H, W] or [C, H, W], kernel, stride, padding): non-overlapping SegNet pools, odd sizes (the last
# row/column dropped), padding, and overlapping windows (kernel 3 stride 2, kernel 3 stride 1) whose indices repeat.
# Non-overlapping pools (2x2 and 3x3) take the CPU backward's plain gather, the others its marks.
POOLS = [
    ((2, 3, 8, 10), 2, 2, 0),
    ((1, 4, 9, 7), 2, 2, 0),
    ((2, 3, 9, 12), 3, 3, 0),
    ((2, 2, 11, 13), 3, 2, 1),
    ((3, 7, 5), (2, 3), (2, 1), (1, 0)),
    ((2, 3, 9, 9), 3, 1, 1),
    ((1, 1, 1, 1), 1, 1, 0),
]


def pooled(shape, kernel, stride, padding, *, seed=0, dtype=torch.float32, device="cpu"):
    """(input of the unpooling, its int64 indices): max_pool2d of a random map, then the pooled values replaced by
    distinct random ones, so that which duplicate wins shows in the output."""
    g = torch.Generator().manual_seed(seed)
    _, indices = F.max_pool2d(torch.randn(shape, generator=g), kernel, stride, padding, return_indices=True)
    values = torch.randn(indices.shape, generator=g).to(dtype)
    return values.to(device), indices.to(device)


def has_duplicates(indices):
    flat = indices.flatten(-2)
    return any(row.unique().numel() < row.numel() for row in flat.reshape(-1, flat.shape[-1]))


def forward_and_grad(fn, input, indices, grad_seed=3):
    x = input.detach().clone().requires_grad_()
    out = fn(x, indices)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out)
    (grad_input,) = torch.autograd.grad(out, x, grad)
    return out, grad_input


def _batched(t):
    return t if t.dim() == 4 else t.unsqueeze(0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("pool", POOLS, ids=str)
def test_matches_pytorch_bit_for_bit(device, dtype, pool):
    shape, kernel, stride, padding = pool
    input, indices = pooled(shape, kernel, stride, padding, dtype=dtype, device=device)

    def ours(x, i):
        return segops.max_unpool2d(x, i, kernel, stride, padding, output_size=shape[-2:])

    def theirs(x, i):
        return F.max_unpool2d(x, i, kernel, stride, padding, output_size=shape[-2:])

    out, grad = forward_and_grad(ours, input, indices)
    expected_out, expected_grad = forward_and_grad(theirs, input.cpu(), indices.cpu())
    assert out.shape == tuple(shape) and out.dtype == dtype
    assert torch.equal(out.cpu(), expected_out)
    if not has_duplicates(indices):
        assert torch.equal(grad.cpu(), expected_grad)
    # Independently of PyTorch: the definition, winners only for the gradient.
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3)).to(out)
    assert torch.equal(
        out.cpu(),
        reference.max_unpool2d_brute_force(_batched(input), _batched(indices), shape[-2:]).view(out.shape).cpu(),
    )
    assert torch.equal(
        grad.cpu(),
        reference.max_unpool2d_grad_brute_force(_batched(grad_out), _batched(indices)).view(grad.shape).cpu(),
    )


def test_duplicates_largest_position_wins_and_alone_gets_the_gradient():
    # Three inputs of one plane name output 4: position 2 wins; positions 0 and 1 get no gradient.
    input = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]], requires_grad=True)
    indices = torch.tensor([[[[4, 4, 4, 0]]]])
    out = segops.max_unpool2d(input, indices, (1, 2), output_size=(1, 8))
    assert out.tolist() == [[[[4.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0]]]]
    out.backward(torch.arange(8.0).view(1, 1, 1, 8) + 1)
    assert input.grad.tolist() == [[[[0.0, 0.0, 5.0, 1.0]]]]
    # No comparison with F.max_unpool2d here: PyTorch does not specify the winner among duplicates, so the expected
    # values above are written out by hand.


def test_backward_planes_with_and_without_duplicates():
    # The CPU backward gathers a plane whose indices lie each in its own 2x2 tile, and marks winners in a plane where
    # they do not: here plane 1 of image 0 names one output from every input, plane 2 of image 1 a neighbour's tile.
    input, indices = pooled((2, 3, 8, 10), 2, 2, 0)
    indices = indices.clone()
    indices[0, 1] = 7
    indices[1, 2, 1, 1] = indices[1, 2, 1, 2]
    out, grad = forward_and_grad(lambda x, i: segops.max_unpool2d(x, i, 2, output_size=(8, 10)), input, indices)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, reference.max_unpool2d_brute_force(input, indices, (8, 10)))
    expected_grad = reference.max_unpool2d_grad_brute_force(grad_out, indices)
    assert torch.equal(grad, expected_grad)
    assert (grad[0, 1].flatten()[:-1] == 0).all() and grad[0, 1, -1, -1] == grad_out[0, 1, 0, 7]


@pytest.mark.parametrize(
    "map_size, output_size", [((8, 10), None), ((9, 11), (9, 11)), ((9, 11), (2, 3, 9, 11)), ((8, 10), [9, 11])]
)
def test_output_size_forms(map_size, output_size):
    input, indices = pooled((2, 3, *map_size), 2, 2, 0)
    expected = F.max_unpool2d(input, indices, 2, output_size=output_size)
    assert torch.equal(segops.max_unpool2d(input, indices, 2, output_size=output_size), expected)
    assert torch.equal(segops.MaxUnpool2d(2)(input, indices, output_size=output_size), expected)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_layouts(layout):
    input, indices = pooled((2, 5, 8, 10), 3, 2, 1)
    expected = forward_and_grad(lambda x, i: segops.max_unpool2d(x, i, 3, 2, 1, (8, 10)), input, indices)
    input_l, indices_l = layouts(input)[layout], layouts(indices)[layout]
    actual = forward_and_grad(lambda x, i: segops.max_unpool2d(x, i, 3, 2, 1, (8, 10)), input_l, indices_l)
    for a, e in zip(actual, expected):
        assert torch.equal(a, e)
    if layout == "channels_last":  # the output keeps the layout, as PyTorch's does
        assert actual[0].is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(actual[0], F.max_unpool2d(input_l, indices_l, 3, 2, 1, (8, 10)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_and_gradgradcheck_with_duplicates(device, seed):
    input, indices = pooled((2, 2, 7, 9), 3, 2, 1, seed=seed, dtype=torch.float64, device=device)
    assert has_duplicates(indices)

    def fn(x):
        return segops.max_unpool2d(x, indices, 3, 2, 1, output_size=(7, 9))

    x = input.requires_grad_()
    assert torch.autograd.gradcheck(fn, (x,))
    assert torch.autograd.gradgradcheck(fn, (x,))


def test_third_order_gradient_is_the_backward_again():
    input, indices = pooled((1, 2, 6, 6), 3, 2, 1, dtype=torch.float64)
    x = input.requires_grad_()
    out = segops.max_unpool2d(x, indices, 3, 2, 1, output_size=(6, 6))
    v = torch.randn_like(out, requires_grad=True)
    (g,) = torch.autograd.grad(out, x, v, create_graph=True)
    w = torch.randn_like(g, requires_grad=True)
    (gg,) = torch.autograd.grad(g, v, w, create_graph=True)  # the forward, applied to w
    assert torch.equal(gg, segops.max_unpool2d(w.detach(), indices, 3, 2, 1, output_size=(6, 6)))
    u = torch.randn_like(gg)
    (ggg,) = torch.autograd.grad(gg, w, u)
    assert torch.equal(ggg, torch.ops.segops._max_unpool2d_backward(u, indices))


def test_function_and_module():
    input, indices = pooled((2, 3, 8, 8), 2, 2, 0)
    expected = F.max_unpool2d(input, indices, 2)
    assert torch.equal(segops.MaxUnpool2dFunction.apply(input, indices, 8, 8), expected)
    module = segops.MaxUnpool2d(2)
    assert torch.equal(module(input, indices), expected)
    assert repr(module) == "MaxUnpool2d(kernel_size=(2, 2), stride=(2, 2), padding=(0, 0))"
    assert repr(segops.MaxUnpool2d(3, 2, 1)) == "MaxUnpool2d(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))"
    x = input.clone().requires_grad_()
    segops.MaxUnpool2dFunction.apply(x, indices, 8, 8).sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))


def test_opcheck():
    for shape, kernel, stride, padding in POOLS[:4]:
        input, indices = pooled(shape, kernel, stride, padding, dtype=torch.float64)
        input, indices = _batched(input), _batched(indices)
        out_h, out_w = shape[-2:]
        torch.library.opcheck(torch.ops.segops.max_unpool2d.default, (input.requires_grad_(), indices, out_h, out_w))
        grad = torch.randn(*input.shape[:2], out_h, out_w, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(torch.ops.segops._max_unpool2d_backward.default, (grad, indices))
    input, indices = pooled((2, 5, 8, 10), 2, 2, 0)
    cl = lambda t: t.contiguous(memory_format=torch.channels_last)  # noqa: E731
    torch.library.opcheck(torch.ops.segops.max_unpool2d.default, (cl(input), cl(indices), 8, 10))


def test_compile_fullgraph_matches_eager():
    input, indices = pooled((2, 4, 8, 10), 3, 2, 1)

    def decoder(x, i):
        return segops.max_unpool2d(x.relu() * 2, i, 3, 2, 1, output_size=(8, 10)).mean(dim=1)

    expected = forward_and_grad(decoder, input, indices)
    actual = forward_and_grad(torch.compile(decoder, fullgraph=True), input, indices)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


def test_empty_inputs():
    for shape in [(0, 3, 4, 5), (2, 0, 4, 5), (2, 3, 0, 5)]:
        input = torch.zeros(shape, requires_grad=True)
        indices = torch.zeros(shape, dtype=torch.int64)
        out = torch.ops.segops.max_unpool2d(input, indices, 6, 7)
        assert torch.equal(out, torch.zeros(shape[0], shape[1], 6, 7))
        out.sum().backward()
        assert input.grad.shape == shape
    # Nothing to unpool into but an empty map.
    assert torch.ops.segops.max_unpool2d(
        torch.zeros(2, 3, 0, 0), torch.zeros(2, 3, 0, 0, dtype=torch.int64), 0, 0
    ).shape == (2, 3, 0, 0)


def test_deterministic_across_runs_and_threads():
    input, indices = pooled((4, 16, 33, 35), 3, 2, 1, seed=5)
    runs = []
    threads = torch.get_num_threads()
    try:
        for n in (1, threads, 1):
            torch.set_num_threads(n)
            runs.append(forward_and_grad(lambda x, i: segops.max_unpool2d(x, i, 3, 2, 1, (33, 35)), input, indices))
    finally:
        torch.set_num_threads(threads)
    for run in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(run, runs[0]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (17, r"max_unpool2d: indices\[1, 2, 0, 3\] = 17 is outside \[0, Ho \* Wo\) = \[0, 16\) of its output plane"),
        (-1, r"max_unpool2d: indices\[1, 2, 0, 3\] = -1 is outside \[0, Ho \* Wo\) = \[0, 16\) of its output plane"),
        (2**40, r"indices\[1, 2, 0, 3\] = 1099511627776 is outside"),
    ],
)
def test_index_out_of_range_is_an_error_naming_it(bad, message):
    wide = torch.randn(2, 3, 2, 4)
    wide_indices = torch.zeros(2, 3, 2, 4, dtype=torch.int64)
    wide_indices[1, 2, 0, 3] = bad
    wide_indices[1, 2, 1, 2] = bad  # later in memory order: the error names the first
    with pytest.raises(RuntimeError, match=message):
        torch.ops.segops.max_unpool2d(wide, wide_indices, 4, 4)
    backward_message = message.replace("max_unpool2d", "_max_unpool2d_backward", 1)
    with pytest.raises(RuntimeError, match=backward_message):
        torch.ops.segops._max_unpool2d_backward(torch.randn(2, 3, 4, 4), wide_indices)
    for layout in ("channels_last", "strided"):
        with pytest.raises(RuntimeError, match=message):
            torch.ops.segops.max_unpool2d(layouts(wide)[layout], layouts(wide_indices)[layout], 4, 4)


def test_indices_into_an_empty_output_are_out_of_range():
    with pytest.raises(RuntimeError, match=r"indices\[0, 0, 0, 0\] = 0 is outside \[0, Ho \* Wo\) = \[0, 0\)"):
        torch.ops.segops.max_unpool2d(torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1, dtype=torch.int64), 0, 3)


def _kwargs():
    input, indices = pooled((2, 3, 8, 8), 2, 2, 0)
    return dict(input=input, indices=indices, output_height=8, output_width=8)


BAD_ARGUMENTS = [
    (
        "input 3-D",
        lambda a: a.update(input=a["input"][0]),
        r"max_unpool2d: input must have shape \[N, C, H, W\], got \[3, 4, 4\]",
    ),
    (
        "input int",
        lambda a: a.update(input=a["input"].long()),
        r"max_unpool2d: input must be float32, float64, float16 or bfloat16, got Long",
    ),
    (
        "indices int32",
        lambda a: a.update(indices=a["indices"].int()),
        r"max_unpool2d: indices must be int64 \(Long\), as max_pool2d returns them, got Int",
    ),
    (
        "indices shape",
        lambda a: a.update(indices=a["indices"][:, :2]),
        r"max_unpool2d: indices must have input's shape \[2, 3, 4, 4\], got \[2, 2, 4, 4\]",
    ),
    (
        "indices device",
        lambda a: a.update(indices=a["indices"].to("meta")),
        r"max_unpool2d: indices must be on the same device as input \(cpu\), got meta",
    ),
    (
        "negative output size",
        lambda a: a.update(output_height=-1),
        r"max_unpool2d: output size must be non-negative, got \[-1, 8\]",
    ),
    # Expanded from one element: a forged shape that costs no memory.
    (
        "plane over int32",
        lambda a: a.update(
            input=torch.zeros(1).expand(2, 3, 65536, 65536),
            indices=torch.zeros(1, dtype=torch.int64).expand(2, 3, 65536, 65536),
        ),
        r"max_unpool2d: input planes \(H \* W\) must have at most 2\^31 - 1 elements, got 65536 \* 65536",
    ),
]


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=lambda case: case[0])
def test_bad_arguments_eager_and_fake(case):
    _, mutate, message = case
    kwargs = _kwargs()
    mutate(kwargs)
    assert_raises_eager_and_fake(torch.ops.segops.max_unpool2d, kwargs, message)


BAD_BACKWARD_ARGUMENTS = [
    (
        (torch.ones(2, 3, 8), torch.zeros(2, 3, 4, 4, dtype=torch.int64)),
        r"_max_unpool2d_backward: grad must have shape \[N, C, Ho, Wo\], got \[2, 3, 8\]",
    ),
    (
        (torch.ones(2, 3, 8, 8, dtype=torch.int32), torch.zeros(2, 3, 4, 4, dtype=torch.int64)),
        r"_max_unpool2d_backward: grad must be float32, float64, float16 or bfloat16, got Int",
    ),
    (
        (torch.ones(2, 3, 8, 8), torch.zeros(2, 3, 4, 4)),
        r"_max_unpool2d_backward: indices must be int64 \(Long\), as max_pool2d returns them, got Float",
    ),
    (
        (torch.ones(2, 3, 8, 8), torch.zeros(2, 4, 4, 4, dtype=torch.int64)),
        r"_max_unpool2d_backward: indices must have shape \[N, C, H, W\] with N, C = 2, 3, got \[2, 4, 4, 4\]",
    ),
]


@pytest.mark.parametrize("args, message", BAD_BACKWARD_ARGUMENTS, ids=lambda x: str(x)[:40])
def test_bad_backward_arguments_eager_and_fake(args, message):
    grad, indices = args
    assert_raises_eager_and_fake(torch.ops.segops._max_unpool2d_backward, dict(grad=grad, indices=indices), message)


def test_functional_errors_follow_pytorch():
    input, indices = pooled((2, 3, 8, 8), 2, 2, 0)
    for output_size, message in [
        ((20, 8), r"invalid output_size \"\(20, 8\)\" \(dim 0 must be between 6 and 10\)"),
        ((8,), r"output_size should be a sequence containing 2 or 4 elements"),
    ]:
        with pytest.raises(ValueError, match=message):
            segops.max_unpool2d(input, indices, 2, output_size=output_size)
        with pytest.raises(ValueError, match=message):
            F.max_unpool2d(input, indices, 2, output_size=output_size)
    with pytest.raises(RuntimeError, match=r"max_unpool2d: input must have shape \[C, H, W\] or \[N, C, H, W\]"):
        segops.max_unpool2d(input[0, 0], indices[0, 0], 2)
    with pytest.raises(
        RuntimeError, match=r"max_unpool2d: indices must have input's shape \[3, 4, 4\], got \[2, 3, 4, 4\]"
    ):
        segops.max_unpool2d(input[0], indices, 2)


@requires_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("pool", POOLS, ids=str)
def test_cuda_matches_cpu_bit_for_bit(pool):
    shape, kernel, stride, padding = pool
    input, indices = pooled(shape, kernel, stride, padding)

    def fn(x, i):
        return segops.max_unpool2d(x, i, kernel, stride, padding, output_size=shape[-2:])

    expected = forward_and_grad(fn, input, indices)
    torch.use_deterministic_algorithms(True)  # no alert is due: the op is deterministic
    try:
        for _ in range(2):
            actual = forward_and_grad(fn, input.cuda(), indices.cuda())
            assert all(torch.equal(a.cpu(), e) for a, e in zip(actual, expected))
    finally:
        torch.use_deterministic_algorithms(False)


@requires_cuda
@pytest.mark.cuda
def test_cuda_index_out_of_range_is_a_device_side_assert_printing_it():
    # In a child process: the assert leaves that process's CUDA context unusable.
    import subprocess
    import sys

    code = (
        "import torch, segops\n"
        "indices = torch.zeros(1, 1, 2, 2, dtype=torch.int64, device='cuda')\n"
        "indices[0, 0, 1, 0] = 99\n"
        "torch.ops.segops.max_unpool2d(torch.ones(1, 1, 2, 2, device='cuda'), indices, 4, 4)\n"
        "torch.cuda.synchronize()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "device-side assert" in result.stderr
    assert "max_unpool2d: indices[0, 0, 1, 0] = 99 is outside [0, Ho * Wo) = [0, 16)" in result.stdout


@requires_cuda
@pytest.mark.cuda
def test_cuda_path_does_not_synchronise_and_captures_in_a_graph():
    pooled_values, indices = F.max_pool2d(torch.randn(2, 3, 10, 12), 3, 2, 1, return_indices=True)
    assert_cuda_path_does_not_synchronise(
        lambda x, i: segops.max_unpool2d(x, i, 3, 2, 1, (10, 12)), pooled_values, indices
    )

"""The shared helpers of the op tests (test_roi_align, test_roi_pool, test_multi_scale_roi_align, test_max_unpool,
test_dilated_conv, test_flow_warp, test_dense_crf, test_emulation): random boxes and RoI cases, memory layouts, and
assertions that an op raises the same error eager and fake, matches eager when compiled, exports, and keeps the CUDA
path free of host synchronisation."""

import pytest
import torch
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensorMode


def random_rois(
    num_rois,
    batch_size,
    image_height,
    image_width,
    *,
    dtype=torch.float32,
    generator=None,
    outside=0.25,
    degenerate=0.1,
):
    """Tensor[K, 5] of boxes in image coordinates: mostly valid, some reaching `outside` of the image size past
    its borders, a `degenerate` fraction with zero width or height, and some with x2 < x1."""
    g = generator
    scale = torch.tensor([image_width, image_height, image_width, image_height], dtype=torch.float64)
    corners = (torch.rand(num_rois, 4, generator=g, dtype=torch.float64) * (1 + 2 * outside) - outside) * scale
    boxes = torch.cat([corners[:, :2].minimum(corners[:, 2:]), corners[:, :2].maximum(corners[:, 2:])], dim=1)
    flat = torch.rand(num_rois, generator=g) < degenerate
    boxes[flat, 2] = boxes[flat, 0]  # zero width
    swapped = torch.rand(num_rois, generator=g) < 0.05
    boxes[swapped] = boxes[swapped][:, [2, 3, 0, 1]]  # x2 < x1, y2 < y1
    batch_index = torch.randint(0, max(batch_size, 1), (num_rois, 1), generator=g).to(torch.float64)
    return torch.cat([batch_index, boxes], dim=1).to(dtype)


def make_case(
    seed,
    *,
    device="cpu",
    dtype=torch.float32,
    batch_size=2,
    channels=3,
    height=9,
    width=11,
    num_rois=6,
    spatial_scale=0.5,
):
    """input Tensor[N, C, H, W] and rois Tensor[K, 5] from random_rois, for a feature map at spatial_scale."""
    g = torch.Generator().manual_seed(seed)
    input = torch.randn(batch_size, channels, height, width, generator=g, dtype=dtype)
    rois = random_rois(num_rois, batch_size, height / spatial_scale, width / spatial_scale, dtype=dtype, generator=g)
    return input.to(device), rois.to(device)


def rois_to_list(rois, batch_size):
    """The List[Tensor[L, 4]] form of rois Tensor[K, 5] whose batch indices are sorted."""
    return [rois[rois[:, 0] == n, 1:] for n in range(batch_size)]


def non_contiguous(tensor):
    """The same values as a strided view (every other element of a wider tensor's last dimension)."""
    wide = torch.zeros(*tensor.shape[:-1], tensor.shape[-1] * 2, dtype=tensor.dtype, device=tensor.device)
    wide[..., ::2] = tensor
    return wide[..., ::2]


def layouts(input):
    """A 4-D input's values as contiguous, channels_last and non-contiguous tensors."""
    return {
        "contiguous": input.contiguous(),
        "channels_last": input.contiguous(memory_format=torch.channels_last),
        "strided": non_contiguous(input),
    }


# Bad arguments shared by both ops: (description, mutate(kwargs) -> None, message regex).
# Zero-area, fully outside, reversed, enormous and far-away boxes (rows of [K, 5], image size about 10x12): valid
# input that must give finite results equal to the references.
DEGENERATE_BOXES = [
    [0, 3, 3, 3, 3],
    [1, 100, 100, 120, 130],
    [0, -50, -50, -20, -30],
    [1, -1e6, -1e6, 1e6, 1e6],
    [0, 1e30, 1e30, 3e30, 3e30],
    [1, 2, 2, 1, 1],
]


def bad_argument_cases(op):
    return [
        (
            "input 3-D",
            lambda a: a.update(input=a["input"][0]),
            rf"{op}: input must have shape \[N, C, H, W\], got \[3, 10, 12\]",
        ),
        (
            "input int",
            lambda a: a.update(input=a["input"].long()),
            rf"{op}: input must be float32, float64, float16 or bfloat16, got Long",
        ),
        (
            "rois [K, 4]",
            lambda a: a.update(rois=a["rois"][:, :4]),
            rf"{op}: rois must have shape \[K, 5\], got \[4, 4\]",
        ),
        ("rois 1-D", lambda a: a.update(rois=a["rois"][0]), rf"{op}: rois must have shape \[K, 5\], got \[5\]"),
        (
            "rois dtype",
            lambda a: a.update(rois=a["rois"].double()),
            rf"{op}: rois must have the same dtype as input \(Float\), got Double",
        ),
        (
            "rois dtype, half input",
            lambda a: a.update(input=a["input"].half(), rois=a["rois"].double()),
            rf"{op}: rois must have the same dtype as input \(Half\) or Float, got Double",
        ),
        (
            "output_size 0",
            lambda a: a.update(pooled_height=0),
            rf"{op}: output_size must be >= 1 in both dimensions, got \(0, 3\)",
        ),
        (
            "output_size negative",
            lambda a: a.update(pooled_width=-2),
            rf"{op}: output_size must be >= 1 in both dimensions, got \(2, -2\)",
        ),
        (
            "spatial_scale negative",
            lambda a: a.update(spatial_scale=-0.5),
            rf"{op}: spatial_scale must be a finite number >= 0, got -0.5",
        ),
        (
            "spatial_scale -1",
            lambda a: a.update(spatial_scale=-1.0),
            rf"{op}: spatial_scale must be a finite number >= 0, got -1$",
        ),
        (
            "spatial_scale nan",
            lambda a: a.update(spatial_scale=float("nan")),
            rf"{op}: spatial_scale must be a finite number >= 0, got nan",
        ),
        (
            "spatial_scale inf",
            lambda a: a.update(spatial_scale=float("inf")),
            rf"{op}: spatial_scale must be a finite number >= 0, got inf",
        ),
    ]


# Bad roi values (data-dependent, checked by the kernels' launchers): (description, row, column, value, regex).
def bad_roi_value_cases(op):
    return [
        (
            "batch index too large",
            1,
            0,
            2.0,
            rf"{op}: rois\[1, 0\] \(batch index\) must be an integer in \[0, 2\), got 2",
        ),
        (
            "batch index negative",
            2,
            0,
            -1.0,
            rf"{op}: rois\[2, 0\] \(batch index\) must be an integer in \[0, 2\), got -1",
        ),
        (
            "batch index fractional",
            0,
            0,
            0.5,
            rf"{op}: rois\[0, 0\] \(batch index\) must be an integer in \[0, 2\), got 0.5",
        ),
        (
            "batch index nan",
            3,
            0,
            float("nan"),
            rf"{op}: rois\[3, 0\] \(batch index\) must be an integer in \[0, 2\), got nan",
        ),
        (
            "coordinate nan",
            1,
            3,
            float("nan"),
            rf"{op}: rois\[1, 1:5\] \(box x1, y1, x2, y2\) must be finite, got \(.*nan",
        ),
        (
            "coordinate inf",
            2,
            2,
            float("inf"),
            rf"{op}: rois\[2, 1:5\] \(box x1, y1, x2, y2\) must be finite, got \(.*inf",
        ),
        (
            "coordinate -inf",
            0,
            4,
            -float("inf"),
            rf"{op}: rois\[0, 1:5\] \(box x1, y1, x2, y2\) must be finite, got \(.*-inf",
        ),
    ]


def assert_raises_eager_and_fake(op, kwargs, message):
    """op(**kwargs) raises RuntimeError matching `message` from the C++ kernel and from the fake kernel."""
    with pytest.raises(RuntimeError, match=message):
        op(**kwargs)
    with FakeTensorMode() as mode, pytest.raises(RuntimeError, match=message):
        op(**{key: pytree.tree_map_only(torch.Tensor, mode.from_tensor, value) for key, value in kwargs.items()})


def assert_compiled_matches_eager(head, input, rois):
    """torch.compile(head, fullgraph=True) gives head's eager output and input gradient."""
    x_eager = input.clone().requires_grad_()
    x_compiled = input.clone().requires_grad_()
    expected = head(x_eager, rois)
    actual = torch.compile(head, fullgraph=True)(x_compiled, rois)
    torch.testing.assert_close(actual, expected)
    expected.sum().backward()
    actual.sum().backward()
    torch.testing.assert_close(x_compiled.grad, x_eager.grad)


def assert_double_backward_on_empty_map(op):
    """gradgradcheck of op(input, rois) on feature maps with no pixels (H or W == 0): defined, zero gradients."""
    rois = torch.tensor([[0, 1.0, 1.0, 3.0, 3.0]], dtype=torch.float64)
    for shape in [(1, 2, 0, 4), (1, 2, 4, 0)]:
        input = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda x: op(x, rois), (input,))


def assert_exports_with_dynamic_shapes(head, input, rois):
    """torch.export of head(input, rois) with unbounded dynamic H, W and K: no shape guard, and the exported program
    equals eager on other sizes."""
    from torch.export import Dim, export

    class Head(torch.nn.Module):
        def forward(self, x, boxes):
            return head(x, boxes)

    dynamic_shapes = {"x": {2: Dim("h"), 3: Dim("w")}, "boxes": {0: Dim("k")}}
    program = export(Head(), (input, rois), dynamic_shapes=dynamic_shapes)
    other_input = torch.randn(
        input.shape[0],
        input.shape[1],
        input.shape[2] + 7,
        input.shape[3] + 3,
        generator=torch.Generator().manual_seed(0),
        dtype=input.dtype,
    )
    for boxes in (rois, rois[:2]):
        assert torch.equal(program.module()(other_input, boxes), head(other_input, boxes))


def assert_cuda_path_does_not_synchronise(op, *inputs, grad_of=(0,)):
    """GPU only: op(*inputs) forward and backward (gradients of the inputs at the positions `grad_of`) never
    synchronise with the host (sync debug mode "error"), and both can be captured in a CUDA graph whose replay equals
    eager. `inputs` are CPU tensors, moved to the GPU here."""
    inputs = [x.cuda().requires_grad_(i in grad_of) for i, x in enumerate(inputs)]
    differentiated = [inputs[i] for i in grad_of]

    def forward_and_backward():
        out = op(*inputs)
        return out, torch.autograd.grad(out.sum(), differentiated)

    expected_out, expected_grads = forward_and_backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        forward_and_backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        for _ in range(2):
            forward_and_backward()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, grads = forward_and_backward()
    graph.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out, expected_out)
    for grad, expected in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected)


def assert_bad_row_is_a_device_side_assert(op_call):
    """GPU only: a bad batch index on CUDA is reported by a device-side assert naming the op (in a child process: the
    assert leaves that process's CUDA context unusable). op_call is Python source using x (CUDA features) and rois."""
    import subprocess
    import sys

    code = (
        "import torch, segops\n"
        "x = torch.randn(2, 3, 8, 8, device='cuda', requires_grad=True)\n"
        "rois = torch.tensor([[0, 1.0, 1, 6, 6], [5, 0, 0, 4, 4]], device='cuda')\n"
        f"{op_call}\n"
        "torch.cuda.synchronize()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "device-side assert" in result.stderr and "must be an integer in [0, N)" in result.stderr


def cuda_gradients_in_both_modes(backward):
    """backward() -> list of gradients computed on CUDA. Runs it in the default mode (atomic scatters), then twice
    under torch.use_deterministic_algorithms(True) (the gather path: it must not raise a nondeterminism alert, and
    its two runs must agree bit for bit). Returns (default gradients, deterministic gradients)."""
    default = backward()
    torch.use_deterministic_algorithms(True)
    try:
        deterministic, again = backward(), backward()
    finally:
        torch.use_deterministic_algorithms(False)
    for first, second in zip(deterministic, again, strict=True):
        assert torch.equal(first, second)
    return default, deterministic

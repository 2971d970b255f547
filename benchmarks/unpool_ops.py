"""Max-unpooling (SegNet's decoder) cases: segops.max_unpool2d against torch.nn.functional.max_unpool2d on the same
pooled values and indices, in one process. The op moves memory and computes nothing, so each case also reports its
bytes per second beside copies of an output-sized tensor (`bandwidth`): into warm memory (the physical limit) and into
a fresh tensor (the limit for an op that returns a new one)."""

import torch
import torch.nn.functional as F

import segops
from benchmarks.case import Case

# The case: SegNet's decoder on a [4, 64, 128, 256] map pooled 2x2.
SHAPE = (4, 64, 128, 256)
# Other sizes users meet: batch 1 and 8, small and large maps, an overlapping pool (kernel 3, stride 2, duplicates).
OTHER = [
    ((1, 64, 64, 64), 2, 2, 0),
    ((8, 128, 128, 128), 2, 2, 0),
    ((1, 512, 32, 32), 2, 2, 0),
    ((2, 64, 256, 512), 2, 2, 0),
    ((4, 64, 128, 256), 3, 2, 1),
]


def _pooled(shape, kernel, stride, padding, seed=0):
    g = torch.Generator().manual_seed(seed)
    values, indices = F.max_pool2d(torch.randn(shape, generator=g), kernel, stride, padding, return_indices=True)
    grad = torch.randn(shape, generator=g)
    return values, indices, grad


def _grad(fn, values, grad):
    leaf = values.detach().requires_grad_()
    return torch.autograd.grad(fn(leaf), leaf, grad)[0]


def forward_bytes(values, indices, out_numel):
    """Bytes the forward must move: read values and indices, write the whole output."""
    return values.numel() * (values.element_size() + indices.element_size()) + out_numel * values.element_size()


def bandwidth_reference(shape):
    """Copies of an output-sized float32 tensor: (into a tensor allocated once, into a fresh tensor, the bytes each
    moves). A fresh output as large as these is new memory from the system each call (glibc maps allocations past
    its mmap threshold, at most 32 MB, and unmaps them on free), so the second pays the page faults an op's output
    pays."""
    source = torch.randn(shape)
    target = torch.empty_like(source)
    return (lambda: target.copy_(source)), (lambda: source.clone()), 2 * source.numel() * source.element_size()


def _cases_for(shape, kernel, stride, padding, forward_target, backward_target=None, suffix=""):
    """The forward case and, where backward_target is given, the forward+backward one. With duplicate indices the
    gradients differ from PyTorch's by design (segops gives each output's gradient to its winner only), so those
    pools have a forward case only."""
    values, indices, grad = _pooled(shape, kernel, stride, padding)
    size = shape[-2:]
    ours = lambda x: segops.max_unpool2d(x, indices, kernel, stride, padding, size)  # noqa: E731
    theirs = lambda x: F.max_unpool2d(x, indices, kernel, stride, padding, size)  # noqa: E731
    name = f"max_unpool2d {list(values.shape)} -> {list(shape)}{suffix}"
    copy, fresh_copy, copy_bytes = bandwidth_reference(shape)
    bandwidth = dict(
        bytes=forward_bytes(values, indices, grad.numel()), copy=copy, fresh_copy=fresh_copy, copy_bytes=copy_bytes
    )
    result = [
        Case(
            f"{name} forward",
            forward_target,
            lambda: ours(values),
            lambda: theirs(values),
            reference="F.max_unpool2d",
            bandwidth=bandwidth,
        )
    ]
    if backward_target is not None:
        result.append(
            Case(
                f"{name} forward+backward",
                backward_target,
                lambda: _grad(ours, values, grad),
                lambda: _grad(theirs, values, grad),
                reference="F.max_unpool2d",
            )
        )
    return result


def cases():
    result = _cases_for(SHAPE, 2, 2, 0, 1.5, 1.5)
    for shape, kernel, stride, padding in OTHER:
        if kernel == stride:
            result += _cases_for(shape, kernel, stride, padding, 1.0, 1.0)
        else:
            result += _cases_for(shape, kernel, stride, padding, 1.0, suffix=f", kernel {kernel} stride {stride}")
    return result

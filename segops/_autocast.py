"""Autocast policies of segops' operators, for torch.autocast on the CPU and on CUDA.

Inside an autocast region the dispatcher runs each op's autocast kernel first; segops registers one per op and
device type, which casts the op's inputs as its policy says and calls the op with autocast off. float64 is never
cast (as PyTorch's own autocast leaves it alone). The policies, and why:

- ``dilated_conv2d``: the autocast dtype (float16 or bfloat16), as PyTorch casts ``conv2d``: a convolution is
  GEMM-bound, and its kernels accumulate in float32 whatever the storage dtype.
- ``roi_align``, ``roi_pool``, ``ps_roi_align``, ``ps_roi_pool``, ``multi_scale_roi_align``, ``flow_warp``: the
  features keep their dtype (the pyramid's levels promoted to a common one), so that a bfloat16 network stays in
  bfloat16, while the coordinates (boxes, flow) are cast to the features' accumulation dtype, float32: bfloat16
  holds 8 significant bits, so a box edge at x = 800 would move by up to 2 pixels and a flow of 100 pixels by up to
  a quarter of a pixel. The kernels interpolate and accumulate in float32. ``flow_warp``'s scale field takes the
  features' dtype (its schema).
- ``max_unpool2d``: unchanged: it moves values and does no arithmetic, so any dtype is exact.
- the dense CRF's ops (``permutohedral_lattice``, ``permutohedral_filter``, ``dense_crf_softmax``): float32. The
  lattice's barycentric weights and the mean-field softmax over summed messages lose the labelling in 8 bits.
"""

from typing import Callable, List, Sequence

import torch

from segops.ops._checks import accumulation_dtype, autocast_to

DEVICE_TYPES = ("cpu", "cuda")


def _conv_policy(args: List, device_type: str) -> List:
    return [autocast_to(arg, torch.get_autocast_dtype(device_type)) for arg in args]


def _float32_policy(args: List, device_type: str) -> List:
    return [autocast_to(arg, torch.float32) for arg in args]


def _keep_policy(args: List, device_type: str) -> List:
    return list(args)


def _coordinates_policy(coordinates: Sequence[int]):
    """Features (argument 0) keep their dtype; the arguments at `coordinates` take its accumulation dtype."""

    def policy(args: List, device_type: str) -> List:
        args = list(args)
        dtype = accumulation_dtype(args[0].dtype)
        for index in coordinates:
            args[index] = autocast_to(args[index], dtype)
        return args

    return policy


def _pyramid_policy(args: List, device_type: str) -> List:
    """multi_scale_roi_align: the levels promoted to their widest dtype, the boxes to its accumulation dtype."""
    args = list(args)
    if not args[0]:
        return args  # no levels: the op's own check reports it
    dtype = args[0][0].dtype
    for level in args[0][1:]:
        dtype = torch.promote_types(dtype, level.dtype)
    args[0] = [level.to(dtype) for level in args[0]]
    args[1] = autocast_to(args[1], accumulation_dtype(dtype))
    return args


_boxes_policy = _coordinates_policy((1,))


def _flow_warp_policy(args: List, device_type: str) -> List:
    args = _boxes_policy(args, device_type)  # the flow, argument 1, as a box tensor
    if len(args) > 2:
        args[2] = autocast_to(args[2], args[0].dtype)
    return args


# op name -> its policy: (the op's arguments, the autocast's device type) -> the arguments to call it with.
POLICIES = {
    "roi_align": _boxes_policy,
    "roi_pool": _boxes_policy,
    "ps_roi_align": _boxes_policy,
    "ps_roi_pool": _boxes_policy,
    "multi_scale_roi_align": _pyramid_policy,
    "flow_warp": _flow_warp_policy,
    "max_unpool2d": _keep_policy,
    "dilated_conv2d": _conv_policy,
    "permutohedral_lattice": _float32_policy,
    "permutohedral_filter": _float32_policy,
    "dense_crf_softmax": _float32_policy,
}

_LIBRARY = torch.library.Library("segops", "IMPL")


def _register(name: str, policy: Callable, device_type: str) -> None:
    # What torch.library.register_autocast does, with a policy per argument instead of one dtype for all: a kernel
    # for the dispatcher and the same as a Python kernel for tracing (torch.compile, torch.export).
    op = getattr(torch.ops.segops, name).default
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def run(*args):
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*policy(args, device_type))

    op.py_kernels.pop(key, None)
    op.py_impl(key)(run)
    _LIBRARY.impl(name, lambda _keyset, *args: run(*args), key_name, with_keyset=True)


for _name, _policy in POLICIES.items():
    for _device_type in DEVICE_TYPES:
        _register(_name, _policy, _device_type)

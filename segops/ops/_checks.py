"""Argument checks every op shares, repeating csrc/common/checks.cpp's messages word for word (and c10's names and
shape format), so that the fake kernels raise what the C++ kernels raise."""

import torch
from torch import Tensor

SUPPORTED_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
# c10's names for dtypes, as the C++ messages print them.
_CPP_DTYPE_NAMES = {
    torch.float32: "Float",
    torch.float64: "Double",
    torch.float16: "Half",
    torch.bfloat16: "BFloat16",
    torch.int64: "Long",
    torch.int32: "Int",
    torch.int16: "Short",
    torch.int8: "Char",
    torch.uint8: "Byte",
    torch.bool: "Bool",
}


def dtype_name(dtype: torch.dtype) -> str:
    return _CPP_DTYPE_NAMES.get(dtype, str(dtype))


def format_shape(shape) -> str:
    """A tensor's shape, or a sequence of sizes, as c10 prints sizes in the C++ messages: ``[2, 3, 4]``."""
    sizes = shape.shape if isinstance(shape, Tensor) else shape
    return "[" + ", ".join(str(size) for size in sizes) + "]"


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """at::opmath_type: float32 for float16/bfloat16, else the dtype itself. In TorchScript too."""
    if dtype == torch.float16 or dtype == torch.bfloat16:
        return torch.float32
    return dtype


def autocast_to(value, dtype: torch.dtype):
    """value (a tensor, a list or tuple of them, or anything else) with its floating-point tensors cast to dtype,
    except float64 ones, which autocast leaves alone (as PyTorch's own autocast does)."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype != torch.float64 else value
    if isinstance(value, (list, tuple)):
        return type(value)(autocast_to(item, dtype) for item in value)
    return value


def check_supported_float(op: str, name: str, tensor: Tensor) -> None:
    """`name` must be float32, float64, float16 or bfloat16."""
    if tensor.dtype not in SUPPORTED_DTYPES:
        raise RuntimeError(
            f"{op}: {name} must be float32, float64, float16 or bfloat16, got {dtype_name(tensor.dtype)}"
        )


def _dtype_mismatch(op: str, name: str, tensor: Tensor, like: Tensor, like_name: str, also: str = "") -> RuntimeError:
    return RuntimeError(
        f"{op}: {name} must have the same dtype as {like_name} ({dtype_name(like.dtype)}){also}, "
        f"got {dtype_name(tensor.dtype)}"
    )


def check_same_dtype(op: str, name: str, tensor: Tensor, like: Tensor, like_name: str) -> None:
    """`name` must have like's dtype."""
    if tensor.dtype != like.dtype:
        raise _dtype_mismatch(op, name, tensor, like, like_name)


def check_dtype_or_accumulation(op: str, name: str, tensor: Tensor, like: Tensor, like_name: str) -> None:
    """`name` must have like's dtype, or float32 where like is float16/bfloat16."""
    acc = accumulation_dtype(like.dtype)
    if tensor.dtype not in (like.dtype, acc):
        raise _dtype_mismatch(op, name, tensor, like, like_name, also="" if acc == like.dtype else " or Float")


def check_same_device(op: str, name: str, tensor: Tensor, like: Tensor, like_name: str) -> None:
    if tensor.device != like.device:
        raise RuntimeError(
            f"{op}: {name} must be on the same device as {like_name} ({like.device}), got {tensor.device}"
        )


def check_shape(op: str, name: str, tensor: Tensor, expected, meaning: str = "") -> None:
    """`name` must have the shape `expected` (a sequence of sizes); `meaning` (e.g. "[B, N, d+1]") says in the message
    what the sizes are."""
    if list(tensor.shape) != list(expected):
        named = f"{meaning} = " if meaning else ""
        raise RuntimeError(f"{op}: {name} must have shape {named}{format_shape(expected)}, got {format_shape(tensor)}")


def take(input: Tensor, index: Tensor) -> Tensor:
    """torch.take (input's elements at flat positions `index`, in index's shape) as an index_select, which
    torch.func.vmap batches (it has no rule for torch.take)."""
    return input.reshape(-1).index_select(0, index.reshape(-1)).view(index.shape)


def check_plane_fits_int32(op: str, height, width) -> None:
    # Only for concrete sizes: on symbolic ones (torch.export with dynamic H, W) the comparison would become a shape
    # guard that bounds H and W. The C++ kernel checks the real sizes at run time.
    if not (isinstance(height, int) and isinstance(width, int)):
        return
    if width != 0 and height > (2**31 - 1) // width:
        raise RuntimeError(f"{op}: input planes (H * W) must have at most 2^31 - 1 elements, got {height} * {width}")


def _unsupported_kind(tensor: Tensor):
    if tensor.is_quantized:
        return "quantized"
    if tensor.is_nested:
        return "nested"
    if tensor.layout != torch.strided:
        return f"sparse ({str(tensor.layout).replace('torch.', '')})"
    if tensor.is_complex():
        return f"complex ({dtype_name(tensor.dtype)})"
    return None


def check_tensor_arguments(op: str, **arguments) -> None:
    """Each tensor argument (or list of tensors) must be a dense real tensor: a quantized, sparse, nested or complex
    one gets the op's own error rather than the dispatcher's "Could not run ... with arguments from the ... backend"."""
    for name, value in arguments.items():
        listed = isinstance(value, (list, tuple))
        for index, tensor in enumerate(value if listed else [value]):
            kind = _unsupported_kind(tensor) if isinstance(tensor, Tensor) else None
            if kind is not None:
                label = f"{name}[{index}]" if listed else name
                raise RuntimeError(f"{op}: {label} must be a dense (strided) real tensor, got a {kind} tensor")

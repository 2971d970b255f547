"""Every memory layout a tensor argument can arrive in, for the layout tests and the fuzzer."""

import torch
from torch import Tensor

LAYOUTS = ("contiguous", "channels_last", "strided", "transposed", "expanded", "offset")


def in_layout(tensor: Tensor, layout: str) -> Tensor:
    """`tensor` laid out as `layout`; each has tensor's values except "expanded", whose rows all repeat row 0
    (stride 0 along dim 0: compare with its own `.contiguous()`). Layouts a tensor's rank lacks return it as is."""
    if layout == "channels_last" and tensor.dim() == 4:
        return tensor.contiguous(memory_format=torch.channels_last)
    if layout == "strided" and tensor.dim() >= 1:
        return torch.stack([tensor, torch.zeros_like(tensor)], dim=-1)[..., 0]  # stride 2 in the last dimension
    if layout == "transposed" and tensor.dim() >= 2:
        return tensor.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "expanded" and tensor.dim() >= 1 and tensor.shape[0] > 0:
        return tensor[:1].expand(tensor.shape)
    if layout == "offset":
        storage = torch.zeros(tensor.numel() + 3, dtype=tensor.dtype, device=tensor.device)
        return storage[3:].view(tensor.shape).copy_(tensor)
    return tensor

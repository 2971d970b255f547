"""What a benchmark case is."""

from typing import Callable, NamedTuple, Optional

import torch


class Case(NamedTuple):
    """A benchmark case: segops against the reference users would otherwise call. Each callable returns the tensor(s)
    whose agreement is checked (the output of a forward case, the gradients of a forward+backward case). `sweep`
    places it in a sweep over sizes: (op, pass, size)."""

    name: str
    target: float
    ours: Callable[[], torch.Tensor]
    theirs: Callable[[], torch.Tensor]
    sweep: Optional[tuple] = None
    reference: str = "torchvision"

"""What a benchmark case is."""

from typing import Callable, NamedTuple, Optional, Tuple

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
    # The fraction of elements allowed to differ by more than the tolerance: 0, but for gradients of piecewise-linear
    # ops at their kinks, where float32 rounding of a sample position picks the other one-sided derivative.
    allowed_outliers: float = 0.0
    # For memory-bound ops: {"bytes": moved by one segops call, "copy" and "fresh_copy": callables copying
    # "copy_bytes" into a tensor allocated once and into a fresh one}; the run reports the three rates (the copies,
    # timed in the same rounds, are the machine's practical limits with and without the output's page faults).
    bandwidth: Optional[dict] = None
    # Where agreement is not elementwise closeness (the dense CRF's labels against pydensecrf's): a callable
    # (ours, theirs) -> (passes, note), the note shown in the table.
    agreement: Optional[Callable[[torch.Tensor, torch.Tensor], Tuple[bool, str]]] = None

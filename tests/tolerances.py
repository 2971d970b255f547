"""Tolerances derived from the computation, not from one machine's rounding.

A float result that sums n products, in any order and with or without fused multiply-adds (AVX2 and AVX-512 kernels
of oneDNN and segops order their sums differently), lies within gamma_{n+1} * sum|products| of the exact sum, with
gamma_k = k u / (1 - k u) and u the unit roundoff (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed.,
eq. 3.5). So each result is judged by its distance from a float64 reference of the same operands, against that bound
computed from the float64 sum of the products' absolute values."""

import torch
from torch import Tensor


def summation_bound(magnitude: Tensor, terms: int, dtype: torch.dtype) -> Tensor:
    """Worst-case error of a `dtype` sum of `terms` products whose absolute values sum to `magnitude` (float64)."""
    unit_roundoff = torch.finfo(dtype).eps / 2
    k = terms + 1
    if k * unit_roundoff >= 1:
        raise ValueError(f"summation_bound: {terms} terms exceed what the bound covers in {dtype}")
    return magnitude * (k * unit_roundoff / (1 - k * unit_roundoff)) + torch.finfo(dtype).tiny


def assert_within_summation_bound(actual: Tensor, exact: Tensor, magnitude: Tensor, terms: int, name: str = "") -> None:
    """actual (any float dtype) against exact (float64 from the same operands): within the rounding bound of actual's
    dtype plus the float64 reference's own."""
    assert actual.shape == exact.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(exact.shape)}"
    bound = summation_bound(magnitude, terms, actual.dtype) + summation_bound(magnitude, terms, torch.float64)
    error = (actual.double() - exact).abs()
    excess = error - bound
    if excess.numel() and not bool((excess <= 0).all()):
        worst = int(excess.flatten().argmax())
        raise AssertionError(
            f"{name}: {int((excess > 0).sum())} of {error.numel()} elements exceed the rounding bound of {terms} "
            f"terms in {actual.dtype}; worst at flat index {worst}: got {actual.flatten()[worst].item()!r}, exact "
            f"{exact.flatten()[worst].item()!r}, error {error.flatten()[worst].item():.3g} > bound "
            f"{bound.flatten()[worst].item():.3g}"
        )


def assert_as_accurate_as(
    actual: Tensor, reference: Tensor, exact: Tensor, factor: float = 2.0, name: str = ""
) -> None:
    """For results of long computations (whole networks) in a float dtype: `actual` (segops) lies at most `factor`
    times as far from `exact` (float64) as `reference` (the independent implementation in actual's dtype) does, plus
    one rounding of the result's scale; flash-attention's rule, whatever kernels this CPU picks for either side."""
    exact = exact.double()
    error = (actual.double() - exact).abs().max()
    reference_error = (reference.double() - exact).abs().max()
    floor = torch.finfo(actual.dtype).eps * exact.abs().max()
    assert error <= factor * reference_error + floor, (
        f"{name}: max error {error.item():.3g} exceeds {factor} x the reference's {reference_error.item():.3g} "
        f"+ {floor.item():.3g}"
    )

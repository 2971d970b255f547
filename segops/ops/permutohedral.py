"""The permutohedral lattice (Adams et al. 2010): Gaussian filtering of values at points in a d-dimensional feature
space in O(N d) per channel. :class:`PermutohedralLattice` builds a lattice (torch.ops.segops.permutohedral_lattice)
and filters on it (torch.ops.segops.permutohedral_filter, differentiable in forward and reverse mode through
``_PermutohedralFilterFunction``). The ops' argument checks and fake kernels are in
segops/ops/_permutohedral_meta.py; the dense CRF built on the lattice is segops/ops/dense_crf.py."""

from typing import NamedTuple

import torch
from torch import Tensor

from segops.ops._autograd import (
    OpFunction,
    below_autograd,
    call,
    register_function,
    register_no_derivative,
    save_for_backward_and_jvp,
)

__all__ = ["PermutohedralLattice"]


def _filter(values: Tensor, lattice, adjoint: bool) -> Tensor:
    return call(_PermutohedralFilterFunction, torch.ops.segops.permutohedral_filter, values, *lattice, adjoint)


class _PermutohedralFilterFunction(OpFunction):
    """The lattice filter's derivatives: linear in values, its backward is its adjoint (the blur directions in
    reverse order) and its tangent the filtered tangent."""

    generate_vmap_rule = True

    @staticmethod
    def forward(values, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices, adjoint=False):
        return below_autograd(
            torch.ops.segops.permutohedral_filter.default,
            values,
            vertex_ids,
            weights,
            neighbours,
            splat_offsets,
            splat_entries,
            num_vertices,
            adjoint,
        )

    @staticmethod
    def setup_context(ctx, inputs, output):
        save_for_backward_and_jvp(ctx, *inputs[1:7])
        ctx.adjoint = inputs[7]

    @staticmethod
    def backward(ctx, grad):
        return (_filter(grad.contiguous(), ctx.saved_tensors, not ctx.adjoint),) + (None,) * 7

    @staticmethod
    def jvp(ctx, values_tangent, *_):
        return None if values_tangent is None else _filter(values_tangent, ctx.saved_tensors, ctx.adjoint)


register_function("permutohedral_filter", _PermutohedralFilterFunction)
register_no_derivative(
    "permutohedral_lattice",
    "the lattice's barycentric weights are not differentiated with respect to the features: build it from "
    "detached features",
)


class PermutohedralLattice(NamedTuple):
    """The permutohedral lattice of B point sets, as plain tensors (so it batches, moves with ``.to`` and traces).

    Entry ``e = n * (d+1) + r`` is the r-th vertex of point n's enclosing simplex. Build it with
    :meth:`PermutohedralLattice.build`; filter with :meth:`filter` and its exact adjoint :meth:`filter_adjoint`.

    Attributes:
        vertex_ids (Tensor[B, N, d+1], int32): the vertices of each point's simplex.
        weights (Tensor[B, N, d+1]): their barycentric weights (times the symmetric normalisation once
            :meth:`normalized`).
        neighbours (Tensor[B, M, d+1, 2], int32): each vertex's neighbours one step up and down each lattice
            direction, -1 where there is none. M >= every image's vertex count (exact on the CPU, the bound
            N*(d+1) on the GPU, which does not synchronise to learn it).
        splat_offsets (Tensor[B, M+1], int32), splat_entries (Tensor[B, N*(d+1)], int32): the entries of each
            vertex, in entry order (``splat_entries[b, splat_offsets[b, v]:splat_offsets[b, v+1]]``).
        num_vertices (Tensor[B], int64): each image's vertex count.
    """

    vertex_ids: Tensor
    weights: Tensor
    neighbours: Tensor
    splat_offsets: Tensor
    splat_entries: Tensor
    num_vertices: Tensor

    @classmethod
    def build(cls, features: Tensor) -> "PermutohedralLattice":
        """The lattice of ``features`` (Tensor[B, N, d], float32 or float64, 1 <= d <= 16), each feature already
        divided by its bandwidth: the filter approximates the Gaussian ``exp(-|f_i - f_j|^2 / 2)`` up to a
        constant factor (1 for ``f_i = f_j`` is not kept: compare normalised filters). Not differentiable with
        respect to the features: features that want a gradient are an error (detach them)."""
        return cls(*torch.ops.segops.permutohedral_lattice(features))

    def filter(self, values: Tensor) -> Tensor:
        """Splat, blur along lattice directions 0..d, slice: Tensor[B, N, C] -> Tensor[B, N, C] (the weights'
        dtype). Differentiable with respect to ``values`` (its backward is :meth:`filter_adjoint`)."""
        return _filter(values, self, False)

    def filter_adjoint(self, values: Tensor) -> Tensor:
        """The filter's transpose: splat, blur along directions d..0, slice. ``<filter(x), y> == <x,
        filter_adjoint(y)>``."""
        return _filter(values, self, True)

    def normalized(self) -> "PermutohedralLattice":
        """The same lattice with pydensecrf's symmetric normalisation folded into the weights: the filter becomes
        ``D^-1/2 K D^-1/2`` with ``D = diag(K 1)``, a symmetric normalisation of the lattice filter K."""
        ones = self.weights.new_ones(self.weights.shape[0], self.weights.shape[1], 1)
        norm = self.filter(ones)
        return self._replace(weights=self.weights * torch.rsqrt(norm + 1e-20))

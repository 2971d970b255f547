"""The permutohedral lattice ops' argument checks and fake kernels (permutohedral_lattice, permutohedral_filter),
registered with torch.library.register_fake on import. The messages repeat csrc/dense_crf/dense_crf_checks.cpp's word
for word; the lattice's contents (vertex ids in range, ...) are not checked here."""

import torch
from torch import Tensor

from segops.ops._checks import check_same_device, check_shape, dtype_name, format_shape

MAX_FEATURES = 16  # kLatticeMaxFeatures in csrc/dense_crf/dense_crf.h


def check_lattice_features(features: Tensor) -> None:
    """permutohedral_lattice's features: Tensor[B, N, d], float32 or float64, 1 <= d <= 16, N * (d + 1) < 2^31."""
    op = "permutohedral_lattice"
    if features.dim() != 3:
        raise RuntimeError(f"{op}: features must be [B, N, d], got shape {format_shape(features)}")
    if features.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: features must be float32 or float64, got {dtype_name(features.dtype)}")
    dims = features.shape[2]
    if not 1 <= dims <= MAX_FEATURES:
        raise RuntimeError(f"{op}: features must have 1 to {MAX_FEATURES} features per point (d), got {dims}")
    if features.shape[1] > (2**31 - 2) // (dims + 1):
        raise RuntimeError(
            f"{op}: N * (d + 1) must be below 2^31 (lattice entries are int32), got {features.shape[1]} * {dims + 1}"
        )


def _check_lattice_tensor(name, tensor, dtype, expected, meaning, values) -> None:
    op = "permutohedral_filter"
    check_shape(op, name, tensor, expected, meaning)
    if tensor.dtype != dtype:
        raise RuntimeError(f"{op}: {name} must be {dtype_name(dtype)}, got {dtype_name(tensor.dtype)}")
    check_same_device(op, name, tensor, values, "values")


def check_lattice_filter(values, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices) -> None:
    """permutohedral_filter's values Tensor[B, N, C] and the lattice's six tensors (PermutohedralLattice's fields)."""
    op = "permutohedral_filter"
    if values.dim() != 3:
        raise RuntimeError(f"{op}: values must be [B, N, C], got shape {format_shape(values)}")
    if values.dtype not in (torch.float32, torch.float64):
        raise RuntimeError(f"{op}: values must be float32 or float64, got {dtype_name(values.dtype)}")
    if vertex_ids.dim() != 3 or not 2 <= vertex_ids.shape[2] <= MAX_FEATURES + 1:
        raise RuntimeError(
            f"{op}: vertex_ids must be [B, N, d+1] with 1 <= d <= {MAX_FEATURES}, got shape {format_shape(vertex_ids)}"
        )
    if neighbours.dim() != 4:
        raise RuntimeError(f"{op}: neighbours must be [B, M, d+1, 2], got shape {format_shape(neighbours)}")
    batch, points, dims, rows = values.shape[0], values.shape[1], vertex_ids.shape[2] - 1, neighbours.shape[1]
    _check_lattice_tensor("vertex_ids", vertex_ids, torch.int32, [batch, points, dims + 1], "[B, N, d+1]", values)
    _check_lattice_tensor("weights", weights, values.dtype, [batch, points, dims + 1], "[B, N, d+1]", values)
    _check_lattice_tensor("neighbours", neighbours, torch.int32, [batch, rows, dims + 1, 2], "[B, M, d+1, 2]", values)
    _check_lattice_tensor("splat_offsets", splat_offsets, torch.int32, [batch, rows + 1], "[B, M+1]", values)
    _check_lattice_tensor(
        "splat_entries", splat_entries, torch.int32, [batch, points * (dims + 1)], "[B, N*(d+1)]", values
    )
    _check_lattice_tensor("num_vertices", num_vertices, torch.int64, [batch], "[B]", values)


@torch.library.register_fake("segops::permutohedral_lattice")
def _permutohedral_lattice_fake(features):
    """features Tensor[B, N, d] -> the lattice's six tensors, M (the vertex rows) a dynamic size."""
    check_lattice_features(features)
    batch, points, dims = features.shape
    # The vertex rows depend on the data: the CPU returns the most vertices of an image, the GPU the bound N*(d+1).
    rows = torch.library.get_ctx().new_dynamic_size()
    new_int = lambda *shape: features.new_empty(shape, dtype=torch.int32)  # noqa: E731
    return (
        new_int(batch, points, dims + 1),
        features.new_empty((batch, points, dims + 1)),
        new_int(batch, rows, dims + 1, 2),
        new_int(batch, rows + 1),
        new_int(batch, points * (dims + 1)),
        features.new_empty((batch,), dtype=torch.int64),
    )


@torch.library.register_fake("segops::permutohedral_filter")
def _permutohedral_filter_fake(
    values, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices, adjoint=False
):
    check_lattice_filter(values, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices)
    return values.new_empty(values.shape)

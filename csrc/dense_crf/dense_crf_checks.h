#pragma once
// Argument checks of the permutohedral lattice ops on every backend; segops/ops/dense_crf.py repeats the messages
// word for word in the fake kernels. Index values inside a lattice are checked where the kernels read them.
#include <ATen/core/Tensor.h>

#include <vector>

namespace segops {

// A checked lattice: B images of N points with d features; vertex rows M (at least every image's vertex count).
struct LatticeShape {
  int64_t batch, points, dims, vertex_rows;
  int64_t entries() const { return points * (dims + 1); }
};

// features [B, N, d]: float32 or float64, 1 <= d <= 16, N * (d + 1) < 2^31 (entries are int32).
LatticeShape checked_lattice_features(const at::Tensor& features);

// A checked filter call: its shape and its tensors, contiguous.
struct CheckedFilter {
  LatticeShape shape;
  at::Tensor values, vertex_ids, weights, neighbours, splat_offsets, splat_entries, num_vertices;
};

// values [B, N, C] and a lattice as permutohedral_lattice returns it: vertex_ids int32 [B, N, d+1], weights
// [B, N, d+1] of values' dtype, neighbours int32 [B, M, d+1, 2], splat_offsets int32 [B, M+1], splat_entries int32
// [B, N*(d+1)], num_vertices int64 [B], all on values' device.
CheckedFilter checked_lattice_filter(const at::Tensor& values, const at::Tensor& vertex_ids, const at::Tensor& weights,
                                     const at::Tensor& neighbours, const at::Tensor& splat_offsets,
                                     const at::Tensor& splat_entries, const at::Tensor& num_vertices);

// A checked dense_crf_softmax call, its tensors contiguous.
struct CheckedCrfSoftmax {
  at::Tensor unary, weights;
  std::vector<at::Tensor> messages;
};

// dense_crf_softmax: unary [B, N, L] float32 or float64 with L >= 1; messages: at most kMaxCrfKernels tensors of
// unary's shape, dtype and device; weights [K] (K = len(messages)) of unary's dtype and device.
CheckedCrfSoftmax checked_crf_softmax(const at::Tensor& unary, at::TensorList messages, const at::Tensor& weights);

// A checked _dense_crf_step call, its tensors contiguous.
struct CheckedCrfStep {
  at::Tensor unary, kernel_weights;
  std::vector<CheckedFilter> lattices;
};

// _dense_crf_step: unary [B, N, L] float32 or float64; q (the filter's values) of unary's shape, dtype and device;
// 1 to kMaxCrfKernels lattices, given as one list per lattice tensor (vertex_ids[k], weights[k], ... are lattice
// k's), each checked as permutohedral_filter checks it with q; kernel_weights [K] of unary's dtype and device.
CheckedCrfStep checked_crf_step(const at::Tensor& unary, const at::Tensor& q, const at::Tensor& kernel_weights,
                                at::TensorList vertex_ids, at::TensorList weights, at::TensorList neighbours,
                                at::TensorList splat_offsets, at::TensorList splat_entries,
                                at::TensorList num_vertices);

}  // namespace segops

#include "dense_crf/dense_crf_checks.h"

#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "dense_crf/dense_crf.h"

namespace segops {
namespace {

constexpr const char* kBuild = "permutohedral_lattice";
constexpr const char* kFilter = "permutohedral_filter";

void check_float32_or_64(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK(tensor.scalar_type() == at::kFloat || tensor.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", tensor.scalar_type());
}

void check_shape(const char* name, const at::Tensor& tensor, at::ScalarType dtype, std::vector<int64_t> expected,
                 const char* meaning, const at::Tensor& values) {
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(expected), kFilter, ": ", name, " must have shape ", meaning, " = ",
              at::IntArrayRef(expected), ", got ", tensor.sizes());
  TORCH_CHECK(tensor.scalar_type() == dtype, kFilter, ": ", name, " must be ", dtype, ", got ", tensor.scalar_type());
  check_same_device(kFilter, name, tensor, values, "values");
}

}  // namespace

LatticeShape checked_lattice_features(const at::Tensor& features) {
  TORCH_CHECK(features.dim() == 3, kBuild, ": features must be [B, N, d], got shape ", features.sizes());
  check_float32_or_64(kBuild, "features", features);
  const int64_t dims = features.size(2);
  TORCH_CHECK(dims >= 1 && dims <= kLatticeMaxFeatures, kBuild, ": features must have 1 to ", kLatticeMaxFeatures,
              " features per point (d), got ", dims);
  TORCH_CHECK(features.size(1) <= (std::numeric_limits<int32_t>::max() - 1) / (dims + 1), kBuild,
              ": N * (d + 1) must be below 2^31 (lattice entries are int32), got ", features.size(1), " * ", dims + 1);
  return {features.size(0), features.size(1), dims, 0};
}

CheckedFilter checked_lattice_filter(const at::Tensor& values, const at::Tensor& vertex_ids, const at::Tensor& weights,
                                     const at::Tensor& neighbours, const at::Tensor& splat_offsets,
                                     const at::Tensor& splat_entries, const at::Tensor& num_vertices) {
  TORCH_CHECK(values.dim() == 3, kFilter, ": values must be [B, N, C], got shape ", values.sizes());
  check_float32_or_64(kFilter, "values", values);
  TORCH_CHECK(vertex_ids.dim() == 3 && vertex_ids.size(2) >= 2 && vertex_ids.size(2) <= kLatticeMaxFeatures + 1,
              kFilter, ": vertex_ids must be [B, N, d+1] with 1 <= d <= ", kLatticeMaxFeatures, ", got shape ",
              vertex_ids.sizes());
  TORCH_CHECK(neighbours.dim() == 4, kFilter, ": neighbours must be [B, M, d+1, 2], got shape ", neighbours.sizes());
  const int64_t batch = values.size(0), points = values.size(1), dims = vertex_ids.size(2) - 1;
  const int64_t rows = neighbours.size(1);
  check_shape("vertex_ids", vertex_ids, at::kInt, {batch, points, dims + 1}, "[B, N, d+1]", values);
  check_shape("weights", weights, values.scalar_type(), {batch, points, dims + 1}, "[B, N, d+1]", values);
  check_shape("neighbours", neighbours, at::kInt, {batch, rows, dims + 1, 2}, "[B, M, d+1, 2]", values);
  check_shape("splat_offsets", splat_offsets, at::kInt, {batch, rows + 1}, "[B, M+1]", values);
  check_shape("splat_entries", splat_entries, at::kInt, {batch, points * (dims + 1)}, "[B, N*(d+1)]", values);
  check_shape("num_vertices", num_vertices, at::kLong, {batch}, "[B]", values);
  return {{batch, points, dims, rows}, values.contiguous(),      vertex_ids.contiguous(),
          weights.contiguous(),        neighbours.contiguous(),  splat_offsets.contiguous(),
          splat_entries.contiguous(),  num_vertices.contiguous()};
}

CheckedCrfSoftmax checked_crf_softmax(const at::Tensor& unary, at::TensorList messages, const at::Tensor& weights) {
  constexpr const char* op = "dense_crf_softmax";
  TORCH_CHECK(unary.dim() == 3 && unary.size(2) >= 1, op, ": unary must be [B, N, L] with L >= 1, got shape ",
              unary.sizes());
  check_float32_or_64(op, "unary", unary);
  TORCH_CHECK(static_cast<int64_t>(messages.size()) <= kMaxCrfKernels, op, ": at most ", kMaxCrfKernels,
              " messages, got ", messages.size());
  for (const at::Tensor& message : messages) {
    TORCH_CHECK(message.sizes() == unary.sizes() && message.scalar_type() == unary.scalar_type(), op,
                ": messages must have unary's shape ", unary.sizes(), " and dtype ", unary.scalar_type(), ", got ",
                message.sizes(), " ", message.scalar_type());
    check_same_device(op, "messages", message, unary, "unary");
  }
  TORCH_CHECK(weights.dim() == 1 && weights.size(0) == static_cast<int64_t>(messages.size()) &&
                  weights.scalar_type() == unary.scalar_type(),
              op, ": weights must be [K] = [", messages.size(), "] (one per message) of unary's dtype ",
              unary.scalar_type(), ", got ", weights.sizes(), " ", weights.scalar_type());
  check_same_device(op, "weights", weights, unary, "unary");
  CheckedCrfSoftmax checked{unary.contiguous(), weights.contiguous(), {}};
  for (const at::Tensor& message : messages) checked.messages.push_back(message.contiguous());
  return checked;
}

CheckedCrfStep checked_crf_step(const at::Tensor& unary, const at::Tensor& q, const at::Tensor& kernel_weights,
                                at::TensorList vertex_ids, at::TensorList weights, at::TensorList neighbours,
                                at::TensorList splat_offsets, at::TensorList splat_entries,
                                at::TensorList num_vertices) {
  constexpr const char* op = "_dense_crf_step";
  const size_t kernels = vertex_ids.size();
  TORCH_CHECK(kernels >= 1 && static_cast<int64_t>(kernels) <= kMaxCrfKernels, op, ": 1 to ", kMaxCrfKernels,
              " lattices, got ", kernels);
  TORCH_CHECK(weights.size() == kernels && neighbours.size() == kernels && splat_offsets.size() == kernels &&
                  splat_entries.size() == kernels && num_vertices.size() == kernels,
              op, ": one tensor per lattice in every lattice list, got ", vertex_ids.size(), " vertex_ids, ",
              weights.size(), " weights, ", neighbours.size(), " neighbours, ", splat_offsets.size(),
              " splat_offsets, ", splat_entries.size(), " splat_entries and ", num_vertices.size(), " num_vertices");
  TORCH_CHECK(unary.dim() == 3 && unary.size(2) >= 1, op, ": unary must be [B, N, L] with L >= 1, got shape ",
              unary.sizes());
  check_float32_or_64(op, "unary", unary);
  TORCH_CHECK(q.sizes() == unary.sizes() && q.scalar_type() == unary.scalar_type(), op, ": q must have unary's shape ",
              unary.sizes(), " and dtype ", unary.scalar_type(), ", got ", q.sizes(), " ", q.scalar_type());
  check_same_device(op, "q", q, unary, "unary");
  TORCH_CHECK(kernel_weights.dim() == 1 && kernel_weights.size(0) == static_cast<int64_t>(kernels) &&
                  kernel_weights.scalar_type() == unary.scalar_type(),
              op, ": kernel_weights must be [K] = [", kernels, "] (one per lattice) of unary's dtype ",
              unary.scalar_type(), ", got ", kernel_weights.sizes(), " ", kernel_weights.scalar_type());
  check_same_device(op, "kernel_weights", kernel_weights, unary, "unary");
  CheckedCrfStep checked{unary.contiguous(), kernel_weights.contiguous(), {}};
  for (size_t k = 0; k < kernels; ++k) {
    checked.lattices.push_back(checked_lattice_filter(q, vertex_ids[k], weights[k], neighbours[k], splat_offsets[k],
                                                      splat_entries[k], num_vertices[k]));
  }
  return checked;
}

}  // namespace segops

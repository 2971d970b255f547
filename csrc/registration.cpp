// Every segops schema, in one place. Each backend file registers its own kernels with
// TORCH_LIBRARY_IMPL(segops, CPU|CUDA, m); fake kernels and autograd are registered in Python.
#include <torch/headeronly/version.h>
#include <torch/library.h>

#include <string>

#include "common/cpu_memory.h"

#ifdef SEGOPS_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace segops {
namespace {

// CUDA runtime version this library was compiled against (e.g. 13000), or -1 for a CPU-only build.
int64_t cuda_version() {
#ifdef SEGOPS_WITH_CUDA
  return CUDART_VERSION;
#else
  return -1;
#endif
}

// The torch release whose headers this library was compiled against, "major.minor.patch".
std::string torch_version() {
  return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
         std::to_string(TORCH_VERSION_PATCH);
}

}  // namespace

TORCH_LIBRARY(segops, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned) -> Tensor");
  // RoIAlign over the maps of a feature pyramid in one pass: rois row k pooled from features[levels[k]].
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_multi_scale_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, "
      "SymInt[] widths, int sampling_ratio, bool aligned) -> Tensor[]");
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
      "-> (Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
  // Position-sensitive RoI ops (R-FCN): input channels C = C_out * PH * PW, output [K, C_out, PH, PW]; channels is C.
  m.def(
      "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio) -> Tensor");
  m.def(
      "_ps_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio) "
      "-> Tensor");
  m.def(
      "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) -> "
      "Tensor");
  m.def(
      "_ps_roi_pool_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor");
  m.def("flow_warp(Tensor feature, Tensor flow, Tensor? scale=None) -> Tensor");
  m.def(
      "_flow_warp_backward(Tensor grad, Tensor feature, Tensor flow, Tensor? scale) "
      "-> (Tensor grad_feature, Tensor grad_flow, Tensor grad_scale)");
  m.def("max_unpool2d(Tensor input, Tensor indices, SymInt output_height, SymInt output_width) -> Tensor");
  m.def("_max_unpool2d_backward(Tensor grad, Tensor indices) -> Tensor");
  m.def(
      "dilated_conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, int[2] dilation, "
      "int groups) -> Tensor");
  m.def(
      "_dilated_conv2d_backward(Tensor grad, Tensor input, Tensor weight, int[2] stride, int[2] padding, "
      "int[2] dilation, int groups, bool[3] output_mask) -> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
  // The permutohedral lattice of a dense CRF: built once per image and kernel (its vertex rows M depend on the data:
  // exactly the most vertices of an image on the CPU, the bound N * (d+1) on the GPU, which must not synchronise to
  // learn it), then filtered with; the filter's adjoint (its transpose, adjoint=True) is its backward.
  m.def(
      "permutohedral_lattice(Tensor features) -> (Tensor vertex_ids, Tensor weights, Tensor neighbours, "
      "Tensor splat_offsets, Tensor splat_entries, Tensor num_vertices)");
  m.def(
      "permutohedral_filter(Tensor values, Tensor vertex_ids, Tensor weights, Tensor neighbours, "
      "Tensor splat_offsets, Tensor splat_entries, Tensor num_vertices, bool adjoint=False) -> Tensor");
  // One mean-field update of a dense CRF: softmax over the last dimension of unary + sum_k weights[k] * messages[k].
  m.def("dense_crf_softmax(Tensor unary, Tensor[] messages, Tensor weights) -> Tensor");
  // dense_crf_softmax(unary, [permutohedral_filter(q, lattice k)], kernel_weights) in one pass over the points, the
  // messages never stored: the CPU's mean-field step where no gradient is needed (lattice k's tensors are element
  // k of the lists). labels_first: the result transposed, [B, L, N].
  m.def(
      "_dense_crf_step(Tensor unary, Tensor q, Tensor kernel_weights, Tensor[] vertex_ids, Tensor[] weights, "
      "Tensor[] neighbours, Tensor[] splat_offsets, Tensor[] splat_entries, Tensor[] num_vertices, "
      "bool labels_first=False) -> Tensor");
  m.def("_cuda_version() -> int", &cuda_version);
  m.def("_torch_version() -> str", &torch_version);
  m.def("_huge_pages_advised() -> bool", &huge_pages_advised);
}

}  // namespace segops

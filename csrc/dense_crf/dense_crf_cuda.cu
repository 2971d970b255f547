// Permutohedral lattice CUDA launcher: the kernels live in dense_crf_kernels.cuh. Deterministic by construction
// (integer atomics settle the vertex numbering, the splat is a gather), so no nondeterminism alert is due.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "dense_crf/dense_crf_kernels.cuh"

namespace segops {
namespace {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> permutohedral_lattice_cuda(
    const at::Tensor& features) {
  const c10::cuda::CUDAGuard device_guard(features.device());
  return permutohedral_lattice_launch(CudaLaunch{}, features);
}

at::Tensor permutohedral_filter_cuda(const at::Tensor& values, const at::Tensor& vertex_ids, const at::Tensor& weights,
                                     const at::Tensor& neighbours, const at::Tensor& splat_offsets,
                                     const at::Tensor& splat_entries, const at::Tensor& num_vertices, bool adjoint) {
  const c10::cuda::CUDAGuard device_guard(values.device());
  return permutohedral_filter_launch(CudaLaunch{}, values, vertex_ids, weights, neighbours, splat_offsets,
                                     splat_entries, num_vertices, adjoint);
}

at::Tensor dense_crf_softmax_cuda(const at::Tensor& unary, at::TensorList messages, const at::Tensor& weights) {
  const c10::cuda::CUDAGuard device_guard(unary.device());
  return dense_crf_softmax_launch(CudaLaunch{}, unary, messages, weights);
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("dense_crf_softmax", &dense_crf_softmax_cuda);
  m.impl("permutohedral_lattice", &permutohedral_lattice_cuda);
  m.impl("permutohedral_filter", &permutohedral_filter_cuda);
}

}  // namespace segops

// Flow warp CUDA launcher: the kernels live in flow_warp_kernels.cuh.
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "flow_warp/flow_warp_kernels.cuh"

namespace segops {
namespace {

at::Tensor flow_warp_forward_cuda(const at::Tensor& feature, const at::Tensor& flow,
                                  const std::optional<at::Tensor>& scale) {
  const c10::cuda::CUDAGuard device_guard(feature.device());
  return flow_warp_forward_launch(CudaLaunch{}, feature, flow, scale);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_warp_backward_cuda(const at::Tensor& grad,
                                                                       const at::Tensor& feature,
                                                                       const at::Tensor& flow,
                                                                       const std::optional<at::Tensor>& scale) {
  const c10::cuda::CUDAGuard device_guard(feature.device());
  // Deterministic algorithms get the gather path (no atomics), so no nondeterminism alert is ever due.
  return flow_warp_backward_launch(CudaLaunch{}, grad, feature, flow, scale,
                                   at::globalContext().deterministicAlgorithms());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("flow_warp", &flow_warp_forward_cuda);
  m.impl("_flow_warp_backward", &flow_warp_backward_cuda);
}

}  // namespace segops

// RoIPool CUDA launcher: the kernels live in roi_pool_kernels.cuh.
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "roi_pool/roi_pool_kernels.cuh"

namespace segops {
namespace {

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois,
                                                         double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return roi_pool_forward_launch(CudaLaunch{}, input, rois, spatial_scale, pooled_h, pooled_w);
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  // Deterministic algorithms get the gather path (no atomics), so no nondeterminism alert is ever due.
  return roi_pool_backward_launch(CudaLaunch{}, grad, rois, argmax, spatial_scale, pooled_h, pooled_w, batch_size,
                                  channels, height, width, at::globalContext().deterministicAlgorithms());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("roi_pool", &roi_pool_forward_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace segops

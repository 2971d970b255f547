// Position-sensitive RoIAlign / RoIPool CUDA launchers: the kernels live in ps_roi_kernels.cuh.
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "ps_roi/ps_roi_kernels.cuh"

namespace segops {
namespace {

// Deterministic algorithms get the gather path (no atomics), so no nondeterminism alert is ever due.
bool deterministic() {
  return at::globalContext().deterministicAlgorithms();
}

at::Tensor ps_roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return ps_roi_align_forward_launch(CudaLaunch{}, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio);
}

at::Tensor ps_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                      int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                      int64_t height, int64_t width, int64_t sampling_ratio) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  return ps_roi_align_backward_launch(CudaLaunch{}, grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                                      height, width, sampling_ratio, deterministic());
}

at::Tensor ps_roi_pool_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                    int64_t pooled_h, int64_t pooled_w) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return ps_roi_pool_forward_launch(CudaLaunch{}, input, rois, spatial_scale, pooled_h, pooled_w);
}

at::Tensor ps_roi_pool_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                     int64_t height, int64_t width) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  return ps_roi_pool_backward_launch(CudaLaunch{}, grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                                     height, width, deterministic());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("ps_roi_align", &ps_roi_align_forward_cuda);
  m.impl("_ps_roi_align_backward", &ps_roi_align_backward_cuda);
  m.impl("ps_roi_pool", &ps_roi_pool_forward_cuda);
  m.impl("_ps_roi_pool_backward", &ps_roi_pool_backward_cuda);
}

}  // namespace segops

// RoIAlign CUDA launcher: the kernels live in roi_align_kernels.cuh.
#include <ATen/Context.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "roi_align/roi_align_kernels.cuh"

namespace segops {
namespace {

at::Tensor roi_align_forward_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return roi_align_forward_launch(CudaLaunch{}, input, rois, spatial_scale, pooled_h, pooled_w, sampling_ratio,
                                  aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  // Deterministic algorithms get the gather path (no atomics), so no nondeterminism alert is ever due.
  return roi_align_backward_launch(CudaLaunch{}, grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                                   height, width, sampling_ratio, aligned,
                                   at::globalContext().deterministicAlgorithms());
}

at::Tensor multi_scale_roi_align_forward_cuda(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                              at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w,
                                              int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(rois.device());
  return multi_scale_roi_align_forward_launch(CudaLaunch{}, features, rois, levels, spatial_scales, pooled_h, pooled_w,
                                              sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                            const at::Tensor& levels,
                                                            at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                                            int64_t pooled_w, int64_t batch_size, int64_t channels,
                                                            at::IntArrayRef heights, at::IntArrayRef widths,
                                                            int64_t sampling_ratio, bool aligned) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  return multi_scale_roi_align_backward_launch(CudaLaunch{}, grad, rois, levels, spatial_scales, pooled_h, pooled_w,
                                               batch_size, channels, heights, widths, sampling_ratio, aligned,
                                               at::globalContext().deterministicAlgorithms());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("roi_align", &roi_align_forward_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_forward_cuda);
  m.impl("_multi_scale_roi_align_backward", &multi_scale_roi_align_backward_cuda);
}

}  // namespace segops

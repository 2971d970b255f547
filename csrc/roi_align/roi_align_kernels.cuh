#pragma once
// RoIAlign GPU kernels and their host-side launch, shared by roi_align_cuda.cu (CudaLaunch) and the test-only
// host emulation (EmulatedLaunch). One thread per output bin; the arithmetic is roi_align.h's. rois values are
// validated per row in the kernels (common/roi_row.h), not on the host: no synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include "common/roi_checks.h"
#include "common/roi_row.h"
#include "roi_align/roi_align.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_align_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                             const at::opmath_type<scalar_t>* __restrict__ rois,
                             scalar_t* __restrict__ output, int64_t batch_size, int64_t channels, int64_t height,
                             int64_t width, int64_t pooled_h, int64_t pooled_w, at::opmath_type<scalar_t> spatial_scale,
                             int64_t sampling_ratio, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex bin = roi_bin_index(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + bin.roi * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("roi_align"));
      output[index] = scalar_t(0);
      continue;
    }
    const RoIAlignGeometry<acc_t> g =
        roi_align_geometry<acc_t>(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
    const scalar_t* plane = input + (g.batch * channels + bin.channel) * height * width;
    output[index] = static_cast<scalar_t>(roi_align_bin_value(plane, height, width, g, bin.ph, bin.pw));
  }
}

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_align_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                              const at::opmath_type<scalar_t>* __restrict__ rois,
                              at::opmath_type<scalar_t>* __restrict__ grad_input, int64_t grad_input_numel,
                              int64_t batch_size, int64_t channels, int64_t height, int64_t width, int64_t pooled_h,
                              int64_t pooled_w, at::opmath_type<scalar_t> spatial_scale, int64_t sampling_ratio,
                              bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  AtomicAdd<acc_t> add{grad_input, grad_input_numel};
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex bin = roi_bin_index(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + bin.roi * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("_roi_align_backward"));
      continue;
    }
    const RoIAlignGeometry<acc_t> g =
        roi_align_geometry<acc_t>(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
    const int64_t plane_offset = (g.batch * channels + bin.channel) * height * width;
    roi_align_bin_scatter(add, plane_offset, height, width, g, bin.ph, bin.pw, static_cast<acc_t>(grad[index]));
  }
}

template <class Launch>
at::Tensor roi_align_forward_launch(const Launch& launch, const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                    bool aligned) {
  check_sampling_ratio("roi_align", sampling_ratio);
  const auto [output, rois_acc] = checked_roi_output("roi_align", input, rois, spatial_scale, pooled_h, pooled_w,
                                                    RoIValues::kCheckInKernel);
  if (output.numel() == 0) return output;
  const int64_t channels = input.size(1);
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(output.numel(), roi_align_forward_kernel<scalar_t>, output.numel(), input_c.const_data_ptr<scalar_t>(),
           rois_acc.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(), input.size(0), channels,
           input.size(2), input.size(3), pooled_h, pooled_w, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned);
  });
  return output;
}

template <class Launch>
at::Tensor roi_align_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                     bool aligned) {
  check_sampling_ratio("_roi_align_backward", sampling_ratio);
  // Accumulated in acc_t (float for float16/bfloat16: their atomics would round every contribution), converted once.
  const auto [grad_input, rois_acc] = checked_roi_grad_input(
      "_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
      at::toOpMathType(grad.scalar_type()), RoIValues::kCheckInKernel);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(grad.numel(), roi_align_backward_kernel<scalar_t>, grad.numel(), grad_c.const_data_ptr<scalar_t>(),
           rois_acc.const_data_ptr<acc_t>(), grad_input.mutable_data_ptr<acc_t>(), grad_input.numel(), batch_size,
           channels, height, width, pooled_h, pooled_w, static_cast<acc_t>(spatial_scale), sampling_ratio, aligned);
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace segops

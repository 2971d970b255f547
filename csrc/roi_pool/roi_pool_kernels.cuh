#pragma once
// RoIPool GPU kernels and their host-side launch, shared by roi_pool_cuda.cu (CudaLaunch) and the test-only host
// emulation (EmulatedLaunch). One thread per output bin; the arithmetic is roi_pool.h's. rois values are validated
// per row in the kernels (common/roi_row.h), not on the host: no synchronisation.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <tuple>

#include "common/checks.h"
#include "common/roi_checks.h"
#include "common/roi_row.h"
#include "roi_pool/roi_pool.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_pool_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                            const at::opmath_type<scalar_t>* __restrict__ rois,
                            scalar_t* __restrict__ output, int32_t* __restrict__ argmax, int64_t batch_size,
                            int64_t channels, int64_t height, int64_t width, int64_t pooled_h, int64_t pooled_w,
                            at::opmath_type<scalar_t> spatial_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex b = roi_bin_index(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("roi_pool"));
      output[index] = scalar_t(0);
      argmax[index] = -1;
      continue;
    }
    const int64_t batch = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
    const RoIPoolBin window = roi_pool_bin<acc_t>(roi, spatial_scale, pooled_h, pooled_w, b.ph, b.pw, height, width);
    const scalar_t* plane = input + (batch * channels + b.channel) * height * width;
    output[index] = static_cast<scalar_t>(roi_pool_bin_max<acc_t>(plane, width, window, argmax[index]));
  }
}

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_pool_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                             const at::opmath_type<scalar_t>* __restrict__ rois,
                             const int32_t* __restrict__ argmax, at::opmath_type<scalar_t>* __restrict__ grad_input,
                             int64_t grad_input_numel, int64_t batch_size, int64_t channels, int64_t height,
                             int64_t width, int64_t pooled_h, int64_t pooled_w) {
  using acc_t = at::opmath_type<scalar_t>;
  AtomicAdd<acc_t> add{grad_input, grad_input_numel};
  const int64_t plane_size = height * width;
  SEGOPS_KERNEL_LOOP(index, total) {
    const int64_t max_index = argmax[index];
    // argmax comes from the forward; the range test keeps a forged one from writing out of bounds.
    if (max_index < 0 || max_index >= plane_size) continue;
    const RoIBinIndex b = roi_bin_index(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("_roi_pool_backward"));
      continue;
    }
    const int64_t batch = static_cast<int64_t>(roi[0]);
    add((batch * channels + b.channel) * plane_size + max_index, static_cast<acc_t>(grad[index]));
  }
}

template <class Launch>
std::tuple<at::Tensor, at::Tensor> roi_pool_forward_launch(const Launch& launch, const at::Tensor& input,
                                                           const at::Tensor& rois, double spatial_scale,
                                                           int64_t pooled_h, int64_t pooled_w) {
  const auto [output, rois_acc] = checked_roi_output("roi_pool", input, rois, spatial_scale, pooled_h, pooled_w,
                                                    RoIValues::kCheckInKernel);
  check_plane_fits_int32("roi_pool", input.size(2), input.size(3));
  at::Tensor argmax = at::empty(output.sizes(), output.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const int64_t channels = input.size(1);
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(output.numel(), roi_pool_forward_kernel<scalar_t>, output.numel(), input_c.const_data_ptr<scalar_t>(),
           rois_acc.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(),
           argmax.mutable_data_ptr<int32_t>(), input.size(0), channels, input.size(2), input.size(3), pooled_h, pooled_w,
           static_cast<acc_t>(spatial_scale));
  });
  return {output, argmax};
}

template <class Launch>
at::Tensor roi_pool_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& rois,
                                    const at::Tensor& argmax, double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                    int64_t batch_size, int64_t channels, int64_t height, int64_t width) {
  // Accumulated in acc_t (float for float16/bfloat16: their atomics would round every contribution), converted once.
  const auto [grad_input, rois_acc] = checked_roi_grad_input(
      "_roi_pool_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
      at::toOpMathType(grad.scalar_type()), RoIValues::kCheckInKernel);
  check_plane_fits_int32("_roi_pool_backward", height, width);
  check_roi_pool_argmax(grad, argmax);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor argmax_c = argmax.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(grad.numel(), roi_pool_backward_kernel<scalar_t>, grad.numel(), grad_c.const_data_ptr<scalar_t>(),
           rois_acc.const_data_ptr<acc_t>(), argmax_c.const_data_ptr<int32_t>(), grad_input.mutable_data_ptr<acc_t>(),
           grad_input.numel(), batch_size, channels, height, width, pooled_h, pooled_w);
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace segops

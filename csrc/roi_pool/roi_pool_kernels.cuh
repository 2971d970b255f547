#pragma once
// RoIPool GPU kernels and their host-side launch, shared by roi_pool_cuda.cu (CudaLaunch) and the test-only host
// emulation (EmulatedLaunch). One thread per output bin; the arithmetic is roi_pool.h's. rois values are validated
// per row in the kernels (roi_common/roi_row.h), not on the host: no synchronisation. The backward scatters with atomic
// adds, or, when determinism is asked for, gathers (roi_common/roi_gather.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <tuple>

#include "common/checks.h"
#include "roi_common/roi_checks.h"
#include "roi_common/roi_gather.h"
#include "roi_common/roi_row.h"
#include "roi_pool/roi_pool.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

// kChannelsLast: the input is NHWC, read in place and walked channel-fastest (a warp reads consecutive channels of
// one window; its stores are PH * PW apart), else NCHW, walked in output order.
template <typename scalar_t, bool kChannelsLast>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_pool_forward_kernel(int64_t total, const scalar_t* __restrict__ input,
                            const at::opmath_type<scalar_t>* __restrict__ rois, scalar_t* __restrict__ output,
                            int32_t* __restrict__ argmax, int64_t batch_size, int64_t channels, int64_t height,
                            int64_t width, int64_t pooled_h, int64_t pooled_w,
                            at::opmath_type<scalar_t> spatial_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex b = roi_bin_index<kChannelsLast>(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("roi_pool"));
      output[b.offset<kChannelsLast>(index, channels, pooled_h, pooled_w)] = scalar_t(0);
      argmax[b.offset<kChannelsLast>(index, channels, pooled_h, pooled_w)] = -1;
      continue;
    }
    const int64_t batch = static_cast<int64_t>(static_cast<acc_t>(roi[0]));
    const RoIPoolBin window = roi_pool_bin<acc_t>(roi, spatial_scale, pooled_h, pooled_w, b.ph, b.pw, height, width);
    const scalar_t* plane = kChannelsLast ? input + batch * height * width * channels + b.channel
                                          : input + (batch * channels + b.channel) * height * width;
    int32_t best = -1;
    const acc_t value = roi_pool_bin_max<acc_t>(plane, width, kChannelsLast ? channels : 1, window, best);
    output[b.offset<kChannelsLast>(index, channels, pooled_h, pooled_w)] = static_cast<scalar_t>(value);
    argmax[b.offset<kChannelsLast>(index, channels, pooled_h, pooled_w)] = best;
  }
}

template <typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_pool_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                             const at::opmath_type<scalar_t>* __restrict__ rois, const int32_t* __restrict__ argmax,
                             at::opmath_type<scalar_t>* __restrict__ grad_input, int64_t grad_input_numel,
                             int64_t batch_size, int64_t channels, int64_t height, int64_t width, int64_t pooled_h,
                             int64_t pooled_w, at::opmath_type<scalar_t> spatial_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  AtomicAdd<acc_t> add{grad_input, grad_input_numel};
  const int64_t plane_size = height * width;
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex b = roi_bin_index(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("_roi_pool_backward"));
      continue;
    }
    const int64_t max_index = argmax[index];
    const RoIPoolBin window = roi_pool_bin<acc_t>(roi, spatial_scale, pooled_h, pooled_w, b.ph, b.pw, height, width);
    if (!roi_pool_window_contains(window, max_index, width)) continue;
    const int64_t batch = static_cast<int64_t>(roi[0]);
    add((batch * channels + b.channel) * plane_size + max_index, static_cast<acc_t>(grad[index]));
  }
}

// The deterministic backward's first pass: each RoI's footprint, the union of its bins' windows (a bad row: none,
// asserted).
template <typename acc_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_pool_footprint_kernel(int64_t num_rois, const acc_t* __restrict__ rois, RoIFootprint* __restrict__ footprints,
                              int64_t batch_size, int64_t height, int64_t width, int64_t pooled_h, int64_t pooled_w,
                              acc_t spatial_scale) {
  SEGOPS_KERNEL_LOOP(k, num_rois) {
    const acc_t* roi = rois + k * 5;
    if (!roi_row_is_valid(roi, batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, SEGOPS_BAD_ROI_ROW_MESSAGE("_roi_pool_backward"));
      footprints[k] = RoIFootprint{-1, 0, 0, 0, 0, 0};
      continue;
    }
    const RoIPoolGeometry<acc_t> g = roi_pool_geometry<acc_t>(roi, spatial_scale, pooled_h, pooled_w);
    footprints[k] = roi_pool_footprint(g, static_cast<int64_t>(roi[0]), pooled_h, pooled_w, height, width);
  }
}

// The deterministic backward's gather (roi_common/roi_gather.h): the gradients of RoI k's bins whose argmax is the
// pixel.
template <typename scalar_t>
struct RoIPoolGather {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int kMinBlocksPerSM = 4;  // 64 registers without a spill on sm_90
  const scalar_t* grad;                      // [K, C, PH, PW]
  const int32_t* argmax;                     // [K, C, PH, PW]
  const acc_t* rois;
  acc_t spatial_scale;
  int64_t channels, pooled_h, pooled_w;

  __device__ void operator()(int64_t k, int64_t /*level*/, int64_t height, int64_t width, int64_t y, int64_t x,
                             int64_t c_begin, int64_t count, acc_t* sums) const {
    const RoIPoolGeometry<acc_t> g = roi_pool_geometry<acc_t>(rois + k * 5, spatial_scale, pooled_h, pooled_w);
    const int64_t bins = pooled_h * pooled_w;
    const int64_t first_bin = (k * channels + c_begin) * bins;
    roi_pool_for_each_bin_containing(g, pooled_h, pooled_w, height, width, y, x, [&](int64_t ph, int64_t pw) {
      const int64_t bin = first_bin + ph * pooled_w + pw;
#pragma unroll
      for (int64_t j = 0; j < kGatherChannels; ++j) {
        if (j < count && argmax[bin + j * bins] == y * width + x) sums[j] += static_cast<acc_t>(grad[bin + j * bins]);
      }
    });
  }
};

template <class Launch>
std::tuple<at::Tensor, at::Tensor> roi_pool_forward_launch(const Launch& launch, const at::Tensor& input,
                                                           const at::Tensor& rois, double spatial_scale,
                                                           int64_t pooled_h, int64_t pooled_w) {
  const auto [output, rois_acc] =
      checked_roi_output("roi_pool", input, rois, spatial_scale, pooled_h, pooled_w, RoIValues::kCheckInKernel);
  check_plane_fits_int32("roi_pool", input.size(2), input.size(3));
  at::Tensor argmax = at::empty(output.sizes(), output.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const int64_t channels = input.size(1);
  // A channels_last input is read in place (as RoIAlign's maps), any other as contiguous NCHW.
  const bool nhwc = all_read_as_nhwc({input});
  const at::Tensor input_c = nhwc ? input : input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(output.numel(), nhwc ? roi_pool_forward_kernel<scalar_t, true> : roi_pool_forward_kernel<scalar_t, false>,
           output.numel(), input_c.const_data_ptr<scalar_t>(), rois_acc.const_data_ptr<acc_t>(),
           output.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int32_t>(), input.size(0), channels,
           input.size(2), input.size(3), pooled_h, pooled_w, static_cast<acc_t>(spatial_scale));
  });
  return {output, argmax};
}

template <class Launch>
at::Tensor roi_pool_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& rois,
                                    const at::Tensor& argmax, double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                    int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                    bool deterministic) {
  // Accumulated in acc_t (float for float16/bfloat16: their atomics would round every contribution), converted once.
  const auto [grad_input, rois_acc] =
      checked_roi_grad_input("_roi_pool_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                             height, width, at::toOpMathType(grad.scalar_type()), RoIValues::kCheckInKernel);
  check_plane_fits_int32("_roi_pool_backward", height, width);
  check_roi_pool_argmax(grad, argmax);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor argmax_c = argmax.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t scale = static_cast<acc_t>(spatial_scale);
    if (!deterministic) {
      launch(grad.numel(), roi_pool_backward_kernel<scalar_t>, grad.numel(), grad_c.const_data_ptr<scalar_t>(),
             rois_acc.const_data_ptr<acc_t>(), argmax_c.const_data_ptr<int32_t>(), grad_input.mutable_data_ptr<acc_t>(),
             grad_input.numel(), batch_size, channels, height, width, pooled_h, pooled_w, scale);
      return;
    }
    const int64_t num_rois = rois_acc.size(0);
    at::Tensor footprints = at::empty({num_rois, 6}, rois_acc.options().dtype(at::kLong));
    launch(num_rois, roi_pool_footprint_kernel<acc_t>, num_rois, rois_acc.const_data_ptr<acc_t>(),
           reinterpret_cast<RoIFootprint*>(footprints.mutable_data_ptr<int64_t>()), batch_size, height, width, pooled_h,
           pooled_w, scale);
    const RoIPoolGather<scalar_t> gather{grad_c.const_data_ptr<scalar_t>(),
                                         argmax_c.const_data_ptr<int32_t>(),
                                         rois_acc.const_data_ptr<acc_t>(),
                                         scale,
                                         channels,
                                         pooled_h,
                                         pooled_w};
    std::vector<at::Tensor> grads{grad_input};
    roi_gather_launch<acc_t>(launch, gather, footprints, grads);
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace segops

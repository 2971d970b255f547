#pragma once
// Position-sensitive RoIAlign / RoIPool GPU kernels (R-FCN, FCIS; torchvision's ps_roi_align / ps_roi_pool) and their
// host-side launch, shared by ps_roi_cuda.cu (CudaLaunch) and the test-only host emulation (EmulatedLaunch). One
// kernel per pass serves both ops through a policy (PSRoIAlignOp, PSRoIPoolOp) holding the arithmetic of
// roi_align.h or roi_pool.h. Forward: one thread per output bin, in output order, reading the one input plane its bin
// pools (roi_common/position_sensitive.h). rois values are validated per row in the kernels (roi_common/roi_row.h):
// no synchronisation. The backward scatters with atomic adds into an accumulation-dtype gradient, or, when
// determinism is asked for, gathers (roi_common/roi_gather.h), where a pixel of input channel c receives from one bin
// of each RoI.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "common/checks.h"
#include "roi_align/roi_align.h"
#include "roi_common/position_sensitive.h"
#include "roi_common/roi_checks.h"
#include "roi_common/roi_gather.h"
#include "roi_common/roi_row.h"
#include "roi_pool/roi_pool.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

// Position-sensitive RoIAlign: torchvision's aligned RoIAlign geometry (pixel centres at +0.5).
template <typename acc_t>
struct PSRoIAlignOp {
  using Geometry = RoIAlignGeometry<acc_t>;
  acc_t spatial_scale;
  int64_t pooled_h, pooled_w, sampling_ratio;

  __device__ static const char* bad_row(bool backward) {
    return backward ? SEGOPS_BAD_ROI_ROW_MESSAGE("_ps_roi_align_backward") : SEGOPS_BAD_ROI_ROW_MESSAGE("ps_roi_align");
  }
  __device__ Geometry geometry(const acc_t* roi) const {
    return roi_align_geometry<acc_t>(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, /*aligned=*/true);
  }
  template <typename scalar_t>
  __device__ acc_t value(const scalar_t* plane, int64_t height, int64_t width, const Geometry& g, int64_t ph,
                         int64_t pw) const {
    return roi_align_bin_value(plane, height, width, g, ph, pw, 1);
  }
  template <typename Add>
  __device__ void scatter(Add& add, int64_t plane_offset, int64_t height, int64_t width, const Geometry& g, int64_t ph,
                          int64_t pw, acc_t grad) const {
    roi_align_bin_scatter(add, plane_offset, height, width, g, ph, pw, grad);
  }
  __device__ RoIFootprint footprint(const Geometry& g, int64_t height, int64_t width) const {
    return roi_align_footprint(g, 0, pooled_h, pooled_w, height, width);
  }
  // Adds to `sum` what bin (ph, pw), of gradient `grad`, sends pixel (y, x): the scatter's terms, one by one in its
  // order, so the sum is the CPU backward's bit for bit.
  __device__ void gather(const Geometry& g, int64_t ph, int64_t pw, int64_t height, int64_t width, int64_t y, int64_t x,
                         acc_t grad, acc_t& sum) const {
    const acc_t grad_per_sample = grad / g.count;
    roi_align_bin_pixel_weights(
        roi_align_rows_near(g, ph, height, y), roi_align_cols_near(g, pw, width, x), y, x, [] {},
        [&](acc_t weight) { sum += grad_per_sample * weight; });
  }
};

// Position-sensitive RoIPool: the mean over rounded bin windows, the box's last pixel excluded.
template <typename acc_t>
struct PSRoIPoolOp {
  using Geometry = RoIPoolGeometry<acc_t>;
  acc_t spatial_scale;
  int64_t pooled_h, pooled_w;

  __device__ static const char* bad_row(bool backward) {
    return backward ? SEGOPS_BAD_ROI_ROW_MESSAGE("_ps_roi_pool_backward") : SEGOPS_BAD_ROI_ROW_MESSAGE("ps_roi_pool");
  }
  __device__ Geometry geometry(const acc_t* roi) const {
    return roi_pool_geometry<acc_t>(roi, spatial_scale, pooled_h, pooled_w, RoIPoolEnd::kExclusive);
  }
  template <typename scalar_t>
  __device__ acc_t value(const scalar_t* plane, int64_t height, int64_t width, const Geometry& g, int64_t ph,
                         int64_t pw) const {
    return roi_pool_bin_mean<acc_t>(plane, width, roi_pool_window(g, ph, pw, height, width));
  }
  template <typename Add>
  __device__ void scatter(Add& add, int64_t plane_offset, int64_t height, int64_t width, const Geometry& g, int64_t ph,
                          int64_t pw, acc_t grad) const {
    roi_pool_bin_mean_scatter(add, plane_offset, width, roi_pool_window(g, ph, pw, height, width), grad);
  }
  __device__ RoIFootprint footprint(const Geometry& g, int64_t height, int64_t width) const {
    return roi_pool_footprint(g, 0, pooled_h, pooled_w, height, width);
  }
  __device__ void gather(const Geometry& g, int64_t ph, int64_t pw, int64_t height, int64_t width, int64_t y, int64_t x,
                         acc_t grad, acc_t& sum) const {
    const RoIPoolBin bin = roi_pool_window(g, ph, pw, height, width);
    if (roi_pool_window_contains(bin, y * width + x, width)) sum += grad / static_cast<acc_t>(roi_pool_bin_area(bin));
  }
};

// The sizes both passes share: the input [N, C, H, W] and the output bins [K, C / (PH * PW), PH, PW].
struct PSRoIShape {
  int64_t batch_size, channels, height, width, out_channels;
};

template <class Op, typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    ps_roi_forward_kernel(int64_t total, Op op, const scalar_t* __restrict__ input,
                          const at::opmath_type<scalar_t>* __restrict__ rois, scalar_t* __restrict__ output,
                          PSRoIShape s) {
  using acc_t = at::opmath_type<scalar_t>;
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex b = roi_bin_index(index, s.out_channels, op.pooled_h, op.pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    if (!roi_row_is_valid(roi, s.batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, Op::bad_row(false));
      output[index] = scalar_t(0);
      continue;
    }
    const int64_t batch = static_cast<int64_t>(roi[0]);
    const int64_t c = ps_input_channel(b.channel, b.ph, b.pw, op.pooled_h, op.pooled_w);
    const scalar_t* plane = input + (batch * s.channels + c) * s.height * s.width;
    output[index] = static_cast<scalar_t>(op.value(plane, s.height, s.width, op.geometry(roi), b.ph, b.pw));
  }
}

template <class Op, typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    ps_roi_backward_kernel(int64_t total, Op op, const scalar_t* __restrict__ grad,
                           const at::opmath_type<scalar_t>* __restrict__ rois,
                           at::opmath_type<scalar_t>* __restrict__ grad_input, PSRoIShape s) {
  using acc_t = at::opmath_type<scalar_t>;
  AtomicAdd<acc_t> add{grad_input, s.batch_size * s.channels * s.height * s.width};
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex b = roi_bin_index(index, s.out_channels, op.pooled_h, op.pooled_w);
    const acc_t* roi = rois + b.roi * 5;
    if (!roi_row_is_valid(roi, s.batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, Op::bad_row(true));
      continue;
    }
    const int64_t batch = static_cast<int64_t>(roi[0]);
    const int64_t c = ps_input_channel(b.channel, b.ph, b.pw, op.pooled_h, op.pooled_w);
    op.scatter(add, (batch * s.channels + c) * s.height * s.width, s.height, s.width, op.geometry(roi), b.ph, b.pw,
               static_cast<acc_t>(grad[index]));
  }
}

// The deterministic backward's first pass: each RoI's footprint (a bad row: none, asserted).
template <class Op, typename acc_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    ps_roi_footprint_kernel(int64_t num_rois, Op op, const acc_t* __restrict__ rois,
                            RoIFootprint* __restrict__ footprints, PSRoIShape s) {
  SEGOPS_KERNEL_LOOP(k, num_rois) {
    const acc_t* roi = rois + k * 5;
    if (!roi_row_is_valid(roi, s.batch_size)) {
      SEGOPS_KERNEL_ASSERT(false, Op::bad_row(true));
      footprints[k] = RoIFootprint{-1, 0, 0, 0, 0, 0};
      continue;
    }
    RoIFootprint f = op.footprint(op.geometry(roi), s.height, s.width);
    f.batch = static_cast<int64_t>(roi[0]);
    footprints[k] = f;
  }
}

// The deterministic backward's gather: what RoI k sends pixel (y, x) of input channels c_begin .. c_begin + count,
// each from the one bin that channel feeds.
template <class Op, typename scalar_t>
struct PSRoIGather {
  using acc_t = at::opmath_type<scalar_t>;
  // Held to 64 registers on sm_90 (4 resident blocks): the float RoIAlign gather then keeps 32 bytes on the stack
  // (80 registers unbounded); float64's would spill 200 bytes, so it is left unbounded.
  static constexpr int kMinBlocksPerSM = sizeof(acc_t) == 4 ? 4 : 1;
  Op op;
  const scalar_t* grad;  // [K, C_out, PH, PW]
  const acc_t* rois;
  int64_t out_channels;

  __device__ void operator()(int64_t k, int64_t /*level*/, int64_t height, int64_t width, int64_t y, int64_t x,
                             int64_t c_begin, int64_t count, acc_t* sums) const {
    const typename Op::Geometry g = op.geometry(rois + k * 5);
#pragma unroll
    for (int64_t j = 0; j < kGatherChannels; ++j) {
      if (j >= count) continue;
      const PSBin bin = ps_bin_of_input_channel(c_begin + j, op.pooled_h, op.pooled_w);
      const acc_t bin_grad = static_cast<acc_t>(
          grad[((k * out_channels + bin.out_channel) * op.pooled_h + bin.ph) * op.pooled_w + bin.pw]);
      op.gather(g, bin.ph, bin.pw, height, width, y, x, bin_grad, sums[j]);
    }
  }
};

// The forward: op is PSRoIAlignOp or PSRoIPoolOp of the dispatched accumulation type.
template <template <typename> class Op, class Launch, typename MakeOp>
at::Tensor ps_roi_forward_launch(const Launch& launch, const char* name, const at::Tensor& input,
                                 const at::Tensor& rois, double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                 const MakeOp& make_op) {
  const auto [output, rois_acc] = checked_roi_output(name, input, rois, spatial_scale, pooled_h, pooled_w,
                                                     RoIValues::kCheckInKernel, RoIChannels::kPositionSensitive);
  if (output.numel() == 0) return output;
  const at::Tensor input_c = input.contiguous();
  const PSRoIShape shape{input.size(0), input.size(1), input.size(2), input.size(3), output.size(1)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_forward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch(output.numel(), ps_roi_forward_kernel<Op<acc_t>, scalar_t>, output.numel(), make_op.template get<acc_t>(),
           input_c.const_data_ptr<scalar_t>(), rois_acc.const_data_ptr<acc_t>(), output.mutable_data_ptr<scalar_t>(),
           shape);
  });
  return output;
}

// The backward into a zeroed accumulation-dtype gradient, returned in grad's dtype.
template <template <typename> class Op, class Launch, typename MakeOp>
at::Tensor ps_roi_backward_launch(const Launch& launch, const char* name, const at::Tensor& grad,
                                  const at::Tensor& rois, double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                  bool deterministic, const MakeOp& make_op) {
  const auto [grad_input, rois_acc] = checked_roi_grad_input(
      name, grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
      at::toOpMathType(grad.scalar_type()), RoIValues::kCheckInKernel, RoIChannels::kPositionSensitive);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const PSRoIShape shape{batch_size, channels, height, width, grad.size(1)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ps_roi_backward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Op<acc_t> op = make_op.template get<acc_t>();
    if (!deterministic) {
      launch(grad.numel(), ps_roi_backward_kernel<Op<acc_t>, scalar_t>, grad.numel(), op,
             grad_c.const_data_ptr<scalar_t>(), rois_acc.const_data_ptr<acc_t>(), grad_input.mutable_data_ptr<acc_t>(),
             shape);
      return;
    }
    const int64_t num_rois = rois_acc.size(0);
    at::Tensor footprints = at::empty({num_rois, 6}, rois_acc.options().dtype(at::kLong));
    launch(num_rois, ps_roi_footprint_kernel<Op<acc_t>, acc_t>, num_rois, op, rois_acc.const_data_ptr<acc_t>(),
           reinterpret_cast<RoIFootprint*>(footprints.mutable_data_ptr<int64_t>()), shape);
    const PSRoIGather<Op<acc_t>, scalar_t> gather{op, grad_c.const_data_ptr<scalar_t>(),
                                                  rois_acc.const_data_ptr<acc_t>(), grad.size(1)};
    std::vector<at::Tensor> grads{grad_input};
    roi_gather_launch<acc_t>(launch, gather, footprints, grads);
  });
  return grad_input.to(grad.scalar_type());
}

// The ops' parameters, made into a policy once the accumulation type is dispatched.
struct PSRoIAlignParams {
  double spatial_scale;
  int64_t pooled_h, pooled_w, sampling_ratio;
  template <typename acc_t>
  PSRoIAlignOp<acc_t> get() const {
    return {static_cast<acc_t>(spatial_scale), pooled_h, pooled_w, sampling_ratio};
  }
};

struct PSRoIPoolParams {
  double spatial_scale;
  int64_t pooled_h, pooled_w;
  template <typename acc_t>
  PSRoIPoolOp<acc_t> get() const {
    return {static_cast<acc_t>(spatial_scale), pooled_h, pooled_w};
  }
};

template <class Launch>
at::Tensor ps_roi_align_forward_launch(const Launch& launch, const at::Tensor& input, const at::Tensor& rois,
                                       double spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                       int64_t sampling_ratio) {
  check_sampling_ratio("ps_roi_align", sampling_ratio);
  return ps_roi_forward_launch<PSRoIAlignOp>(launch, "ps_roi_align", input, rois, spatial_scale, pooled_h, pooled_w,
                                             PSRoIAlignParams{spatial_scale, pooled_h, pooled_w, sampling_ratio});
}

template <class Launch>
at::Tensor ps_roi_align_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& rois,
                                        double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                        int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                        bool deterministic) {
  check_sampling_ratio("_ps_roi_align_backward", sampling_ratio);
  return ps_roi_backward_launch<PSRoIAlignOp>(launch, "_ps_roi_align_backward", grad, rois, spatial_scale, pooled_h,
                                              pooled_w, batch_size, channels, height, width, deterministic,
                                              PSRoIAlignParams{spatial_scale, pooled_h, pooled_w, sampling_ratio});
}

template <class Launch>
at::Tensor ps_roi_pool_forward_launch(const Launch& launch, const at::Tensor& input, const at::Tensor& rois,
                                      double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  return ps_roi_forward_launch<PSRoIPoolOp>(launch, "ps_roi_pool", input, rois, spatial_scale, pooled_h, pooled_w,
                                            PSRoIPoolParams{spatial_scale, pooled_h, pooled_w});
}

template <class Launch>
at::Tensor ps_roi_pool_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& rois,
                                       double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                       int64_t channels, int64_t height, int64_t width, bool deterministic) {
  return ps_roi_backward_launch<PSRoIPoolOp>(launch, "_ps_roi_pool_backward", grad, rois, spatial_scale, pooled_h,
                                             pooled_w, batch_size, channels, height, width, deterministic,
                                             PSRoIPoolParams{spatial_scale, pooled_h, pooled_w});
}

}  // namespace segops

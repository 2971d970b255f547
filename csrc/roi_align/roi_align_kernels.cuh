#pragma once
// RoIAlign GPU kernels and their host-side launch, shared by roi_align_cuda.cu (CudaLaunch) and the test-only
// host emulation (EmulatedLaunch). One thread per output bin; the arithmetic is roi_align.h's. rois values (and
// multi_scale_roi_align's levels) are validated per row in the kernels (roi_common/roi_row.h), not on the host: no
// synchronisation. One kernel serves roi_align (one map) and multi_scale_roi_align (a pyramid, one launch).
// The backward scatters with atomic adds, or, when determinism is asked for, gathers (roi_common/roi_gather.h).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <vector>

#include "roi_common/roi_checks.h"
#include "roi_common/roi_gather.h"
#include "roi_common/roi_row.h"
#include "roi_align/roi_align.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

// The feature maps of one call, by value (roi_align: one; multi_scale_roi_align: a pyramid). data[l] points at map
// l, [N, C, height[l], width[l]] contiguous (or all channels_last, read in place by the forward): the input (forward)
// or its accumulation-dtype gradient (backward).
template <typename pointer_t, typename acc_t>
struct FeatureLevels {
  pointer_t data[kMaxFeatureLevels];
  int64_t height[kMaxFeatureLevels], width[kMaxFeatureLevels];
  acc_t spatial_scale[kMaxFeatureLevels];
  int64_t count;
};

template <typename pointer_t, typename acc_t>
FeatureLevels<pointer_t, acc_t> feature_levels(const std::vector<pointer_t>& data, at::TensorList maps,
                                               at::ArrayRef<double> spatial_scales) {
  FeatureLevels<pointer_t, acc_t> levels{};
  levels.count = static_cast<int64_t>(maps.size());
  for (int64_t l = 0; l < levels.count; ++l) {
    levels.data[l] = data[l];
    levels.height[l] = maps[l].size(2);
    levels.width[l] = maps[l].size(3);
    levels.spatial_scale[l] = static_cast<acc_t>(spatial_scales[l]);
  }
  return levels;
}

// The device-side assert messages of one op (literals, so the GPU can print them).
struct RoIAlignMessages {
  const char* bad_row;
  const char* bad_level;
};

#define SEGOPS_ROI_ALIGN_MESSAGES(op) \
  RoIAlignMessages{SEGOPS_BAD_ROI_ROW_MESSAGE(op), op ": levels[k] must be in [0, L) (a feature map) for every k"}

// The map of RoI k (0 without a levels tensor), or -1 with a device-side assert if its rois row or levels entry is
// bad: such a RoI reads and writes nothing.
template <bool kMultiLevel, typename acc_t>
__device__ inline int64_t roi_level(const acc_t* roi, const int64_t* levels, int64_t k, int64_t batch_size,
                                    int64_t num_levels, const RoIAlignMessages& messages) {
  if (!roi_row_is_valid(roi, batch_size)) {
    SEGOPS_KERNEL_ASSERT(false, messages.bad_row);
    return -1;
  }
  if (!kMultiLevel) return 0;
  const int64_t level = levels[k];
  if (!(level >= 0 && level < num_levels)) {
    SEGOPS_KERNEL_ASSERT(false, messages.bad_level);
    return -1;
  }
  return level;
}

// kChannelsLast: the maps are NHWC, walked channel-fastest (reads at consecutive addresses across a warp; the output
// bins it writes are PH * PW apart), else NCHW, walked in output order.
template <bool kMultiLevel, bool kChannelsLast, typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_align_forward_kernel(int64_t total, FeatureLevels<const scalar_t*, at::opmath_type<scalar_t>> maps,
                             const at::opmath_type<scalar_t>* __restrict__ rois, const int64_t* __restrict__ levels,
                             scalar_t* __restrict__ output, int64_t batch_size, int64_t channels, int64_t pooled_h,
                             int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoIAlignMessages messages =
      kMultiLevel ? SEGOPS_ROI_ALIGN_MESSAGES("multi_scale_roi_align") : SEGOPS_ROI_ALIGN_MESSAGES("roi_align");
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex bin = roi_bin_index<kChannelsLast>(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + bin.roi * 5;
    const int64_t level = roi_level<kMultiLevel>(roi, levels, bin.roi, batch_size, maps.count, messages);
    if (level < 0) {
      output[bin.offset<kChannelsLast>(index, channels, pooled_h, pooled_w)] = scalar_t(0);
      continue;
    }
    const int64_t height = maps.height[level], width = maps.width[level];
    const RoIAlignGeometry<acc_t> g =
        roi_align_geometry<acc_t>(roi, maps.spatial_scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
    const scalar_t* plane = kChannelsLast ? maps.data[level] + g.batch * height * width * channels + bin.channel
                                          : maps.data[level] + (g.batch * channels + bin.channel) * height * width;
    output[bin.offset<kChannelsLast>(index, channels, pooled_h, pooled_w)] = static_cast<scalar_t>(
        roi_align_bin_value(plane, height, width, g, bin.ph, bin.pw, kChannelsLast ? channels : 1));
  }
}

template <bool kMultiLevel, typename scalar_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_align_backward_kernel(int64_t total, const scalar_t* __restrict__ grad,
                              const at::opmath_type<scalar_t>* __restrict__ rois, const int64_t* __restrict__ levels,
                              FeatureLevels<at::opmath_type<scalar_t>*, at::opmath_type<scalar_t>> grads,
                              int64_t batch_size, int64_t channels, int64_t pooled_h, int64_t pooled_w,
                              int64_t sampling_ratio, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoIAlignMessages messages = kMultiLevel ? SEGOPS_ROI_ALIGN_MESSAGES("_multi_scale_roi_align_backward")
                                                : SEGOPS_ROI_ALIGN_MESSAGES("_roi_align_backward");
  SEGOPS_KERNEL_LOOP(index, total) {
    const RoIBinIndex bin = roi_bin_index(index, channels, pooled_h, pooled_w);
    const acc_t* roi = rois + bin.roi * 5;
    const int64_t level = roi_level<kMultiLevel>(roi, levels, bin.roi, batch_size, grads.count, messages);
    if (level < 0) continue;
    const int64_t height = grads.height[level], width = grads.width[level];
    AtomicAdd<acc_t> add{grads.data[level], batch_size * channels * height * width};
    const RoIAlignGeometry<acc_t> g =
        roi_align_geometry<acc_t>(roi, grads.spatial_scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
    const int64_t plane_offset = (g.batch * channels + bin.channel) * height * width;
    roi_align_bin_scatter(add, plane_offset, height, width, g, bin.ph, bin.pw, static_cast<acc_t>(grad[index]));
  }
}

// The deterministic backward's first pass: each RoI's footprint on its map (a bad row or level: none, asserted).
template <bool kMultiLevel, typename acc_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_align_footprint_kernel(int64_t num_rois, const acc_t* __restrict__ rois, const int64_t* __restrict__ levels,
                               FeatureLevels<acc_t*, acc_t> grads, RoIFootprint* __restrict__ footprints,
                               int64_t batch_size, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                               bool aligned) {
  const RoIAlignMessages messages = kMultiLevel ? SEGOPS_ROI_ALIGN_MESSAGES("_multi_scale_roi_align_backward")
                                                : SEGOPS_ROI_ALIGN_MESSAGES("_roi_align_backward");
  SEGOPS_KERNEL_LOOP(k, num_rois) {
    const acc_t* roi = rois + k * 5;
    const int64_t level = roi_level<kMultiLevel>(roi, levels, k, batch_size, grads.count, messages);
    if (level < 0) {
      footprints[k] = RoIFootprint{-1, 0, 0, 0, 0, 0};
      continue;
    }
    const RoIAlignGeometry<acc_t> g =
        roi_align_geometry<acc_t>(roi, grads.spatial_scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
    footprints[k] = roi_align_footprint(g, level, pooled_h, pooled_w, grads.height[level], grads.width[level]);
  }
}

// The deterministic backward's gather (roi_common/roi_gather.h): what RoI k's bins send one pixel, per channel.
template <typename scalar_t>
struct RoIAlignGather {
  using acc_t = at::opmath_type<scalar_t>;
  // 109 registers on sm_90 (the sample geometry's 64-bit indices); held to 64 it spills 144 bytes: left unbounded.
  static constexpr int kMinBlocksPerSM = 1;
  const scalar_t* grad;  // [K, C, PH, PW]
  const acc_t* rois;
  FeatureLevels<acc_t*, acc_t> maps;  // for each map's spatial_scale
  int64_t channels, pooled_h, pooled_w, sampling_ratio;
  bool aligned;

  __device__ void operator()(int64_t k, int64_t level, int64_t height, int64_t width, int64_t y, int64_t x,
                             int64_t c_begin, int64_t count, acc_t* sums) const {
    const RoIAlignGeometry<acc_t> g =
        roi_align_geometry<acc_t>(rois + k * 5, maps.spatial_scale[level], pooled_h, pooled_w, sampling_ratio, aligned);
    const int64_t bins = pooled_h * pooled_w;
    const scalar_t* grad_k = grad + (k * channels + c_begin) * bins;
    acc_t grad_per_sample[kGatherChannels];
    roi_align_pixel_gather(
        g, pooled_h, pooled_w, height, width, y, x,
        [&](int64_t ph, int64_t pw) {
#pragma unroll
          for (int64_t j = 0; j < kGatherChannels; ++j) {
            if (j < count) grad_per_sample[j] = static_cast<acc_t>(grad_k[j * bins + ph * pooled_w + pw]) / g.count;
          }
        },
        [&](acc_t weight) {
#pragma unroll
          for (int64_t j = 0; j < kGatherChannels; ++j) {
            if (j < count) sums[j] += grad_per_sample[j] * weight;
          }
        });
  }
};

// The forward over checked maps and rois into `output`; levels: nullptr (roi_align) or each RoI's map.
template <class Launch>
void roi_align_forward_levels(const Launch& launch, at::TensorList maps, const at::Tensor& output,
                              const at::Tensor& rois_acc, const at::Tensor* levels, at::ArrayRef<double> spatial_scales,
                              int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  // channels_last maps are read in place (multi_scale_roi_align's FPN levels included), others as contiguous NCHW.
  const bool nhwc = all_read_as_nhwc(maps);
  std::vector<at::Tensor> read;
  for (const at::Tensor& map : maps) read.push_back(nhwc ? map : map.contiguous());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "roi_align_forward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    std::vector<const scalar_t*> data;
    for (const at::Tensor& map : read) data.push_back(map.const_data_ptr<scalar_t>());
    const auto table = feature_levels<const scalar_t*, acc_t>(data, maps, spatial_scales);
    const auto kernel =
        levels == nullptr
            ? (nhwc ? roi_align_forward_kernel<false, true, scalar_t>
                    : roi_align_forward_kernel<false, false, scalar_t>)
            : (nhwc ? roi_align_forward_kernel<true, true, scalar_t> : roi_align_forward_kernel<true, false, scalar_t>);
    launch(output.numel(), kernel, output.numel(), table, rois_acc.const_data_ptr<acc_t>(),
           levels == nullptr ? nullptr : levels->const_data_ptr<int64_t>(), output.mutable_data_ptr<scalar_t>(),
           maps[0].size(0), maps[0].size(1), pooled_h, pooled_w, sampling_ratio, aligned);
  });
}

// The backward into checked, zeroed accumulation-dtype gradients, returned in grad's dtype.
template <class Launch>
std::vector<at::Tensor> roi_align_backward_levels(const Launch& launch, const at::Tensor& grad,
                                                  const at::Tensor& rois_acc, const at::Tensor* levels,
                                                  at::ArrayRef<double> spatial_scales, std::vector<at::Tensor> grads,
                                                  int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                                  bool aligned, bool deterministic) {
  if (grad.numel() > 0) {
    const at::Tensor grad_c = grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_kernel", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      std::vector<acc_t*> data;
      for (at::Tensor& g : grads) data.push_back(g.mutable_data_ptr<acc_t>());
      const auto table = feature_levels<acc_t*, acc_t>(data, grads, spatial_scales);
      const int64_t* levels_data = levels == nullptr ? nullptr : levels->const_data_ptr<int64_t>();
      const int64_t num_rois = rois_acc.size(0), batch_size = grads[0].size(0), channels = grads[0].size(1);
      if (!deterministic) {
        const auto kernel =
            levels == nullptr ? roi_align_backward_kernel<false, scalar_t> : roi_align_backward_kernel<true, scalar_t>;
        launch(grad.numel(), kernel, grad.numel(), grad_c.const_data_ptr<scalar_t>(), rois_acc.const_data_ptr<acc_t>(),
               levels_data, table, batch_size, channels, pooled_h, pooled_w, sampling_ratio, aligned);
        return;
      }
      at::Tensor footprints = at::empty({num_rois, 6}, rois_acc.options().dtype(at::kLong));
      const auto footprint_kernel =
          levels == nullptr ? roi_align_footprint_kernel<false, acc_t> : roi_align_footprint_kernel<true, acc_t>;
      launch(num_rois, footprint_kernel, num_rois, rois_acc.const_data_ptr<acc_t>(), levels_data, table,
             reinterpret_cast<RoIFootprint*>(footprints.mutable_data_ptr<int64_t>()), batch_size, pooled_h, pooled_w,
             sampling_ratio, aligned);
      const RoIAlignGather<scalar_t> gather{grad_c.const_data_ptr<scalar_t>(),
                                            rois_acc.const_data_ptr<acc_t>(),
                                            table,
                                            channels,
                                            pooled_h,
                                            pooled_w,
                                            sampling_ratio,
                                            aligned};
      roi_gather_launch<acc_t>(launch, gather, footprints, grads);
    });
  }
  for (at::Tensor& g : grads) g = g.to(grad.scalar_type());
  return grads;
}

template <class Launch>
at::Tensor roi_align_forward_launch(const Launch& launch, const at::Tensor& input, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                    bool aligned) {
  check_sampling_ratio("roi_align", sampling_ratio);
  const auto [output, rois_acc] =
      checked_roi_output("roi_align", input, rois, spatial_scale, pooled_h, pooled_w, RoIValues::kCheckInKernel);
  if (output.numel() == 0) return output;
  roi_align_forward_levels(launch, {input}, output, rois_acc, nullptr, {spatial_scale}, pooled_h, pooled_w,
                           sampling_ratio, aligned);
  return output;
}

template <class Launch>
at::Tensor roi_align_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& rois,
                                     double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                     int64_t channels, int64_t height, int64_t width, int64_t sampling_ratio,
                                     bool aligned, bool deterministic) {
  check_sampling_ratio("_roi_align_backward", sampling_ratio);
  // Accumulated in acc_t (float for float16/bfloat16: their atomics would round every contribution), converted once.
  const auto [grad_input, rois_acc] =
      checked_roi_grad_input("_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                             height, width, at::toOpMathType(grad.scalar_type()), RoIValues::kCheckInKernel);
  return roi_align_backward_levels(launch, grad, rois_acc, nullptr, {spatial_scale}, {grad_input}, pooled_h, pooled_w,
                                   sampling_ratio, aligned, deterministic)[0];
}

template <class Launch>
at::Tensor multi_scale_roi_align_forward_launch(const Launch& launch, at::TensorList features, const at::Tensor& rois,
                                                const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                                int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                                                bool aligned) {
  const char* op = "multi_scale_roi_align";
  check_sampling_ratio(op, sampling_ratio);
  const auto checked = checked_multi_level_output(op, features, rois, levels, spatial_scales, pooled_h, pooled_w,
                                                  RoIValues::kCheckInKernel);
  const at::Tensor& output = checked.results[0];
  if (output.numel() == 0) return output;
  roi_align_forward_levels(launch, features, output, checked.rois, &checked.levels, spatial_scales, pooled_h, pooled_w,
                           sampling_ratio, aligned);
  return output;
}

template <class Launch>
std::vector<at::Tensor> multi_scale_roi_align_backward_launch(
    const Launch& launch, const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& levels,
    at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
    at::IntArrayRef heights, at::IntArrayRef widths, int64_t sampling_ratio, bool aligned, bool deterministic) {
  const char* op = "_multi_scale_roi_align_backward";
  check_sampling_ratio(op, sampling_ratio);
  auto checked =
      checked_multi_level_grads(op, grad, rois, levels, spatial_scales, pooled_h, pooled_w, batch_size, channels,
                                heights, widths, at::toOpMathType(grad.scalar_type()), RoIValues::kCheckInKernel);
  return roi_align_backward_levels(launch, grad, checked.rois, &checked.levels, spatial_scales,
                                   std::move(checked.results), pooled_h, pooled_w, sampling_ratio, aligned,
                                   deterministic);
}

}  // namespace segops

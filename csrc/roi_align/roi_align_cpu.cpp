// RoIAlign on the CPU. Bilinear taps are separable, so each RoI's taps are computed once per axis, up front,
// and shared by every bin and every channel.
//  - Forward runs on a channels-innermost (NHWC) view of the input, parallel over RoIs: each bilinear sample is
//    then one vectorisable loop over channels. A contiguous (NCHW) input costs one copy; channels_last, none.
//  - Backward runs planes outermost (for_each_plane_roi): parallel over (image, channel) planes, each plane
//    accumulated by one thread in RoI order, so it is deterministic without atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/roi_checks.h"
#include "common/rois_by_image.h"
#include "roi_align/roi_align.h"

namespace segops {
namespace {

template <typename T>
struct TapRange {
  const LinearTap<T>* first;
  const LinearTap<T>* last;
  const LinearTap<T>* begin() const { return first; }
  const LinearTap<T>* end() const { return last; }
};

// The valid taps of one RoI along one axis, grouped by bin: bin p owns taps[begin[p] .. begin[p + 1]).
template <typename T>
struct AxisTaps {
  std::vector<LinearTap<T>> taps;
  std::vector<int64_t> begin;

  void build(T start, T bin, int64_t grid, int64_t pooled, int64_t size) {
    taps.clear();
    begin.assign(1, 0);
    for (int64_t p = 0; p < pooled; ++p) {
      roi_align_for_each_tap(start, bin, grid, p, size, [&](const LinearTap<T>& tap) { taps.push_back(tap); });
      begin.push_back(static_cast<int64_t>(taps.size()));
    }
  }

  TapRange<T> of_bin(int64_t p) const { return {taps.data() + begin[p], taps.data() + begin[p + 1]}; }
};

// One RoI: its geometry and its y and x taps, in the order the GPU kernel visits them.
template <typename T>
struct RoITaps {
  RoIAlignGeometry<T> geometry;
  AxisTaps<T> y, x;
};

template <typename T, typename scalar_t>
std::vector<RoITaps<T>> build_roi_taps(const scalar_t* rois, int64_t num_rois, double spatial_scale, int64_t pooled_h,
                                       int64_t pooled_w, int64_t sampling_ratio, bool aligned, int64_t height,
                                       int64_t width) {
  std::vector<RoITaps<T>> all_taps(num_rois);
  at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      RoITaps<T>& taps = all_taps[k];
      taps.geometry = roi_align_geometry<T>(rois + k * 5, static_cast<T>(spatial_scale), pooled_h, pooled_w,
                                            sampling_ratio, aligned);
      taps.y.build(taps.geometry.start_h, taps.geometry.bin_h, taps.geometry.grid_h, pooled_h, height);
      taps.x.build(taps.geometry.start_w, taps.geometry.bin_w, taps.geometry.grid_w, pooled_w, width);
    }
  });
  return all_taps;
}

// sums[c] += the bilinear sample (ty, tx) of channel c, for every channel of an NHWC image: bilinear_gather's
// expression, vectorised over channels.
template <typename T, typename scalar_t>
void add_sample_all_channels(T* __restrict__ sums, const scalar_t* image, int64_t width, int64_t channels,
                             const LinearTap<T>& ty, const LinearTap<T>& tx) {
  const BilinearWeights<T> w = bilinear_weights(ty, tx);
  const scalar_t* __restrict__ low_low = image + (ty.low * width + tx.low) * channels;
  const scalar_t* __restrict__ low_high = image + (ty.low * width + tx.high) * channels;
  const scalar_t* __restrict__ high_low = image + (ty.high * width + tx.low) * channels;
  const scalar_t* __restrict__ high_high = image + (ty.high * width + tx.high) * channels;
  for (int64_t c = 0; c < channels; ++c) {
    sums[c] += w.low_low * static_cast<T>(low_low[c]) + w.low_high * static_cast<T>(low_high[c]) +
               w.high_low * static_cast<T>(high_low[c]) + w.high_high * static_cast<T>(high_high[c]);
  }
}

template <typename acc_t>
struct PlaneAdd {
  acc_t* data;
  void operator()(int64_t index, acc_t value) const { data[index] += value; }
};

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_sampling_ratio("roi_align", sampling_ratio);
  const auto [output, rois_acc] = checked_roi_output("roi_align", input, rois, spatial_scale, pooled_h, pooled_w);
  if (output.numel() == 0) return output;
  const int64_t channels = input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  const at::Tensor input_nhwc = input.contiguous(at::MemoryFormat::ChannelsLast);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* input_data = input_nhwc.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    const auto all_taps = build_roi_taps<acc_t>(rois_acc.const_data_ptr<acc_t>(), rois.size(0), spatial_scale,
                                                pooled_h, pooled_w, sampling_ratio, aligned, height, width);
    at::parallel_for(0, rois.size(0), 1, [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sums(channels);
      for (int64_t k = begin; k < end; ++k) {
        const RoITaps<acc_t>& taps = all_taps[k];
        const scalar_t* image = input_data + taps.geometry.batch * height * width * channels;
        scalar_t* out = output_data + k * channels * pooled_h * pooled_w;
        for (int64_t ph = 0; ph < pooled_h; ++ph) {
          for (int64_t pw = 0; pw < pooled_w; ++pw) {
            std::fill(sums.begin(), sums.end(), acc_t(0));
            for (const LinearTap<acc_t>& ty : taps.y.of_bin(ph)) {
              for (const LinearTap<acc_t>& tx : taps.x.of_bin(pw)) {
                add_sample_all_channels(sums.data(), image, width, channels, ty, tx);
              }
            }
            for (int64_t c = 0; c < channels; ++c) {
              out[(c * pooled_h + ph) * pooled_w + pw] = static_cast<scalar_t>(sums[c] / taps.geometry.count);
            }
          }
        }
      }
    });
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_sampling_ratio("_roi_align_backward", sampling_ratio);
  // Accumulate in acc_t (float for half types), converted once at the end.
  const auto [grad_input, rois_acc] =
      checked_roi_grad_input("_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size,
                             channels, height, width, at::toOpMathType(grad.scalar_type()));
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
    const auto all_taps = build_roi_taps<acc_t>(rois_data, rois.size(0), spatial_scale, pooled_h, pooled_w,
                                                sampling_ratio, aligned, height, width);
    PlaneAdd<acc_t> add{grad_input.mutable_data_ptr<acc_t>()};
    for_each_plane_roi(group_rois_by_image(rois_data, rois.size(0), batch_size), channels,
                       [&](int64_t n, int64_t c, int64_t k) {
                         const int64_t plane_offset = (n * channels + c) * height * width;
                         const scalar_t* grad_bins = grad_data + (k * channels + c) * pooled_h * pooled_w;
                         const RoITaps<acc_t>& taps = all_taps[k];
                         for (int64_t ph = 0; ph < pooled_h; ++ph) {
                           for (int64_t pw = 0; pw < pooled_w; ++pw) {
                             const acc_t grad_per_sample =
                                 static_cast<acc_t>(grad_bins[ph * pooled_w + pw]) / taps.geometry.count;
                             for (const LinearTap<acc_t>& ty : taps.y.of_bin(ph)) {
                               for (const LinearTap<acc_t>& tx : taps.x.of_bin(pw)) {
                                 bilinear_scatter(add, plane_offset, width, ty, tx, grad_per_sample);
                               }
                             }
                           }
                         }
                       });
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace segops

// RoIAlign on the CPU. Bilinear taps are separable, so each RoI's taps are computed once per axis and shared by
// every bin and channel. Nothing here costs in proportion to the feature map (only the backward's zeroed
// gradient, which any backward pays): the input is read where it lies, in the layout it comes in.
//  - Forward, contiguous (NCHW) input: work units are (RoI, block of kChannelBlock channels), in parallel. A unit
//    evaluates each bilinear sample for its kChannelBlock planes together: that many independent sums hide the
//    latency of the floating-point add chain that a one-channel loop (torchvision's) waits on, and each sample's
//    weights and offsets serve the whole block.
//  - Forward, channels_last (NHWC) input: work units are (RoI, row of bins), in parallel; each sample is one
//    vectorisable loop over the contiguous channels.
//    Both evaluate torchvision's expression in torchvision's order per channel, so outputs equal it bit for bit.
//    Units split RoIs finely enough that one RoI keeps both cores busy; another strided layout is made contiguous.
//  - Backward runs planes outermost (for_each_plane_roi): parallel over (image, channel) planes, each plane
//    accumulated by one thread in RoI order, so it is deterministic without atomics. RoIs are taken in chunks whose
//    taps fit kMaxTapsPerChunk, so memory stays bounded whatever K and sampling_ratio are.
// multi_scale_roi_align is the same code over several feature maps at once (an FPN): each RoI carries its map
// (levels[k]); roi_align is its one-map case. A forward unit reads its RoI's map; the backward's planes are
// (map, image, channel). One parallel pass covers every map.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <vector>

#include "roi_common/roi_checks.h"
#include "roi_common/rois_by_image.h"
#include "roi_align/roi_align.h"
#include "roi_align/roi_align_taps.h"

namespace segops {
namespace {

constexpr int64_t kChannelBlock = 16;

// Everything a CPU kernel needs to build a RoI's taps.
template <typename T>
struct RoIAlignParams {
  const T* rois;
  const int64_t* levels;  // the feature map of each RoI; nullptr: all on map 0
  std::vector<LevelShape> shapes;
  int64_t pooled_h, pooled_w, sampling_ratio;
  bool aligned;

  void build(RoITaps<T>& taps, int64_t k) const {
    const int64_t level = levels == nullptr ? 0 : levels[k];
    taps.build(rois + k * 5, level, shapes[level], pooled_h, pooled_w, sampling_ratio, aligned);
  }
};

// Calls body(k, part, taps) for every RoI k < num_rois and part < parts_per_roi, in parallel over (k, part). Each
// thread takes a contiguous range of units and builds a RoI's taps once for all the parts of it that it runs.
template <typename T, typename Body>
void parallel_over_roi_parts(const RoIAlignParams<T>& params, int64_t num_rois, int64_t parts_per_roi,
                             const Body& body) {
  at::parallel_for(0, num_rois * parts_per_roi, 1, [&](int64_t begin, int64_t end) {
    RoITaps<T> taps;
    int64_t built = -1;
    for (int64_t unit = begin; unit < end; ++unit) {
      const int64_t k = unit / parts_per_roi;
      if (k != built) {
        params.build(taps, k);
        built = k;
      }
      body(k, unit % parts_per_roi, taps);
    }
  });
}

// Output bin (ph, pw) of every channel of an NHWC image, summed as bin_of_channel_block sums; the loop over the
// contiguous channels vectorises.
template <typename T, typename scalar_t>
void bin_of_all_channels(T* __restrict__ sums, const scalar_t* __restrict__ image, int64_t width, int64_t channels,
                         const RoITaps<T>& taps, int64_t ph, int64_t pw) {
  std::fill(sums, sums + channels, T(0));
  for (const LinearTap<T>& ty : taps.y.of_bin(ph)) {
    for (const LinearTap<T>& tx : taps.x.of_bin(pw)) {
      for (int64_t c = 0; c < channels; ++c) sums[c] += bilinear_gather(image + c, width * channels, channels, ty, tx);
    }
  }
}

// maps[l]: the data of feature map l, [N, C, H_l, W_l] contiguous.
template <typename scalar_t>
void forward_nchw(const std::vector<const scalar_t*>& maps, int64_t channels,
                  const RoIAlignParams<at::opmath_type<scalar_t>>& params, int64_t num_rois, scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins = params.pooled_h * params.pooled_w;
  const int64_t blocks = (channels + kChannelBlock - 1) / kChannelBlock;
  parallel_over_roi_parts(params, num_rois, blocks, [&](int64_t k, int64_t block_index, const RoITaps<acc_t>& taps) {
    const LevelShape& shape = params.shapes[taps.level];
    const int64_t plane_size = shape.height * shape.width;
    const int64_t c0 = block_index * kChannelBlock;
    const int64_t block = std::min(kChannelBlock, channels - c0);
    const scalar_t* planes = maps[taps.level] + (taps.geometry.batch * channels + c0) * plane_size;
    scalar_t* out = output + (k * channels + c0) * bins;
    std::array<acc_t, kChannelBlock> sums;
    for (int64_t ph = 0; ph < params.pooled_h; ++ph) {
      for (int64_t pw = 0; pw < params.pooled_w; ++pw) {
        bin_of_channel_block(sums.data(), planes, plane_size, shape.width, block, taps, ph, pw);
        for (int64_t c = 0; c < block; ++c) {
          out[c * bins + ph * params.pooled_w + pw] = static_cast<scalar_t>(sums[c] / taps.geometry.count);
        }
      }
    }
  });
}

// maps[l]: the data of feature map l, [N, C, H_l, W_l] in channels_last.
template <typename scalar_t>
void forward_nhwc(const std::vector<const scalar_t*>& maps, int64_t channels,
                  const RoIAlignParams<at::opmath_type<scalar_t>>& params, int64_t num_rois, scalar_t* output) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins = params.pooled_h * params.pooled_w;
  parallel_over_roi_parts(params, num_rois, params.pooled_h, [&](int64_t k, int64_t ph, const RoITaps<acc_t>& taps) {
    const LevelShape& shape = params.shapes[taps.level];
    const scalar_t* image = maps[taps.level] + taps.geometry.batch * shape.height * shape.width * channels;
    scalar_t* out = output + k * channels * bins;
    std::vector<acc_t> sums(channels);
    for (int64_t pw = 0; pw < params.pooled_w; ++pw) {
      bin_of_all_channels(sums.data(), image, shape.width, channels, taps, ph, pw);
      for (int64_t c = 0; c < channels; ++c) {
        out[c * bins + ph * params.pooled_w + pw] = static_cast<scalar_t>(sums[c] / taps.geometry.count);
      }
    }
  });
}

// The forward over feature maps `maps` (one for roi_align): every map read in place if all are channels_last, else
// as contiguous NCHW. levels: each RoI's map, or nullptr for one map.
void forward_cpu(at::TensorList maps, const at::Tensor& output, const at::Tensor& rois_acc, const int64_t* levels,
                 at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
                 bool aligned) {
  const bool nhwc = all_read_as_nhwc(maps);
  std::vector<at::Tensor> read;
  std::vector<LevelShape> shapes;
  for (size_t l = 0; l < maps.size(); ++l) {
    read.push_back(nhwc ? maps[l] : maps[l].contiguous());
    shapes.push_back({spatial_scales[l], maps[l].size(2), maps[l].size(3)});
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "roi_align_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const RoIAlignParams<acc_t> params{
        rois_acc.const_data_ptr<acc_t>(), levels, shapes, pooled_h, pooled_w, sampling_ratio, aligned};
    std::vector<const scalar_t*> data;
    for (const at::Tensor& map : read) data.push_back(map.const_data_ptr<scalar_t>());
    const int64_t channels = maps[0].size(1);
    if (nhwc) {
      forward_nhwc<scalar_t>(data, channels, params, rois_acc.size(0), output.mutable_data_ptr<scalar_t>());
    } else {
      forward_nchw<scalar_t>(data, channels, params, rois_acc.size(0), output.mutable_data_ptr<scalar_t>());
    }
  });
}

// The backward into `grads` (one zeroed acc_t gradient [N, C, H_l, W_l] per map), converted to grad's dtype.
std::vector<at::Tensor> backward_cpu(const at::Tensor& grad, const at::Tensor& rois_acc, const int64_t* levels,
                                     at::ArrayRef<double> spatial_scales, std::vector<at::Tensor> grads,
                                     int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const auto converted = [&] {
    for (at::Tensor& g : grads) g = g.to(grad.scalar_type());
    return grads;
  };
  const int64_t batch_size = grads[0].size(0);
  const int64_t channels = grads[0].size(1);
  if (grad.numel() == 0 || batch_size * channels == 0) return converted();
  const at::Tensor grad_c = grad.contiguous();
  const int64_t num_levels = static_cast<int64_t>(grads.size());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
    std::vector<LevelShape> shapes;
    std::vector<PlaneAdd<acc_t>> adds;
    for (int64_t l = 0; l < num_levels; ++l) {
      shapes.push_back({spatial_scales[l], grads[l].size(2), grads[l].size(3)});
      adds.push_back({grads[l].mutable_data_ptr<acc_t>()});
    }
    const RoIAlignParams<acc_t> params{rois_data, levels, shapes, pooled_h, pooled_w, sampling_ratio, aligned};
    const int64_t num_rois = rois_acc.size(0);
    std::vector<RoITaps<acc_t>> chunk_taps;
    for (int64_t chunk_begin = 0; chunk_begin < num_rois;) {
      // The next RoIs, up to kMaxTapsPerChunk taps (at least one RoI, whose taps are bounded by its bins).
      chunk_taps.clear();
      int64_t chunk_end = chunk_begin;
      size_t held = 0;
      while (chunk_end < num_rois && (chunk_end == chunk_begin || held < static_cast<size_t>(kMaxTapsPerChunk))) {
        chunk_taps.emplace_back();
        params.build(chunk_taps.back(), chunk_end++);
        held += chunk_taps.back().size();
      }
      const auto groups =
          group_rois_by_level_and_image(rois_data, levels, chunk_begin, chunk_end, batch_size, num_levels);
      for_each_plane_roi(groups, channels, [&](int64_t group, int64_t c, int64_t k) {
        const RoITaps<acc_t>& taps = chunk_taps[k - chunk_begin];
        const LevelShape& shape = shapes[taps.level];
        const int64_t plane_offset = ((group % batch_size) * channels + c) * shape.height * shape.width;
        const scalar_t* grad_bins = grad_data + (k * channels + c) * pooled_h * pooled_w;
        for (int64_t ph = 0; ph < pooled_h; ++ph) {
          for (int64_t pw = 0; pw < pooled_w; ++pw) {
            const acc_t grad_per_sample = static_cast<acc_t>(grad_bins[ph * pooled_w + pw]) / taps.geometry.count;
            for (const LinearTap<acc_t>& ty : taps.y.of_bin(ph)) {
              for (const LinearTap<acc_t>& tx : taps.x.of_bin(pw)) {
                bilinear_scatter(adds[taps.level], plane_offset, shape.width, ty, tx, grad_per_sample);
              }
            }
          }
        }
      });
      chunk_begin = chunk_end;
    }
  });
  return converted();
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_sampling_ratio("roi_align", sampling_ratio);
  const auto [output, rois_acc] =
      checked_roi_output("roi_align", input, rois, spatial_scale, pooled_h, pooled_w, RoIValues::kCheckOnHost);
  if (output.numel() == 0) return output;
  forward_cpu({input}, output, rois_acc, nullptr, {spatial_scale}, pooled_h, pooled_w, sampling_ratio, aligned);
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_sampling_ratio("_roi_align_backward", sampling_ratio);
  // Accumulate in acc_t (float for half types), converted once at the end.
  const auto [grad_input, rois_acc] =
      checked_roi_grad_input("_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                             height, width, at::toOpMathType(grad.scalar_type()), RoIValues::kCheckOnHost);
  return backward_cpu(grad, rois_acc, nullptr, {spatial_scale}, {grad_input}, pooled_h, pooled_w, sampling_ratio,
                      aligned)[0];
}

at::Tensor multi_scale_roi_align_forward_cpu(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                             at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w,
                                             int64_t sampling_ratio, bool aligned) {
  const char* op = "multi_scale_roi_align";
  check_sampling_ratio(op, sampling_ratio);
  const auto checked = checked_multi_level_output(op, features, rois, levels, spatial_scales, pooled_h, pooled_w,
                                                  RoIValues::kCheckOnHost);
  const at::Tensor& output = checked.results[0];
  if (output.numel() == 0) return output;
  forward_cpu(features, output, checked.rois, checked.levels.const_data_ptr<int64_t>(), spatial_scales, pooled_h,
              pooled_w, sampling_ratio, aligned);
  return output;
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                           const at::Tensor& levels,
                                                           at::ArrayRef<double> spatial_scales, int64_t pooled_h,
                                                           int64_t pooled_w, int64_t batch_size, int64_t channels,
                                                           at::IntArrayRef heights, at::IntArrayRef widths,
                                                           int64_t sampling_ratio, bool aligned) {
  const char* op = "_multi_scale_roi_align_backward";
  check_sampling_ratio(op, sampling_ratio);
  auto checked =
      checked_multi_level_grads(op, grad, rois, levels, spatial_scales, pooled_h, pooled_w, batch_size, channels,
                                heights, widths, at::toOpMathType(grad.scalar_type()), RoIValues::kCheckOnHost);
  return backward_cpu(grad, checked.rois, checked.levels.const_data_ptr<int64_t>(), spatial_scales,
                      std::move(checked.results), pooled_h, pooled_w, sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_forward_cpu);
  m.impl("_multi_scale_roi_align_backward", &multi_scale_roi_align_backward_cpu);
}

}  // namespace segops

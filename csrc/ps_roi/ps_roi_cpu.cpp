// Position-sensitive RoIAlign and RoIPool on the CPU (R-FCN, FCIS; torchvision's ps_roi_align / ps_roi_pool). Each
// input channel feeds one bin of one output channel (roi_common/position_sensitive.h), so forward and backward both
// run input planes outermost (for_each_plane_roi): in parallel over (image, input channel) planes, each plane visited
// by its image's RoIs in order while it is in cache, each RoI reading (forward) or accumulating into (backward) the
// plane at its one bin. No atomics, so the backward is bitwise the same for any thread count. Each RoI's geometry,
// its bilinear taps (RoIAlign) or bin windows (RoIPool), is computed once per call and shared by all planes, in
// chunks of bounded memory. torchvision runs one thread, RoI-major, recomputing the geometry per output element and
// fetching each plane from memory again for every RoI.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "roi_align/roi_align_taps.h"
#include "roi_common/position_sensitive.h"
#include "roi_common/roi_checks.h"
#include "roi_common/rois_by_image.h"
#include "roi_pool/roi_pool_windows.h"

namespace segops {
namespace {

// RoIs whose taps are built together, in parallel, before the chunk's size is checked against kMaxTapsPerChunk.
constexpr int64_t kTapBuildBlock = 16;

// Planes ahead whose lines a forward prefetches, and the most RoIs an image may have for it to: with few RoIs a plane
// is left after a handful of reads, each a cache (and TLB) miss on a plane 60 KB from the last, which the hardware
// prefetcher cannot foresee; with many, each plane stays in cache while they all read it.
constexpr int64_t kPrefetchPlanes = 4;
constexpr size_t kPrefetchMaxRoIs = 8;

// Calls body(n, c, k, bin) for every (image n, input channel c) plane and every RoI k of image n, with the output bin
// that channel c feeds, and, where image n has few RoIs, prefetch(n, c + kPrefetchPlanes, k, that channel's bin)
// first. RoIs run in chunks: prepare(begin) readies the RoIs from `begin` on and returns the chunk's end.
template <typename acc_t, typename Prepare, typename Prefetch, typename Body>
void for_each_ps_plane_roi(const acc_t* rois, int64_t num_rois, int64_t batch_size, int64_t channels, int64_t pooled_h,
                           int64_t pooled_w, const Prepare& prepare, const Prefetch& prefetch, const Body& body) {
  // Each input channel's bin, from a table rather than divided out twice per plane: with one small RoI a plane's work
  // is a dozen reads, and the divisions (with for_each_plane_roi's) took a third of it (15 -> 11 ns a plane).
  std::vector<PSBin> bin_of_channel(channels);
  for (int64_t out_channel = 0; out_channel < channels / (pooled_h * pooled_w); ++out_channel) {
    for (int64_t ph = 0; ph < pooled_h; ++ph) {
      for (int64_t pw = 0; pw < pooled_w; ++pw) {
        bin_of_channel[ps_input_channel(out_channel, ph, pw, pooled_h, pooled_w)] = {out_channel, ph, pw};
      }
    }
  }
  for (int64_t begin = 0; begin < num_rois;) {
    const int64_t end = prepare(begin);
    const auto groups = group_rois_by_image(rois, begin, end, batch_size);
    for_each_plane_roi(groups, channels, [&](int64_t n, int64_t c, int64_t k) {
      const int64_t ahead = c + kPrefetchPlanes;
      if (groups[n].size() <= kPrefetchMaxRoIs && ahead < channels) prefetch(n, ahead, k, bin_of_channel[ahead]);
      body(n, c, k, bin_of_channel[c]);
    });
    begin = end;
  }
}

// The backwards accumulate into planes they own (and zeroed): nothing to prefetch.
constexpr auto kNoPrefetch = [](int64_t, int64_t, int64_t, const PSBin&) {};

// Prefetches the first and last line of each row a bin reads: a bin spans a few pixels, so these are all its lines.
template <typename scalar_t>
void prefetch_rows(const scalar_t* plane, int64_t width, int64_t row_begin, int64_t row_end, int64_t col_first,
                   int64_t col_last) {
  for (int64_t row = row_begin; row < row_end; ++row) {
    __builtin_prefetch(plane + row * width + col_first);
    __builtin_prefetch(plane + row * width + col_last);
  }
}

// The bilinear taps of RoIs [chunk_begin, chunk_end): RoI k's are taps[k - chunk_begin].
template <typename acc_t>
struct PSRoIAlignTaps {
  const acc_t* rois;
  int64_t num_rois;
  LevelShape shape;
  int64_t pooled_h, pooled_w, sampling_ratio;
  std::vector<RoITaps<acc_t>> taps;
  int64_t chunk_begin = 0;

  // Builds the taps of RoIs from `begin` on, kTapBuildBlock at a time, until they hold kMaxTapsPerChunk; returns the
  // chunk's end.
  int64_t prepare(int64_t begin) {
    taps.clear();
    chunk_begin = begin;
    int64_t end = begin;
    size_t held = 0;
    while (end < num_rois && (end == begin || held < static_cast<size_t>(kMaxTapsPerChunk))) {
      const int64_t block_end = std::min(num_rois, end + kTapBuildBlock);
      taps.resize(block_end - begin);
      at::parallel_for(end, block_end, 1, [&](int64_t first, int64_t last) {
        for (int64_t k = first; k < last; ++k) {
          // Position-sensitive RoIAlign is torchvision's aligned RoIAlign (pixel centres at +0.5).
          taps[k - begin].build(rois + k * 5, 0, shape, pooled_h, pooled_w, sampling_ratio, /*aligned=*/true);
        }
      });
      for (int64_t k = end; k < block_end; ++k) held += taps[k - begin].size();
      end = block_end;
    }
    return end;
  }

  const RoITaps<acc_t>& of(int64_t k) const { return taps[k - chunk_begin]; }
};

at::Tensor ps_roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                    int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio) {
  const char* op = "ps_roi_align";
  check_sampling_ratio(op, sampling_ratio);
  const auto [output, rois_acc] = checked_roi_output(op, input, rois, spatial_scale, pooled_h, pooled_w,
                                                     RoIValues::kCheckOnHost, RoIChannels::kPositionSensitive);
  if (output.numel() == 0) return output;
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t out_channels = output.size(1);
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_align_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* input_data = input_c.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    PSRoIAlignTaps<acc_t> chunk{
        rois_data, rois_acc.size(0), {spatial_scale, height, width}, pooled_h, pooled_w, sampling_ratio, {}};
    for_each_ps_plane_roi(
        rois_data, rois_acc.size(0), input.size(0), channels, pooled_h, pooled_w,
        [&](int64_t begin) { return chunk.prepare(begin); },
        [&](int64_t n, int64_t c, int64_t k, const PSBin& bin) {
          const RoITaps<acc_t>& taps = chunk.of(k);
          const TapRange<acc_t> rows = taps.y.of_bin(bin.ph), cols = taps.x.of_bin(bin.pw);
          if (rows.first == rows.last || cols.first == cols.last) return;
          const scalar_t* plane = input_data + (n * channels + c) * height * width;
          prefetch_rows(plane, width, rows.first->low, (rows.last - 1)->high + 1, cols.first->low,
                        (cols.last - 1)->high);
        },
        [&](int64_t n, int64_t c, int64_t k, const PSBin& bin) {
          const RoITaps<acc_t>& taps = chunk.of(k);
          const scalar_t* plane = input_data + (n * channels + c) * height * width;
          acc_t sum = acc_t(0);
          for (const LinearTap<acc_t>& ty : taps.y.of_bin(bin.ph)) {
            for (const LinearTap<acc_t>& tx : taps.x.of_bin(bin.pw)) sum += bilinear_gather(plane, width, 1, ty, tx);
          }
          output_data[((k * out_channels + bin.out_channel) * pooled_h + bin.ph) * pooled_w + bin.pw] =
              static_cast<scalar_t>(sum / taps.geometry.count);
        });
  });
  return output;
}

at::Tensor ps_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                     int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                     int64_t height, int64_t width, int64_t sampling_ratio) {
  const char* op = "_ps_roi_align_backward";
  check_sampling_ratio(op, sampling_ratio);
  // Accumulated in acc_t (float for half types), converted once at the end.
  const auto [grad_input, rois_acc] = checked_roi_grad_input(
      op, grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
      at::toOpMathType(grad.scalar_type()), RoIValues::kCheckOnHost, RoIChannels::kPositionSensitive);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const int64_t out_channels = grad.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ps_roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
    PlaneAdd<acc_t> add{grad_input.mutable_data_ptr<acc_t>()};
    PSRoIAlignTaps<acc_t> chunk{
        rois_data, rois_acc.size(0), {spatial_scale, height, width}, pooled_h, pooled_w, sampling_ratio, {}};
    for_each_ps_plane_roi(
        rois_data, rois_acc.size(0), batch_size, channels, pooled_h, pooled_w,
        [&](int64_t begin) { return chunk.prepare(begin); }, kNoPrefetch,
        [&](int64_t n, int64_t c, int64_t k, const PSBin& bin) {
          const RoITaps<acc_t>& taps = chunk.of(k);
          const int64_t plane_offset = (n * channels + c) * height * width;
          const acc_t grad_per_sample =
              static_cast<acc_t>(
                  grad_data[((k * out_channels + bin.out_channel) * pooled_h + bin.ph) * pooled_w + bin.pw]) /
              taps.geometry.count;
          for (const LinearTap<acc_t>& ty : taps.y.of_bin(bin.ph)) {
            for (const LinearTap<acc_t>& tx : taps.x.of_bin(bin.pw)) {
              bilinear_scatter(add, plane_offset, width, ty, tx, grad_per_sample);
            }
          }
        });
  });
  return grad_input.to(grad.scalar_type());
}

// Position-sensitive RoIPool's bin windows (the box's last pixel excluded, as in torchvision), all RoIs at once: a
// window is 32 bytes, so even 2048 RoIs of 7x7 bins take 3 MB.
template <typename acc_t>
std::vector<RoIPoolBin> ps_roi_pool_windows(const acc_t* rois, int64_t num_rois, double spatial_scale, int64_t pooled_h,
                                            int64_t pooled_w, int64_t height, int64_t width) {
  return roi_pool_windows(rois, num_rois, static_cast<acc_t>(spatial_scale), pooled_h, pooled_w, height, width,
                          RoIPoolEnd::kExclusive);
}

at::Tensor ps_roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_h, int64_t pooled_w) {
  const auto [output, rois_acc] = checked_roi_output("ps_roi_pool", input, rois, spatial_scale, pooled_h, pooled_w,
                                                     RoIValues::kCheckOnHost, RoIChannels::kPositionSensitive);
  if (output.numel() == 0) return output;
  const int64_t channels = input.size(1), height = input.size(2), width = input.size(3);
  const int64_t out_channels = output.size(1), num_rois = rois_acc.size(0);
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "ps_roi_pool_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* input_data = input_c.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    const std::vector<RoIPoolBin> windows =
        ps_roi_pool_windows(rois_data, num_rois, spatial_scale, pooled_h, pooled_w, height, width);
    for_each_ps_plane_roi(
        rois_data, num_rois, input.size(0), channels, pooled_h, pooled_w, [&](int64_t) { return num_rois; },
        [&](int64_t n, int64_t c, int64_t k, const PSBin& bin) {
          const RoIPoolBin& window = windows[k * pooled_h * pooled_w + bin.ph * pooled_w + bin.pw];
          if (window.empty()) return;
          prefetch_rows(input_data + (n * channels + c) * height * width, width, window.h_start, window.h_end,
                        window.w_start, window.w_end - 1);
        },
        [&](int64_t n, int64_t c, int64_t k, const PSBin& bin) {
          const int64_t bin_index = bin.ph * pooled_w + bin.pw;
          output_data[(k * out_channels + bin.out_channel) * pooled_h * pooled_w + bin_index] =
              static_cast<scalar_t>(roi_pool_bin_mean<acc_t>(input_data + (n * channels + c) * height * width, width,
                                                             windows[k * pooled_h * pooled_w + bin_index]));
        });
  });
  return output;
}

at::Tensor ps_roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                    int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                    int64_t height, int64_t width) {
  const auto [grad_input, rois_acc] = checked_roi_grad_input(
      "_ps_roi_pool_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels, height, width,
      at::toOpMathType(grad.scalar_type()), RoIValues::kCheckOnHost, RoIChannels::kPositionSensitive);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const int64_t out_channels = grad.size(1), num_rois = rois_acc.size(0);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "ps_roi_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
    PlaneAdd<acc_t> add{grad_input.mutable_data_ptr<acc_t>()};
    const std::vector<RoIPoolBin> windows =
        ps_roi_pool_windows(rois_data, num_rois, spatial_scale, pooled_h, pooled_w, height, width);
    for_each_ps_plane_roi(
        rois_data, num_rois, batch_size, channels, pooled_h, pooled_w, [&](int64_t) { return num_rois; }, kNoPrefetch,
        [&](int64_t n, int64_t c, int64_t k, const PSBin& bin) {
          const int64_t bin_index = bin.ph * pooled_w + bin.pw;
          roi_pool_bin_mean_scatter(
              add, (n * channels + c) * height * width, width, windows[k * pooled_h * pooled_w + bin_index],
              static_cast<acc_t>(grad_data[(k * out_channels + bin.out_channel) * pooled_h * pooled_w + bin_index]));
        });
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("ps_roi_align", &ps_roi_align_forward_cpu);
  m.impl("_ps_roi_align_backward", &ps_roi_align_backward_cpu);
  m.impl("ps_roi_pool", &ps_roi_pool_forward_cpu);
  m.impl("_ps_roi_pool_backward", &ps_roi_pool_backward_cpu);
}

}  // namespace segops

// Position-sensitive RoIAlign and RoIPool on the CPU (R-FCN, FCIS; torchvision's ps_roi_align / ps_roi_pool). Each
// input channel feeds one bin of one output channel (roi_common/position_sensitive.h), so forward and backward both
// run input planes outermost (for_each_plane_roi): in parallel over (image, input channel) planes, each plane visited
// by its image's RoIs in order while it is in cache, each RoI reading (forward) or accumulating into (backward) the
// plane at its one bin. The forward takes the planes of one bin of 8 output channels at a time, summing them side by
// side. No atomics, so the backward is bitwise the same for any thread count. Each RoI's geometry,
// its bilinear taps (RoIAlign) or bin windows (RoIPool), is computed once per call and shared by all planes, in
// chunks of bounded memory. torchvision runs one thread, RoI-major, recomputing the geometry per output element and
// fetching each plane from memory again for every RoI.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
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

// Output channels whose planes a forward reads together at one bin. Their sums are independent, so a core overlaps
// them, where one plane's sum is a chain of dependent adds: with one small RoI, a dozen adds at 4 cycles each were
// most of a forward's time.
constexpr int64_t kForwardPlaneBlock = 8;

// A block of planes that one bin reads: bin (ph, pw) of output channels [out_begin, out_begin + count), from input
// channels ps_input_channel(out_begin + i, ph, pw), PH * PW channels apart.
struct PSPlaneBlock {
  int64_t out_begin, count, ph, pw;
};

// Calls body(n, k, block) for every block of planes of every image n (blocks of up to block_size output channels)
// and every RoI k of image n, and, where image n has few RoIs, prefetch(n, k, the first block at least
// kPrefetchPlanes planes ahead) first. Blocks run as for_each_plane_roi runs planes: with block_size 1, a block is one
// input channel, in input-channel order. RoIs run in chunks: prepare(begin) readies the RoIs from `begin` on and
// returns the chunk's end.
template <typename acc_t, typename Prepare, typename Prefetch, typename Body>
void for_each_ps_plane_block_roi(const acc_t* rois, int64_t num_rois, int64_t batch_size, int64_t out_channels,
                                 int64_t pooled_h, int64_t pooled_w, int64_t block_size, const Prepare& prepare,
                                 const Prefetch& prefetch, const Body& body) {
  // Listed once per call rather than divided out per block: with one small RoI a plane's work is a dozen reads, and
  // the divisions took a third of it.
  std::vector<PSPlaneBlock> blocks;
  blocks.reserve(((out_channels + block_size - 1) / block_size) * pooled_h * pooled_w);
  for (int64_t out_begin = 0; out_begin < out_channels; out_begin += block_size) {
    const int64_t count = std::min(block_size, out_channels - out_begin);
    for (int64_t ph = 0; ph < pooled_h; ++ph) {
      for (int64_t pw = 0; pw < pooled_w; ++pw) blocks.push_back({out_begin, count, ph, pw});
    }
  }
  const int64_t num_blocks = static_cast<int64_t>(blocks.size());
  const int64_t ahead = (kPrefetchPlanes + block_size - 1) / block_size;
  for (int64_t begin = 0; begin < num_rois;) {
    const int64_t end = prepare(begin);
    const auto groups = group_rois_by_image(rois, begin, end, batch_size);
    for_each_plane_roi(groups, num_blocks, [&](int64_t n, int64_t b, int64_t k) {
      if (groups[n].size() <= kPrefetchMaxRoIs && b + ahead < num_blocks) prefetch(n, k, blocks[b + ahead]);
      body(n, k, blocks[b]);
    });
    begin = end;
  }
}

// The backwards accumulate into planes they own (and zeroed): nothing to prefetch.
constexpr auto kNoPrefetch = [](int64_t, int64_t, const PSPlaneBlock&) {};

// Where a block's planes are in an [N, C, H, W] tensor: its first plane, and the stride to the next.
struct PSPlanes {
  int64_t first, stride;
};

PSPlanes ps_planes(const PSPlaneBlock& block, int64_t n, int64_t channels, int64_t pooled_h, int64_t pooled_w,
                   int64_t plane_size) {
  const int64_t channel = ps_input_channel(block.out_begin, block.ph, block.pw, pooled_h, pooled_w);
  return {(n * channels + channel) * plane_size, pooled_h * pooled_w * plane_size};
}

// Prefetches the first and last line of each row a bin reads in each of `count` planes (plane i at planes + i *
// stride): a bin spans a few pixels, so these are all its lines.
template <typename scalar_t>
void prefetch_rows(const scalar_t* planes, int64_t stride, int64_t count, int64_t width, int64_t row_begin,
                   int64_t row_end, int64_t col_first, int64_t col_last) {
  for (int64_t i = 0; i < count; ++i) {
    for (int64_t row = row_begin; row < row_end; ++row) {
      __builtin_prefetch(planes + i * stride + row * width + col_first);
      __builtin_prefetch(planes + i * stride + row * width + col_last);
    }
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
    for_each_ps_plane_block_roi(
        rois_data, rois_acc.size(0), input.size(0), out_channels, pooled_h, pooled_w, kForwardPlaneBlock,
        [&](int64_t begin) { return chunk.prepare(begin); },
        [&](int64_t n, int64_t k, const PSPlaneBlock& block) {
          const RoITaps<acc_t>& taps = chunk.of(k);
          const TapRange<acc_t> rows = taps.y.of_bin(block.ph), cols = taps.x.of_bin(block.pw);
          if (rows.first == rows.last || cols.first == cols.last) return;
          const PSPlanes planes = ps_planes(block, n, channels, pooled_h, pooled_w, height * width);
          prefetch_rows(input_data + planes.first, planes.stride, block.count, width, rows.first->low,
                        (rows.last - 1)->high + 1, cols.first->low, (cols.last - 1)->high);
        },
        [&](int64_t n, int64_t k, const PSPlaneBlock& block) {
          const RoITaps<acc_t>& taps = chunk.of(k);
          const PSPlanes planes = ps_planes(block, n, channels, pooled_h, pooled_w, height * width);
          std::array<acc_t, kForwardPlaneBlock> sums;
          bin_of_channel_block(sums.data(), input_data + planes.first, planes.stride, width, block.count, taps,
                               block.ph, block.pw);
          for (int64_t i = 0; i < block.count; ++i) {
            output_data[((k * out_channels + block.out_begin + i) * pooled_h + block.ph) * pooled_w + block.pw] =
                static_cast<scalar_t>(sums[i] / taps.geometry.count);
          }
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
    for_each_ps_plane_block_roi(
        rois_data, rois_acc.size(0), batch_size, out_channels, pooled_h, pooled_w, /*block_size=*/1,
        [&](int64_t begin) { return chunk.prepare(begin); }, kNoPrefetch,
        [&](int64_t n, int64_t k, const PSPlaneBlock& block) {
          const RoITaps<acc_t>& taps = chunk.of(k);
          const int64_t plane_offset = ps_planes(block, n, channels, pooled_h, pooled_w, height * width).first;
          const acc_t grad_per_sample =
              static_cast<acc_t>(
                  grad_data[((k * out_channels + block.out_begin) * pooled_h + block.ph) * pooled_w + block.pw]) /
              taps.geometry.count;
          for (const LinearTap<acc_t>& ty : taps.y.of_bin(block.ph)) {
            for (const LinearTap<acc_t>& tx : taps.x.of_bin(block.pw)) {
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
    for_each_ps_plane_block_roi(
        rois_data, num_rois, input.size(0), out_channels, pooled_h, pooled_w, kForwardPlaneBlock,
        [&](int64_t) { return num_rois; },
        [&](int64_t n, int64_t k, const PSPlaneBlock& block) {
          const RoIPoolBin& window = windows[(k * pooled_h + block.ph) * pooled_w + block.pw];
          if (window.empty()) return;
          const PSPlanes planes = ps_planes(block, n, channels, pooled_h, pooled_w, height * width);
          prefetch_rows(input_data + planes.first, planes.stride, block.count, width, window.h_start, window.h_end,
                        window.w_start, window.w_end - 1);
        },
        [&](int64_t n, int64_t k, const PSPlaneBlock& block) {
          const PSPlanes planes = ps_planes(block, n, channels, pooled_h, pooled_w, height * width);
          std::array<acc_t, kForwardPlaneBlock> means;
          roi_pool_bin_means_of_block(means.data(), input_data + planes.first, planes.stride, width, block.count,
                                      windows[(k * pooled_h + block.ph) * pooled_w + block.pw]);
          for (int64_t i = 0; i < block.count; ++i) {
            output_data[((k * out_channels + block.out_begin + i) * pooled_h + block.ph) * pooled_w + block.pw] =
                static_cast<scalar_t>(means[i]);
          }
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
    for_each_ps_plane_block_roi(
        rois_data, num_rois, batch_size, out_channels, pooled_h, pooled_w, /*block_size=*/1,
        [&](int64_t) { return num_rois; }, kNoPrefetch,
        [&](int64_t n, int64_t k, const PSPlaneBlock& block) {
          const int64_t bin_index = block.ph * pooled_w + block.pw;
          roi_pool_bin_mean_scatter(
              add, ps_planes(block, n, channels, pooled_h, pooled_w, height * width).first, width,
              windows[k * pooled_h * pooled_w + bin_index],
              static_cast<acc_t>(grad_data[(k * out_channels + block.out_begin) * pooled_h * pooled_w + bin_index]));
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

#pragma once
// The deterministic GPU backward of the RoI ops, used under torch.use_deterministic_algorithms(True): a gather in
// place of the atomic scatter. One thread per RoI first writes its footprint (roi_common/roi_row.h), validating its
// row; then one thread per (image, block of kGatherChannels channels, pixel) of each feature map visits the RoIs
// in order, skips those whose footprint misses its pixel, and sums what the others' bins send it through the op's
// Gather functor, in the order of the CPU backward (each plane's RoIs in order, then bins, then samples). So the
// result is bitwise the same for any launch shape, and equal to the CPU backward's. No atomics; extra memory: one
// footprint (48 bytes) per RoI. Cost: every thread tests every RoI's footprint (a few integer compares), which
// channel blocks amortise; the sums themselves are the scatter's work.
#include <ATen/ATen.h>

#include <vector>

#include "common/macros.h"
#include "roi_common/roi_row.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

constexpr int64_t kGatherChannels = 16;
static_assert(sizeof(RoIFootprint) == 6 * sizeof(int64_t), "footprints are stored as rows of 6 int64");

SEGOPS_HOST_DEVICE int64_t gather_channel_blocks(int64_t channels) {
  return (channels + kGatherChannels - 1) / kGatherChannels;
}

// A RoI op's part of the gather: gather(k, level, height, width, y, x, c_begin, count, sums) adds to sums[j], for
// j < count, what RoI k sends pixel (y, x) of channel c_begin + j of its map (height x width).
template <class Gather, typename acc_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    roi_gather_kernel(int64_t total, Gather gather, const RoIFootprint* __restrict__ footprints, int64_t num_rois,
                      int64_t level, acc_t* __restrict__ grad_input, int64_t channels, int64_t height, int64_t width) {
  const int64_t channel_blocks = gather_channel_blocks(channels);
  SEGOPS_KERNEL_LOOP(index, total) {
    const int64_t x = index % width;
    const int64_t y = (index / width) % height;
    const int64_t c_begin = (index / (width * height)) % channel_blocks * kGatherChannels;
    const int64_t n = index / (width * height * channel_blocks);
    const int64_t count = channels - c_begin < kGatherChannels ? channels - c_begin : kGatherChannels;
    acc_t sums[kGatherChannels];
#pragma unroll
    for (int64_t j = 0; j < kGatherChannels; ++j) sums[j] = acc_t(0);
    for (int64_t k = 0; k < num_rois; ++k) {
      if (footprints[k].contains(level, n, y, x)) gather(k, level, height, width, y, x, c_begin, count, sums);
    }
    acc_t* pixel = grad_input + ((n * channels + c_begin) * height + y) * width + x;
#pragma unroll
    for (int64_t j = 0; j < kGatherChannels; ++j) {
      if (j < count) pixel[j * height * width] = sums[j];
    }
  }
}

// Runs the gather over every element of each map's accumulation-dtype gradient grads[l] ([N, C, H_l, W_l]).
// footprints: [K, 6] int64, written by the op's footprint kernel.
template <typename acc_t, class Launch, class Gather>
void roi_gather_launch(const Launch& launch, const Gather& gather, const at::Tensor& footprints,
                       std::vector<at::Tensor>& grads) {
  const auto* rows = reinterpret_cast<const RoIFootprint*>(footprints.const_data_ptr<int64_t>());
  for (int64_t level = 0; level < static_cast<int64_t>(grads.size()); ++level) {
    at::Tensor& g = grads[level];
    const int64_t total = g.size(0) * gather_channel_blocks(g.size(1)) * g.size(2) * g.size(3);
    if (total == 0) continue;
    launch(total, roi_gather_kernel<Gather, acc_t>, total, gather, rows, footprints.size(0), level,
           g.mutable_data_ptr<acc_t>(), g.size(1), g.size(2), g.size(3));
  }
}

}  // namespace segops

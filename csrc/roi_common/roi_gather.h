#pragma once
// The deterministic GPU backward of the RoI ops, used under torch.use_deterministic_algorithms(True): a gather in
// place of the atomic scatter. One thread per RoI first writes its footprint (roi_common/roi_row.h), validating its
// row; the RoIs are then bucketed by (map, image) on the device (a stable sort of their bucket numbers, and each
// bucket's first position by binary search: no host synchronisation). One thread per (image, block of
// kGatherChannels channels, pixel) of each feature map visits its bucket's RoIs in order, skips those whose
// footprint misses its pixel, and sums what the others' bins send it through the op's Gather functor, in the order
// of the CPU backward (each plane's RoIs in order, then bins, then samples). So the result is bitwise the same for
// any launch shape, and equal to the CPU backward's (in the emulation: nvcc contracts multiply-adds). No atomics;
// extra memory: a footprint (48 bytes), its bucket number, sorted and unsorted, and an order entry (24 bytes) per RoI.
// Cost: a thread tests the footprints of its own image and map's RoIs only; the sums themselves are the scatter's work.
// Four channels per thread: the sums stay in registers.
#include <ATen/ATen.h>

#include <vector>

#include "common/macros.h"
#include "roi_common/roi_row.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

constexpr int64_t kGatherChannels = 4;
static_assert(sizeof(RoIFootprint) == 6 * sizeof(int64_t), "footprints are stored as rows of 6 int64");

SEGOPS_HOST_DEVICE int64_t gather_channel_blocks(int64_t channels) {
  return (channels + kGatherChannels - 1) / kGatherChannels;
}

// A RoI op's part of the gather: gather(k, level, height, width, y, x, c_begin, count, sums) adds to sums[j], for
// j < count, what RoI k sends pixel (y, x) of channel c_begin + j of its map (height x width).
// bucket_order: the RoIs sorted by bucket (level * N + image), stably; bucket_starts[b]: the first position of bucket
// b in it (b in [0, levels * N]).
// Gather::kMinBlocksPerSM: the resident blocks the compiler must allow (4: 64 registers, half of an SM's threads).
template <class Gather, typename acc_t>
__global__ void SEGOPS_LAUNCH_BOUNDS_MIN_BLOCKS(kThreadsPerBlock, Gather::kMinBlocksPerSM)
    roi_gather_kernel(int64_t total, Gather gather, const RoIFootprint* __restrict__ footprints,
                      const int64_t* __restrict__ bucket_order, const int64_t* __restrict__ bucket_starts,
                      int64_t level, acc_t* __restrict__ grad_input, int64_t batch, int64_t channels, int64_t height,
                      int64_t width) {
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
    const int64_t bucket = level * batch + n;
    for (int64_t i = bucket_starts[bucket]; i < bucket_starts[bucket + 1]; ++i) {
      const int64_t k = bucket_order[i];
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
  const int64_t levels = static_cast<int64_t>(grads.size()), batch = levels > 0 ? grads[0].size(0) : 0;
  // A bad row's footprint has level -1: its bucket number is negative, before every bucket.
  const at::Tensor buckets = footprints.select(1, 0) * batch + footprints.select(1, 1);
  const auto [sorted_buckets, order] =
      at::sort(buckets, /*stable=*/std::optional<bool>(true), /*dim=*/0, /*descending=*/false);
  const at::Tensor starts = at::searchsorted(sorted_buckets, at::arange(levels * batch + 1, buckets.options()));
  for (int64_t level = 0; level < levels; ++level) {
    at::Tensor& g = grads[level];
    const int64_t total = g.size(0) * gather_channel_blocks(g.size(1)) * g.size(2) * g.size(3);
    if (total == 0) continue;
    launch(total, roi_gather_kernel<Gather, acc_t>, total, gather, rows, order.const_data_ptr<int64_t>(),
           starts.const_data_ptr<int64_t>(), level, g.mutable_data_ptr<acc_t>(), g.size(0), g.size(1), g.size(2),
           g.size(3));
  }
}

}  // namespace segops

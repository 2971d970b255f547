#pragma once
// The CPU RoIAlign kernels' view of a RoI (roi_align_cpu.cpp, ps_roi_cpu.cpp): bilinear taps are separable, so each
// RoI's taps are computed once per axis and shared by every bin and channel.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "roi_align/roi_align.h"

namespace segops {

// Taps held at once by a backward (24 bytes each in float): 1 << 20 is 24 MB.
constexpr int64_t kMaxTapsPerChunk = int64_t(1) << 20;

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
      roi_align_for_each_tap(roi_align_bin_axis(start, bin, grid, p, size),
                             [&](const LinearTap<T>& tap) { taps.push_back(tap); });
      begin.push_back(static_cast<int64_t>(taps.size()));
    }
  }

  TapRange<T> of_bin(int64_t p) const { return {taps.data() + begin[p], taps.data() + begin[p + 1]}; }
};

// One feature map as the RoIs see it.
struct LevelShape {
  double spatial_scale;
  int64_t height, width;
};

// One RoI: its feature map, its geometry and its y and x taps, in the order the GPU kernel visits them.
template <typename T>
struct RoITaps {
  int64_t level;
  RoIAlignGeometry<T> geometry;
  AxisTaps<T> y, x;

  void build(const T* roi, int64_t level_index, const LevelShape& shape, int64_t pooled_h, int64_t pooled_w,
             int64_t sampling_ratio, bool aligned) {
    level = level_index;
    geometry =
        roi_align_geometry<T>(roi, static_cast<T>(shape.spatial_scale), pooled_h, pooled_w, sampling_ratio, aligned);
    y.build(geometry.start_h, geometry.bin_h, geometry.grid_h, pooled_h, shape.height);
    x.build(geometry.start_w, geometry.bin_w, geometry.grid_w, pooled_w, shape.width);
  }

  size_t size() const { return y.taps.size() + x.taps.size(); }
};

// Output bin (ph, pw) of `block` planes of one RoI: planes[c * plane_stride + offset] is plane c (channel c of an
// NCHW image, or every PH * PW-th channel for position-sensitive RoIAlign). Each plane's sum is bilinear_gather's, in
// the GPU kernel's (and torchvision's) order; the planes' sums are independent, so a core overlaps them where one
// plane's is a chain of dependent adds.
template <typename T, typename scalar_t>
void bin_of_channel_block(T* __restrict__ sums, const scalar_t* __restrict__ planes, int64_t plane_stride,
                          int64_t width, int64_t block, const RoITaps<T>& taps, int64_t ph, int64_t pw) {
  std::fill(sums, sums + block, T(0));
  for (const LinearTap<T>& ty : taps.y.of_bin(ph)) {
    for (const LinearTap<T>& tx : taps.x.of_bin(pw)) {
      for (int64_t c = 0; c < block; ++c) sums[c] += bilinear_gather(planes + c * plane_stride, width, 1, ty, tx);
    }
  }
}

}  // namespace segops

#pragma once
// RoIPool arithmetic shared by the CPU launcher and the CUDA kernels (Fast R-CNN; torchvision semantics).
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/macros.h"
#include "roi_common/roi_row.h"

namespace segops {

// The input window [h_start, h_end) x [w_start, w_end) that output bin (ph, pw) of one RoI max-pools.
struct RoIPoolBin {
  int64_t h_start, h_end, w_start, w_end;
  SEGOPS_HOST_DEVICE bool empty() const { return h_end <= h_start || w_end <= w_start; }
};

// Rounds a box coordinate to a pixel index. Clamping keeps huge coordinates (a box times a spatial_scale that
// overflows float) out of undefined float-to-int conversions: anything beyond +-2^40 pixels is off any feature
// map anyway, and NaN (inf * 0) becomes 0.
template <typename T>
SEGOPS_HOST_DEVICE int64_t roi_pool_pixel(T coord) {
  const T limit = T(1099511627776.0);
  coord = round(coord);
  if (!(coord == coord)) return 0;
  coord = coord < -limit ? -limit : (coord > limit ? limit : coord);
  return static_cast<int64_t>(coord);
}

SEGOPS_HOST_DEVICE int64_t clamp_index(int64_t value, int64_t size) {
  return value < 0 ? 0 : (value > size ? size : value);
}

// Where one RoI lies on the feature map, in whole pixels, and the size of its bins.
template <typename T>
struct RoIPoolGeometry {
  int64_t start_h, start_w;
  T bin_h, bin_w;
};

// `roi` points at one row [batch_index, x1, y1, x2, y2] of the rois tensor. RoIPool counts the box's last pixel
// (width x2 - x1 + 1); position-sensitive RoIPool does not (x2 - x1), as in torchvision.
enum class RoIPoolEnd { kInclusive, kExclusive };

template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE RoIPoolGeometry<T> roi_pool_geometry(const scalar_t* roi, T spatial_scale, int64_t pooled_h,
                                                        int64_t pooled_w, RoIPoolEnd end = RoIPoolEnd::kInclusive) {
  const int64_t roi_start_w = roi_pool_pixel(static_cast<T>(roi[1]) * spatial_scale);
  const int64_t roi_start_h = roi_pool_pixel(static_cast<T>(roi[2]) * spatial_scale);
  const int64_t roi_end_w = roi_pool_pixel(static_cast<T>(roi[3]) * spatial_scale);
  const int64_t roi_end_h = roi_pool_pixel(static_cast<T>(roi[4]) * spatial_scale);
  const int64_t last = end == RoIPoolEnd::kInclusive ? 1 : 0;
  // Malformed boxes are forced to be at least 1x1.
  const int64_t roi_w = roi_end_w - roi_start_w + last > 1 ? roi_end_w - roi_start_w + last : 1;
  const int64_t roi_h = roi_end_h - roi_start_h + last > 1 ? roi_end_h - roi_start_h + last : 1;
  return {roi_start_h, roi_start_w, static_cast<T>(roi_h) / static_cast<T>(pooled_h),
          static_cast<T>(roi_w) / static_cast<T>(pooled_w)};
}

// The window of output bin (ph, pw), clipped to the map.
template <typename T>
SEGOPS_HOST_DEVICE RoIPoolBin roi_pool_window(const RoIPoolGeometry<T>& g, int64_t ph, int64_t pw, int64_t height,
                                              int64_t width) {
  RoIPoolBin bin;
  bin.h_start = clamp_index(static_cast<int64_t>(floor(static_cast<T>(ph) * g.bin_h)) + g.start_h, height);
  bin.h_end = clamp_index(static_cast<int64_t>(ceil(static_cast<T>(ph + 1) * g.bin_h)) + g.start_h, height);
  bin.w_start = clamp_index(static_cast<int64_t>(floor(static_cast<T>(pw) * g.bin_w)) + g.start_w, width);
  bin.w_end = clamp_index(static_cast<int64_t>(ceil(static_cast<T>(pw + 1) * g.bin_w)) + g.start_w, width);
  return bin;
}

template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE RoIPoolBin roi_pool_bin(const scalar_t* roi, T spatial_scale, int64_t pooled_h, int64_t pooled_w,
                                           int64_t ph, int64_t pw, int64_t height, int64_t width) {
  return roi_pool_window(roi_pool_geometry<T>(roi, spatial_scale, pooled_h, pooled_w), ph, pw, height, width);
}

// Whether argmax index `index` (flat in a plane of `width` columns) lies in the window: a gradient flows only
// there, so a forged argmax can neither write out of bounds nor reach what a gather over windows cannot see.
SEGOPS_HOST_DEVICE bool roi_pool_window_contains(const RoIPoolBin& bin, int64_t index, int64_t width) {
  if (index < 0 || width <= 0) return false;
  const int64_t h = index / width, w = index % width;
  return h >= bin.h_start && h < bin.h_end && w >= bin.w_start && w < bin.w_end;
}

// The pixels a RoI's bins can read or write: from its first bin's window to its last's (windows grow with the bin
// index), in image `batch` of the one map.
template <typename T>
SEGOPS_HOST_DEVICE RoIFootprint roi_pool_footprint(const RoIPoolGeometry<T>& g, int64_t batch, int64_t pooled_h,
                                                   int64_t pooled_w, int64_t height, int64_t width) {
  const RoIPoolBin first = roi_pool_window(g, 0, 0, height, width);
  const RoIPoolBin last = roi_pool_window(g, pooled_h - 1, pooled_w - 1, height, width);
  return RoIFootprint{0, batch, first.h_start, last.h_end, first.w_start, last.w_end};
}

// The bins [first, last) of an axis of `pooled` bins of size `bin` from pixel `start` that can contain pixel i (a
// superset; bin windows grow with the bin index, so those that contain i are consecutive).
template <typename T>
SEGOPS_HOST_DEVICE void roi_pool_bins_near(int64_t start, T bin, int64_t pooled, int64_t i, int64_t& first,
                                           int64_t& last) {
  // Bin p spans [floor(p * bin), ceil((p + 1) * bin)) from start: it contains i only if p is in
  // ((i - start) / bin - 1, (i - start + 1) / bin), widened by a bin against rounding.
  const T offset = static_cast<T>(i - start);
  const T lo = floor(offset / bin) - T(2), hi = ceil((offset + T(1)) / bin) + T(2);
  first = 0;
  last = pooled;
  if (!(lo == lo) || !(hi == hi)) return;
  if (lo > T(0)) first = lo < static_cast<T>(pooled) ? static_cast<int64_t>(lo) : pooled;
  if (hi < static_cast<T>(pooled)) last = hi > static_cast<T>(first) ? static_cast<int64_t>(hi) : first;
}

// Calls f(ph, pw) for each bin of the RoI whose window contains pixel (y, x), in the order (ph, pw) the backward
// adds them in.
template <typename T, typename F>
SEGOPS_HOST_DEVICE void roi_pool_for_each_bin_containing(const RoIPoolGeometry<T>& g, int64_t pooled_h,
                                                         int64_t pooled_w, int64_t height, int64_t width, int64_t y,
                                                         int64_t x, F&& f) {
  int64_t ph_first, ph_last, pw_first, pw_last;
  roi_pool_bins_near(g.start_h, g.bin_h, pooled_h, y, ph_first, ph_last);
  roi_pool_bins_near(g.start_w, g.bin_w, pooled_w, x, pw_first, pw_last);
  for (int64_t ph = ph_first; ph < ph_last; ++ph) {
    for (int64_t pw = pw_first; pw < pw_last; ++pw) {
      const RoIPoolBin bin = roi_pool_window(g, ph, pw, height, width);
      if (y >= bin.h_start && y < bin.h_end && x >= bin.w_start && x < bin.w_end) f(ph, pw);
    }
  }
}

// Max over the bin's window of a row-major plane; `argmax` receives its flat plane index. As in torchvision, the
// search starts below every finite value and keeps the first strict maximum: NaN never wins, a bin of only
// NaN/-inf keeps argmax -1 (no gradient), and an empty bin gives 0. Branch-free so the CPU compiler can
// vectorise the row loop.
// The channel's pixels are pixel_stride apart (1 in NCHW, C in NHWC); argmax is the plane index h * width + w.
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T roi_pool_bin_max(const scalar_t* plane, int64_t width, int64_t pixel_stride, const RoIPoolBin& bin,
                                      int32_t& argmax) {
  T best = bin.empty() ? T(0) : std::numeric_limits<T>::lowest();
  int64_t best_index = -1;
  for (int64_t h = bin.h_start; h < bin.h_end; ++h) {
    const scalar_t* row = plane + h * width * pixel_stride;
    for (int64_t w = bin.w_start; w < bin.w_end; ++w) {
      const T value = static_cast<T>(row[w * pixel_stride]);
      const bool greater = value > best;
      best = greater ? value : best;
      best_index = greater ? h * width + w : best_index;
    }
  }
  argmax = static_cast<int32_t>(best_index);
  return best;
}

// Position-sensitive RoIPool's bin (R-FCN): the mean over the window of a row-major plane, 0 for an empty bin, summed
// row by row as torchvision sums it.
SEGOPS_HOST_DEVICE int64_t roi_pool_bin_area(const RoIPoolBin& bin) {
  return bin.empty() ? 0 : (bin.h_end - bin.h_start) * (bin.w_end - bin.w_start);
}

template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T roi_pool_bin_mean(const scalar_t* plane, int64_t width, const RoIPoolBin& bin) {
  if (bin.empty()) return T(0);
  T sum = T(0);
  for (int64_t h = bin.h_start; h < bin.h_end; ++h) {
    for (int64_t w = bin.w_start; w < bin.w_end; ++w) sum += static_cast<T>(plane[h * width + w]);
  }
  return sum / static_cast<T>(roi_pool_bin_area(bin));
}

// Its adjoint: grad / area to each pixel of the window, through add(offset, value).
template <typename T, typename Add>
SEGOPS_HOST_DEVICE void roi_pool_bin_mean_scatter(Add& add, int64_t plane_offset, int64_t width, const RoIPoolBin& bin,
                                                  T grad) {
  if (bin.empty()) return;
  const T share = grad / static_cast<T>(roi_pool_bin_area(bin));
  for (int64_t h = bin.h_start; h < bin.h_end; ++h) {
    for (int64_t w = bin.w_start; w < bin.w_end; ++w) add(plane_offset + h * width + w, share);
  }
}

}  // namespace segops

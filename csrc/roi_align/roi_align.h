#pragma once
// RoIAlign arithmetic shared by the CPU launcher and the CUDA kernels (Mask R-CNN; torchvision semantics).
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/bilinear.h"
#include "common/macros.h"

namespace segops {

// Adaptive sampling asks for ceil(roi_size / pooled_size) samples per bin; an absurdly large (or
// overflowed) box must not turn that into an undefined float-to-int conversion.
constexpr int64_t kRoIAlignMaxSamplesPerBin = int64_t(1) << 30;

// Where one RoI lies on the feature map and how its bins are sampled.
template <typename T>
struct RoIAlignGeometry {
  int64_t batch;
  T start_h, start_w;  // top-left corner in feature-map pixels
  T bin_h, bin_w;      // bin size in pixels
  int64_t grid_h, grid_w;  // samples per bin along each axis
  T count;             // samples per bin (>= 1), the divisor of the average
};

template <typename T>
SEGOPS_HOST_DEVICE int64_t roi_align_grid(T roi_size, int64_t pooled_size, int64_t sampling_ratio) {
  if (sampling_ratio > 0) return sampling_ratio;
  const T grid = ceil(roi_size / static_cast<T>(pooled_size));
  // An empty (aligned, x2 <= x1) or NaN box has no samples, as in torchvision where the loops never run.
  if (!(grid > T(0))) return 0;
  return grid < static_cast<T>(kRoIAlignMaxSamplesPerBin) ? static_cast<int64_t>(grid) : kRoIAlignMaxSamplesPerBin;
}

// `roi` points at one row [batch_index, x1, y1, x2, y2] of the rois tensor.
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE RoIAlignGeometry<T> roi_align_geometry(const scalar_t* roi, T spatial_scale, int64_t pooled_h,
                                                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const T offset = aligned ? T(0.5) : T(0);
  RoIAlignGeometry<T> g;
  g.batch = static_cast<int64_t>(static_cast<T>(roi[0]));
  g.start_w = static_cast<T>(roi[1]) * spatial_scale - offset;
  g.start_h = static_cast<T>(roi[2]) * spatial_scale - offset;
  T roi_w = static_cast<T>(roi[3]) * spatial_scale - offset - g.start_w;
  T roi_h = static_cast<T>(roi[4]) * spatial_scale - offset - g.start_h;
  if (!aligned) {
    // Legacy (non-aligned) mode forces malformed boxes to be at least 1x1.
    roi_w = roi_w > T(1) ? roi_w : T(1);
    roi_h = roi_h > T(1) ? roi_h : T(1);
  }
  g.bin_h = roi_h / static_cast<T>(pooled_h);
  g.bin_w = roi_w / static_cast<T>(pooled_w);
  g.grid_h = roi_align_grid(roi_h, pooled_h, sampling_ratio);
  g.grid_w = roi_align_grid(roi_w, pooled_w, sampling_ratio);
  const T count = static_cast<T>(g.grid_h) * static_cast<T>(g.grid_w);
  g.count = count > T(1) ? count : T(1);
  return g;
}

// Calls f(tap) for each sample of bin `bin_index` along one axis that lands inside [-1, size].
// Samples sit at start + bin_index * bin + (i + 0.5) * bin / grid, i in [0, grid). Only the index range that
// can reach the feature map is visited, so a box far larger than the image costs what its overlap costs; the
// range is padded by more samples than T's rounding of a coordinate can move, and each visited sample is still
// tested exactly as torchvision tests it.
template <typename T, typename F>
SEGOPS_HOST_DEVICE void roi_align_for_each_tap(T start, T bin, int64_t grid, int64_t bin_index, int64_t size, F&& f) {
  if (grid <= 0) return;
  const T bin_start = start + static_cast<T>(bin_index) * bin;
  int64_t begin = 0;
  int64_t end = grid;
  const double step = static_cast<double>(bin) / static_cast<double>(grid);
  if (step > 0) {
    // A few ulps of the largest term of a coordinate bound its rounding error; inf or NaN disables pruning.
    const double magnitude = fabs(static_cast<double>(start)) +
                             fabs(static_cast<double>(bin)) * static_cast<double>(bin_index + 1) +
                             static_cast<double>(size) + 1.0;
    const double margin = 2.0 + ceil(8.0 * static_cast<double>(std::numeric_limits<T>::epsilon()) * magnitude / step);
    const double first = floor((-1.0 - static_cast<double>(bin_start)) / step - 0.5) - margin;
    const double last = ceil((static_cast<double>(size) - static_cast<double>(bin_start)) / step - 0.5) + margin + 1.0;
    if (!(first == first) || !(last == last)) return;  // NaN geometry: no sample can be valid
    if (first > 0) begin = first < static_cast<double>(grid) ? static_cast<int64_t>(first) : grid;
    if (last < static_cast<double>(end)) end = last > static_cast<double>(begin) ? static_cast<int64_t>(last) : begin;
  }
  for (int64_t i = begin; i < end; ++i) {
    const T coord = start + static_cast<T>(bin_index) * bin + (static_cast<T>(i) + T(0.5)) * bin / static_cast<T>(grid);
    if (roi_sample_in_range(coord, size)) f(roi_sample_tap(coord, size));
  }
}

// Forward value of output bin (ph, pw) of one channel: the mean of its bilinear samples.
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T roi_align_bin_value(const scalar_t* plane, int64_t height, int64_t width,
                                         const RoIAlignGeometry<T>& g, int64_t ph, int64_t pw) {
  T sum = T(0);
  roi_align_for_each_tap(g.start_h, g.bin_h, g.grid_h, ph, height, [&](const LinearTap<T>& ty) {
    roi_align_for_each_tap(g.start_w, g.bin_w, g.grid_w, pw, width, [&](const LinearTap<T>& tx) {
      sum += bilinear_gather(plane, width, ty, tx);
    });
  });
  return sum / g.count;
}

// Backward of roi_align_bin_value: spreads grad over the bin's samples through `add(offset, value)`.
template <typename T, typename Add>
SEGOPS_HOST_DEVICE void roi_align_bin_scatter(Add& add, int64_t plane_offset, int64_t height, int64_t width,
                                              const RoIAlignGeometry<T>& g, int64_t ph, int64_t pw, T grad) {
  const T grad_per_sample = grad / g.count;
  roi_align_for_each_tap(g.start_h, g.bin_h, g.grid_h, ph, height, [&](const LinearTap<T>& ty) {
    roi_align_for_each_tap(g.start_w, g.bin_w, g.grid_w, pw, width, [&](const LinearTap<T>& tx) {
      bilinear_scatter(add, plane_offset, width, ty, tx, grad_per_sample);
    });
  });
}

}  // namespace segops

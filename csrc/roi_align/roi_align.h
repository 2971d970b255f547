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

// The samples of one bin along one axis: sample i in [begin, end) sits at base + (i + 0.5) * bin / grid, where
// base = start + bin_index * bin. [begin, end) is the part of [0, grid) that can land inside [-1, size], so a box
// far larger than the image costs what its overlap costs. The range is padded by more samples than the rounding of
// a coordinate in T can move it, and each visited sample is still tested exactly as torchvision tests it; all of
// it is computed in T (float for float, float16 and bfloat16 data: no float64 arithmetic in those GPU kernels),
// once per bin and axis.
template <typename T>
struct RoIAlignBinAxis {
  T base, bin;
  int64_t grid, size, begin, end;
};

template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_bin_axis(T start, T bin, int64_t grid, int64_t bin_index,
                                                         int64_t size) {
  RoIAlignBinAxis<T> axis{start + static_cast<T>(bin_index) * bin, bin, grid, size, 0, grid > 0 ? grid : 0};
  const T step = bin / static_cast<T>(grid > 0 ? grid : 1);
  if (axis.end == 0 || !(step > T(0))) return axis;
  // A few ulps of the largest term of a coordinate bound its rounding error; an infinite margin disables pruning.
  const T magnitude = fabs(start) + fabs(bin) * static_cast<T>(bin_index + 1) + static_cast<T>(size) + T(1);
  const T margin = T(2) + ceil(T(8) * std::numeric_limits<T>::epsilon() * magnitude / step);
  const T first = floor((T(-1) - axis.base) / step - T(0.5)) - margin;
  const T last = ceil((static_cast<T>(size) - axis.base) / step - T(0.5)) + margin + T(1);
  if (!(first == first) || !(last == last)) {  // NaN geometry: no sample can be valid
    axis.end = 0;
    return axis;
  }
  // Converted to int64 only once inside [0, grid], so no out-of-range float-to-int conversion can happen.
  if (first > T(0)) axis.begin = first < static_cast<T>(grid) ? static_cast<int64_t>(first) : grid;
  if (last < static_cast<T>(axis.end)) {
    axis.end = last > static_cast<T>(axis.begin) ? static_cast<int64_t>(last) : axis.begin;
  }
  return axis;
}

// Calls f(tap) for each sample of the bin axis that lands inside [-1, size].
template <typename T, typename F>
SEGOPS_HOST_DEVICE void roi_align_for_each_tap(const RoIAlignBinAxis<T>& axis, F&& f) {
  for (int64_t i = axis.begin; i < axis.end; ++i) {
    const T coord = axis.base + (static_cast<T>(i) + T(0.5)) * axis.bin / static_cast<T>(axis.grid);
    if (roi_sample_in_range(coord, axis.size)) f(roi_sample_tap(coord, axis.size));
  }
}

// The sample axes of output bin (ph, pw): rows, then columns.
template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_rows(const RoIAlignGeometry<T>& g, int64_t ph, int64_t height) {
  return roi_align_bin_axis(g.start_h, g.bin_h, g.grid_h, ph, height);
}

template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_cols(const RoIAlignGeometry<T>& g, int64_t pw, int64_t width) {
  return roi_align_bin_axis(g.start_w, g.bin_w, g.grid_w, pw, width);
}

// Forward value of output bin (ph, pw) of one channel: the mean of its bilinear samples.
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T roi_align_bin_value(const scalar_t* plane, int64_t height, int64_t width,
                                         const RoIAlignGeometry<T>& g, int64_t ph, int64_t pw) {
  const RoIAlignBinAxis<T> cols = roi_align_cols(g, pw, width);
  T sum = T(0);
  roi_align_for_each_tap(roi_align_rows(g, ph, height), [&](const LinearTap<T>& ty) {
    roi_align_for_each_tap(cols, [&](const LinearTap<T>& tx) { sum += bilinear_gather(plane, width, 1, ty, tx); });
  });
  return sum / g.count;
}

// Backward of roi_align_bin_value: spreads grad over the bin's samples through `add(offset, value)`.
template <typename T, typename Add>
SEGOPS_HOST_DEVICE void roi_align_bin_scatter(Add& add, int64_t plane_offset, int64_t height, int64_t width,
                                              const RoIAlignGeometry<T>& g, int64_t ph, int64_t pw, T grad) {
  const T grad_per_sample = grad / g.count;
  const RoIAlignBinAxis<T> cols = roi_align_cols(g, pw, width);
  roi_align_for_each_tap(roi_align_rows(g, ph, height), [&](const LinearTap<T>& ty) {
    roi_align_for_each_tap(cols, [&](const LinearTap<T>& tx) {
      bilinear_scatter(add, plane_offset, width, ty, tx, grad_per_sample);
    });
  });
}

}  // namespace segops

#pragma once
// RoIAlign arithmetic shared by the CPU launcher and the CUDA kernels (Mask R-CNN; torchvision semantics).
#include <cmath>
#include <cstdint>
#include <limits>

#include "common/bilinear.h"
#include "common/macros.h"
#include "roi_common/roi_row.h"

namespace segops {

// Adaptive sampling asks for ceil(roi_size / pooled_size) samples per bin; an absurdly large (or
// overflowed) box must not turn that into an undefined float-to-int conversion.
constexpr int64_t kRoIAlignMaxSamplesPerBin = int64_t(1) << 30;

// Where one RoI lies on the feature map and how its bins are sampled.
template <typename T>
struct RoIAlignGeometry {
  int64_t batch;
  T start_h, start_w;      // top-left corner in feature-map pixels
  T bin_h, bin_w;          // bin size in pixels
  int64_t grid_h, grid_w;  // samples per bin along each axis
  T count;                 // samples per bin (>= 1), the divisor of the average
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

// The samples whose coordinate can lie in [low, high] (a window inside [-1, size]).
template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_bin_axis_within(T start, T bin, int64_t grid, int64_t bin_index,
                                                                int64_t size, T low, T high) {
  RoIAlignBinAxis<T> axis{start + static_cast<T>(bin_index) * bin, bin, grid, size, 0, grid > 0 ? grid : 0};
  const T step = bin / static_cast<T>(grid > 0 ? grid : 1);
  if (axis.end == 0 || !(step > T(0))) return axis;
  // A few ulps of the largest term of a coordinate bound its rounding error; an infinite margin disables pruning.
  const T magnitude = fabs(start) + fabs(bin) * static_cast<T>(bin_index + 1) + static_cast<T>(size) + T(1);
  const T margin = T(2) + ceil(T(8) * std::numeric_limits<T>::epsilon() * magnitude / step);
  const T first = floor((low - axis.base) / step - T(0.5)) - margin;
  const T last = ceil((high - axis.base) / step - T(0.5)) + margin + T(1);
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

template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_bin_axis(T start, T bin, int64_t grid, int64_t bin_index,
                                                         int64_t size) {
  return roi_align_bin_axis_within(start, bin, grid, bin_index, size, T(-1), static_cast<T>(size));
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

// Forward value of output bin (ph, pw) of one channel: the mean of its bilinear samples. The channel's pixels are
// pixel_stride apart (1 in NCHW, C in NHWC), its rows width * pixel_stride.
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T roi_align_bin_value(const scalar_t* plane, int64_t height, int64_t width,
                                         const RoIAlignGeometry<T>& g, int64_t ph, int64_t pw, int64_t pixel_stride) {
  const RoIAlignBinAxis<T> cols = roi_align_cols(g, pw, width);
  T sum = T(0);
  roi_align_for_each_tap(roi_align_rows(g, ph, height), [&](const LinearTap<T>& ty) {
    roi_align_for_each_tap(cols, [&](const LinearTap<T>& tx) {
      sum += bilinear_gather(plane, width * pixel_stride, pixel_stride, ty, tx);
    });
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
    roi_align_for_each_tap(
        cols, [&](const LinearTap<T>& tx) { bilinear_scatter(add, plane_offset, width, ty, tx, grad_per_sample); });
  });
}

// The deterministic GPU backward's view of a RoI (roi_common/roi_gather.h): which pixels its samples can touch, and
// for one pixel, which samples touch it, in the order and with the values roi_align_bin_scatter adds to it.

// The pixels [begin, end) of an axis of `size` pixels that the samples of `pooled` bins can touch (a superset:
// the samples' span, widened by more than their rounding error and by the pixel their high taps reach).
template <typename T>
SEGOPS_HOST_DEVICE void roi_align_axis_footprint(T start, T bin, int64_t grid, int64_t pooled, int64_t size,
                                                 int64_t& begin, int64_t& end) {
  begin = 0;
  end = grid > 0 ? size : 0;
  if (end == 0) return;
  const T span_end = start + bin * static_cast<T>(pooled);
  const T low = start < span_end ? start : span_end, high = start < span_end ? span_end : start;
  const T magnitude = fabs(start) + fabs(bin) * static_cast<T>(pooled) + static_cast<T>(size) + T(1);
  const T margin = T(1) + T(8) * std::numeric_limits<T>::epsilon() * magnitude;
  const T first = floor(low - margin), last = floor(high + margin) + T(2);
  if (!(first == first) || !(last == last)) return;  // NaN geometry: the whole axis, each sample still tested
  if (first > T(0)) begin = first < static_cast<T>(size) ? static_cast<int64_t>(first) : size;
  if (last < static_cast<T>(size)) end = last > static_cast<T>(begin) ? static_cast<int64_t>(last) : begin;
}

template <typename T>
SEGOPS_HOST_DEVICE RoIFootprint roi_align_footprint(const RoIAlignGeometry<T>& g, int64_t level, int64_t pooled_h,
                                                    int64_t pooled_w, int64_t height, int64_t width) {
  RoIFootprint f{level, g.batch, 0, 0, 0, 0};
  roi_align_axis_footprint(g.start_h, g.bin_h, g.grid_h, pooled_h, height, f.y_begin, f.y_end);
  roi_align_axis_footprint(g.start_w, g.bin_w, g.grid_w, pooled_w, width, f.x_begin, f.x_end);
  return f;
}

// The coordinates [low, high] whose samples touch pixel i of an axis of `size` pixels: floor(coord) is i or i - 1,
// and roi_sample_tap sends [-1, 0] to pixels 0 and 1 and [size - 1, size] to pixel size - 1.
template <typename T>
struct CoordWindow {
  T low, high;
};

template <typename T>
SEGOPS_HOST_DEVICE CoordWindow<T> roi_align_pixel_window(int64_t i, int64_t size) {
  return {i <= 1 ? T(-1) : static_cast<T>(i - 1), i >= size - 1 ? static_cast<T>(size) : static_cast<T>(i + 1)};
}

// The bins [first, last) of an axis whose samples can lie in `window` (a superset).
template <typename T>
SEGOPS_HOST_DEVICE void roi_align_bins_within(T start, T bin, int64_t pooled, int64_t size, CoordWindow<T> window,
                                              int64_t& first, int64_t& last) {
  first = 0;
  last = pooled;
  if (!(bin > T(0))) return;  // an empty or reversed (aligned) box, or NaN: every bin, each sample still tested
  const T magnitude = fabs(start) + bin * static_cast<T>(pooled) + static_cast<T>(size) + T(1);
  const T margin = T(1) + ceil(T(8) * std::numeric_limits<T>::epsilon() * magnitude / bin);
  const T lo = floor((window.low - start) / bin) - margin, hi = floor((window.high - start) / bin) + margin + T(1);
  if (!(lo == lo) || !(hi == hi)) return;
  if (lo > T(0)) first = lo < static_cast<T>(pooled) ? static_cast<int64_t>(lo) : pooled;
  if (hi < static_cast<T>(pooled)) last = hi > static_cast<T>(first) ? static_cast<int64_t>(hi) : first;
}

// For pixel (y, x) and one bin, whose sample axes are `rows` and `cols` (roi_align_bin_axis_within the pixel's
// windows): calls on_first() before the first sample that touches the pixel, then on_weight(w) for each of that
// sample's bilinear weights that lands on it, in roi_align_bin_scatter's order.
template <typename T, typename OnFirst, typename OnWeight>
SEGOPS_HOST_DEVICE void roi_align_bin_pixel_weights(const RoIAlignBinAxis<T>& rows, const RoIAlignBinAxis<T>& cols,
                                                    int64_t y, int64_t x, OnFirst&& on_first, OnWeight&& on_weight) {
  bool started = false;
  roi_align_for_each_tap(rows, [&](const LinearTap<T>& ty) {
    if (ty.low != y && ty.high != y) return;
    roi_align_for_each_tap(cols, [&](const LinearTap<T>& tx) {
      if (tx.low != x && tx.high != x) return;
      if (!started) {
        on_first();
        started = true;
      }
      // bilinear_add's order: (low, low), (low, high), (high, low), (high, high).
      const BilinearWeights<T> w = bilinear_weights(ty, tx);
      if (ty.low == y && tx.low == x) on_weight(w.low_low);
      if (ty.low == y && tx.high == x) on_weight(w.low_high);
      if (ty.high == y && tx.low == x) on_weight(w.high_low);
      if (ty.high == y && tx.high == x) on_weight(w.high_high);
    });
  });
}

// The sample axes of bin (ph, pw) restricted to what can touch pixel (y, x).
template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_rows_near(const RoIAlignGeometry<T>& g, int64_t ph, int64_t height,
                                                          int64_t y) {
  const CoordWindow<T> window = roi_align_pixel_window<T>(y, height);
  return roi_align_bin_axis_within(g.start_h, g.bin_h, g.grid_h, ph, height, window.low, window.high);
}

template <typename T>
SEGOPS_HOST_DEVICE RoIAlignBinAxis<T> roi_align_cols_near(const RoIAlignGeometry<T>& g, int64_t pw, int64_t width,
                                                          int64_t x) {
  const CoordWindow<T> window = roi_align_pixel_window<T>(x, width);
  return roi_align_bin_axis_within(g.start_w, g.bin_w, g.grid_w, pw, width, window.low, window.high);
}

// For pixel (y, x): calls on_bin(ph, pw) before the first sample of bin (ph, pw) that touches the pixel, then
// on_weight(w) for each of that sample's bilinear weights that lands on it. Bins, samples and weights come in
// roi_align_bin_scatter's order (as the CPU backward visits them), so a gather that adds
// grad_per_sample(ph, pw) * w reproduces the scatter's sum bit for bit.
template <typename T, typename OnBin, typename OnWeight>
SEGOPS_HOST_DEVICE void roi_align_pixel_gather(const RoIAlignGeometry<T>& g, int64_t pooled_h, int64_t pooled_w,
                                               int64_t height, int64_t width, int64_t y, int64_t x, OnBin&& on_bin,
                                               OnWeight&& on_weight) {
  int64_t ph_first, ph_last, pw_first, pw_last;
  roi_align_bins_within(g.start_h, g.bin_h, pooled_h, height, roi_align_pixel_window<T>(y, height), ph_first, ph_last);
  roi_align_bins_within(g.start_w, g.bin_w, pooled_w, width, roi_align_pixel_window<T>(x, width), pw_first, pw_last);
  for (int64_t ph = ph_first; ph < ph_last; ++ph) {
    const RoIAlignBinAxis<T> rows = roi_align_rows_near(g, ph, height, y);
    if (rows.begin == rows.end) continue;
    for (int64_t pw = pw_first; pw < pw_last; ++pw) {
      roi_align_bin_pixel_weights(rows, roi_align_cols_near(g, pw, width, x), y, x, [&] { on_bin(ph, pw); }, on_weight);
    }
  }
}

}  // namespace segops

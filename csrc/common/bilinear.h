#pragma once
// Bilinear sampling in the RoIAlign convention (torchvision / Detectron): a sample at `coord` on an axis
// of `size` pixels contributes iff -1 <= coord <= size, and is clamped to the border pixels. A 2-D sample
// is the product of two independent 1-D taps, which lets the CPU launcher compute taps once per axis and RoI.
#include <cstdint>

#include "common/macros.h"

namespace segops {

// The two neighbouring pixels of a 1-D sample and their weights (w_low + w_high == 1).
template <typename T>
struct LinearTap {
  int64_t low;
  int64_t high;
  T w_low;
  T w_high;
};

// Written so that NaN falls on the out-of-range side; an empty axis has no valid sample.
template <typename T>
SEGOPS_HOST_DEVICE bool roi_sample_in_range(T coord, int64_t size) {
  return size > 0 && coord >= T(-1) && coord <= static_cast<T>(size);
}

// Precondition: roi_sample_in_range(coord, size).
template <typename T>
SEGOPS_HOST_DEVICE LinearTap<T> roi_sample_tap(T coord, int64_t size) {
  if (coord <= T(0)) coord = T(0);
  int64_t low = static_cast<int64_t>(coord);
  int64_t high = low + 1;
  if (low >= size - 1) {
    low = high = size - 1;
    coord = static_cast<T>(low);
  }
  const T frac = coord - static_cast<T>(low);
  return {low, high, T(1) - frac, frac};
}

// The sum of the bilinear samples at every (ty, tx) pair of two tap sequences over a row-major plane of `width`
// columns. A tap sequence is a callable that calls its argument with each LinearTap in turn: the GPU generates
// taps on the fly, the CPU replays precomputed ones. Interpolating along x first and weighting the two rows
// once per y tap costs 4 multiply-adds per sample instead of 8.
template <typename T, typename scalar_t, typename YTaps, typename XTaps>
SEGOPS_HOST_DEVICE T bilinear_sum(const scalar_t* plane, int64_t width, const YTaps& for_each_y_tap,
                                  const XTaps& for_each_x_tap) {
  T sum = T(0);
  for_each_y_tap([&](const LinearTap<T>& ty) {
    const scalar_t* row_low = plane + ty.low * width;
    const scalar_t* row_high = plane + ty.high * width;
    T sum_low = T(0);
    T sum_high = T(0);
    for_each_x_tap([&](const LinearTap<T>& tx) {
      sum_low += tx.w_low * static_cast<T>(row_low[tx.low]) + tx.w_high * static_cast<T>(row_low[tx.high]);
      sum_high += tx.w_low * static_cast<T>(row_high[tx.low]) + tx.w_high * static_cast<T>(row_high[tx.high]);
    });
    sum += ty.w_low * sum_low + ty.w_high * sum_high;
  });
  return sum;
}

// The adjoint of bilinear_sum: add(offset, w * grad) for every sample's four neighbours, offsets counted from
// the plane's first element plus `plane_offset`. `add` is a plain add on the CPU (each plane owned by one
// thread) and an atomic add on the GPU.
template <typename T, typename Add, typename YTaps, typename XTaps>
SEGOPS_HOST_DEVICE void bilinear_scatter(Add& add, int64_t plane_offset, int64_t width, T grad,
                                         const YTaps& for_each_y_tap, const XTaps& for_each_x_tap) {
  for_each_y_tap([&](const LinearTap<T>& ty) {
    const int64_t row_low = plane_offset + ty.low * width;
    const int64_t row_high = plane_offset + ty.high * width;
    const T grad_low = grad * ty.w_low;
    const T grad_high = grad * ty.w_high;
    for_each_x_tap([&](const LinearTap<T>& tx) {
      add(row_low + tx.low, grad_low * tx.w_low);
      add(row_low + tx.high, grad_low * tx.w_high);
      add(row_high + tx.low, grad_high * tx.w_low);
      add(row_high + tx.high, grad_high * tx.w_high);
    });
  });
}

}  // namespace segops

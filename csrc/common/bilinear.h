#pragma once
// Bilinear sampling, in two border conventions. RoIAlign's (torchvision / Detectron): a sample at `coord` on an
// axis of `size` pixels contributes iff -1 <= coord <= size, and is clamped to the border pixels. Zero padding
// (grid_sample with padding_mode="zeros", Deep Feature Flow's warp): each of the two neighbours floor(coord) and
// floor(coord) + 1 counts only if it lies on the axis. A 2-D sample is the product of two independent 1-D taps,
// which lets a CPU launcher compute taps once per axis and reuse them across channels.
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

// Zero padding: the neighbours floor(coord) and floor(coord) + 1 with weights 1 - frac and frac, a neighbour off
// the axis weighing 0 (its index is clamped onto the axis, so it is read but never counts). A coordinate outside
// [-1, size), NaN or infinite included, gives two zero weights (at exactly -1 pixel 0 weighs 0 but its derivative
// does not). Precondition: size >= 1.
template <typename T>
SEGOPS_HOST_DEVICE LinearTap<T> zero_padded_tap(T coord, int64_t size) {
  if (!(coord >= T(-1) && coord < static_cast<T>(size))) return {0, 0, T(0), T(0)};  // NaN fails too
  const T floor_coord = floor(coord);
  const int64_t low = static_cast<int64_t>(floor_coord);
  const T frac = coord - floor_coord;
  const bool low_on = low >= 0, high_on = low + 1 < size;
  return {low_on ? low : 0, high_on ? low + 1 : size - 1, low_on ? T(1) - frac : T(0), high_on ? frac : T(0)};
}

// d/dcoord of zero_padded_tap's weights, as a tap (so bilinear_gather with it gives a sample's partial derivative):
// -1 for the low and +1 for the high neighbour where they lie on the axis. At an integer coordinate this is the
// derivative from the right, the convention of grid_sample's backward.
template <typename T>
SEGOPS_HOST_DEVICE LinearTap<T> zero_padded_tap_derivative(T coord, int64_t size) {
  LinearTap<T> tap = zero_padded_tap(coord, size);
  if (!(coord >= T(-1) && coord < static_cast<T>(size))) return tap;
  const int64_t low = static_cast<int64_t>(floor(coord));
  tap.w_low = low >= 0 ? T(-1) : T(0);
  tap.w_high = low + 1 < size ? T(1) : T(0);
  return tap;
}

// The weights of a 2-D sample's four neighbours (row low/high x column low/high), products of its 1-D taps.
template <typename T>
struct BilinearWeights {
  T low_low, low_high, high_low, high_high;
};

template <typename T>
SEGOPS_HOST_DEVICE BilinearWeights<T> bilinear_weights(const LinearTap<T>& ty, const LinearTap<T>& tx) {
  return {ty.w_low * tx.w_low, ty.w_low * tx.w_high, ty.w_high * tx.w_low, ty.w_high * tx.w_high};
}

// Where a 2-D sample's four neighbours are in an image whose pixel (y, x) is at image[y * row_stride +
// x * pixel_stride]: a row-major plane (row_stride = width, pixel_stride = 1), or one channel of a channels-last
// image (width * C, C), or any strided layout.
struct BilinearOffsets {
  int64_t low_low, low_high, high_low, high_high;
};

template <typename T>
SEGOPS_HOST_DEVICE BilinearOffsets bilinear_offsets(const LinearTap<T>& ty, const LinearTap<T>& tx, int64_t row_stride,
                                                    int64_t pixel_stride) {
  const int64_t row_low = ty.low * row_stride, row_high = ty.high * row_stride;
  const int64_t low = tx.low * pixel_stride, high = tx.high * pixel_stride;
  return {row_low + low, row_low + high, row_high + low, row_high + high};
}

// The weighted sum of the four neighbours. The order of operations is torchvision's, so results agree with it
// bitwise. Split from its offsets and weights so that a CPU launcher can compute those once per sample and reuse
// them across channels, and weigh the same neighbours twice (a value and a derivative).
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T bilinear_sum(const scalar_t* image, const BilinearOffsets& at, const BilinearWeights<T>& w) {
  return w.low_low * static_cast<T>(image[at.low_low]) + w.low_high * static_cast<T>(image[at.low_high]) +
         w.high_low * static_cast<T>(image[at.high_low]) + w.high_high * static_cast<T>(image[at.high_high]);
}

// One 2-D sample of a strided image (see BilinearOffsets).
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T bilinear_gather(const scalar_t* image, int64_t row_stride, int64_t pixel_stride,
                                     const LinearTap<T>& ty, const LinearTap<T>& tx) {
  return bilinear_sum(image, bilinear_offsets(ty, tx, row_stride, pixel_stride), bilinear_weights(ty, tx));
}

// The adjoint of bilinear_sum: add(base + offset, w * grad) for the four neighbours. `add` is a plain add on the CPU
// (each plane owned by one thread) and an atomic add on the GPU.
template <typename T, typename Add>
SEGOPS_HOST_DEVICE void bilinear_add(Add& add, int64_t base, const BilinearOffsets& at, const BilinearWeights<T>& w,
                                     T grad) {
  add(base + at.low_low, grad * w.low_low);
  add(base + at.low_high, grad * w.low_high);
  add(base + at.high_low, grad * w.high_low);
  add(base + at.high_high, grad * w.high_high);
}

// The adjoint of bilinear_gather on a row-major plane of `width` columns starting at plane_offset.
template <typename T, typename Add>
SEGOPS_HOST_DEVICE void bilinear_scatter(Add& add, int64_t plane_offset, int64_t width, const LinearTap<T>& ty,
                                         const LinearTap<T>& tx, T grad) {
  bilinear_add(add, plane_offset, bilinear_offsets(ty, tx, width, 1), bilinear_weights(ty, tx), grad);
}

}  // namespace segops

#pragma once
// Flow-guided bilinear warping (Deep Feature Flow) arithmetic, shared by the CPU launcher and the CUDA kernels:
//   out[n, c, y, x] = scale[n, c, y, x] * sum_q g(qx, x + dx) g(qy, y + dy) feature[n, c, qy, qx],
// g(a, b) = max(0, 1 - |a - b|), (dx, dy) = flow[n, :, y, x] in feature-map pixels, samples off the map count zero:
// grid_sample(bilinear, zeros, align_corners=True) with the grid built from the flow.
#include <cstdint>

#include "common/bilinear.h"
#include "common/macros.h"

namespace segops {

// The sample of one output pixel: its taps along y and x, their derivatives with respect to the sample position
// (hence to dy and dx), and its cell, the integer part (floor) of the sample position, which names the four pixels
// it can touch: (cell_y + {0, 1}, cell_x + {0, 1}). A sample that touches no pixel (off the map, NaN or infinite
// flow) has zero weights and cell -2 (no pixel's cell).
template <typename T>
struct WarpSample {
  LinearTap<T> y, x, d_y, d_x;
  int64_t cell_y, cell_x;
};

template <typename T>
SEGOPS_HOST_DEVICE int64_t warp_cell(T coord, int64_t size) {
  return coord >= T(-1) && coord < static_cast<T>(size) ? static_cast<int64_t>(floor(coord)) : int64_t(-2);
}

// Output pixel (y, x) with flow (dx, dy) on a height x width feature map (both >= 1).
template <typename T>
SEGOPS_HOST_DEVICE WarpSample<T> warp_sample(int64_t y, int64_t x, T dx, T dy, int64_t height, int64_t width) {
  const T sample_y = static_cast<T>(y) + dy;
  const T sample_x = static_cast<T>(x) + dx;
  WarpSample<T> s{zero_padded_tap(sample_y, height),
                  zero_padded_tap(sample_x, width),
                  zero_padded_tap_derivative(sample_y, height),
                  zero_padded_tap_derivative(sample_x, width),
                  warp_cell(sample_y, height),
                  warp_cell(sample_x, width)};
  if (s.cell_y == -2 || s.cell_x == -2) s.cell_y = s.cell_x = -2;
  return s;
}

// What a sample costs per channel, computed once per output pixel: its neighbours' offsets in the feature (through
// the feature's strides) and in a contiguous gradient plane, and the weights of its value and of its derivatives
// with respect to dx and dy (the same four neighbours, other weights).
template <typename T>
struct WarpPoint {
  BilinearOffsets in_feature, in_plane;
  BilinearWeights<T> value, d_dx, d_dy;
  bool touches_feature;
};

template <typename T>
SEGOPS_HOST_DEVICE WarpPoint<T> warp_point(const WarpSample<T>& s, int64_t row_stride, int64_t pixel_stride,
                                           int64_t width) {
  return {bilinear_offsets(s.y, s.x, row_stride, pixel_stride),
          bilinear_offsets(s.y, s.x, width, 1),
          bilinear_weights(s.y, s.x),
          bilinear_weights(s.y, s.d_x),
          bilinear_weights(s.d_y, s.x),
          s.cell_y != -2};
}

// The sample's value in one channel of the feature (image = that channel's first element).
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T warp_value(const scalar_t* image, const WarpPoint<T>& p) {
  return bilinear_sum(image, p.in_feature, p.value);
}

// What the forward needs of output pixel (y, x) with flow (dx, dy): its neighbours in the feature and their weights,
// the WarpPoint's fields computed without the derivatives (a forward over few channels is dominated by this).
template <typename T>
struct WarpValuePoint {
  BilinearOffsets in_feature;
  BilinearWeights<T> value;
};

template <typename T>
SEGOPS_HOST_DEVICE WarpValuePoint<T> warp_value_point(int64_t y, int64_t x, T dx, T dy, int64_t height, int64_t width,
                                                      int64_t row_stride, int64_t pixel_stride) {
  const LinearTap<T> ty = zero_padded_tap(static_cast<T>(y) + dy, height);
  const LinearTap<T> tx = zero_padded_tap(static_cast<T>(x) + dx, width);
  return {bilinear_offsets(ty, tx, row_stride, pixel_stride), bilinear_weights(ty, tx)};
}

template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T warp_value(const scalar_t* image, const WarpValuePoint<T>& p) {
  return bilinear_sum(image, p.in_feature, p.value);
}

// The sample's partial derivatives with respect to dx and dy in that channel.
template <typename T>
struct WarpGradient {
  T d_dx, d_dy;
};

template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE WarpGradient<T> warp_gradient(const scalar_t* image, const WarpPoint<T>& p) {
  return {bilinear_sum(image, p.in_feature, p.d_dx), bilinear_sum(image, p.in_feature, p.d_dy)};
}

}  // namespace segops

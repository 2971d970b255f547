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
  WarpSample<T> s{zero_padded_tap(sample_y, height), zero_padded_tap(sample_x, width),
                  zero_padded_tap_derivative(sample_y, height), zero_padded_tap_derivative(sample_x, width),
                  warp_cell(sample_y, height), warp_cell(sample_x, width)};
  if (s.cell_y == -2 || s.cell_x == -2) s.cell_y = s.cell_x = -2;
  return s;
}

// The sample's value in one channel whose pixel (y, x) is at image[y * row_stride + x * pixel_stride].
template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE T warp_value(const scalar_t* image, int64_t row_stride, int64_t pixel_stride,
                                const WarpSample<T>& s) {
  return bilinear_gather(image, row_stride, pixel_stride, s.y, s.x);
}

// The sample's partial derivatives with respect to dx and dy in that channel.
template <typename T>
struct WarpGradient {
  T d_dx, d_dy;
};

template <typename T, typename scalar_t>
SEGOPS_HOST_DEVICE WarpGradient<T> warp_gradient(const scalar_t* image, int64_t row_stride, int64_t pixel_stride,
                                                 const WarpSample<T>& s) {
  return {bilinear_gather(image, row_stride, pixel_stride, s.y, s.d_x),
          bilinear_gather(image, row_stride, pixel_stride, s.d_y, s.x)};
}

}  // namespace segops

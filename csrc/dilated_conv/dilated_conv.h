#pragma once
// Dilated (atrous) convolution arithmetic, shared by the CPU launcher and the CUDA kernels. Output (oy, ox) of a
// kernel tap (i, j) reads input (oy * stride_h - pad_h + i * dilation_h, ox * stride_w - pad_w + j * dilation_w);
// taps outside the input read zero. im2col lays those reads out as a [C * kH * kW, rows * Wo] column matrix (row
// (c, i, j), column (oy - first row, ox)) for a GEMM; col2im is its adjoint, written as a gather: each input element
// sums, in tap order, the column entries that read it, so no two threads write one element.
#include <cstdint>

#include "common/macros.h"

namespace segops {

// One axis of the convolution: input size, output size, kernel size, stride, padding, dilation.
struct ConvAxis {
  int64_t in, out, kernel, stride, pad, dilation;

  // The input coordinate that output o reads through tap k (may be outside [0, in)).
  SEGOPS_HOST_DEVICE int64_t input_at(int64_t o, int64_t k) const { return o * stride - pad + k * dilation; }

  // The output coordinate whose tap k reads input x, or -1 where none does; index_t: the width of the division (32
  // bits where the GPU kernels' tensors allow it: see with_index_type).
  template <typename index_t = int64_t>
  SEGOPS_HOST_DEVICE int64_t output_reading(int64_t x, int64_t k) const {
    const index_t shifted = static_cast<index_t>(x + pad - k * dilation), step = static_cast<index_t>(stride);
    if (shifted < 0 || shifted % step != 0) return -1;
    const int64_t o = shifted / step;
    return o < out ? o : -1;
  }

  // The outputs [first, last) whose tap k reads inside the input, clipped to [0, out): the loops of a row.
  template <typename index_t = int64_t>
  SEGOPS_HOST_DEVICE int64_t first_output_inside(int64_t k) const {
    const int64_t need = pad - k * dilation;  // o * stride >= need
    const int64_t o = need <= 0 ? 0 : static_cast<index_t>(need + stride - 1) / static_cast<index_t>(stride);
    return o < out ? o : out;
  }
  template <typename index_t = int64_t>
  SEGOPS_HOST_DEVICE int64_t last_output_inside(int64_t k) const {
    const int64_t room = in - 1 + pad - k * dilation;  // o * stride <= room
    if (room < 0) return 0;
    const int64_t o = static_cast<index_t>(room) / static_cast<index_t>(stride) + 1;
    return o < out ? o : out;
  }
};

// A 4-D tensor read through its strides (any layout: contiguous, channels_last, sliced).
struct StridedImage {
  int64_t stride_n, stride_c, stride_h, stride_w;

  SEGOPS_HOST_DEVICE int64_t offset(int64_t n, int64_t c, int64_t y, int64_t x) const {
    return n * stride_n + c * stride_c + y * stride_h + x * stride_w;
  }
};

// Column entry (row = (c, i, j), output (oy, ox)) of image n: the input it reads, or zero outside.
template <typename scalar_t>
SEGOPS_HOST_DEVICE scalar_t im2col_value(const scalar_t* input, const StridedImage& image, const ConvAxis& ay,
                                         const ConvAxis& ax, int64_t n, int64_t c, int64_t i, int64_t j, int64_t oy,
                                         int64_t ox) {
  const int64_t y = ay.input_at(oy, i), x = ax.input_at(ox, j);
  return y >= 0 && y < ay.in && x >= 0 && x < ax.in ? input[image.offset(n, c, y, x)] : scalar_t(0);
}

// col2im's gather: the sum, in tap order (i, then j), of the column entries that read input (c, y, x), where the
// columns (contiguous, rows * Wo wide) hold output rows [first_row, first_row + rows) only.
template <typename acc_t, typename index_t = int64_t, typename scalar_t>
SEGOPS_HOST_DEVICE acc_t col2im_sum(const scalar_t* columns, const ConvAxis& ay, const ConvAxis& ax, int64_t c,
                                    int64_t y, int64_t x, int64_t first_row, int64_t rows) {
  acc_t sum = 0;
  const int64_t width = rows * ax.out;
  for (int64_t i = 0; i < ay.kernel; ++i) {
    const int64_t oy = ay.output_reading<index_t>(y, i);
    if (oy < first_row || oy >= first_row + rows) continue;
    for (int64_t j = 0; j < ax.kernel; ++j) {
      const int64_t ox = ax.output_reading<index_t>(x, j);
      if (ox < 0) continue;
      const int64_t row = (c * ay.kernel + i) * ax.kernel + j;
      sum += static_cast<acc_t>(columns[row * width + (oy - first_row) * ax.out + ox]);
    }
  }
  return sum;
}

// The input rows [first, last) that output rows [first_row, first_row + rows) read through some tap.
struct RowRange {
  int64_t first, last;
};

SEGOPS_HOST_DEVICE RowRange input_rows_read(const ConvAxis& ay, int64_t first_row, int64_t rows) {
  const int64_t first = ay.input_at(first_row, 0);
  const int64_t last = ay.input_at(first_row + rows - 1, ay.kernel - 1) + 1;
  return {first < 0 ? 0 : first, last > ay.in ? ay.in : last};
}

// Depthwise convolution (one filter per channel): output (n, c, oy, ox) before the bias, taps summed in order. The
// filter's tap t is filter[t * tap_stride] (1 for the [C, kH, kW] weight; C for its [kH, kW, C] transpose, which the
// GPU reads when consecutive threads take consecutive channels).
template <typename acc_t, typename scalar_t>
SEGOPS_HOST_DEVICE acc_t depthwise_sum(const scalar_t* input, const StridedImage& image, const scalar_t* filter,
                                       int64_t tap_stride, const ConvAxis& ay, const ConvAxis& ax, int64_t n, int64_t c,
                                       int64_t oy, int64_t ox) {
  acc_t sum = 0;
  for (int64_t i = 0; i < ay.kernel; ++i) {
    const int64_t y = ay.input_at(oy, i);
    if (y < 0 || y >= ay.in) continue;
    for (int64_t j = 0; j < ax.kernel; ++j) {
      const int64_t x = ax.input_at(ox, j);
      if (x < 0 || x >= ax.in) continue;
      sum += static_cast<acc_t>(filter[(i * ax.kernel + j) * tap_stride]) *
             static_cast<acc_t>(input[image.offset(n, c, y, x)]);
    }
  }
  return sum;
}

// Its input gradient at (n, c, y, x), a gather over the taps that read it, in tap order; grad [N, C, Ho, Wo] is read
// through its strides (grad_image) and the filter as in depthwise_sum.
template <typename acc_t, typename index_t = int64_t, typename scalar_t>
SEGOPS_HOST_DEVICE acc_t depthwise_input_grad(const scalar_t* grad, const StridedImage& grad_image,
                                              const scalar_t* filter, int64_t tap_stride, const ConvAxis& ay,
                                              const ConvAxis& ax, int64_t n, int64_t c, int64_t y, int64_t x) {
  acc_t sum = 0;
  for (int64_t i = 0; i < ay.kernel; ++i) {
    const int64_t oy = ay.output_reading<index_t>(y, i);
    if (oy < 0) continue;
    for (int64_t j = 0; j < ax.kernel; ++j) {
      const int64_t ox = ax.output_reading<index_t>(x, j);
      if (ox < 0) continue;
      sum += static_cast<acc_t>(filter[(i * ax.kernel + j) * tap_stride]) *
             static_cast<acc_t>(grad[grad_image.offset(n, c, oy, ox)]);
    }
  }
  return sum;
}

// The depthwise weight gradient's share of output column ox of plane (n, c) for tap (i, j): sum over the column's
// outputs of grad * the input that tap read, in oy order; grad and input are read through their strides. A column
// rather than a row, so that the threads of a warp (consecutive ox, or consecutive c for channels_last tensors) read
// consecutive addresses at each step.
template <typename acc_t, typename index_t = int64_t, typename scalar_t>
SEGOPS_HOST_DEVICE acc_t depthwise_weight_grad_column(const scalar_t* grad, const StridedImage& grad_image,
                                                      const scalar_t* input, const StridedImage& image,
                                                      const ConvAxis& ay, const ConvAxis& ax, int64_t n, int64_t c,
                                                      int64_t ox, int64_t i, int64_t j) {
  const int64_t x = ax.input_at(ox, j);
  if (x < 0 || x >= ax.in) return acc_t(0);
  acc_t sum = 0;
  const int64_t last = ay.last_output_inside<index_t>(i);
  for (int64_t oy = ay.first_output_inside<index_t>(i); oy < last; ++oy) {
    sum += static_cast<acc_t>(grad[grad_image.offset(n, c, oy, ox)]) *
           static_cast<acc_t>(input[image.offset(n, c, ay.input_at(oy, i), x)]);
  }
  return sum;
}

}  // namespace segops

#pragma once
// Argument checks of max_unpool2d on every backend; segops/ops/max_unpool.py repeats the messages word for word in
// the fake kernels. Index values are checked where they are read (max_unpool.h, unpool_index_in_range).
#include <ATen/core/Tensor.h>

#include <vector>

#include "max_unpool/max_unpool.h"

namespace segops {

// A checked call: the output's (or, for the backward, the input gradient's) shape, the memory format every tensor of
// the call is made contiguous in (channels_last where the input, or the backward's indices, is channels_last and not
// also contiguous), the layout the kernels index with, and the input's [H, W] and output's [Ho, Wo] sizes.
struct CheckedUnpool {
  std::vector<int64_t> result_shape;
  at::MemoryFormat format;
  UnpoolLayout layout;
  int64_t height, width, out_h, out_w;

  int64_t in_plane() const { return height * width; }
  int64_t out_plane() const { return out_h * out_w; }
};

// Wants input [N, C, H, W] of a float dtype, indices int64 of input's shape and device, output sizes >= 0; planes
// of at most 2^31 - 1 elements (the CUDA kernels keep plane positions as int32).
CheckedUnpool checked_max_unpool2d(const at::Tensor& input, const at::Tensor& indices, int64_t output_height,
                                   int64_t output_width);

// The backward: grad [N, C, Ho, Wo] of a float dtype, indices int64 [N, C, H, W] on grad's device.
CheckedUnpool checked_max_unpool2d_backward(const at::Tensor& grad, const at::Tensor& indices);

// Throws "<op>: indices[n, c, h, w] = v is outside [0, Ho * Wo) = [0, 1024) of its output plane", the error of the
// index at `offset` of `indices` (contiguous in checked.format) on the CPU; the CUDA kernels print the same words.
[[noreturn]] void fail_unpool_index(const char* op, const at::Tensor& indices, const CheckedUnpool& checked,
                                    int64_t offset);

}  // namespace segops

#pragma once
// Max-unpooling arithmetic, shared by the CPU launcher and the CUDA kernels. Input element p of plane (n, c) (its
// flat position h * W + w in the [H, W] plane) goes to position indices[n, c, h, w] of the [Ho, Wo] output plane;
// every other output is zero. When several inputs of a plane name one output (overlapping pooling windows), the
// input at the largest position p wins, as the last write does in PyTorch's CPU loop, and only the winner receives
// that output's gradient: the backward is the true derivative of the forward, and the forward is its adjoint.
#include <cstdint>

#include "common/macros.h"

namespace segops {

// The memory layout of a call's tensors ([N, C, H, W] input and indices, [N, C, Ho, Wo] output and winners): all
// contiguous in one format, so element (n, c, p) of a plane of `plane` elements sits at one offset formula.
struct UnpoolLayout {
  int64_t channels;
  bool channels_last;

  SEGOPS_HOST_DEVICE int64_t offset(int64_t n, int64_t c, int64_t p, int64_t plane) const {
    return channels_last ? (n * plane + p) * channels + c : (n * channels + c) * plane + p;
  }
};

// Element (n, c, p) at a flat memory offset of a tensor in `layout` with planes of `plane` elements, in index_t
// arithmetic (int32_t where the GPU kernels' tensors allow it: see with_index_type).
template <typename index_t>
struct UnpoolElement {
  index_t n, c, p;
};

template <typename index_t>
SEGOPS_HOST_DEVICE UnpoolElement<index_t> unpool_element(const UnpoolLayout& layout, index_t offset, index_t plane) {
  const index_t channels = static_cast<index_t>(layout.channels);
  if (layout.channels_last) {
    const index_t pixel = offset / channels;
    return {pixel / plane, offset % channels, pixel % plane};
  }
  const index_t plane_index = offset / plane;
  return {plane_index / channels, plane_index % channels, offset % plane};
}

// An index names an output of its plane (NaN-free by type; negative and too-large values fail).
SEGOPS_HOST_DEVICE bool unpool_index_in_range(int64_t index, int64_t out_plane) {
  return index >= 0 && index < out_plane;
}

// The output plane [Ho, Wo] cut into one tile per input (i, j) of [H, W]: rows [i * rows, (i + 1) * rows) and
// columns [j * cols, (j + 1) * cols), rows = Ho / H and cols = Wo / W (both >= 1). Where each input's index lies in
// its own tile, as with non-overlapping pooling (SegNet's 2x2, stride 2), distinct inputs name distinct outputs:
// every input wins its output, and no index is out of range.
struct UnpoolTiles {
  int64_t rows, cols, out_width;

  // Whether an index lies in the tile whose top-left output is at `corner` (i * rows * Wo + j * cols for input (i,
  // j)): index - corner is r * Wo + c for some r < rows and c < cols. Without branches (one unsigned compare a row),
  // so that a loop over a plane's inputs stays a plain walk.
  // kRows, kCols > 0: rows and cols known at compile time (2x2 pooling), the loop unrolled.
  template <int kRows = 0, int kCols = 0>
  SEGOPS_HOST_DEVICE bool holds(int64_t corner, int64_t index) const {
    const int64_t offset = index - corner;
    const int64_t tile_rows = kRows > 0 ? kRows : rows, tile_cols = kCols > 0 ? kCols : cols;
    bool inside = false;
    for (int64_t r = 0; r < tile_rows; ++r)
      inside |= static_cast<uint64_t>(offset - r * out_width) < static_cast<uint64_t>(tile_cols);
    return inside;
  }
};

}  // namespace segops

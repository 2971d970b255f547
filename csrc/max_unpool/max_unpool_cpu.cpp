// Max-unpooling on the CPU. Each plane (n, c) is unpooled by one thread, in parallel over planes:
//  - forward: the thread zeroes its output plane (so it is in cache when the scatter arrives) and writes its inputs
//    in increasing position order, so the last write, the input at the largest position, wins (max_unpool.h);
//  - backward: a gather; the thread visits its inputs in decreasing position order and marks each output it reads,
//    so the first visitor, the winner, takes the gradient and later (losing) duplicates get zero.
// No atomic arithmetic, bitwise reproducible for any thread count. An index out of range is never read or written
// through; the error names the first such index in memory order (a compare-exchange keeps the smallest offset),
// whatever the thread count.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_memory.h"
#include "max_unpool/max_unpool.h"
#include "max_unpool/max_unpool_checks.h"

namespace segops {
namespace {

// The smallest memory offset of a bad index seen by any thread, or max() for none.
class FirstBadIndex {
 public:
  void record(int64_t offset) {
    int64_t current = offset_.load();
    while (offset < current && !offset_.compare_exchange_weak(current, offset)) {
    }
  }
  void throw_if_any(const char* op, const at::Tensor& indices, const CheckedUnpool& checked) const {
    if (offset_.load() != kNone) fail_unpool_index(op, indices, checked, offset_.load());
  }

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> offset_{kNone};
};

// Planes per parallel task: enough to amortise the task, few enough to balance two threads on small batches.
int64_t planes_per_task(int64_t plane_elements) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_elements));
}

// One plane's elements: element p at base[p * stride], stride 1 (contiguous; a compile-time constant, so the loops
// are plain array walks) or C (channels_last).
using UnitStride = std::integral_constant<int64_t, 1>;

// Forward of one plane whose output is zero: returns the first position whose index is out of range, or -1.
template <typename scalar_t, typename stride_t>
int64_t unpool_plane(const scalar_t* input, const int64_t* indices, scalar_t* output, int64_t in_plane,
                     int64_t out_plane, stride_t stride) {
  for (int64_t p = 0; p < in_plane; ++p) {
    const int64_t index = indices[p * stride];
    if (!unpool_index_in_range(index, out_plane)) return p;
    output[index * stride] = input[p * stride];  // in increasing p: the last write, the winner, stays
  }
  return -1;
}

// Which outputs of the plane being processed a winner has taken: an output is taken when its stamp is the plane's
// generation, so moving on to the next plane clears every mark at once. One per thread (thread_local), reused across
// planes and calls.
class TakenOutputs {
 public:
  // Readies the marks for a plane of out_plane outputs, none taken.
  uint32_t* next_plane(int64_t out_plane) {
    if (++generation_ == 0) {  // wrapped around: old stamps could equal the new generation
      std::fill(stamps_.begin(), stamps_.end(), 0);
      generation_ = 1;
    }
    if (stamps_.size() < static_cast<size_t>(out_plane)) stamps_.resize(out_plane, 0);
    return stamps_.data();
  }
  uint32_t generation() const { return generation_; }

 private:
  std::vector<uint32_t> stamps_;
  uint32_t generation_ = 0;
};

// Backward of one plane, one pass in decreasing position order: the first visitor of an output is its winner (the
// input at the largest position, the forward's last write) and takes its gradient; later (losing) duplicates get
// zero. Returns the first position whose index is out of range (its gradient is zero), or -1.
template <typename scalar_t, typename stride_t>
int64_t unpool_plane_backward(const scalar_t* grad, const int64_t* indices, scalar_t* grad_input, TakenOutputs& taken,
                              int64_t in_plane, int64_t out_plane, stride_t stride) {
  uint32_t* stamps = taken.next_plane(out_plane);
  const uint32_t generation = taken.generation();
  int64_t first_bad = -1;
  for (int64_t p = in_plane - 1; p >= 0; --p) {
    const int64_t index = indices[p * stride];
    if (!unpool_index_in_range(index, out_plane)) {
      first_bad = p;
      grad_input[p * stride] = scalar_t(0);
      continue;
    }
    grad_input[p * stride] = stamps[index] == generation ? scalar_t(0) : grad[index * stride];
    stamps[index] = generation;
  }
  return first_bad;
}

// Backward of one plane of height x width inputs whose every index lies in the input's own tile (UnpoolTiles), as
// non-overlapping pooling's do: each input is its output's winner, so the gradient is a plain gather, without the
// marks. Returns false at a row with an index outside its tile, the plane then left to unpool_plane_backward.
// kRows, kCols: as UnpoolTiles::holds's.
template <int kRows, int kCols, typename scalar_t, typename stride_t>
bool gather_tiled_plane(const scalar_t* grad, const int64_t* indices, scalar_t* grad_input, const UnpoolTiles& tiles,
                        int64_t height, int64_t width, stride_t stride) {
  for (int64_t i = 0; i < height; ++i) {
    const int64_t row_corner = i * tiles.rows * tiles.out_width;
    const int64_t* row_indices = indices + i * width * stride;
    // The row's check first, then its gather: each loop a plain walk.
    bool inside = true;
    for (int64_t j = 0; j < width; ++j)
      inside &= tiles.holds<kRows, kCols>(row_corner + j * tiles.cols, row_indices[j * stride]);
    if (!inside) return false;
    scalar_t* row_grad_input = grad_input + i * width * stride;
    for (int64_t j = 0; j < width; ++j) row_grad_input[j * stride] = grad[row_indices[j * stride] * stride];
  }
  return true;
}

// Runs plane_fn(plane, in_base, out_base, stride) for every plane (n, c) in parallel, where element p of the plane is
// at in_base + p * stride in [N, C, H, W] tensors and out_base + p * stride in [N, C, Ho, Wo] ones, and records the
// offset of the first bad index that plane_fn reports.
template <class PlaneFn>
void for_each_plane(const CheckedUnpool& checked, int64_t batch, int64_t work_per_plane, FirstBadIndex& bad,
                    const PlaneFn& plane_fn) {
  const UnpoolLayout& layout = checked.layout;
  const int64_t in_plane = checked.in_plane(), out_plane = checked.out_plane();
  at::parallel_for(0, batch * layout.channels, planes_per_task(work_per_plane), [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const int64_t n = plane / layout.channels, c = plane % layout.channels;
      const int64_t in_base = layout.offset(n, c, 0, in_plane), out_base = layout.offset(n, c, 0, out_plane);
      const int64_t first_bad = layout.channels_last ? plane_fn(in_base, out_base, layout.channels)
                                                     : plane_fn(in_base, out_base, UnitStride{});
      if (first_bad >= 0) bad.record(in_base + first_bad * (layout.channels_last ? layout.channels : 1));
    }
  });
}

at::Tensor max_unpool2d_forward_cpu(const at::Tensor& input, const at::Tensor& indices, int64_t output_height,
                                    int64_t output_width) {
  const CheckedUnpool checked = checked_max_unpool2d(input, indices, output_height, output_width);
  const at::TensorOptions options = input.options().memory_format(checked.format);
  if (input.numel() == 0) return at::zeros(checked.result_shape, options);  // nothing to scatter
  // No output position exists, so every index is out of range.
  if (checked.out_plane() == 0) fail_unpool_index("max_unpool2d", indices.contiguous(checked.format), checked, 0);
  at::Tensor output = checked.layout.channels_last ? zeros_with_huge_pages(checked.result_shape, options)
                                                   : empty_with_huge_pages(checked.result_shape, options);
  const at::Tensor input_c = input.contiguous(checked.format);
  const at::Tensor indices_c = indices.contiguous(checked.format);
  FirstBadIndex bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool2d_forward_cpu", [&] {
    const scalar_t* input_data = input_c.const_data_ptr<scalar_t>();
    const int64_t* indices_data = indices_c.const_data_ptr<int64_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    const int64_t in_plane = checked.in_plane(), out_plane = checked.out_plane();
    const int64_t work = in_plane + out_plane;
    for_each_plane(checked, input.size(0), work, bad, [&](int64_t in_base, int64_t out_base, auto stride) {
      // A contiguous output plane is zeroed by its own thread, so it is in cache when the scatter arrives; a
      // channels_last output was zeroed as a whole.
      if constexpr (std::is_same_v<decltype(stride), UnitStride>) {
        std::memset(output_data + out_base, 0, out_plane * sizeof(scalar_t));
      }
      return unpool_plane(input_data + in_base, indices_data + in_base, output_data + out_base, in_plane, out_plane,
                          stride);
    });
  });
  bad.throw_if_any("max_unpool2d", indices_c, checked);
  return output;
}

at::Tensor max_unpool2d_backward_cpu(const at::Tensor& grad, const at::Tensor& indices) {
  const CheckedUnpool checked = checked_max_unpool2d_backward(grad, indices);
  at::Tensor grad_input = empty_with_huge_pages(checked.result_shape, grad.options().memory_format(checked.format));
  if (grad_input.numel() == 0) return grad_input;
  if (checked.out_plane() == 0) {
    fail_unpool_index("_max_unpool2d_backward", indices.contiguous(checked.format), checked, 0);
  }
  const at::Tensor grad_c = grad.contiguous(checked.format);
  const at::Tensor indices_c = indices.contiguous(checked.format);
  FirstBadIndex bad;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "max_unpool2d_backward_cpu", [&] {
    const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
    const int64_t* indices_data = indices_c.const_data_ptr<int64_t>();
    scalar_t* grad_input_data = grad_input.mutable_data_ptr<scalar_t>();
    const int64_t in_plane = checked.in_plane(), out_plane = checked.out_plane();
    const bool tiled = checked.out_h >= checked.height && checked.out_w >= checked.width;
    const UnpoolTiles tiles{tiled ? checked.out_h / checked.height : 0, tiled ? checked.out_w / checked.width : 0,
                            checked.out_w};
    for_each_plane(checked, grad.size(0), 2 * in_plane, bad, [&](int64_t in_base, int64_t out_base, auto stride) {
      if (tiled) {
        const scalar_t* plane_grad = grad_data + out_base;
        const int64_t* plane_indices = indices_data + in_base;
        scalar_t* plane_grad_input = grad_input_data + in_base;
        const bool gathered = tiles.rows == 2 && tiles.cols == 2
                                  ? gather_tiled_plane<2, 2>(plane_grad, plane_indices, plane_grad_input, tiles,
                                                             checked.height, checked.width, stride)
                                  : gather_tiled_plane<0, 0>(plane_grad, plane_indices, plane_grad_input, tiles,
                                                             checked.height, checked.width, stride);
        if (gathered) return int64_t(-1);
      }
      thread_local TakenOutputs taken;
      return unpool_plane_backward(grad_data + out_base, indices_data + in_base, grad_input_data + in_base, taken,
                                   in_plane, out_plane, stride);
    });
  });
  bad.throw_if_any("_max_unpool2d_backward", indices_c, checked);
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("max_unpool2d", &max_unpool2d_forward_cpu);
  m.impl("_max_unpool2d_backward", &max_unpool2d_backward_cpu);
}

}  // namespace segops

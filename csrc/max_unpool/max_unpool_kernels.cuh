#pragma once
// Max-unpooling GPU kernels and their host-side launch, shared by max_unpool_cuda.cu (CudaLaunch) and the test-only
// host emulation (EmulatedLaunch). A plain scatter would let thread scheduling pick the winner of a duplicated index;
// instead the winner is settled first with an integer max, which does not depend on the order of the updates:
//  - winners: one thread per input element, atomicMax of its plane position into an int32 tensor of the output's
//    shape (-1 where no input lands), so the largest position wins (max_unpool.h);
//  - forward: one thread per output element gathers its winner's value, or writes zero;
//  - backward: one thread per input element gathers its output's gradient if it is that output's winner, else zero.
// No floating-point atomics: bitwise equal to the CPU path for any grid. An index out of range fails a device-side
// assert (printing the index and its value, as the CPU error names them) and is never written through.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include "max_unpool/max_unpool.h"
#include "max_unpool/max_unpool_checks.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

struct UnpoolGeometry {
  UnpoolLayout layout;
  int64_t width, in_plane, out_plane;
};

template <typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    max_unpool_winner_kernel(int64_t total, const int64_t* __restrict__ indices, int32_t* __restrict__ winners,
                             UnpoolGeometry g, bool backward) {
  SEGOPS_KERNEL_LOOP_T(index_t, offset, total) {
    const UnpoolElement<index_t> e = unpool_element(g.layout, offset, static_cast<index_t>(g.in_plane));
    const int64_t index = indices[offset];
    const bool in_range = unpool_index_in_range(index, g.out_plane);
    SEGOPS_KERNEL_ASSERT_DETAILED(
        in_range, "max_unpool2d: an index is outside [0, Ho * Wo) of its output plane",
        "%s: indices[%lld, %lld, %lld, %lld] = %lld is outside [0, Ho * Wo) = [0, %lld) of its output plane",
        backward ? "_max_unpool2d_backward" : "max_unpool2d", static_cast<long long>(e.n), static_cast<long long>(e.c),
        static_cast<long long>(e.p / static_cast<index_t>(g.width)),
        static_cast<long long>(e.p % static_cast<index_t>(g.width)), static_cast<long long>(index),
        static_cast<long long>(g.out_plane));
    if (!in_range) continue;
    SEGOPS_ATOMIC_MAX(winners + g.layout.offset(e.n, e.c, index, g.out_plane), static_cast<int32_t>(e.p));
  }
}

template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    max_unpool_forward_kernel(int64_t total, const scalar_t* __restrict__ input, const int32_t* __restrict__ winners,
                              scalar_t* __restrict__ output, UnpoolGeometry g) {
  SEGOPS_KERNEL_LOOP_T(index_t, offset, total) {
    const UnpoolElement<index_t> e = unpool_element(g.layout, offset, static_cast<index_t>(g.out_plane));
    const int32_t winner = winners[offset];
    output[offset] = winner >= 0 ? input[g.layout.offset(e.n, e.c, winner, g.in_plane)] : scalar_t(0);
  }
}

template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    max_unpool_backward_kernel(int64_t total, const scalar_t* __restrict__ grad, const int64_t* __restrict__ indices,
                               const int32_t* __restrict__ winners, scalar_t* __restrict__ grad_input,
                               UnpoolGeometry g) {
  SEGOPS_KERNEL_LOOP_T(index_t, offset, total) {
    const UnpoolElement<index_t> e = unpool_element(g.layout, offset, static_cast<index_t>(g.in_plane));
    const int64_t index = indices[offset];
    const int64_t out_offset = unpool_index_in_range(index, g.out_plane)
                                   ? g.layout.offset(e.n, e.c, index, g.out_plane)
                                   : int64_t(-1);  // reported by the winner kernel
    grad_input[offset] = out_offset >= 0 && winners[out_offset] == e.p ? grad[out_offset] : scalar_t(0);
  }
}

// The winner of every output position, int32 [N, C, Ho, Wo] in checked.format; indices_c is contiguous in it.
template <class Launch>
at::Tensor unpool_winners(const Launch& launch, const at::Tensor& indices_c, const CheckedUnpool& checked,
                          const UnpoolGeometry& g, bool backward) {
  const std::vector<int64_t> output_shape{indices_c.size(0), indices_c.size(1), checked.out_h, checked.out_w};
  at::Tensor winners = at::full(output_shape, -1, indices_c.options().dtype(at::kInt).memory_format(checked.format));
  with_index_type({indices_c, winners}, [&](auto index) {
    launch(indices_c.numel(), max_unpool_winner_kernel<decltype(index)>, indices_c.numel(),
           indices_c.const_data_ptr<int64_t>(), winners.mutable_data_ptr<int32_t>(), g, backward);
  });
  return winners;
}

inline UnpoolGeometry unpool_geometry(const CheckedUnpool& checked) {
  return {checked.layout, checked.width, checked.in_plane(), checked.out_plane()};
}

template <class Launch>
at::Tensor max_unpool2d_forward_launch(const Launch& launch, const at::Tensor& input, const at::Tensor& indices,
                                       int64_t output_height, int64_t output_width) {
  const CheckedUnpool checked = checked_max_unpool2d(input, indices, output_height, output_width);
  const at::Tensor input_c = input.contiguous(checked.format);
  const UnpoolGeometry g = unpool_geometry(checked);
  const at::Tensor winners = unpool_winners(launch, indices.contiguous(checked.format), checked, g, false);
  at::Tensor output = at::empty(checked.result_shape, input.options().memory_format(checked.format));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "max_unpool_forward_kernel", [&] {
    with_index_type({input_c, output}, [&](auto index) {
      launch(output.numel(), max_unpool_forward_kernel<scalar_t, decltype(index)>, output.numel(),
             input_c.const_data_ptr<scalar_t>(), winners.const_data_ptr<int32_t>(), output.mutable_data_ptr<scalar_t>(),
             g);
    });
  });
  return output;
}

template <class Launch>
at::Tensor max_unpool2d_backward_launch(const Launch& launch, const at::Tensor& grad, const at::Tensor& indices) {
  const CheckedUnpool checked = checked_max_unpool2d_backward(grad, indices);
  const at::Tensor grad_c = grad.contiguous(checked.format);
  const at::Tensor indices_c = indices.contiguous(checked.format);
  const UnpoolGeometry g = unpool_geometry(checked);
  const at::Tensor winners = unpool_winners(launch, indices_c, checked, g, true);
  at::Tensor grad_input = at::empty(checked.result_shape, grad.options().memory_format(checked.format));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "max_unpool_backward_kernel", [&] {
    with_index_type({grad_c, grad_input}, [&](auto index) {
      launch(grad_input.numel(), max_unpool_backward_kernel<scalar_t, decltype(index)>, grad_input.numel(),
             grad_c.const_data_ptr<scalar_t>(), indices_c.const_data_ptr<int64_t>(), winners.const_data_ptr<int32_t>(),
             grad_input.mutable_data_ptr<scalar_t>(), g);
    });
  });
  return grad_input;
}

}  // namespace segops

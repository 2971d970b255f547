#pragma once
// Flow-warp GPU kernels and their host-side launch, shared by flow_warp_cuda.cu (CudaLaunch) and the test-only host
// emulation (EmulatedLaunch). The arithmetic is flow_warp.h's; the feature is read through its strides.
//  - forward: one thread per output element;
//  - flow and scale gradients: one thread per output pixel, summing over channels in order (no atomics);
//  - feature gradient, default: one thread per output element scattering with atomic adds into a float buffer;
//  - feature gradient, deterministic (torch.use_deterministic_algorithms): a gather. Output pixels are sorted
//    (stably) by the cell of their sample; each feature element then sums, in a fixed order, the pixels of the four
//    cells whose samples can touch it. Extra memory: one int64 key and index per output pixel and one offset per
//    cell, (N * (H + 1) * (W + 1)): a small multiple of one feature channel. No atomics, bitwise reproducible.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <optional>
#include <tuple>

#include "flow_warp/flow_warp.h"
#include "flow_warp/flow_warp_checks.h"
// After ATen: see common/kernel.h.
#include "common/kernel.h"

namespace segops {

// The feature's sizes and strides and the output's size, as the kernels take them.
struct WarpGeometry {
  int64_t channels, height, width, out_h, out_w;
  int64_t stride_n, stride_c, stride_h, stride_w;
  int64_t scale_channel_stride;  // 0 for a [N, 1, Ho, Wo] scale

  __device__ int64_t pixels() const { return out_h * out_w; }
  __device__ int64_t scale_offset(int64_t n, int64_t c, int64_t p) const {
    return n * (scale_channel_stride == 0 ? 1 : channels) * pixels() + c * scale_channel_stride + p;
  }
};

// The sample of output pixel p of image n, from flow [N, 2, Ho, Wo] (contiguous).
template <typename T, typename index_t>
__device__ WarpSample<T> warp_sample_of_pixel(const T* flow, const WarpGeometry& g, int64_t n, index_t p) {
  const T* flow_n = flow + n * 2 * g.pixels();
  const index_t out_w = static_cast<index_t>(g.out_w);
  return warp_sample(p / out_w, p % out_w, flow_n[p], flow_n[g.pixels() + p], g.height, g.width);
}

// kChannelFastest (a channels_last feature): threads walk (n, p, c), so that a warp reads consecutive channels of
// one pixel (the stores are Ho * Wo apart); otherwise (n, c, p), the output's order.
template <typename scalar_t, typename index_t, bool kChannelFastest>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    flow_warp_forward_kernel(int64_t total, const scalar_t* __restrict__ feature,
                             const at::opmath_type<scalar_t>* __restrict__ flow, const scalar_t* __restrict__ scale,
                             scalar_t* __restrict__ output, WarpGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t pixels = static_cast<index_t>(g.pixels()), channels = static_cast<index_t>(g.channels);
  const index_t out_w = static_cast<index_t>(g.out_w);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t p = kChannelFastest ? (index / channels) % pixels : index % pixels;
    const index_t c = kChannelFastest ? index % channels : (index / pixels) % channels;
    const index_t n = index / (pixels * channels);
    const acc_t* flow_n = flow + int64_t(n) * 2 * pixels;
    const WarpValuePoint<acc_t> point = warp_value_point(p / out_w, p % out_w, flow_n[p], flow_n[pixels + p], g.height,
                                                         g.width, g.stride_h, g.stride_w);
    acc_t value = warp_value(feature + n * g.stride_n + c * g.stride_c, point);
    if (scale != nullptr) value *= static_cast<acc_t>(scale[g.scale_offset(n, c, p)]);
    output[kChannelFastest ? (int64_t(n) * channels + c) * pixels + p : int64_t(index)] = static_cast<scalar_t>(value);
  }
}

template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    flow_warp_backward_flow_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                   const scalar_t* __restrict__ feature,
                                   const at::opmath_type<scalar_t>* __restrict__ flow,
                                   const scalar_t* __restrict__ scale,
                                   at::opmath_type<scalar_t>* __restrict__ grad_flow,
                                   at::opmath_type<scalar_t>* __restrict__ grad_scale, WarpGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t pixels = static_cast<index_t>(g.pixels());
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t p = index % pixels;
    const index_t n = index / pixels;
    const WarpPoint<acc_t> point = warp_point(warp_sample_of_pixel(flow, g, n, p), g.stride_h, g.stride_w, g.width);
    acc_t grad_dx = 0, grad_dy = 0, grad_shared_scale = 0;
    for (int64_t c = 0; c < g.channels; ++c) {
      const scalar_t* image = feature + n * g.stride_n + c * g.stride_c;
      const acc_t grad_out = static_cast<acc_t>(grad[(n * g.channels + c) * g.pixels() + p]);
      const acc_t scaled = scale != nullptr ? grad_out * static_cast<acc_t>(scale[g.scale_offset(n, c, p)]) : grad_out;
      const WarpGradient<acc_t> d = warp_gradient(image, point);
      grad_dx += scaled * d.d_dx;
      grad_dy += scaled * d.d_dy;
      if (grad_scale != nullptr) {
        const acc_t contribution = grad_out * warp_value(image, point);
        if (g.scale_channel_stride == 0) {
          grad_shared_scale += contribution;
        } else {
          grad_scale[g.scale_offset(n, c, p)] = contribution;
        }
      }
    }
    grad_flow[n * 2 * g.pixels() + p] = grad_dx;
    grad_flow[(n * 2 + 1) * g.pixels() + p] = grad_dy;
    if (grad_scale != nullptr && g.scale_channel_stride == 0) grad_scale[g.scale_offset(n, 0, p)] = grad_shared_scale;
  }
}

// grad times scale at output element (n, c, p), in acc_t.
template <typename scalar_t>
__device__ at::opmath_type<scalar_t> scaled_grad(const scalar_t* grad, const scalar_t* scale, const WarpGeometry& g,
                                                 int64_t n, int64_t c, int64_t p) {
  using acc_t = at::opmath_type<scalar_t>;
  const acc_t value = static_cast<acc_t>(grad[(n * g.channels + c) * g.pixels() + p]);
  return scale != nullptr ? value * static_cast<acc_t>(scale[g.scale_offset(n, c, p)]) : value;
}

template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    flow_warp_backward_feature_atomic_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                             const at::opmath_type<scalar_t>* __restrict__ flow,
                                             const scalar_t* __restrict__ scale,
                                             at::opmath_type<scalar_t>* __restrict__ grad_feature,
                                             int64_t grad_feature_numel, WarpGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  AtomicAdd<acc_t> add{grad_feature, grad_feature_numel};
  const index_t pixels = static_cast<index_t>(g.pixels()), channels = static_cast<index_t>(g.channels);
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t p = index % pixels;
    const index_t c = (index / pixels) % channels;
    const index_t n = index / (pixels * channels);
    const WarpPoint<acc_t> point = warp_point(warp_sample_of_pixel(flow, g, n, p), g.stride_h, g.stride_w, g.width);
    if (!point.touches_feature) continue;
    const int64_t plane_offset = (n * g.channels + c) * g.height * g.width;
    bilinear_add(add, plane_offset, point.in_plane, point.value, scaled_grad(grad, scale, g, n, c, p));
  }
}

// The deterministic path's sort key of output pixel p of image n: its cell, numbered over the (H + 1) x (W + 1)
// cells of each image (cells start at -1); pixels whose sample touches nothing get the key past the last cell.
template <typename T, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    flow_warp_cell_key_kernel(int64_t total, const T* __restrict__ flow, int64_t* __restrict__ keys, WarpGeometry g,
                              int64_t batch) {
  const int64_t cells = (g.height + 1) * (g.width + 1);
  const index_t pixels = static_cast<index_t>(g.pixels());
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t p = index % pixels;
    const index_t n = index / pixels;
    const WarpSample<T> s = warp_sample_of_pixel(flow, g, n, p);
    keys[index] = s.cell_y == -2 ? batch * cells : n * cells + (s.cell_y + 1) * (g.width + 1) + (s.cell_x + 1);
  }
}

// Feature element (n, c, qy, qx) gathers from the pixels of the four cells whose samples can touch it, cells and
// pixels in a fixed order. `order` lists output pixels (n * Ho * Wo + p) sorted stably by cell; the pixels of cell
// key k are order[cell_begin[k] .. cell_begin[k + 1]).
template <typename scalar_t, typename index_t>
__global__ void SEGOPS_LAUNCH_BOUNDS(kThreadsPerBlock)
    flow_warp_backward_feature_gather_kernel(int64_t total, const scalar_t* __restrict__ grad,
                                             const at::opmath_type<scalar_t>* __restrict__ flow,
                                             const scalar_t* __restrict__ scale, const int64_t* __restrict__ order,
                                             const int64_t* __restrict__ cell_begin,
                                             at::opmath_type<scalar_t>* __restrict__ grad_feature, WarpGeometry g) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t cells = (g.height + 1) * (g.width + 1);
  const index_t width = static_cast<index_t>(g.width), height = static_cast<index_t>(g.height);
  const index_t channels = static_cast<index_t>(g.channels), pixels = static_cast<index_t>(g.pixels());
  SEGOPS_KERNEL_LOOP_T(index_t, index, total) {
    const index_t qx = index % width;
    const index_t qy = (index / width) % height;
    const index_t c = (index / (width * height)) % channels;
    const index_t n = index / (width * height * channels);
    acc_t sum = 0;
    // The element is the high neighbour of cell (qy - 1, .) and the low one of cell (qy, .); likewise along x.
    for (int64_t high_y = 1; high_y >= 0; --high_y) {
      for (int64_t high_x = 1; high_x >= 0; --high_x) {
        const int64_t key = n * cells + (qy - high_y + 1) * (g.width + 1) + (qx - high_x + 1);
        for (int64_t i = cell_begin[key]; i < cell_begin[key + 1]; ++i) {
          const index_t p = static_cast<index_t>(order[i] - int64_t(n) * pixels);
          const WarpSample<acc_t> s = warp_sample_of_pixel(flow, g, n, p);
          const acc_t weight = (high_y ? s.y.w_high : s.y.w_low) * (high_x ? s.x.w_high : s.x.w_low);
          sum += weight * scaled_grad(grad, scale, g, n, c, p);
        }
      }
    }
    grad_feature[index] = sum;
  }
}

inline WarpGeometry warp_geometry(const at::Tensor& feature, const CheckedFlowWarp& checked) {
  return {
      feature.size(1),   feature.size(2),   feature.size(3),   checked.output_shape[2], checked.output_shape[3],
      feature.stride(0), feature.stride(1), feature.stride(2), feature.stride(3),       checked.scale_channel_stride};
}

template <class Launch>
at::Tensor flow_warp_forward_launch(const Launch& launch, const at::Tensor& feature, const at::Tensor& flow,
                                    const std::optional<at::Tensor>& scale) {
  const CheckedFlowWarp checked = checked_flow_warp("flow_warp", feature, flow, scale);
  // A map with no pixels has nothing to sample: zeros. Otherwise every output element is written by the kernel.
  if (feature.size(2) == 0 || feature.size(3) == 0) return at::zeros(checked.output_shape, feature.options());
  at::Tensor output = at::empty(checked.output_shape, feature.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feature.scalar_type(), "flow_warp_forward_kernel", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    // A feature whose channels are its densest dimension (channels_last) is walked channel-fastest.
    const bool channel_fastest = feature.size(1) > 1 && feature.stride(1) == 1 && !force_output_thread_order();
    with_index_type({feature, checked.flow, checked.scale, output}, [&](auto index) {
      using index_t = decltype(index);
      launch(output.numel(),
             channel_fastest ? flow_warp_forward_kernel<scalar_t, index_t, true>
                             : flow_warp_forward_kernel<scalar_t, index_t, false>,
             output.numel(), feature.const_data_ptr<scalar_t>(), checked.flow.const_data_ptr<acc_t>(),
             checked.scale.defined() ? checked.scale.const_data_ptr<scalar_t>() : nullptr,
             output.mutable_data_ptr<scalar_t>(), warp_geometry(feature, checked));
    });
  });
  return output;
}

// Returns (grad_feature, grad_flow, grad_scale); grad_scale is empty ([0]) when scale is None.
template <class Launch>
std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_warp_backward_launch(const Launch& launch, const at::Tensor& grad,
                                                                         const at::Tensor& feature,
                                                                         const at::Tensor& flow,
                                                                         const std::optional<at::Tensor>& scale,
                                                                         bool deterministic) {
  const CheckedFlowWarp checked = checked_flow_warp("_flow_warp_backward", feature, flow, scale);
  check_flow_warp_grad(grad, feature, checked);
  const at::ScalarType acc_type = at::toOpMathType(feature.scalar_type());
  // Accumulated in acc_t (float for float16/bfloat16: their atomics would round every contribution), converted once.
  at::Tensor grad_feature = at::zeros(feature.sizes(), feature.options().dtype(acc_type));
  at::Tensor grad_flow = at::zeros(checked.flow.sizes(), checked.flow.options());
  at::Tensor grad_scale = checked.scale.defined()
                              ? at::zeros(checked.scale.sizes(), checked.scale.options().dtype(acc_type))
                              : at::empty({0}, feature.options());
  if (grad.numel() > 0 && feature.size(2) > 0 && feature.size(3) > 0) {
    const at::Tensor grad_c = grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feature.scalar_type(), "flow_warp_backward_kernel", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const WarpGeometry g = warp_geometry(feature, checked);
      const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
      const acc_t* flow_data = checked.flow.const_data_ptr<acc_t>();
      const scalar_t* scale_data = checked.scale.defined() ? checked.scale.const_data_ptr<scalar_t>() : nullptr;
      const int64_t batch = feature.size(0);
      const int64_t pixel_count = batch * g.out_h * g.out_w;
      with_index_type({grad_c, feature, checked.flow, checked.scale, grad_feature}, [&](auto index) {
        using index_t = decltype(index);
        launch(pixel_count, flow_warp_backward_flow_kernel<scalar_t, index_t>, pixel_count, grad_data,
               feature.const_data_ptr<scalar_t>(), flow_data, scale_data, grad_flow.mutable_data_ptr<acc_t>(),
               scale_data != nullptr ? grad_scale.mutable_data_ptr<acc_t>() : nullptr, g);
        if (!deterministic) {
          launch(grad_c.numel(), flow_warp_backward_feature_atomic_kernel<scalar_t, index_t>, grad_c.numel(), grad_data,
                 flow_data, scale_data, grad_feature.mutable_data_ptr<acc_t>(), grad_feature.numel(), g);
          return;
        }
        const int64_t cells = (g.height + 1) * (g.width + 1);
        at::Tensor keys = at::empty({pixel_count}, checked.flow.options().dtype(at::kLong));
        launch(pixel_count, flow_warp_cell_key_kernel<acc_t, index_t>, pixel_count, flow_data,
               keys.mutable_data_ptr<int64_t>(), g, batch);
        // A stable sort keeps each cell's pixels in increasing order: the gather's fixed order.
        const auto [sorted_keys, order] = keys.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
        const at::Tensor cell_begin = at::searchsorted(sorted_keys, at::arange(batch * cells + 1, keys.options()));
        launch(grad_feature.numel(), flow_warp_backward_feature_gather_kernel<scalar_t, index_t>, grad_feature.numel(),
               grad_data, flow_data, scale_data, order.const_data_ptr<int64_t>(), cell_begin.const_data_ptr<int64_t>(),
               grad_feature.mutable_data_ptr<acc_t>(), g);
      });
    });
  }
  return {grad_feature.to(feature.scalar_type()), grad_flow.to(flow.scalar_type()),
          grad_scale.to(feature.scalar_type())};
}

}  // namespace segops

// Flow warp on the CPU. Each output pixel's point (its neighbours' offsets and the weights of its value and
// derivatives, flow_warp.h) is computed once per pass and shared by every channel. The feature is read in place
// through its strides, so contiguous, channels_last and strided features all cost the same and none is copied.
//  - Forward: parallel over output rows (n, y), channels then pixels inside.
//  - Backward, flow and scale gradients: parallel over output rows; each pixel's sums over channels run in channel
//    order on one thread.
//  - Backward, feature gradient: parallel over blocks of (n, c) planes, each plane accumulated by one thread in pixel
//    order. So every gradient is bitwise reproducible for any thread count, without atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <memory>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/cpu_memory.h"
#include "flow_warp/flow_warp.h"
#include "flow_warp/flow_warp_checks.h"

namespace segops {
namespace {

// Planes per unit of the feature-gradient pass. Few: planes whose sizes are multiples of 4 KB map the same pixel to
// the same L1 cache set, so 16 planes evict each other (measured: 16 took twice as long as 4).
constexpr int64_t kPlaneBlock = 4;

// The points (warp_point) of output row y of image n, from flow [N, 2, Ho, Wo] (contiguous, accumulation dtype),
// for a feature with the given row and pixel strides. Computed per row by the thread that uses them (they stay in
// cache while every channel reads them: a float point is 120 bytes, so a row of up to about 250 pixels fits a 32 KB L1,
// a wider one in L2); a buffer of all pixels' points would cost more than few channels' work.
template <typename T>
inline __attribute__((always_inline)) void warp_row_points(WarpPoint<T>* points, const T* flow, int64_t n, int64_t y,
                                                           int64_t out_h, int64_t out_w, int64_t height, int64_t width,
                                                           int64_t row_stride, int64_t pixel_stride) {
  const T* flow_x = flow + n * 2 * out_h * out_w + y * out_w;
  const T* flow_y = flow_x + out_h * out_w;
  for (int64_t x = 0; x < out_w; ++x) {
    points[x] = warp_point(warp_sample(y, x, flow_x[x], flow_y[x], height, width), row_stride, pixel_stride, width);
  }
}

// The forward's points (WarpValuePoint) of output row y, from that row of the flow's two channels.
template <typename T>
inline __attribute__((always_inline)) void warp_value_row_points(WarpValuePoint<T>* points, const T* flow_x,
                                                                 const T* flow_y, int64_t y, int64_t out_w,
                                                                 int64_t height, int64_t width, int64_t row_stride,
                                                                 int64_t pixel_stride) {
  for (int64_t x = 0; x < out_w; ++x) {
    points[x] = warp_value_point(y, x, flow_x[x], flow_y[x], height, width, row_stride, pixel_stride);
  }
}

// Both for float, compiled for AVX2 as well as the baseline x86-64 (SSE2); GCC picks the copy when the library loads.
// With SSE4.1 and up, floor() is one instruction where the baseline calls libm: the points' geometry is most of a
// warp of few channels.
__attribute__((target_clones("avx2", "default"))) void warp_row_points_float(WarpPoint<float>* points,
                                                                             const float* flow, int64_t n, int64_t y,
                                                                             int64_t out_h, int64_t out_w,
                                                                             int64_t height, int64_t width,
                                                                             int64_t row_stride, int64_t pixel_stride) {
  warp_row_points(points, flow, n, y, out_h, out_w, height, width, row_stride, pixel_stride);
}

__attribute__((target_clones("avx2", "default"))) void warp_value_row_points_float(
    WarpValuePoint<float>* points, const float* flow_x, const float* flow_y, int64_t y, int64_t out_w, int64_t height,
    int64_t width, int64_t row_stride, int64_t pixel_stride) {
  warp_value_row_points(points, flow_x, flow_y, y, out_w, height, width, row_stride, pixel_stride);
}

// What the feature-gradient pass needs of a pixel's point: where its neighbours are in a gradient plane and their
// weights (a third of a WarpPoint; this pass keeps every pixel's).
template <typename T>
struct PlanePoint {
  BilinearOffsets in_plane;
  BilinearWeights<T> value;
  bool touches_feature;
};

// How to read the feature and the output-shaped tensors of one call.
struct WarpLayout {
  int64_t batch, channels, height, width, out_h, out_w;
  int64_t stride_n, stride_c, stride_h, stride_w;  // the feature's strides
  int64_t scale_channel_stride;

  explicit WarpLayout(const at::Tensor& feature, const CheckedFlowWarp& checked)
      : batch(feature.size(0)),
        channels(feature.size(1)),
        height(feature.size(2)),
        width(feature.size(3)),
        out_h(checked.output_shape[2]),
        out_w(checked.output_shape[3]),
        stride_n(feature.stride(0)),
        stride_c(feature.stride(1)),
        stride_h(feature.stride(2)),
        stride_w(feature.stride(3)),
        scale_channel_stride(checked.scale_channel_stride) {}

  int64_t pixels() const { return out_h * out_w; }
  template <typename T>
  void row_points(WarpPoint<T>* points, const T* flow, int64_t n, int64_t y) const {
    if constexpr (std::is_same_v<T, float>) {
      warp_row_points_float(points, flow, n, y, out_h, out_w, height, width, stride_h, stride_w);
    } else {
      warp_row_points(points, flow, n, y, out_h, out_w, height, width, stride_h, stride_w);
    }
  }
  // The forward's points of output row y of image n.
  template <typename T>
  void value_row_points(WarpValuePoint<T>* points, const T* flow, int64_t n, int64_t y) const {
    const T* flow_x = flow + n * 2 * pixels() + y * out_w;
    const T* flow_y = flow_x + pixels();
    if constexpr (std::is_same_v<T, float>) {
      warp_value_row_points_float(points, flow_x, flow_y, y, out_w, height, width, stride_h, stride_w);
    } else {
      warp_value_row_points(points, flow_x, flow_y, y, out_w, height, width, stride_h, stride_w);
    }
  }
  // Offset of channel c of scale [N, C or 1, Ho, Wo] (contiguous) for output pixel p of image n.
  int64_t scale_offset(int64_t n, int64_t c, int64_t p) const {
    return (n * (scale_channel_stride == 0 ? 1 : channels)) * pixels() + c * scale_channel_stride + p;
  }
};

at::Tensor flow_warp_forward_cpu(const at::Tensor& feature, const at::Tensor& flow,
                                 const std::optional<at::Tensor>& scale) {
  const CheckedFlowWarp checked = checked_flow_warp("flow_warp", feature, flow, scale);
  // A map with no pixels has nothing to sample: zeros. Otherwise every output element is written below.
  if (feature.size(2) == 0 || feature.size(3) == 0) return at::zeros(checked.output_shape, feature.options());
  at::Tensor output = empty_with_huge_pages(checked.output_shape, feature.options());
  if (output.numel() == 0) return output;
  const WarpLayout layout(feature, checked);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feature.scalar_type(), "flow_warp_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* flow_data = checked.flow.const_data_ptr<acc_t>();
    const scalar_t* feature_data = feature.const_data_ptr<scalar_t>();
    const scalar_t* scale_data = checked.scale.defined() ? checked.scale.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, layout.batch * layout.out_h, 1, [&](int64_t begin, int64_t end) {
      std::vector<WarpValuePoint<acc_t>> row_points(layout.out_w);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / layout.out_h, y = row % layout.out_h;
        layout.value_row_points(row_points.data(), flow_data, n, y);
        for (int64_t c = 0; c < layout.channels; ++c) {
          const scalar_t* image = feature_data + n * layout.stride_n + c * layout.stride_c;
          scalar_t* out = output_data + ((n * layout.channels + c) * layout.out_h + y) * layout.out_w;
          for (int64_t x = 0; x < layout.out_w; ++x) {
            acc_t value = warp_value(image, row_points[x]);
            if (scale_data != nullptr) {
              value *= static_cast<acc_t>(scale_data[layout.scale_offset(n, c, y * layout.out_w + x)]);
            }
            out[x] = static_cast<scalar_t>(value);
          }
        }
      }
    });
  });
  return output;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_warp_backward_cpu(const at::Tensor& grad, const at::Tensor& feature,
                                                                      const at::Tensor& flow,
                                                                      const std::optional<at::Tensor>& scale) {
  const CheckedFlowWarp checked = checked_flow_warp("_flow_warp_backward", feature, flow, scale);
  check_flow_warp_grad(grad, feature, checked);
  const at::ScalarType acc_type = at::toOpMathType(feature.scalar_type());
  // Accumulated in acc_t (float for half types), converted once at the end.
  // Each plane is zeroed below by the thread that accumulates into it.
  at::Tensor grad_feature = empty_with_huge_pages(feature.sizes(), feature.options().dtype(acc_type));
  at::Tensor grad_flow = at::zeros(checked.flow.sizes(), checked.flow.options());
  // Written in full below (when there is work).
  at::Tensor grad_scale = checked.scale.defined()
                              ? empty_with_huge_pages(checked.scale.sizes(), checked.scale.options().dtype(acc_type))
                              : at::empty({0}, feature.options());
  const WarpLayout layout(feature, checked);
  if (grad.numel() == 0 || layout.height == 0 || layout.width == 0) {
    grad_feature.zero_();
    grad_scale.zero_();
  } else {
    const at::Tensor grad_c = grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feature.scalar_type(), "flow_warp_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const acc_t* flow_data = checked.flow.const_data_ptr<acc_t>();
      const int64_t blocks = (layout.channels + kPlaneBlock - 1) / kPlaneBlock;
      // Kept for the feature-gradient pass only where several plane blocks of an image reuse them; with one block
      // (few channels) recomputing a point costs less than storing and reloading it. Not value-initialised: every
      // kept entry is written below.
      std::unique_ptr<PlanePoint<acc_t>[]> plane_points(
          blocks > 1 ? new PlanePoint<acc_t>[layout.batch * layout.pixels()] : nullptr);
      const auto plane_point = [&](const WarpPoint<acc_t>& point) {
        return PlanePoint<acc_t>{point.in_plane, point.value, point.touches_feature};
      };
      const scalar_t* feature_data = feature.const_data_ptr<scalar_t>();
      const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
      const scalar_t* scale_data = checked.scale.defined() ? checked.scale.const_data_ptr<scalar_t>() : nullptr;
      acc_t* grad_flow_data = grad_flow.mutable_data_ptr<acc_t>();
      acc_t* grad_scale_data = scale_data != nullptr ? grad_scale.mutable_data_ptr<acc_t>() : nullptr;
      const int64_t pixels = layout.pixels();

      // Flow and scale gradients: sums over channels per output pixel, in channel order, in per-row accumulators.
      const bool shared_scale = scale_data != nullptr && layout.scale_channel_stride == 0;
      const int64_t plane_size = layout.height * layout.width;
      acc_t* grad_feature_data = grad_feature.mutable_data_ptr<acc_t>();
      struct RowBuffers {
        std::vector<acc_t> sum_dx, sum_dy, sum_scale;
        std::vector<WarpPoint<acc_t>> points;
        explicit RowBuffers(int64_t width) : sum_dx(width), sum_dy(width), sum_scale(width), points(width) {}
      };
      // Output row y of image n. With `planes` (image n's feature-gradient planes, which this thread owns and fills
      // row by row), also adds each pixel's feature gradient to them: in pixel order per plane, the separate pass's
      // order, so both give the same bits.
      const auto backward_row = [&](int64_t n, int64_t y, RowBuffers& row, acc_t* planes) {
        layout.row_points(row.points.data(), flow_data, n, y);
        if (plane_points != nullptr) {
          for (int64_t x = 0; x < layout.out_w; ++x)
            plane_points[(n * layout.out_h + y) * layout.out_w + x] = plane_point(row.points[x]);
        }
        std::fill(row.sum_dx.begin(), row.sum_dx.end(), acc_t(0));
        std::fill(row.sum_dy.begin(), row.sum_dy.end(), acc_t(0));
        std::fill(row.sum_scale.begin(), row.sum_scale.end(), acc_t(0));
        for (int64_t c = 0; c < layout.channels; ++c) {
          const scalar_t* image = feature_data + n * layout.stride_n + c * layout.stride_c;
          const int64_t out_offset = ((n * layout.channels + c) * layout.out_h + y) * layout.out_w;
          const scalar_t* grad_row = grad_data + out_offset;
          auto add = [plane = planes != nullptr ? planes + c * plane_size : nullptr](int64_t index, acc_t value) {
            plane[index] += value;
          };
          if (scale_data == nullptr) {
            for (int64_t x = 0; x < layout.out_w; ++x) {
              const acc_t grad_out = static_cast<acc_t>(grad_row[x]);
              const WarpGradient<acc_t> d = warp_gradient(image, row.points[x]);
              row.sum_dx[x] += grad_out * d.d_dx;
              row.sum_dy[x] += grad_out * d.d_dy;
              if (planes != nullptr && row.points[x].touches_feature) {
                bilinear_add(add, 0, row.points[x].in_plane, row.points[x].value, grad_out);
              }
            }
            continue;
          }
          const int64_t scale_row = layout.scale_offset(n, c, y * layout.out_w);
          for (int64_t x = 0; x < layout.out_w; ++x) {
            const acc_t grad_out = static_cast<acc_t>(grad_row[x]);
            const acc_t scaled = grad_out * static_cast<acc_t>(scale_data[scale_row + x]);
            const WarpGradient<acc_t> d = warp_gradient(image, row.points[x]);
            row.sum_dx[x] += scaled * d.d_dx;
            row.sum_dy[x] += scaled * d.d_dy;
            const acc_t contribution = grad_out * warp_value(image, row.points[x]);
            if (shared_scale) {
              row.sum_scale[x] += contribution;
            } else {
              grad_scale_data[scale_row + x] = contribution;
            }
            if (planes != nullptr && row.points[x].touches_feature) {
              bilinear_add(add, 0, row.points[x].in_plane, row.points[x].value, scaled);
            }
          }
        }
        acc_t* grad_dx = grad_flow_data + n * 2 * pixels + y * layout.out_w;
        std::copy(row.sum_dx.begin(), row.sum_dx.end(), grad_dx);
        std::copy(row.sum_dy.begin(), row.sum_dy.end(), grad_dx + pixels);
        if (shared_scale) {
          std::copy(row.sum_scale.begin(), row.sum_scale.end(),
                    grad_scale_data + layout.scale_offset(n, 0, y * layout.out_w));
        }
      };

      // Few channels (one plane block) and an image per thread at least: one pass per image, which computes each
      // pixel's point once (the two passes below compute it twice: storing it costs more than a few channels' work).
      if (blocks == 1 && layout.batch >= at::get_num_threads()) {
        at::parallel_for(0, layout.batch, 1, [&](int64_t begin, int64_t end) {
          RowBuffers row(layout.out_w);
          for (int64_t n = begin; n < end; ++n) {
            acc_t* planes = grad_feature_data + n * layout.channels * plane_size;
            std::fill(planes, planes + layout.channels * plane_size, acc_t(0));
            for (int64_t y = 0; y < layout.out_h; ++y) backward_row(n, y, row, planes);
          }
        });
        return;
      }

      // The same pass keeps each pixel's PlanePoint for the feature-gradient pass.
      at::parallel_for(0, layout.batch * layout.out_h, 1, [&](int64_t begin, int64_t end) {
        RowBuffers row(layout.out_w);
        for (int64_t r = begin; r < end; ++r) backward_row(r / layout.out_h, r % layout.out_h, row, nullptr);
      });

      // Feature gradient: each thread owns blocks of kPlaneBlock planes of one image and visits the pixels in order,
      // adding each pixel's contribution to its planes: every plane's sums run in pixel order on one thread, and a
      // pixel's point is read once per block rather than once per channel.
      at::parallel_for(0, layout.batch * blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<WarpPoint<acc_t>> row_points(plane_points == nullptr ? layout.out_w : 0);
        for (int64_t unit = begin; unit < end; ++unit) {
          const int64_t n = unit / blocks, c0 = (unit % blocks) * kPlaneBlock;
          const int64_t block = std::min(kPlaneBlock, layout.channels - c0);
          acc_t* planes = grad_feature_data + (n * layout.channels + c0) * plane_size;
          std::fill(planes, planes + block * plane_size, acc_t(0));
          const scalar_t* grad_planes = grad_data + (n * layout.channels + c0) * pixels;
          const scalar_t* scale_planes = scale_data != nullptr ? scale_data + layout.scale_offset(n, c0, 0) : nullptr;
          for (int64_t p = 0; p < pixels; ++p) {
            if (plane_points == nullptr && p % layout.out_w == 0) {
              layout.row_points(row_points.data(), flow_data, n, p / layout.out_w);
            }
            const PlanePoint<acc_t> point =
                plane_points != nullptr ? plane_points[n * pixels + p] : plane_point(row_points[p % layout.out_w]);
            if (!point.touches_feature) continue;
            for (int64_t c = 0; c < block; ++c) {
              auto add = [plane = planes + c * plane_size](int64_t index, acc_t value) { plane[index] += value; };
              acc_t scaled = static_cast<acc_t>(grad_planes[c * pixels + p]);
              if (scale_planes != nullptr)
                scaled *= static_cast<acc_t>(scale_planes[c * layout.scale_channel_stride + p]);
              bilinear_add(add, 0, point.in_plane, point.value, scaled);
            }
          }
        }
      });
    });
  }
  return {grad_feature.to(feature.scalar_type()), grad_flow.to(flow.scalar_type()),
          grad_scale.to(feature.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("flow_warp", &flow_warp_forward_cpu);
  m.impl("_flow_warp_backward", &flow_warp_backward_cpu);
}

}  // namespace segops

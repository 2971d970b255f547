// Flow warp on the CPU. Each output pixel's sample (taps, their derivatives, its cell) is computed once, in
// parallel, and shared by every channel. The feature is read in place through its strides, so contiguous,
// channels_last and strided features all cost the same and none is copied.
//  - Forward: parallel over output rows (n, y), channels then pixels inside.
//  - Backward, flow and scale gradients: parallel over output rows; each pixel's sums over channels run in channel
//    order on one thread.
//  - Backward, feature gradient: parallel over (n, c) planes, each accumulated by one thread in pixel order. So
//    every gradient is bitwise reproducible for any thread count, without atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <optional>
#include <tuple>
#include <vector>

#include "common/cpu_memory.h"
#include "flow_warp/flow_warp.h"
#include "flow_warp/flow_warp_checks.h"

namespace segops {
namespace {

// The samples of all N * Ho * Wo output pixels, from flow [N, 2, Ho, Wo] (contiguous, accumulation dtype).
template <typename T>
std::vector<WarpSample<T>> warp_samples(const T* flow, int64_t batch, int64_t out_h, int64_t out_w, int64_t height,
                                        int64_t width) {
  std::vector<WarpSample<T>> samples(batch * out_h * out_w);
  const int64_t pixels = out_h * out_w;
  at::parallel_for(0, batch * out_h, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, y = row % out_h;
      const T* flow_x = flow + n * 2 * pixels + y * out_w;
      const T* flow_y = flow_x + pixels;
      for (int64_t x = 0; x < out_w; ++x) {
        samples[row * out_w + x] = warp_sample(y, x, flow_x[x], flow_y[x], height, width);
      }
    }
  });
  return samples;
}

// How to read the feature and the output-shaped tensors of one call.
struct WarpLayout {
  int64_t batch, channels, height, width, out_h, out_w;
  int64_t stride_n, stride_c, stride_h, stride_w;  // the feature's strides
  int64_t scale_channel_stride;

  explicit WarpLayout(const at::Tensor& feature, const CheckedFlowWarp& checked)
      : batch(feature.size(0)), channels(feature.size(1)), height(feature.size(2)), width(feature.size(3)),
        out_h(checked.output_shape[2]), out_w(checked.output_shape[3]), stride_n(feature.stride(0)),
        stride_c(feature.stride(1)), stride_h(feature.stride(2)), stride_w(feature.stride(3)),
        scale_channel_stride(checked.scale_channel_stride) {}

  int64_t pixels() const { return out_h * out_w; }
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
  at::Tensor output = at::empty(checked.output_shape, feature.options());
  if (output.numel() == 0) return output;
  const WarpLayout layout(feature, checked);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feature.scalar_type(), "flow_warp_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto samples = warp_samples(checked.flow.const_data_ptr<acc_t>(), layout.batch, layout.out_h, layout.out_w,
                                      layout.height, layout.width);
    const scalar_t* feature_data = feature.const_data_ptr<scalar_t>();
    const scalar_t* scale_data = checked.scale.defined() ? checked.scale.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, layout.batch * layout.out_h, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / layout.out_h, y = row % layout.out_h;
        const WarpSample<acc_t>* row_samples = samples.data() + row * layout.out_w;
        for (int64_t c = 0; c < layout.channels; ++c) {
          const scalar_t* image = feature_data + n * layout.stride_n + c * layout.stride_c;
          scalar_t* out = output_data + ((n * layout.channels + c) * layout.out_h + y) * layout.out_w;
          for (int64_t x = 0; x < layout.out_w; ++x) {
            acc_t value = warp_value(image, layout.stride_h, layout.stride_w, row_samples[x]);
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

std::tuple<at::Tensor, at::Tensor, at::Tensor> flow_warp_backward_cpu(const at::Tensor& grad,
                                                                      const at::Tensor& feature,
                                                                      const at::Tensor& flow,
                                                                      const std::optional<at::Tensor>& scale) {
  const CheckedFlowWarp checked = checked_flow_warp("_flow_warp_backward", feature, flow, scale);
  check_flow_warp_grad(grad, feature, checked);
  const at::ScalarType acc_type = at::toOpMathType(feature.scalar_type());
  // Accumulated in acc_t (float for half types), converted once at the end.
  at::Tensor grad_feature = zeros_with_huge_pages(feature.sizes(), feature.options().dtype(acc_type));
  at::Tensor grad_flow = at::zeros(checked.flow.sizes(), checked.flow.options());
  at::Tensor grad_scale = checked.scale.defined() ? at::zeros(checked.scale.sizes(), checked.scale.options().dtype(acc_type))
                                                  : at::empty({0}, feature.options());
  const WarpLayout layout(feature, checked);
  if (grad.numel() > 0 && layout.height > 0 && layout.width > 0) {
    const at::Tensor grad_c = grad.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, feature.scalar_type(), "flow_warp_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto samples = warp_samples(checked.flow.const_data_ptr<acc_t>(), layout.batch, layout.out_h,
                                        layout.out_w, layout.height, layout.width);
      const scalar_t* feature_data = feature.const_data_ptr<scalar_t>();
      const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
      const scalar_t* scale_data = checked.scale.defined() ? checked.scale.const_data_ptr<scalar_t>() : nullptr;
      acc_t* grad_flow_data = grad_flow.mutable_data_ptr<acc_t>();
      acc_t* grad_scale_data = scale_data != nullptr ? grad_scale.mutable_data_ptr<acc_t>() : nullptr;
      const int64_t pixels = layout.pixels();

      // Flow and scale gradients: sums over channels per output pixel, in channel order.
      at::parallel_for(0, layout.batch * layout.out_h, 1, [&](int64_t begin, int64_t end) {
        for (int64_t row = begin; row < end; ++row) {
          const int64_t n = row / layout.out_h, y = row % layout.out_h;
          const WarpSample<acc_t>* row_samples = samples.data() + row * layout.out_w;
          acc_t* grad_dx = grad_flow_data + n * 2 * pixels + y * layout.out_w;
          acc_t* grad_dy = grad_dx + pixels;
          for (int64_t c = 0; c < layout.channels; ++c) {
            const scalar_t* image = feature_data + n * layout.stride_n + c * layout.stride_c;
            const scalar_t* grad_row = grad_data + ((n * layout.channels + c) * layout.out_h + y) * layout.out_w;
            for (int64_t x = 0; x < layout.out_w; ++x) {
              const int64_t p = y * layout.out_w + x;
              const acc_t grad_out = static_cast<acc_t>(grad_row[x]);
              const acc_t scaled = scale_data != nullptr
                                       ? grad_out * static_cast<acc_t>(scale_data[layout.scale_offset(n, c, p)])
                                       : grad_out;
              const WarpGradient<acc_t> d = warp_gradient(image, layout.stride_h, layout.stride_w, row_samples[x]);
              grad_dx[x] += scaled * d.d_dx;
              grad_dy[x] += scaled * d.d_dy;
              if (grad_scale_data != nullptr) {
                grad_scale_data[layout.scale_offset(n, c, p)] +=
                    grad_out * warp_value(image, layout.stride_h, layout.stride_w, row_samples[x]);
              }
            }
          }
        }
      });

      // Feature gradient: each (n, c) plane by one thread, output pixels in order.
      acc_t* grad_feature_data = grad_feature.mutable_data_ptr<acc_t>();
      const int64_t plane_size = layout.height * layout.width;
      at::parallel_for(0, layout.batch * layout.channels, 1, [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          const int64_t n = plane / layout.channels, c = plane % layout.channels;
          auto add = [plane_data = grad_feature_data + plane * plane_size](int64_t index, acc_t value) {
            plane_data[index] += value;
          };
          const scalar_t* grad_plane = grad_data + plane * pixels;
          for (int64_t p = 0; p < pixels; ++p) {
            const WarpSample<acc_t>& s = samples[n * pixels + p];
            if (s.cell_y == -2) continue;
            acc_t scaled = static_cast<acc_t>(grad_plane[p]);
            if (scale_data != nullptr) scaled *= static_cast<acc_t>(scale_data[layout.scale_offset(n, c, p)]);
            bilinear_scatter(add, 0, layout.width, s.y, s.x, scaled);
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

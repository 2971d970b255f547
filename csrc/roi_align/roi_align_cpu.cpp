// RoIAlign on the CPU. Bilinear taps are separable, so each RoI's taps are computed once per axis and reused
// by every bin row/column and every channel. Forward parallelises over (RoI, channel) pairs; backward over
// (image, channel) planes, each plane accumulated by one thread in RoI order: deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "common/roi_checks.h"
#include "common/rois_by_image.h"
#include "roi_align/roi_align.h"

namespace segops {
namespace {

// The valid taps of one RoI along one axis, grouped by bin: bin p owns taps[begin[p] .. begin[p + 1]).
template <typename T>
struct AxisTaps {
  std::vector<LinearTap<T>> taps;
  std::vector<int64_t> begin;

  void build(T start, T bin, int64_t grid, int64_t pooled, int64_t size) {
    taps.clear();
    begin.assign(1, 0);
    for (int64_t p = 0; p < pooled; ++p) {
      roi_align_for_each_tap(start, bin, grid, p, size, [&](const LinearTap<T>& tap) { taps.push_back(tap); });
      begin.push_back(static_cast<int64_t>(taps.size()));
    }
  }
};

// Every tap of one RoI: its geometry and its y and x taps.
template <typename T>
struct RoITaps {
  RoIAlignGeometry<T> geometry;
  AxisTaps<T> y, x;

  template <typename scalar_t>
  void build(const scalar_t* roi, T spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio,
             bool aligned, int64_t height, int64_t width) {
    geometry = roi_align_geometry<T>(roi, spatial_scale, pooled_h, pooled_w, sampling_ratio, aligned);
    y.build(geometry.start_h, geometry.bin_h, geometry.grid_h, pooled_h, height);
    x.build(geometry.start_w, geometry.bin_w, geometry.grid_w, pooled_w, width);
  }
};

template <typename scalar_t>
void roi_align_forward_planes(const scalar_t* input, const scalar_t* rois, scalar_t* output, int64_t num_rois,
                              int64_t channels, int64_t height, int64_t width, int64_t pooled_h, int64_t pooled_w,
                              double spatial_scale, int64_t sampling_ratio, bool aligned) {
  using acc_t = at::opmath_type<scalar_t>;
  at::parallel_for(0, num_rois * channels, 1, [&](int64_t begin, int64_t end) {
    RoITaps<acc_t> roi_taps;
    int64_t built_roi = -1;
    for (int64_t roi_channel = begin; roi_channel < end; ++roi_channel) {
      const int64_t k = roi_channel / channels;
      const int64_t c = roi_channel % channels;
      if (k != built_roi) {
        roi_taps.build(rois + k * 5, static_cast<acc_t>(spatial_scale), pooled_h, pooled_w, sampling_ratio, aligned,
                       height, width);
        built_roi = k;
      }
      const RoIAlignGeometry<acc_t>& g = roi_taps.geometry;
      const scalar_t* plane = input + (g.batch * channels + c) * height * width;
      scalar_t* out = output + roi_channel * pooled_h * pooled_w;
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          acc_t sum = 0;
          for (int64_t iy = roi_taps.y.begin[ph]; iy < roi_taps.y.begin[ph + 1]; ++iy) {
            for (int64_t ix = roi_taps.x.begin[pw]; ix < roi_taps.x.begin[pw + 1]; ++ix) {
              sum += bilinear_gather(plane, width, roi_taps.y.taps[iy], roi_taps.x.taps[ix]);
            }
          }
          out[ph * pooled_w + pw] = static_cast<scalar_t>(sum / g.count);
        }
      }
    }
  });
}

template <typename acc_t>
struct PlaneAdd {
  acc_t* data;
  void operator()(int64_t index, acc_t value) const { data[index] += value; }
};

// grad_input is acc_t (float for half types) so that low-precision gradients accumulate in float.
template <typename scalar_t, typename acc_t>
void roi_align_backward_planes(const scalar_t* grad, const scalar_t* rois, acc_t* grad_input,
                               const std::vector<std::vector<int64_t>>& rois_of_image, int64_t channels,
                               int64_t height, int64_t width, int64_t pooled_h, int64_t pooled_w,
                               double spatial_scale, int64_t sampling_ratio, bool aligned) {
  const int64_t batch_size = static_cast<int64_t>(rois_of_image.size());
  at::parallel_for(0, batch_size * channels, 1, [&](int64_t begin, int64_t end) {
    RoITaps<acc_t> roi_taps;
    PlaneAdd<acc_t> add{grad_input};
    for (int64_t n = begin / channels; n * channels < end; ++n) {
      const int64_t c_begin = std::max(begin - n * channels, int64_t(0));
      const int64_t c_end = std::min(end - n * channels, channels);
      for (const int64_t k : rois_of_image[n]) {
        roi_taps.build(rois + k * 5, static_cast<acc_t>(spatial_scale), pooled_h, pooled_w, sampling_ratio, aligned,
                       height, width);
        const acc_t count = roi_taps.geometry.count;
        for (int64_t c = c_begin; c < c_end; ++c) {
          const int64_t plane_offset = (n * channels + c) * height * width;
          const scalar_t* grad_bins = grad + (k * channels + c) * pooled_h * pooled_w;
          for (int64_t ph = 0; ph < pooled_h; ++ph) {
            for (int64_t pw = 0; pw < pooled_w; ++pw) {
              const acc_t grad_per_sample = static_cast<acc_t>(grad_bins[ph * pooled_w + pw]) / count;
              for (int64_t iy = roi_taps.y.begin[ph]; iy < roi_taps.y.begin[ph + 1]; ++iy) {
                for (int64_t ix = roi_taps.x.begin[pw]; ix < roi_taps.x.begin[pw + 1]; ++ix) {
                  bilinear_scatter(add, plane_offset, width, roi_taps.y.taps[iy], roi_taps.x.taps[ix],
                                   grad_per_sample);
                }
              }
            }
          }
        }
      }
    }
  });
}

at::Tensor roi_align_forward_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                 int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  check_roi_op_args("roi_align", input, rois, spatial_scale, pooled_h, pooled_w);
  check_rois_values("roi_align", rois, input.size(0));
  const int64_t channels = input.size(1);
  at::Tensor output = at::empty({rois.size(0), channels, pooled_h, pooled_w}, input.options());
  if (output.numel() == 0) return output;
  // A channels_last input costs one copy here.
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_align_forward_cpu", [&] {
    roi_align_forward_planes<scalar_t>(input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
                                       output.mutable_data_ptr<scalar_t>(), rois.size(0), channels, input.size(2),
                                       input.size(3), pooled_h, pooled_w, spatial_scale, sampling_ratio, aligned);
  });
  return output;
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned) {
  check_roi_op_backward_args("_roi_align_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size,
                             channels, height, width);
  check_rois_values("_roi_align_backward", rois, batch_size);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* rois_data = rois_c.const_data_ptr<scalar_t>();
    roi_align_backward_planes<scalar_t, acc_t>(
        grad_c.const_data_ptr<scalar_t>(), rois_data, grad_input.mutable_data_ptr<acc_t>(),
        group_rois_by_image(rois_data, rois.size(0), batch_size), channels, height, width, pooled_h, pooled_w,
        spatial_scale, sampling_ratio, aligned);
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_align", &roi_align_forward_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
}

}  // namespace segops

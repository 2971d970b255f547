// RoIPool on the CPU. Forward parallelises over (RoI, channel) pairs and computes each RoI's bin windows once
// for all its channels; backward parallelises over (image, channel) planes, each accumulated by one thread in
// RoI order: deterministic, no atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common/roi_checks.h"
#include "common/rois_by_image.h"
#include "roi_pool/roi_pool.h"

namespace segops {
namespace {

template <typename scalar_t>
void roi_pool_forward_planes(const scalar_t* input, const scalar_t* rois, scalar_t* output, int32_t* argmax,
                             int64_t num_rois, int64_t channels, int64_t height, int64_t width, int64_t pooled_h,
                             int64_t pooled_w, double spatial_scale) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t bins_per_plane = pooled_h * pooled_w;
  at::parallel_for(0, num_rois * channels, 1, [&](int64_t begin, int64_t end) {
    std::vector<RoIPoolBin> bins(bins_per_plane);
    int64_t built_roi = -1;
    int64_t batch = 0;
    for (int64_t roi_channel = begin; roi_channel < end; ++roi_channel) {
      const int64_t k = roi_channel / channels;
      const int64_t c = roi_channel % channels;
      if (k != built_roi) {
        const scalar_t* roi = rois + k * 5;
        batch = static_cast<int64_t>(static_cast<double>(roi[0]));
        for (int64_t ph = 0; ph < pooled_h; ++ph) {
          for (int64_t pw = 0; pw < pooled_w; ++pw) {
            bins[ph * pooled_w + pw] = roi_pool_bin<acc_t>(roi, static_cast<acc_t>(spatial_scale), pooled_h,
                                                           pooled_w, ph, pw, height, width);
          }
        }
        built_roi = k;
      }
      const scalar_t* plane = input + (batch * channels + c) * height * width;
      for (int64_t b = 0; b < bins_per_plane; ++b) {
        const int64_t out_index = roi_channel * bins_per_plane + b;
        output[out_index] = static_cast<scalar_t>(roi_pool_bin_max<acc_t>(plane, width, bins[b], argmax[out_index]));
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void roi_pool_backward_planes(const scalar_t* grad, const int32_t* argmax, acc_t* grad_input,
                              const std::vector<std::vector<int64_t>>& rois_of_image, int64_t channels,
                              int64_t plane_size, int64_t bins_per_plane) {
  const int64_t batch_size = static_cast<int64_t>(rois_of_image.size());
  at::parallel_for(0, batch_size * channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t plane_index = begin; plane_index < end; ++plane_index) {
      const int64_t n = plane_index / channels;
      const int64_t c = plane_index % channels;
      acc_t* plane = grad_input + plane_index * plane_size;
      for (const int64_t k : rois_of_image[n]) {
        const int64_t bins_offset = (k * channels + c) * bins_per_plane;
        for (int64_t b = 0; b < bins_per_plane; ++b) {
          const int64_t index = argmax[bins_offset + b];
          // argmax comes from the forward; the range test keeps a forged one from writing out of bounds.
          if (index >= 0 && index < plane_size) plane[index] += static_cast<acc_t>(grad[bins_offset + b]);
        }
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                        double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  check_roi_pool_args(input, rois, spatial_scale, pooled_h, pooled_w);
  check_rois_values("roi_pool", rois, input.size(0));
  const int64_t channels = input.size(1);
  at::Tensor output = at::empty({rois.size(0), channels, pooled_h, pooled_w}, input.options());
  at::Tensor argmax = at::empty({rois.size(0), channels, pooled_h, pooled_w}, input.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const at::Tensor input_c = input.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cpu", [&] {
    roi_pool_forward_planes<scalar_t>(input_c.const_data_ptr<scalar_t>(), rois_c.const_data_ptr<scalar_t>(),
                                      output.mutable_data_ptr<scalar_t>(), argmax.mutable_data_ptr<int32_t>(),
                                      rois.size(0), channels, input.size(2), input.size(3), pooled_h, pooled_w,
                                      spatial_scale);
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width) {
  check_roi_pool_backward_args(grad, rois, argmax, spatial_scale, pooled_h, pooled_w, batch_size, channels, height,
                               width);
  check_rois_values("_roi_pool_backward", rois, batch_size);
  const auto acc_type = at::toOpMathType(grad.scalar_type());
  at::Tensor grad_input = at::zeros({batch_size, channels, height, width}, grad.options().dtype(acc_type));
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor argmax_c = argmax.contiguous();
  const at::Tensor rois_c = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    roi_pool_backward_planes<scalar_t, acc_t>(
        grad_c.const_data_ptr<scalar_t>(), argmax_c.const_data_ptr<int32_t>(), grad_input.mutable_data_ptr<acc_t>(),
        group_rois_by_image(rois_c.const_data_ptr<scalar_t>(), rois.size(0), batch_size), channels, height * width,
        pooled_h * pooled_w);
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace segops

// RoIPool on the CPU. Each RoI's bin windows are computed once, up front, for all its channels. Forward and
// backward both run planes outermost (for_each_plane_roi): parallel, cache-friendly, and the backward
// accumulates each plane on one thread in RoI order, so it is deterministic without atomics.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <vector>

#include "common/checks.h"
#include "roi_common/roi_checks.h"
#include "roi_common/rois_by_image.h"
#include "roi_pool/roi_pool.h"
#include "roi_pool/roi_pool_windows.h"

namespace segops {
namespace {

std::tuple<at::Tensor, at::Tensor> roi_pool_forward_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                        double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  const auto [output, rois_acc] =
      checked_roi_output("roi_pool", input, rois, spatial_scale, pooled_h, pooled_w, RoIValues::kCheckOnHost);
  check_plane_fits_int32("roi_pool", input.size(2), input.size(3));
  at::Tensor argmax = at::empty(output.sizes(), output.options().dtype(at::kInt));
  if (output.numel() == 0) return {output, argmax};
  const int64_t channels = input.size(1);
  const int64_t height = input.size(2);
  const int64_t width = input.size(3);
  const int64_t bins_per_plane = pooled_h * pooled_w;
  const at::Tensor input_c = input.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "roi_pool_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const scalar_t* input_data = input_c.const_data_ptr<scalar_t>();
    scalar_t* output_data = output.mutable_data_ptr<scalar_t>();
    int32_t* argmax_data = argmax.mutable_data_ptr<int32_t>();
    const std::vector<RoIPoolBin> windows =
        roi_pool_windows(rois_data, rois.size(0), static_cast<acc_t>(spatial_scale), pooled_h, pooled_w, height, width);
    for_each_plane_roi(
        group_rois_by_image(rois_data, 0, rois.size(0), input.size(0)), channels, [&](int64_t n, int64_t c, int64_t k) {
          const scalar_t* plane = input_data + (n * channels + c) * height * width;
          const int64_t out_offset = (k * channels + c) * bins_per_plane;
          for (int64_t b = 0; b < bins_per_plane; ++b) {
            output_data[out_offset + b] = static_cast<scalar_t>(
                roi_pool_bin_max<acc_t>(plane, width, 1, windows[k * bins_per_plane + b], argmax_data[out_offset + b]));
          }
        });
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                 double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                 int64_t channels, int64_t height, int64_t width) {
  // Accumulate in acc_t (float for half types), converted once at the end.
  const auto [grad_input, rois_acc] =
      checked_roi_grad_input("_roi_pool_backward", grad, rois, spatial_scale, pooled_h, pooled_w, batch_size, channels,
                             height, width, at::toOpMathType(grad.scalar_type()), RoIValues::kCheckOnHost);
  check_plane_fits_int32("_roi_pool_backward", height, width);
  check_roi_pool_argmax(grad, argmax);
  if (grad.numel() == 0 || grad_input.numel() == 0) return grad_input.to(grad.scalar_type());
  const at::Tensor grad_c = grad.contiguous();
  const at::Tensor argmax_c = argmax.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* grad_data = grad_c.const_data_ptr<scalar_t>();
    const int32_t* argmax_data = argmax_c.const_data_ptr<int32_t>();
    acc_t* grad_input_data = grad_input.mutable_data_ptr<acc_t>();
    const acc_t* rois_data = rois_acc.const_data_ptr<acc_t>();
    const int64_t plane_size = height * width;
    const int64_t bins_per_plane = pooled_h * pooled_w;
    const std::vector<RoIPoolBin> windows =
        roi_pool_windows(rois_data, rois.size(0), static_cast<acc_t>(spatial_scale), pooled_h, pooled_w, height, width);
    for_each_plane_roi(group_rois_by_image(rois_data, 0, rois.size(0), batch_size), channels,
                       [&](int64_t n, int64_t c, int64_t k) {
                         acc_t* plane = grad_input_data + (n * channels + c) * plane_size;
                         const int64_t bins_offset = (k * channels + c) * bins_per_plane;
                         for (int64_t b = 0; b < bins_per_plane; ++b) {
                           const int64_t index = argmax_data[bins_offset + b];
                           if (roi_pool_window_contains(windows[k * bins_per_plane + b], index, width)) {
                             plane[index] += static_cast<acc_t>(grad_data[bins_offset + b]);
                           }
                         }
                       });
  });
  return grad_input.to(grad.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CPU, m) {
  m.impl("roi_pool", &roi_pool_forward_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace segops

#pragma once
// Argument checks of dilated_conv2d on every backend; segops/ops/dilated_conv.py repeats the messages word for word
// in the fake kernels.
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

#include "dilated_conv/dilated_conv.h"

namespace segops {

// A checked call: both axes, the channel counts, and whether the depthwise kernels apply (groups == C_in == C_out).
struct CheckedConv {
  ConvAxis ay, ax;
  int64_t batch, channels, out_channels, groups;
  bool depthwise;

  std::vector<int64_t> output_shape() const { return {batch, out_channels, ay.out, ax.out}; }
  int64_t group_channels() const { return channels / groups; }
  int64_t group_out_channels() const { return out_channels / groups; }
  int64_t taps() const { return ay.kernel * ax.kernel; }
  // Whether the axes' coordinate arithmetic (padded extents, dilated kernels, strides) fits in 31 bits: the
  // GPU kernels' 32-bit index math divides such values too.
  bool axes_fit_32bit() const {
    const auto fits = [](const ConvAxis& a) {
      const int64_t limit = int64_t(1) << 30;
      return a.in + 2 * a.pad < limit && a.dilation * a.kernel < limit && a.stride < limit && a.out < limit;
    };
    return fits(ay) && fits(ax);
  }
};

// Wants input [N, C, H, W] of a float dtype; weight [C_out, C / groups, kH, kW] and bias None or [C_out] of its dtype
// and device; stride and dilation >= 1, padding >= 0 (two values each); groups >= 1 dividing C and C_out; the dilated
// kernel no larger than the padded input.
CheckedConv checked_dilated_conv2d(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups);

// The backward's grad must have the output's shape, input's dtype and device.
void check_dilated_conv2d_grad(const at::Tensor& grad, const at::Tensor& input, const CheckedConv& checked);

// StridedImage of a 4-D tensor.
StridedImage strided_image(const at::Tensor& tensor);

}  // namespace segops

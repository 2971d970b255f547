#include "dilated_conv/dilated_conv_checks.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace segops {
namespace {

void check_pair(const char* op, const char* name, at::IntArrayRef values, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, op, ": ", name, " must have 2 values (height, width), got ", values);
  TORCH_CHECK(values[0] >= minimum && values[1] >= minimum, op, ": ", name, " must be ",
              minimum == 0 ? "non-negative" : "positive", ", got ", values);
}

// The dilated kernel's extent along one axis must fit in the padded input.
// axis: "height" or "width"; letter: "H" or "W".
ConvAxis conv_axis(const char* op, const char* axis, const char* letter, int64_t in, int64_t kernel, int64_t stride,
                   int64_t pad, int64_t dilation) {
  const int64_t extent = (kernel - 1) * dilation + 1;
  TORCH_CHECK(extent <= in + 2 * pad, op, ": the dilated kernel's ", axis, " ((k", letter,
              " - 1) * dilation + 1 = ", extent, ") must not exceed the padded input's (", letter,
              " + 2 * padding = ", in + 2 * pad, ")");
  return {in, (in + 2 * pad - extent) / stride + 1, kernel, stride, pad, dilation};
}

}  // namespace

CheckedConv checked_dilated_conv2d(const char* op, const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                   at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape [N, C, H, W], got ", input.sizes());
  check_supported_float(op, "input", input);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  TORCH_CHECK(groups >= 1, op, ": groups must be positive, got ", groups);
  const int64_t channels = input.size(1);
  TORCH_CHECK(channels % groups == 0, op, ": groups must divide the input channels (", channels, "), got ", groups);
  TORCH_CHECK(weight.dim() == 4 && weight.size(1) * groups == channels && weight.size(0) % groups == 0 &&
                  weight.size(2) >= 1 && weight.size(3) >= 1,
              op, ": weight must have shape [C_out, C_in / groups, kH, kW] with C_in / groups = ", channels / groups,
              ", C_out a multiple of groups (", groups, ") and kH, kW >= 1, got ", weight.sizes());
  check_same_dtype(op, "weight", weight, input, "input");
  check_same_device(op, "weight", weight, input, "input");
  const int64_t out_channels = weight.size(0);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_channels, op, ": bias must have shape [C_out] = [",
                out_channels, "], got ", bias->sizes());
    check_same_dtype(op, "bias", *bias, input, "input");
    check_same_device(op, "bias", *bias, input, "input");
  }
  return {conv_axis(op, "height", "H", input.size(2), weight.size(2), stride[0], padding[0], dilation[0]),
          conv_axis(op, "width", "W", input.size(3), weight.size(3), stride[1], padding[1], dilation[1]),
          input.size(0),
          channels,
          out_channels,
          groups,
          groups == channels && out_channels == channels};
}

void check_dilated_conv2d_grad(const at::Tensor& grad, const at::Tensor& input, const CheckedConv& checked) {
  const char* op = "_dilated_conv2d_backward";
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(checked.output_shape()), op, ": grad must have shape ",
              at::IntArrayRef(checked.output_shape()), ", got ", grad.sizes());
  check_same_dtype(op, "grad", grad, input, "input");
  check_same_device(op, "grad", grad, input, "input");
}

StridedImage strided_image(const at::Tensor& tensor) {
  return {tensor.stride(0), tensor.stride(1), tensor.stride(2), tensor.stride(3)};
}

}  // namespace segops

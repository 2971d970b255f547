#include "max_unpool/max_unpool_checks.h"

#include <ATen/ATen.h>

#include "common/checks.h"

namespace segops {
namespace {

// channels_last where the tensor is laid out so and not also contiguous (C == 1 or 1x1 planes are both).
at::MemoryFormat unpool_format(const at::Tensor& tensor) {
  const bool channels_last = !tensor.is_contiguous() && tensor.is_contiguous(at::MemoryFormat::ChannelsLast);
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

void check_indices_dtype_and_device(const char* op, const at::Tensor& indices, const at::Tensor& like,
                                    const char* like_name) {
  TORCH_CHECK(indices.scalar_type() == at::kLong, op,
              ": indices must be int64 (Long), as max_pool2d returns them, got ", indices.scalar_type());
  check_same_device(op, "indices", indices, like, like_name);
}

}  // namespace

CheckedUnpool checked_max_unpool2d(const at::Tensor& input, const at::Tensor& indices, int64_t output_height,
                                   int64_t output_width) {
  const char* op = "max_unpool2d";
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape [N, C, H, W], got ", input.sizes());
  check_supported_float(op, "input", input);
  check_indices_dtype_and_device(op, indices, input, "input");
  TORCH_CHECK(indices.sizes() == input.sizes(), op, ": indices must have input's shape ", input.sizes(), ", got ",
              indices.sizes());
  TORCH_CHECK(output_height >= 0 && output_width >= 0, op, ": output size must be non-negative, got [", output_height,
              ", ", output_width, "]");
  check_plane_fits_int32(op, input.size(2), input.size(3));
  const at::MemoryFormat format = unpool_format(input);
  return {{input.size(0), input.size(1), output_height, output_width},
          format,
          {input.size(1), format == at::MemoryFormat::ChannelsLast},
          input.size(2),
          input.size(3),
          output_height,
          output_width};
}

CheckedUnpool checked_max_unpool2d_backward(const at::Tensor& grad, const at::Tensor& indices) {
  const char* op = "_max_unpool2d_backward";
  TORCH_CHECK(grad.dim() == 4, op, ": grad must have shape [N, C, Ho, Wo], got ", grad.sizes());
  check_supported_float(op, "grad", grad);
  check_indices_dtype_and_device(op, indices, grad, "grad");
  TORCH_CHECK(indices.dim() == 4 && indices.size(0) == grad.size(0) && indices.size(1) == grad.size(1), op,
              ": indices must have shape [N, C, H, W] with N, C = ", grad.size(0), ", ", grad.size(1), ", got ",
              indices.sizes());
  check_plane_fits_int32(op, indices.size(2), indices.size(3));
  const at::MemoryFormat format = unpool_format(indices);
  return {indices.sizes().vec(), format,          {grad.size(1), format == at::MemoryFormat::ChannelsLast},
          indices.size(2),       indices.size(3), grad.size(2),
          grad.size(3)};
}

void fail_unpool_index(const char* op, const at::Tensor& indices, const CheckedUnpool& checked, int64_t offset) {
  const UnpoolElement<int64_t> e = unpool_element(checked.layout, offset, checked.in_plane());
  TORCH_CHECK(false, op, ": indices[", e.n, ", ", e.c, ", ", e.p / checked.width, ", ", e.p % checked.width,
              "] = ", indices.const_data_ptr<int64_t>()[offset], " is outside [0, Ho * Wo) = [0, ", checked.out_plane(),
              ") of its output plane");
}

}  // namespace segops

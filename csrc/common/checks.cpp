#include "common/checks.h"

#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>

namespace segops {

bool is_supported_float(at::ScalarType type) {
  return type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16;
}

void check_supported_float(const char* op, const char* name, const at::Tensor& tensor) {
  TORCH_CHECK(is_supported_float(tensor.scalar_type()), op, ": ", name,
              " must be float32, float64, float16 or bfloat16, got ", tensor.scalar_type());
}

void check_same_dtype(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& like,
                      const char* like_name) {
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type(), op, ": ", name, " must have the same dtype as ", like_name,
              " (", like.scalar_type(), "), got ", tensor.scalar_type());
}

void check_dtype_or_accumulation(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& like,
                                 const char* like_name) {
  const at::ScalarType acc_type = at::toOpMathType(like.scalar_type());
  TORCH_CHECK(tensor.scalar_type() == like.scalar_type() || tensor.scalar_type() == acc_type, op, ": ", name,
              " must have the same dtype as ", like_name, " (", like.scalar_type(),
              acc_type == like.scalar_type() ? ")" : ") or Float", ", got ", tensor.scalar_type());
}

void check_same_device(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& like,
                       const char* like_name) {
  TORCH_CHECK(tensor.device() == like.device(), op, ": ", name, " must be on the same device as ", like_name, " (",
              like.device(), "), got ", tensor.device());
}

void check_plane_fits_int32(const char* op, int64_t height, int64_t width) {
  // Division, not height * width, which could overflow for forged shapes.
  TORCH_CHECK(width == 0 || height <= std::numeric_limits<int32_t>::max() / width, op,
              ": input planes (H * W) must have at most 2^31 - 1 elements, got ", height, " * ", width);
}

}  // namespace segops

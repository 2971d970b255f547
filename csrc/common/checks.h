#pragma once
// Argument checks that every op shares; segops/ops/_checks.py repeats their messages word for word.
#include <ATen/core/Tensor.h>

namespace segops {

// float32, float64, float16 or bfloat16.
bool is_supported_float(at::ScalarType type);

// "<op>: <name> must be float32, float64, float16 or bfloat16, got Long".
void check_supported_float(const char* op, const char* name, const at::Tensor& tensor);

// "<op>: <name> must have the same dtype as <like_name> (Float), got Double".
void check_same_dtype(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& like,
                      const char* like_name);

// `name` must have the dtype of `like`, or float32 where `like` is float16/bfloat16 (boxes and flows keep their
// precision beside half-precision features): "<op>: <name> must have the same dtype as <like_name> (Half) or
// Float, got Double".
void check_dtype_or_accumulation(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& like,
                                 const char* like_name);

// "<op>: <name> must be on the same device as <like_name> (cpu), got meta".
void check_same_device(const char* op, const char* name, const at::Tensor& tensor, const at::Tensor& like,
                       const char* like_name);

// Ops that keep positions inside an [H, W] plane as int32 (RoIPool's argmax, max_unpool2d's winners): "<op>: input
// planes (H * W) must have at most 2^31 - 1 elements, got 65536 * 65536".
void check_plane_fits_int32(const char* op, int64_t height, int64_t width);

}  // namespace segops

#pragma once
// Argument checks shared by the RoI operators on every backend. segops/ops/_roi_common.py repeats the
// shape/dtype/device messages word for word in the fake kernels.
#include <ATen/core/Tensor.h>

namespace segops {

// input [N, C, H, W], rois [K, 5] of the same dtype and device, output size >= 1, finite scale >= 0.
void check_roi_op_args(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                       int64_t pooled_h, int64_t pooled_w);

// The same for a backward op: grad [K, C, PH, PW] against rois [K, 5] and the input's shape.
void check_roi_op_backward_args(const char* op, const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                int64_t height, int64_t width);

// RoIPool extras: argmax holds int32 plane indices, so a plane has at most 2^31 - 1 elements; the backward's
// argmax must be the forward's (int32, grad's shape and device).
void check_roi_pool_args(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_h,
                         int64_t pooled_w);
void check_roi_pool_backward_args(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax,
                                  double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                  int64_t channels, int64_t height, int64_t width);

// Data-dependent checks: each rois[k, 0] an integer in [0, batch_size), each coordinate finite. On CUDA this
// synchronises once; it is what keeps a bad batch index from reading outside the input.
void check_rois_values(const char* op, const at::Tensor& rois, int64_t batch_size);

}  // namespace segops

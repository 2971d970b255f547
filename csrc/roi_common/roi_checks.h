#pragma once
// Argument checks shared by the RoI operators on every backend, folded into the allocation of their results so
// that no launcher can skip them. segops/ops/_roi_common.py repeats the shape/dtype/device messages word for
// word in the fake kernels.
#include <ATen/core/Tensor.h>

#include <vector>

namespace segops {

// What a checked RoI op works on: its result tensor, and rois [K, 5] made contiguous in the accumulation dtype
// (at::opmath_type: float32 for float16/bfloat16 data), which is how every kernel reads boxes.
struct CheckedRoIOp {
  at::Tensor result;
  at::Tensor rois;
};

// Where the values of rois (batch indices, coordinates) are checked. The CPU kernels check them on the host and
// name the offending row. The GPU kernels check every row they read and report a bad one with a device-side
// assert (giving it zeros, never an out-of-bounds read), because learning of it on the host means copying to the
// host and waiting for the GPU on every call, which also breaks CUDA graph capture.
enum class RoIValues { kCheckOnHost, kCheckInKernel };

// An op's output channels: the input's (roi_align, roi_pool), or one per group of PH * PW input channels
// (position-sensitive: ps_roi_align, ps_roi_pool; see roi_common/position_sensitive.h).
enum class RoIChannels { kSame, kPositionSensitive };

// Checks a forward call; result is its uninitialised output [K, C_out, PH, PW]. Wants input [N, C, H, W] of a float
// dtype (C a multiple of PH * PW if position-sensitive); rois [K, 5] on input's device, of input's dtype or (for
// float16/bfloat16 input) float32; output size >= 1; a finite spatial_scale >= 0; and, with kCheckOnHost, valid
// rois values (see check_rois_values).
CheckedRoIOp checked_roi_output(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_h, int64_t pooled_w, RoIValues values,
                                RoIChannels layout = RoIChannels::kSame);

// Checks a backward call (grad [K, C_out, PH, PW] against rois [K, 5] and the input's shape); result is the zeroed
// grad_input [N, C, H, W] of `dtype`.
CheckedRoIOp checked_roi_grad_input(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                    int64_t channels, int64_t height, int64_t width, at::ScalarType dtype,
                                    RoIValues values, RoIChannels layout = RoIChannels::kSame);

// The most feature maps one multi_scale_roi_align call takes (an FPN has 4 or 5): kernels receive them by value.
constexpr int64_t kMaxFeatureLevels = 8;

// What a checked multi-level RoI op works on: its results (forward: the output [K, C, PH, PW]; backward: one zeroed
// gradient [N, C, H_l, W_l] per level), rois as in CheckedRoIOp, and levels [K] contiguous int64.
struct CheckedMultiLevelOp {
  std::vector<at::Tensor> results;
  at::Tensor rois;
  at::Tensor levels;
};

// Checks a multi_scale_roi_align call: features 1 to kMaxFeatureLevels maps [N, C, H_l, W_l] of one float dtype and
// device, one finite spatial_scale >= 0 per map, rois as checked_roi_output wants them (against features[0]), levels
// int64 [K] on rois' device, and, with kCheckOnHost, every rois row valid and every levels[k] in [0, L).
CheckedMultiLevelOp checked_multi_level_output(const char* op, at::TensorList features, const at::Tensor& rois,
                                               const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                               int64_t pooled_h, int64_t pooled_w, RoIValues values);

// Checks its backward: grad [K, C, PH, PW] against rois, levels and the maps' shapes (heights[l], widths[l]).
CheckedMultiLevelOp checked_multi_level_grads(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                              const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                              int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                              at::IntArrayRef heights, at::IntArrayRef widths, at::ScalarType dtype,
                                              RoIValues values);

// RoIAlign's sampling_ratio: <= 0 (adaptive) or at most kMaxSamplingRatio samples per bin and axis; more is a
// typo that would run for hours or exhaust memory.
constexpr int64_t kMaxSamplingRatio = 256;
void check_sampling_ratio(const char* op, int64_t sampling_ratio);

// Data-dependent checks of host-resident rois (contiguous, float or double): each rois[k, 0] an integer in
// [0, batch_size), each coordinate finite (roi_common/roi_row.h). A plain loop: no tensor ops, no synchronisation.
void check_rois_values(const char* op, const at::Tensor& rois, int64_t batch_size);

// The backward's argmax must be the forward's: int32, of grad's shape and device.
void check_roi_pool_argmax(const at::Tensor& grad, const at::Tensor& argmax);

// Whether the RoI ops read feature maps in place as channels_last (NHWC): every map is channels_last and not also
// contiguous NCHW (as with C == 1, where NCHW is taken). Otherwise each is read as contiguous NCHW.
bool all_read_as_nhwc(at::TensorList maps);

}  // namespace segops

#pragma once
// Argument checks of flow_warp on every backend; segops/ops/flow_warp.py repeats the messages word for word in the
// fake kernels.
#include <ATen/core/Tensor.h>

#include <optional>
#include <vector>

namespace segops {

// A checked flow_warp call: the output's shape [N, C, Ho, Wo], flow [N, 2, Ho, Wo] made contiguous in the
// accumulation dtype (float32 for float16/bfloat16 features), and scale made contiguous (undefined if None). The
// feature is read in place through its strides, whatever its layout.
struct CheckedFlowWarp {
  std::vector<int64_t> output_shape;
  at::Tensor flow;
  at::Tensor scale;
  int64_t scale_channel_stride;  // Ho * Wo for a per-channel scale, 0 for a [N, 1, Ho, Wo] one
};

// Wants feature [N, C, H, W] of a float dtype; flow [N, 2, Ho, Wo] of feature's dtype or (for float16/bfloat16)
// float32; scale None or [N, C, Ho, Wo] or [N, 1, Ho, Wo] of feature's dtype; all on one device.
CheckedFlowWarp checked_flow_warp(const char* op, const at::Tensor& feature, const at::Tensor& flow,
                                  const std::optional<at::Tensor>& scale);

// The backward's grad must have the output's shape, feature's dtype and device.
void check_flow_warp_grad(const at::Tensor& grad, const at::Tensor& feature, const CheckedFlowWarp& checked);

}  // namespace segops

#include "flow_warp/flow_warp_checks.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>

#include "common/checks.h"

namespace segops {
CheckedFlowWarp checked_flow_warp(const char* op, const at::Tensor& feature, const at::Tensor& flow,
                                  const std::optional<at::Tensor>& scale) {
  TORCH_CHECK(feature.dim() == 4, op, ": feature must have shape [N, C, H, W], got ", feature.sizes());
  check_supported_float(op, "feature", feature);
  const int64_t batch = feature.size(0);
  TORCH_CHECK(flow.dim() == 4 && flow.size(0) == batch && flow.size(1) == 2, op,
              ": flow must have shape [N, 2, Ho, Wo] with N = ", batch, ", got ", flow.sizes());
  check_dtype_or_accumulation(op, "flow", flow, feature, "feature");
  check_same_device(op, "flow", flow, feature, "feature");
  const at::ScalarType acc_type = at::toOpMathType(feature.scalar_type());
  CheckedFlowWarp checked{{batch, feature.size(1), flow.size(2), flow.size(3)}, flow.to(acc_type).contiguous(), {}, 0};
  if (scale.has_value()) {
    const std::vector<int64_t> per_channel = checked.output_shape;
    const std::vector<int64_t> shared{batch, 1, flow.size(2), flow.size(3)};
    TORCH_CHECK(scale->sizes() == at::IntArrayRef(per_channel) || scale->sizes() == at::IntArrayRef(shared), op,
                ": scale must have shape [N, C, Ho, Wo] or [N, 1, Ho, Wo] = ", at::IntArrayRef(per_channel), " or ",
                at::IntArrayRef(shared), ", got ", scale->sizes());
    check_same_dtype(op, "scale", *scale, feature, "feature");
    check_same_device(op, "scale", *scale, feature, "feature");
    checked.scale = scale->contiguous();
    checked.scale_channel_stride = scale->size(1) == 1 ? 0 : flow.size(2) * flow.size(3);
  }
  return checked;
}

void check_flow_warp_grad(const at::Tensor& grad, const at::Tensor& feature, const CheckedFlowWarp& checked) {
  const char* op = "_flow_warp_backward";
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(checked.output_shape), op, ": grad must have shape ",
              at::IntArrayRef(checked.output_shape), ", got ", grad.sizes());
  check_same_dtype(op, "grad", grad, feature, "feature");
  check_same_device(op, "grad", grad, feature, "feature");
}

}  // namespace segops

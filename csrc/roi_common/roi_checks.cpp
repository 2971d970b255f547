#include "roi_common/roi_checks.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_memory.h"
#include "roi_common/roi_row.h"

namespace segops {
namespace {

// Returns rois contiguous in like's accumulation dtype.
at::Tensor checked_rois_tensor(const char* op, const at::Tensor& rois, const at::Tensor& like, const char* like_name) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op, ": rois must have shape [K, 5], got ", rois.sizes());
  check_dtype_or_accumulation(op, "rois", rois, like, like_name);
  check_same_device(op, "rois", rois, like, like_name);
  return rois.to(at::toOpMathType(like.scalar_type())).contiguous();
}

void check_pooling_args(const char* op, double spatial_scale, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(pooled_h >= 1 && pooled_w >= 1, op, ": output_size must be >= 1 in both dimensions, got (", pooled_h,
              ", ", pooled_w, ")");
  TORCH_CHECK(std::isfinite(spatial_scale) && spatial_scale >= 0, op,
              ": spatial_scale must be a finite number >= 0, got ", spatial_scale);
}

// The output channels of a RoI op over `channels` input channels: all of them, or, position-sensitive, one per
// group of PH * PW (which must divide them).
int64_t roi_output_channels(const char* op, int64_t channels, int64_t pooled_h, int64_t pooled_w, RoIChannels layout) {
  if (layout == RoIChannels::kSame) return channels;
  TORCH_CHECK(channels % (pooled_h * pooled_w) == 0, op,
              ": input channels must be a multiple of output_size[0] * output_size[1] = ", pooled_h * pooled_w,
              " (one score map per bin of each output channel), got ", channels);
  return channels / (pooled_h * pooled_w);
}

}  // namespace

CheckedRoIOp checked_roi_output(const char* op, const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                                int64_t pooled_h, int64_t pooled_w, RoIValues values, RoIChannels layout) {
  TORCH_CHECK(input.dim() == 4, op, ": input must have shape [N, C, H, W], got ", input.sizes());
  check_supported_float(op, "input", input);
  at::Tensor rois_acc = checked_rois_tensor(op, rois, input, "input");
  check_pooling_args(op, spatial_scale, pooled_h, pooled_w);
  const int64_t out_channels = roi_output_channels(op, input.size(1), pooled_h, pooled_w, layout);
  if (values == RoIValues::kCheckOnHost) check_rois_values(op, rois_acc, input.size(0));
  return {at::empty({rois.size(0), out_channels, pooled_h, pooled_w}, input.options()), std::move(rois_acc)};
}

CheckedRoIOp checked_roi_grad_input(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                    double spatial_scale, int64_t pooled_h, int64_t pooled_w, int64_t batch_size,
                                    int64_t channels, int64_t height, int64_t width, at::ScalarType dtype,
                                    RoIValues values, RoIChannels layout) {
  check_supported_float(op, "grad", grad);
  at::Tensor rois_acc = checked_rois_tensor(op, rois, grad, "grad");
  check_pooling_args(op, spatial_scale, pooled_h, pooled_w);
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && height >= 0 && width >= 0, op,
              ": input shape must be non-negative, got [", batch_size, ", ", channels, ", ", height, ", ", width, "]");
  const std::vector<int64_t> expected{rois.size(0), roi_output_channels(op, channels, pooled_h, pooled_w, layout),
                                      pooled_h, pooled_w};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), op, ": grad must have shape ", at::IntArrayRef(expected),
              ", got ", grad.sizes());
  if (values == RoIValues::kCheckOnHost) check_rois_values(op, rois_acc, batch_size);
  return {zeros_with_huge_pages({batch_size, channels, height, width}, grad.options().dtype(dtype)),
          std::move(rois_acc)};
}

namespace {

// levels [K] int64 on rois' device, returned contiguous; with kCheckOnHost, each value in [0, num_levels).
at::Tensor checked_levels(const char* op, const at::Tensor& levels, const at::Tensor& rois, int64_t num_levels,
                          RoIValues values) {
  TORCH_CHECK(levels.dim() == 1 && levels.size(0) == rois.size(0), op, ": levels must have shape [K] = [", rois.size(0),
              "] (one per rois row), got ", levels.sizes());
  TORCH_CHECK(levels.scalar_type() == at::kLong, op, ": levels must be int64, got ", levels.scalar_type());
  check_same_device(op, "levels", levels, rois, "rois");
  at::Tensor levels_c = levels.contiguous();
  if (values == RoIValues::kCheckOnHost) {
    const int64_t* data = levels_c.const_data_ptr<int64_t>();
    for (int64_t k = 0; k < levels_c.size(0); ++k) {
      TORCH_CHECK(data[k] >= 0 && data[k] < num_levels, op, ": levels[", k, "] must be in [0, ", num_levels,
                  ") (a feature map), got ", data[k]);
    }
  }
  return levels_c;
}

void check_spatial_scales(const char* op, at::ArrayRef<double> spatial_scales, int64_t num_levels, int64_t pooled_h,
                          int64_t pooled_w) {
  TORCH_CHECK(static_cast<int64_t>(spatial_scales.size()) == num_levels, op,
              ": spatial_scales must have one entry per feature map (", num_levels, "), got ", spatial_scales.size());
  for (const double scale : spatial_scales) check_pooling_args(op, scale, pooled_h, pooled_w);
}

}  // namespace

CheckedMultiLevelOp checked_multi_level_output(const char* op, at::TensorList features, const at::Tensor& rois,
                                               const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                               int64_t pooled_h, int64_t pooled_w, RoIValues values) {
  const int64_t num_levels = static_cast<int64_t>(features.size());
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxFeatureLevels, op, ": features must hold 1 to ", kMaxFeatureLevels,
              " maps, got ", num_levels);
  const at::Tensor& first = features[0];
  for (int64_t l = 0; l < num_levels; ++l) {
    const at::Tensor& map = features[l];
    const std::string name = "features[" + std::to_string(l) + "]";
    TORCH_CHECK(map.dim() == 4, op, ": ", name, " must have shape [N, C, H, W], got ", map.sizes());
    check_supported_float(op, name.c_str(), map);
    TORCH_CHECK(map.scalar_type() == first.scalar_type(), op, ": ", name, " must have the dtype of features[0] (",
                first.scalar_type(), "), got ", map.scalar_type());
    check_same_device(op, name.c_str(), map, first, "features[0]");
    TORCH_CHECK(map.size(0) == first.size(0) && map.size(1) == first.size(1), op, ": ", name,
                " must have the N and C of features[0] (", first.size(0), ", ", first.size(1), "), got ", map.sizes());
  }
  at::Tensor rois_acc = checked_rois_tensor(op, rois, first, "features[0]");
  check_spatial_scales(op, spatial_scales, num_levels, pooled_h, pooled_w);
  at::Tensor levels_c = checked_levels(op, levels, rois, num_levels, values);
  if (values == RoIValues::kCheckOnHost) check_rois_values(op, rois_acc, first.size(0));
  return {{at::empty({rois.size(0), first.size(1), pooled_h, pooled_w}, first.options())},
          std::move(rois_acc),
          std::move(levels_c)};
}

CheckedMultiLevelOp checked_multi_level_grads(const char* op, const at::Tensor& grad, const at::Tensor& rois,
                                              const at::Tensor& levels, at::ArrayRef<double> spatial_scales,
                                              int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                              at::IntArrayRef heights, at::IntArrayRef widths, at::ScalarType dtype,
                                              RoIValues values) {
  check_supported_float(op, "grad", grad);
  at::Tensor rois_acc = checked_rois_tensor(op, rois, grad, "grad");
  const int64_t num_levels = static_cast<int64_t>(heights.size());
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxFeatureLevels && widths.size() == heights.size(), op,
              ": heights and widths must have 1 to ", kMaxFeatureLevels, " entries each, got ", heights.size(), " and ",
              widths.size());
  check_spatial_scales(op, spatial_scales, num_levels, pooled_h, pooled_w);
  TORCH_CHECK(batch_size >= 0 && channels >= 0 && *std::min_element(heights.begin(), heights.end()) >= 0 &&
                  *std::min_element(widths.begin(), widths.end()) >= 0,
              op, ": input shapes must be non-negative, got N = ", batch_size, ", C = ", channels, ", heights ",
              heights, ", widths ", widths);
  const std::vector<int64_t> expected{rois.size(0), channels, pooled_h, pooled_w};
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(expected), op, ": grad must have shape ", at::IntArrayRef(expected),
              ", got ", grad.sizes());
  at::Tensor levels_c = checked_levels(op, levels, rois, num_levels, values);
  if (values == RoIValues::kCheckOnHost) check_rois_values(op, rois_acc, batch_size);
  std::vector<at::Tensor> grads;
  for (int64_t l = 0; l < num_levels; ++l) {
    grads.push_back(zeros_with_huge_pages({batch_size, channels, heights[l], widths[l]}, grad.options().dtype(dtype)));
  }
  return {std::move(grads), std::move(rois_acc), std::move(levels_c)};
}

void check_rois_values(const char* op, const at::Tensor& rois, int64_t batch_size) {
  TORCH_INTERNAL_ASSERT(rois.is_cpu() && rois.is_contiguous(), op, ": check_rois_values takes contiguous host rois");
  AT_DISPATCH_FLOATING_TYPES(rois.scalar_type(), "check_rois_values", [&] {
    const scalar_t* data = rois.const_data_ptr<scalar_t>();
    for (int64_t row = 0; row < rois.size(0); ++row) {
      const scalar_t* v = data + row * 5;
      TORCH_CHECK(roi_batch_index_is_valid(v[0], batch_size), op, ": rois[", row,
                  ", 0] (batch index) must be an integer in [0, ", batch_size, "), got ", v[0]);
      TORCH_CHECK(roi_box_is_finite(v), op, ": rois[", row, ", 1:5] (box x1, y1, x2, y2) must be finite, got (", v[1],
                  ", ", v[2], ", ", v[3], ", ", v[4], ")");
    }
  });
}

void check_sampling_ratio(const char* op, int64_t sampling_ratio) {
  TORCH_CHECK(sampling_ratio <= kMaxSamplingRatio, op, ": sampling_ratio must be <= 0 (adaptive) or at most ",
              kMaxSamplingRatio, ", got ", sampling_ratio);
}

void check_roi_pool_argmax(const at::Tensor& grad, const at::Tensor& argmax) {
  TORCH_CHECK(argmax.scalar_type() == at::kInt && argmax.sizes() == grad.sizes() && argmax.device() == grad.device(),
              "_roi_pool_backward: argmax must be the int32 tensor of grad's shape ", grad.sizes(), " and device ",
              grad.device(), " that roi_pool returned, got ", argmax.scalar_type(), " ", argmax.sizes(), " on ",
              argmax.device());
}

bool all_read_as_nhwc(at::TensorList maps) {
  return std::all_of(maps.begin(), maps.end(), [](const at::Tensor& map) {
    return !map.is_contiguous() && map.is_contiguous(at::MemoryFormat::ChannelsLast);
  });
}

}  // namespace segops

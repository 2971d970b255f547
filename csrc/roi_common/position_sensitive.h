#pragma once
// The channel layout of the position-sensitive RoI ops (R-FCN, FCIS; torchvision's ps_roi_align / ps_roi_pool): the
// input holds one group of PH * PW score maps per output channel, and output bin (ph, pw) of output channel c pools
// only input channel (c * PH + ph) * PW + pw. So each input channel feeds exactly one bin of one output channel.
#include <cstdint>

#include "common/macros.h"

namespace segops {

SEGOPS_HOST_DEVICE int64_t ps_input_channel(int64_t out_channel, int64_t ph, int64_t pw, int64_t pooled_h,
                                            int64_t pooled_w) {
  return (out_channel * pooled_h + ph) * pooled_w + pw;
}

// The output channel and bin that input channel `in_channel` feeds.
struct PSBin {
  int64_t out_channel, ph, pw;
};

SEGOPS_HOST_DEVICE PSBin ps_bin_of_input_channel(int64_t in_channel, int64_t pooled_h, int64_t pooled_w) {
  return {in_channel / (pooled_h * pooled_w), (in_channel / pooled_w) % pooled_h, in_channel % pooled_w};
}

}  // namespace segops

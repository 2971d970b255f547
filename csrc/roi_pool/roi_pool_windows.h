#pragma once
// The CPU RoIPool kernels' view of the RoIs (roi_pool_cpu.cpp, ps_roi_cpu.cpp).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "roi_pool/roi_pool.h"

namespace segops {

// Every RoI's bin windows ([K * PH * PW], row-major per RoI), computed once and shared by all its channels.
template <typename acc_t>
std::vector<RoIPoolBin> roi_pool_windows(const acc_t* rois, int64_t num_rois, acc_t spatial_scale, int64_t pooled_h,
                                         int64_t pooled_w, int64_t height, int64_t width,
                                         RoIPoolEnd end = RoIPoolEnd::kInclusive) {
  std::vector<RoIPoolBin> windows(num_rois * pooled_h * pooled_w);
  at::parallel_for(0, num_rois, 16, [&](int64_t begin, int64_t last) {
    for (int64_t k = begin; k < last; ++k) {
      const RoIPoolGeometry<acc_t> g = roi_pool_geometry<acc_t>(rois + k * 5, spatial_scale, pooled_h, pooled_w, end);
      for (int64_t ph = 0; ph < pooled_h; ++ph) {
        for (int64_t pw = 0; pw < pooled_w; ++pw) {
          windows[(k * pooled_h + ph) * pooled_w + pw] = roi_pool_window(g, ph, pw, height, width);
        }
      }
    }
  });
  return windows;
}

// The means of one bin window over `block` planes, planes[c * plane_stride + offset] being plane c: each summed as
// roi_pool_bin_mean sums it, so bitwise the same. The planes' sums are independent, so a core overlaps them where one
// plane's is a chain of dependent adds.
template <typename T, typename scalar_t>
void roi_pool_bin_means_of_block(T* __restrict__ means, const scalar_t* __restrict__ planes, int64_t plane_stride,
                                 int64_t width, int64_t block, const RoIPoolBin& bin) {
  std::fill(means, means + block, T(0));
  if (bin.empty()) return;
  for (int64_t h = bin.h_start; h < bin.h_end; ++h) {
    for (int64_t w = bin.w_start; w < bin.w_end; ++w) {
      const scalar_t* pixel = planes + h * width + w;
      for (int64_t c = 0; c < block; ++c) means[c] += static_cast<T>(pixel[c * plane_stride]);
    }
  }
  const T area = static_cast<T>(roi_pool_bin_area(bin));
  for (int64_t c = 0; c < block; ++c) means[c] /= area;
}

}  // namespace segops

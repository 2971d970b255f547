#pragma once
// What makes a row [batch_index, x1, y1, x2, y2] of a rois tensor usable, shared by the CPU check (which names the
// row in a synchronous error) and the GPU kernels (which must never index with a bad row, and report it with a
// device-side assert rather than synchronise with the host to learn of it).
#include <cstdint>

#include "common/macros.h"

// The device-side assert's message for a bad row (a literal, so the GPU can print it).
#define SEGOPS_BAD_ROI_ROW_MESSAGE(op) \
  op ": rois[k, 0] (batch index) must be an integer in [0, N) and rois[k, 1:5] (box) finite for every k"

namespace segops {

// An integer in [0, batch_size); written so that NaN fails.
template <typename T>
SEGOPS_HOST_DEVICE bool roi_batch_index_is_valid(T batch_index, int64_t batch_size) {
  return batch_index >= T(0) && batch_index < static_cast<T>(batch_size) &&
         static_cast<T>(static_cast<int64_t>(batch_index)) == batch_index;
}

// x - x is 0 for finite x and NaN for NaN or +-inf (no <cmath> overloads needed on either device).
template <typename T>
SEGOPS_HOST_DEVICE bool roi_box_is_finite(const T* roi) {
  return roi[1] - roi[1] == T(0) && roi[2] - roi[2] == T(0) && roi[3] - roi[3] == T(0) && roi[4] - roi[4] == T(0);
}

template <typename T>
SEGOPS_HOST_DEVICE bool roi_row_is_valid(const T* roi, int64_t batch_size) {
  return roi_batch_index_is_valid(roi[0], batch_size) && roi_box_is_finite(roi);
}

// The pixels [y_begin, y_end) x [x_begin, x_end) of image `batch` of feature map `level` that a RoI's backward can
// write (a superset); level -1 for a bad row, which writes nothing. The deterministic GPU backwards
// (roi_common/roi_gather.h) skip a RoI whose footprint misses a pixel.
struct RoIFootprint {
  int64_t level, batch, y_begin, y_end, x_begin, x_end;

  SEGOPS_HOST_DEVICE bool contains(int64_t map, int64_t n, int64_t y, int64_t x) const {
    return level == map && batch == n && y >= y_begin && y < y_end && x >= x_begin && x < x_end;
  }
};

}  // namespace segops

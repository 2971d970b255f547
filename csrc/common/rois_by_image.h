#pragma once
#include <cstdint>
#include <vector>

namespace segops {

// RoI indices per image, in increasing order: the fixed accumulation order that makes the CPU backward
// passes deterministic. Precondition: check_rois_values passed (each batch index an integer in range).
template <typename scalar_t>
std::vector<std::vector<int64_t>> group_rois_by_image(const scalar_t* rois, int64_t num_rois, int64_t batch_size) {
  std::vector<std::vector<int64_t>> rois_of_image(batch_size);
  for (int64_t k = 0; k < num_rois; ++k) {
    rois_of_image[static_cast<int64_t>(static_cast<double>(rois[k * 5]))].push_back(k);
  }
  return rois_of_image;
}

}  // namespace segops

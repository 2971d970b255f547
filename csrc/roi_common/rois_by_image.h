#pragma once
// The loop skeleton of the CPU RoI kernels: planes outermost, each plane's RoIs innermost.
#include <ATen/Parallel.h>

#include <cstdint>
#include <vector>

namespace segops {

// The indices of RoIs [begin, end) per (feature map, image) group, numbered level * batch_size + image, each in
// increasing order; levels[k] is RoI k's feature map, or levels is nullptr for a single map. Precondition:
// check_rois_values passed (each batch index an integer in range), and each level in [0, num_levels).
template <typename scalar_t>
std::vector<std::vector<int64_t>> group_rois_by_level_and_image(const scalar_t* rois, const int64_t* levels,
                                                                int64_t begin, int64_t end, int64_t batch_size,
                                                                int64_t num_levels) {
  std::vector<std::vector<int64_t>> groups(num_levels * batch_size);
  for (int64_t k = begin; k < end; ++k) {
    const int64_t level = levels == nullptr ? 0 : levels[k];
    groups[level * batch_size + static_cast<int64_t>(static_cast<double>(rois[k * 5]))].push_back(k);
  }
  return groups;
}

// The same for a single feature map: the RoIs of each image.
template <typename scalar_t>
std::vector<std::vector<int64_t>> group_rois_by_image(const scalar_t* rois, int64_t begin, int64_t end,
                                                      int64_t batch_size) {
  return group_rois_by_level_and_image(rois, static_cast<const int64_t*>(nullptr), begin, end, batch_size, 1);
}

// Calls body(n, c, k) for every (image n, channel c) plane and every RoI k of image n (or, given groups of
// group_rois_by_level_and_image, for every (group n, channel c) plane). Planes run in parallel
// (ordered channel-major so that each thread's share mixes all images, whatever their RoI counts); each plane's
// RoIs run in increasing order on one thread. So no two threads touch a plane, a backward's sums are
// bitwise reproducible for any thread count, and a plane stays in cache while all its RoIs read or write it.
template <typename Body>
void for_each_plane_roi(const std::vector<std::vector<int64_t>>& rois_of_image, int64_t channels, const Body& body) {
  const int64_t batch_size = static_cast<int64_t>(rois_of_image.size());
  at::parallel_for(0, batch_size * channels, 1, [&](int64_t begin, int64_t end) {
    // (n, c) of plane n + c * batch_size, stepped rather than divided out per plane: with one or few small RoIs a
    // plane's work is a few reads, and a 64-bit division costs as much as several.
    int64_t n = begin % batch_size, c = begin / batch_size;
    for (int64_t plane = begin; plane < end; ++plane) {
      for (const int64_t k : rois_of_image[n]) body(n, c, k);
      if (++n == batch_size) {
        n = 0;
        ++c;
      }
    }
  });
}

// The CPU backwards' add into a plane that one thread owns (for_each_plane_roi): a plain add.
template <typename acc_t>
struct PlaneAdd {
  acc_t* data;
  void operator()(int64_t index, acc_t value) const { data[index] += value; }
};

}  // namespace segops

#include "common/cpu_memory.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace segops {
namespace {

// Whether this Linux guest hands its free 2 MB blocks back to the host: a virtio balloon with free page reporting
// (feature bit 5, VIRTIO_BALLOON_F_REPORTING) at an order of at most 9 (2 MB of 4 KB pages). A huge page then
// mostly comes from memory the host has taken back, and the host faults it in again on its first touch: about 4 ms
// a 2 MB page here, where the 512 small pages' faults take about 0.8 ms.
bool host_takes_back_free_huge_pages() {
  std::ifstream order_file("/sys/module/page_reporting/parameters/page_reporting_order");
  int order = 0;
  if (!(order_file >> order) || order > 9) return false;
  std::error_code error;
  const std::filesystem::path balloons = "/sys/bus/virtio/drivers/virtio_balloon";
  for (const auto& entry : std::filesystem::directory_iterator(balloons, error)) {
    if (entry.path().filename().string().rfind("virtio", 0) != 0) continue;
    std::ifstream features_file(entry.path() / "features");
    std::string features;
    if (features_file >> features && features.size() > 5 && features[5] == '1') return true;
  }
  return false;
}

}  // namespace

bool huge_pages_advised() {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  static const bool advised = !host_takes_back_free_huge_pages();
  return advised;
#else
  return false;
#endif
}

at::Tensor zeros_with_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != at::kCPU) return at::zeros(sizes, options);
  return empty_with_huge_pages(sizes, options).zero_();
}

at::Tensor empty_with_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor result = at::empty(sizes, options);
  if (options.device().type() != at::kCPU || !huge_pages_advised()) return result;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(result.data_ptr());
  const uintptr_t end = begin + static_cast<uintptr_t>(result.nbytes());
  // Only the whole 2 MB pages inside the allocation; advice only, so a refusal changes nothing but speed.
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = end & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
  return result;
}

}  // namespace segops

#include "common/cpu_memory.h"

#include <ATen/ATen.h>

#include <cstdint>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace segops {

at::Tensor zeros_with_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (options.device().type() != at::kCPU) return at::zeros(sizes, options);
  return empty_with_huge_pages(sizes, options).zero_();
}

at::Tensor empty_with_huge_pages(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor result = at::empty(sizes, options);
  if (options.device().type() != at::kCPU) return result;
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

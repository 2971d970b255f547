#pragma once
// Host emulation of a CUDA launch, for tests only (built into segops._emulation with SEGOPS_EMULATION).
// __global__/__device__ vanish, threadIdx/blockIdx/blockDim/gridDim become thread-local variables, and a
// launch runs every (block, thread) of the grid in turn. Serial execution is a valid schedule for kernels
// without inter-thread communication, so an emulated kernel must reproduce the CPU path's results; this
// checks the kernels' index arithmetic, bounds tests and grid-stride loops, not only the shared math. A failed
// SEGOPS_KERNEL_ASSERT is recorded and raised when the launch ends, as a CUDA device-side assert surfaces after the
// kernel, so the kernel's own handling of the bad input runs too.
#include <c10/util/Exception.h>

#if defined(SEGOPS_MEMTRACE)
#include "emulation/memory_trace.h"
#endif

#include <cstdint>
#include <cstdio>
#include <string>

namespace segops::emulation {

struct Dim3 {
  unsigned int x = 1, y = 1, z = 1;
};

inline thread_local Dim3 thread_idx, block_idx, block_dim, grid_dim;
// The message of the first failed device-side assert of the running launch, or nullptr.
inline thread_local const char* failed_assert = nullptr;

// What a detailed assert printed (SEGOPS_KERNEL_ASSERT_DETAILED: on a GPU, printf before the assert).
inline thread_local std::string failed_assert_detail;

inline void device_assert_failed(const char* message) {
  if (failed_assert == nullptr) failed_assert = message;
}

template <class... Args>
void device_assert_failed(const char* message, const char* format, Args... args) {
  if (failed_assert != nullptr) return;
  failed_assert = message;
  char detail[512];
  std::snprintf(detail, sizeof(detail), format, args...);
  failed_assert_detail = detail;
}

// atomicCAS: one emulated thread runs at a time, so a plain read-compare-write is atomic.
template <typename T>
T compare_and_swap(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}

// Runs kernel(args...) for every thread of grid x block; `work` is ignored: the test chooses the grid.
struct EmulatedLaunch {
  Dim3 grid, block;

  template <class Kernel, class... Args>
  void operator()(int64_t /*work*/, Kernel kernel, Args... args) const {
    grid_dim = grid;
    block_dim = block;
    failed_assert = nullptr;
    failed_assert_detail.clear();
#if defined(SEGOPS_MEMTRACE)
    const memtrace::LaunchScope trace_scope;  // ends the traced launch if the kernel throws
    memtrace::launch_begins({{&thread_idx, sizeof(thread_idx)},
                             {&block_idx, sizeof(block_idx)},
                             {&block_dim, sizeof(block_dim)},
                             {&grid_dim, sizeof(grid_dim)},
                             {&failed_assert, sizeof(failed_assert)},
                             {&failed_assert_detail, sizeof(failed_assert_detail)}});
#endif
    for (unsigned int bz = 0; bz < grid.z; ++bz)
      for (unsigned int by = 0; by < grid.y; ++by)
        for (unsigned int bx = 0; bx < grid.x; ++bx) {
          block_idx = {bx, by, bz};
          for (unsigned int tz = 0; tz < block.z; ++tz)
            for (unsigned int ty = 0; ty < block.y; ++ty)
              for (unsigned int tx = 0; tx < block.x; ++tx) {
                thread_idx = {tx, ty, tz};
#if defined(SEGOPS_MEMTRACE)
                memtrace::thread_begins((int64_t(bz) * grid.y + by) * grid.x + bx,
                                        (int64_t(tz) * block.y + ty) * block.x + tx,
                                        int64_t(block.x) * block.y * block.z);
#endif
                kernel(args...);
              }
        }
#if defined(SEGOPS_MEMTRACE)
    memtrace::launch_ends(reinterpret_cast<const void*>(kernel));
#endif
    const char* message = failed_assert;
    failed_assert = nullptr;
    const std::string printed = failed_assert_detail.empty() ? "" : " (printed: " + failed_assert_detail + ")";
    TORCH_CHECK(message == nullptr, "device-side assert triggered: ", message, printed);
  }
};

}  // namespace segops::emulation

#define __global__
#define __device__
#define threadIdx (::segops::emulation::thread_idx)
#define blockIdx (::segops::emulation::block_idx)
#define blockDim (::segops::emulation::block_dim)
#define gridDim (::segops::emulation::grid_dim)

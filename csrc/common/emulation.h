#pragma once
// Host emulation of a CUDA launch, for tests only (built into segops._emulation with SEGOPS_EMULATION).
// __global__/__device__ vanish, threadIdx/blockIdx/blockDim/gridDim become thread-local variables, and a
// launch runs every (block, thread) of the grid in turn. Serial execution is a valid schedule for kernels
// without inter-thread communication, so an emulated kernel must reproduce the CPU path's results; this
// checks the kernels' index arithmetic, bounds tests and grid-stride loops, not only the shared math. A failed
// SEGOPS_KERNEL_ASSERT is recorded and raised when the launch ends, as a CUDA device-side assert surfaces after the
// kernel, so the kernel's own handling of the bad input runs too.
//
// SEGOPS_CONCURRENT_EMULATION (scripts/tsan.sh, built with -fsanitize=thread): a launch runs its (block, thread)
// pairs in a shuffled order on kConcurrentWorkers OS threads that share no lock, no atomic with ordering and no
// other synchronisation, as a GPU's threads share none within a launch; atomics are relaxed std::atomic_ref
// operations, as CUDA's are. ThreadSanitizer then reports two emulated threads that write one address without an
// atomic, or one that reads what another writes, whenever the two land on different workers. The threads of a
// block run independently too: no kernel uses __syncthreads or shared memory (neither compiles in the emulation),
// and one that did would need its block's threads run as cooperating fibres.
#include <c10/util/Exception.h>

#if defined(SEGOPS_MEMTRACE)
#include "emulation/memory_trace.h"
#endif

#include <cstdint>
#include <cstdio>
#include <string>

#if defined(SEGOPS_CONCURRENT_EMULATION)
#include <algorithm>
#include <atomic>
#include <exception>
#include <numeric>
#include <random>
#include <thread>
#include <vector>
#endif

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

#if defined(SEGOPS_CONCURRENT_EMULATION)
constexpr int kConcurrentWorkers = 4;

// Test hook: atomic adds become plain read-modify-writes, the race ThreadSanitizer must report.
inline bool& plant_plain_atomic_add() {
  static bool plant = false;
  return plant;
}

// *address = update(*address) as one relaxed atomic operation (CUDA's atomics order nothing); returns the old value.
template <typename T, class Update>
T atomic_update(T* address, Update update) {
  std::atomic_ref<T> ref(*address);
  T old = ref.load(std::memory_order_relaxed);
  while (!ref.compare_exchange_weak(old, update(old), std::memory_order_relaxed)) {
  }
  return old;
}

template <typename T, typename V>
void atomic_add(T* address, V value) {
  if (plant_plain_atomic_add()) {
    *address += value;
    return;
  }
  atomic_update(address, [value](T old) { return static_cast<T>(old + value); });
}

template <typename T>
T atomic_max(T* address, T value) {
  return atomic_update(address, [value](T old) { return old > value ? old : value; });
}

template <typename T>
T atomic_min(T* address, T value) {
  return atomic_update(address, [value](T old) { return old < value ? old : value; });
}

template <typename T>
T compare_and_swap(T* address, T compare, T value) {
  std::atomic_ref<T>(*address).compare_exchange_strong(compare, value, std::memory_order_relaxed);
  return compare;  // the old value: compare_exchange writes it into `compare` on failure
}
#else
// atomicCAS: one emulated thread runs at a time, so a plain read-compare-write is atomic.
template <typename T>
T compare_and_swap(T* address, T compare, T value) {
  const T old = *address;
  if (old == compare) *address = value;
  return old;
}
#endif

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
#if defined(SEGOPS_CONCURRENT_EMULATION)
    run_concurrently(kernel, args...);
#else
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
#endif
#if defined(SEGOPS_MEMTRACE)
    memtrace::launch_ends(reinterpret_cast<const void*>(kernel));
#endif
    const char* message = failed_assert;
    failed_assert = nullptr;
    const std::string printed = failed_assert_detail.empty() ? "" : " (printed: " + failed_assert_detail + ")";
    TORCH_CHECK(message == nullptr, "device-side assert triggered: ", message, printed);
  }

#if defined(SEGOPS_CONCURRENT_EMULATION)
 private:
  // The (block, thread) pairs in a shuffled order, dealt round-robin to the workers. The order is seeded by a launch
  // counter: a run is reproducible up to the OS's interleaving, which ThreadSanitizer's happens-before analysis
  // does not depend on. The first failed assert by worker number is the one left in failed_assert.
  template <class Kernel, class... Args>
  void run_concurrently(Kernel kernel, const Args&... args) const {
    static std::atomic<uint64_t> launches{0};
    const int64_t threads_per_block = int64_t(block.x) * block.y * block.z;
    const int64_t pairs = int64_t(grid.x) * grid.y * grid.z * threads_per_block;
    std::vector<int64_t> order(pairs);
    std::iota(order.begin(), order.end(), int64_t{0});
    std::shuffle(order.begin(), order.end(), std::mt19937_64(launches.fetch_add(1)));
    std::vector<const char*> asserts(kConcurrentWorkers, nullptr);
    std::vector<std::string> details(kConcurrentWorkers);
    std::vector<std::exception_ptr> errors(kConcurrentWorkers);
    std::vector<std::thread> workers;
    for (int w = 0; w < kConcurrentWorkers; ++w) {
      workers.emplace_back([&, w] {
        grid_dim = grid;
        block_dim = block;
        try {
          for (int64_t i = w; i < pairs; i += kConcurrentWorkers) {
            const int64_t t = order[i] % threads_per_block, b = order[i] / threads_per_block;
            thread_idx = {unsigned(t % block.x), unsigned(t / block.x % block.y), unsigned(t / block.x / block.y)};
            block_idx = {unsigned(b % grid.x), unsigned(b / grid.x % grid.y), unsigned(b / grid.x / grid.y)};
            kernel(args...);
          }
        } catch (...) {
          errors[w] = std::current_exception();
        }
        asserts[w] = failed_assert;
        details[w] = failed_assert_detail;
      });
    }
    for (std::thread& worker : workers) worker.join();
    for (const std::exception_ptr& error : errors)
      if (error) std::rethrow_exception(error);
    for (int w = 0; w < kConcurrentWorkers; ++w)
      if (asserts[w] != nullptr) {
        failed_assert = asserts[w];
        failed_assert_detail = details[w];
        return;
      }
  }
#endif
};

}  // namespace segops::emulation

#define __global__
#define __device__
#define threadIdx (::segops::emulation::thread_idx)
#define blockIdx (::segops::emulation::block_idx)
#define blockDim (::segops::emulation::block_dim)
#define gridDim (::segops::emulation::grid_dim)

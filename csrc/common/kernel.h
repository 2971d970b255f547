#pragma once
// What a __global__ kernel in a <op>_kernels.cuh header may use beyond the shared math: a grid-stride loop and
// the SEGOPS_* intrinsics. Under nvcc they are the real device intrinsics; in the test-only emulation build
// (SEGOPS_EMULATION, see common/emulation.h) they are their host equivalents, so the same kernels run on the
// CPU. Include this after ATen: the emulation defines CUDA's keywords away.
#include <cstdint>

#if defined(SEGOPS_EMULATION)
#include "common/emulation.h"
#define SEGOPS_LAUNCH_BOUNDS(threads)
#define SEGOPS_LAUNCH_BOUNDS_MIN_BLOCKS(threads, blocks)
#define SEGOPS_ATOMIC_ADD(base, index, numel, value) ((base)[index] += (value))
#define SEGOPS_ATOMIC_MAX(address, value) (*(address) = *(address) > (value) ? *(address) : (value))
#define SEGOPS_ATOMIC_MIN(address, value) (*(address) = *(address) < (value) ? *(address) : (value))
// Stores value where *address == compare; returns the old *address either way.
#define SEGOPS_ATOMIC_CAS(address, compare, value) ::segops::emulation::compare_and_swap((address), (compare), (value))
#define SEGOPS_KERNEL_ASSERT(cond, message) \
  if (!(cond)) ::segops::emulation::device_assert_failed(message)
#define SEGOPS_KERNEL_ASSERT_DETAILED(cond, message, format, ...) \
  if (!(cond)) ::segops::emulation::device_assert_failed(message, format, __VA_ARGS__)
#elif defined(__CUDACC__)
#include <ATen/native/cuda/KernelUtils.cuh>
#define SEGOPS_LAUNCH_BOUNDS(threads) __launch_bounds__(threads)
// And at least `blocks` resident blocks per SM: the compiler keeps within 65536 / (threads * blocks) registers.
#define SEGOPS_LAUNCH_BOUNDS_MIN_BLOCKS(threads, blocks) __launch_bounds__(threads, blocks)
// ATen's fast atomic add: packed half2/bfloat162 atomics for half types.
#define SEGOPS_ATOMIC_ADD(base, index, numel, value) at::native::fastAtomicAdd((base), (index), (numel), (value), true)
// An asynchronous device-side assert, as PyTorch's own CUDA indexing ops report a bad index: the error surfaces at
// the next synchronisation. Active in release builds too (c10's CUDA_KERNEL_ASSERT ignores NDEBUG).
#define SEGOPS_KERNEL_ASSERT(cond, message) CUDA_KERNEL_ASSERT_MSG(cond, message)
// The same, printing the offending values first (printf's format and arguments): the assert's own message is static.
#define SEGOPS_KERNEL_ASSERT_DETAILED(cond, message, format, ...) \
  do {                                                            \
    if (!(cond)) printf(format "\n", __VA_ARGS__);                \
    CUDA_KERNEL_ASSERT_MSG(cond, message);                        \
  } while (0)
// Integer atomics: the result does not depend on the order of the updates.
#define SEGOPS_ATOMIC_MAX(address, value) atomicMax((address), (value))
#define SEGOPS_ATOMIC_MIN(address, value) atomicMin((address), (value))
#define SEGOPS_ATOMIC_CAS(address, compare, value) atomicCAS((address), (compare), (value))
#else
#error "kernel headers compile under nvcc, or with SEGOPS_EMULATION for the host emulation"
#endif

// for (i = global thread index; i < n; i += total threads), in 64-bit indices.
#define SEGOPS_KERNEL_LOOP(i, n)                                                         \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

namespace segops {

constexpr int kThreadsPerBlock = 256;

// add(index, value) into a device tensor of `numel` elements, atomically; the scatter functor of backward kernels.
template <typename scalar_t>
struct AtomicAdd {
  scalar_t* data;
  int64_t numel;
  template <typename acc_t>
  __device__ void operator()(int64_t index, acc_t value) const {
    SEGOPS_ATOMIC_ADD(data, index, numel, static_cast<scalar_t>(value));
  }
};

// The coordinates of flat index `index` of a contiguous [K, C, PH, PW] RoI-op output.
struct RoIBinIndex {
  int64_t roi, channel, ph, pw;
};

__device__ inline RoIBinIndex roi_bin_index(int64_t index, int64_t channels, int64_t pooled_h, int64_t pooled_w) {
  RoIBinIndex bin;
  bin.pw = index % pooled_w;
  index /= pooled_w;
  bin.ph = index % pooled_h;
  index /= pooled_h;
  bin.channel = index % channels;
  bin.roi = index / channels;
  return bin;
}

}  // namespace segops

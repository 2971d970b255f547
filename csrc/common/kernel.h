#pragma once
// What a __global__ kernel in a <op>_kernels.cuh header may use beyond the shared math: a grid-stride loop and
// the SEGOPS_* intrinsics. Under nvcc they are the real device intrinsics; in the test-only emulation build
// (SEGOPS_EMULATION, see common/emulation.h) they are their host equivalents, so the same kernels run on the
// CPU. Include this after ATen: the emulation defines CUDA's keywords away.
#include <ATen/core/TensorBase.h>
#include <ATen/native/CanUse32BitIndexMath.h>

#include <cstdint>
#include <initializer_list>

#if defined(SEGOPS_EMULATION)
#include "common/emulation.h"
#define SEGOPS_LAUNCH_BOUNDS(threads)
#define SEGOPS_LAUNCH_BOUNDS_MIN_BLOCKS(threads, blocks)
#if defined(SEGOPS_CONCURRENT_EMULATION)  // launches on several OS threads: real atomics (common/emulation.h)
#define SEGOPS_ATOMIC_ADD(base, index, numel, value) ::segops::emulation::atomic_add(&(base)[index], (value))
#define SEGOPS_ATOMIC_MAX(address, value) ::segops::emulation::atomic_max((address), (value))
#define SEGOPS_ATOMIC_MIN(address, value) ::segops::emulation::atomic_min((address), (value))
#define SEGOPS_ATOMIC_CAS(address, compare, value) ::segops::emulation::compare_and_swap((address), (compare), (value))
#else
// One emulated thread at a time: a plain read-modify-write is atomic.
#if defined(SEGOPS_MEMTRACE)  // the traced emulation counts atomics (emulation/memory_trace.h)
#define SEGOPS_EMULATED_ATOMIC(address) SEGOPS_MEMTRACE_ATOMIC(address)
#else
#define SEGOPS_EMULATED_ATOMIC(address) ((void)0)
#endif
#define SEGOPS_ATOMIC_ADD(base, index, numel, value) (SEGOPS_EMULATED_ATOMIC(&(base)[index]), (base)[index] += (value))
#define SEGOPS_ATOMIC_MAX(address, value) \
  (SEGOPS_EMULATED_ATOMIC(address), *(address) = *(address) > (value) ? *(address) : (value))
#define SEGOPS_ATOMIC_MIN(address, value) \
  (SEGOPS_EMULATED_ATOMIC(address), *(address) = *(address) < (value) ? *(address) : (value))
// Stores value where *address == compare; returns the old *address either way.
#define SEGOPS_ATOMIC_CAS(address, compare, value) \
  (SEGOPS_EMULATED_ATOMIC(address), ::segops::emulation::compare_and_swap((address), (compare), (value)))
#endif
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

// The same loop, with i of type index_t (int32_t or int64_t, see with_index_type), the type the body divides and
// multiplies in. For int32_t the counter is unsigned: n < 2^31 and the grid's threads < 2^31, so it cannot wrap.
#define SEGOPS_KERNEL_LOOP_T(index_t, i, n)                                                                            \
  for (auto i##_counter = ::segops::kernel_loop_start<index_t>(); i##_counter < static_cast<decltype(i##_counter)>(n); \
       i##_counter += ::segops::kernel_loop_step<index_t>())                                                           \
    if (const index_t i = static_cast<index_t>(i##_counter); true)

namespace segops {

constexpr int kThreadsPerBlock = 256;

// SEGOPS_KERNEL_LOOP_T's counter: uint32_t for 32-bit indices, int64_t otherwise.
template <typename index_t>
__device__ inline auto kernel_loop_start() {
  if constexpr (sizeof(index_t) == 4) {
    return static_cast<uint32_t>(blockIdx.x * blockDim.x + threadIdx.x);
  } else {
    return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  }
}

template <typename index_t>
__device__ inline auto kernel_loop_step() {
  if constexpr (sizeof(index_t) == 4) {
    return static_cast<uint32_t>(blockDim.x * gridDim.x);
  } else {
    return static_cast<int64_t>(blockDim.x) * gridDim.x;
  }
}

// Set by the emulation tests to run every kernel templated on its index type with 64-bit indices (the other
// instantiation); never set on a GPU.
inline bool& force_64bit_index_math() {
  static bool force = false;
  return force;
}

// Set by the memory tracer's tests: kernels that walk channels_last inputs channel-fastest walk them in the output's
// order instead (an uncoalesced access the tracer must catch); never set on a GPU.
inline bool& force_output_thread_order() {
  static bool force = false;
  return force;
}

// Calls f(int32_t{}) where every flat index and element offset of `tensors` fits in 31 bits (ATen's rule,
// canUse32BitIndexMath) and so do the caller's other values (values_fit: a convolution's padded extents and
// strides), else f(int64_t{}). 32-bit index math: a GPU divides 32-bit integers in about a quarter of the
// instructions of 64-bit ones, and the kernels split a flat index into coordinates by division.
template <class F>
void with_index_type(std::initializer_list<at::TensorBase> tensors, F&& f, bool values_fit = true) {
  bool fits = values_fit && !force_64bit_index_math();
  for (const at::TensorBase& t : tensors) fits = fits && (!t.defined() || at::native::canUse32BitIndexMath(t));
  if (fits) {
    f(int32_t{});
  } else {
    f(int64_t{});
  }
}

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

// The coordinates of a RoI-op output element, [K, C, PH, PW].
struct RoIBinIndex {
  int64_t roi, channel, ph, pw;

  // Its offset in the contiguous output, taken by thread index `index` of roi_bin_index<kChannelFastest> (in the
  // output's order that is the index itself: nothing to recompute, no register held for it).
  template <bool kChannelFastest>
  __device__ int64_t offset(int64_t index, int64_t channels, int64_t pooled_h, int64_t pooled_w) const {
    return kChannelFastest ? ((roi * channels + channel) * pooled_h + ph) * pooled_w + pw : index;
  }
};

// The element that thread index `index` takes: the output's own order, or (kChannelFastest) a [K, PH, PW, C] walk,
// the order that reads channels_last maps in place with consecutive threads at consecutive addresses.
template <bool kChannelFastest = false>
__device__ inline RoIBinIndex roi_bin_index(int64_t index, int64_t channels, int64_t pooled_h, int64_t pooled_w) {
  RoIBinIndex bin;
  if (kChannelFastest) {
    bin.channel = index % channels;
    index /= channels;
  }
  bin.pw = index % pooled_w;
  index /= pooled_w;
  bin.ph = index % pooled_h;
  index /= pooled_h;
  if (kChannelFastest) {
    bin.roi = index;
  } else {
    bin.channel = index % channels;
    bin.roi = index / channels;
  }
  return bin;
}

}  // namespace segops

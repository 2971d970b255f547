#pragma once
// The one CUDA launch idiom: kThreadsPerBlock threads, a grid capped at 32 blocks per SM (kernels grid-stride
// over the rest), the current stream, a launch check. The caller holds the device guard.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>

#include "common/kernel.h"

namespace segops {

struct CudaLaunch {
  template <class Kernel, class... Args>
  void operator()(int64_t work, Kernel kernel, Args... args) const {
    if (work <= 0) return;
    const int64_t max_blocks = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 32;
    const int64_t blocks = std::min((work + kThreadsPerBlock - 1) / kThreadsPerBlock, max_blocks);
    kernel<<<static_cast<unsigned int>(blocks), kThreadsPerBlock, 0, at::cuda::getCurrentCUDAStream()>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace segops

// Max-unpooling CUDA launcher: the kernels live in max_unpool_kernels.cuh. Deterministic by construction (integer
// atomics settle each output's winner), so no nondeterminism alert is due.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "max_unpool/max_unpool_kernels.cuh"

namespace segops {
namespace {

at::Tensor max_unpool2d_forward_cuda(const at::Tensor& input, const at::Tensor& indices, int64_t output_height,
                                     int64_t output_width) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return max_unpool2d_forward_launch(CudaLaunch{}, input, indices, output_height, output_width);
}

at::Tensor max_unpool2d_backward_cuda(const at::Tensor& grad, const at::Tensor& indices) {
  const c10::cuda::CUDAGuard device_guard(grad.device());
  return max_unpool2d_backward_launch(CudaLaunch{}, grad, indices);
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("max_unpool2d", &max_unpool2d_forward_cuda);
  m.impl("_max_unpool2d_backward", &max_unpool2d_backward_cuda);
}

}  // namespace segops

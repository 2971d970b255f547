// Dilated convolution CUDA launcher: the kernels live in dilated_conv_kernels.cuh, the GEMMs go to cuBLAS through
// ATen. Deterministic by construction (no floating-point atomics), so no nondeterminism alert is due.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cuda_launch.cuh"
#include "dilated_conv/dilated_conv_kernels.cuh"

namespace segops {
namespace {

at::Tensor dilated_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return dilated_conv2d_forward_launch(CudaLaunch{}, input, weight, bias, stride, padding, dilation, groups);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return dilated_conv2d_backward_launch(CudaLaunch{}, grad, input, weight, stride, padding, dilation, groups,
                                        output_mask);
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("dilated_conv2d", &dilated_conv2d_forward_cuda);
  m.impl("_dilated_conv2d_backward", &dilated_conv2d_backward_cuda);
}

}  // namespace segops

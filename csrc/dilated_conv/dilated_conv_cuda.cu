// Dilated convolution CUDA launcher: the kernels and the choice of path live in dilated_conv_kernels.cuh. The general
// case is ATen's convolution (cuDNN); under torch.use_deterministic_algorithms its backward is segops' GEMMs (no
// floating-point atomics), on cuBLAS with cuDNN's TF32 switch. No nondeterminism alert is due.
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "common/cublas_gemm.cuh"
#include "common/cuda_launch.cuh"
#include "dilated_conv/dilated_conv_kernels.cuh"

namespace segops {
namespace {

at::Tensor dilated_conv2d_forward_cuda(const at::Tensor& input, const at::Tensor& weight,
                                       const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                       at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  return dilated_conv2d_forward_launch(CudaLaunch{}, input, weight, bias, stride, padding, dilation, groups,
                                       CublasBatchedGemm{at::globalContext().allowTF32CuDNN()});
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> dilated_conv2d_backward_cuda(
    const at::Tensor& grad, const at::Tensor& input, const at::Tensor& weight, at::IntArrayRef stride,
    at::IntArrayRef padding, at::IntArrayRef dilation, int64_t groups, std::array<bool, 3> output_mask) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Context& context = at::globalContext();
  return dilated_conv2d_backward_launch(CudaLaunch{}, grad, input, weight, stride, padding, dilation, groups,
                                        output_mask, context.deterministicAlgorithms() || context.deterministicCuDNN(),
                                        CublasBatchedGemm{context.allowTF32CuDNN()});
}

}  // namespace

TORCH_LIBRARY_IMPL(segops, CUDA, m) {
  m.impl("dilated_conv2d", &dilated_conv2d_forward_cuda);
  m.impl("_dilated_conv2d_backward", &dilated_conv2d_backward_cuda);
}

}  // namespace segops

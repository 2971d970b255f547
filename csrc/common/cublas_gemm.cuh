#pragma once
// Strided-batched GEMMs on cuBLAS with the caller's TF32 choice: ATen's GEMMs follow torch.backends.cuda.matmul's
// switch, where a convolution must follow cuDNN's (torch.backends.cudnn.allow_tf32), as F.conv2d does. One call
// covers every matrix of the batch. cuBLAS is torch's own copy, loaded with libtorch_cuda: its functions are looked
// up there (dlopen with RTLD_NOLOAD), so segops adds no link dependency and calls the cuBLAS that ATen calls.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdint>
#include <string>

namespace segops {

// cublasGemmStridedBatchedEx's C signature (the header overloads it for C++ callers).
using GemmStridedBatchedEx = cublasStatus_t (*)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                                                const void*, const void*, cudaDataType, int, long long int, const void*,
                                                cudaDataType, int, long long int, const void*, void*, cudaDataType, int,
                                                long long int, int, cublasComputeType_t, cublasGemmAlgo_t);

struct CublasFunctions {
  GemmStridedBatchedEx gemm_strided_batched_ex;
  decltype(&cublasGetMathMode) get_math_mode;
  decltype(&cublasSetMathMode) set_math_mode;
};

inline const CublasFunctions& cublas_functions() {
  static const CublasFunctions functions = [] {
    const std::string name = "libcublas.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* library = dlopen(name.c_str(), RTLD_NOW | RTLD_NOLOAD);
    TORCH_CHECK(library != nullptr, "segops: ", name, " is not loaded (torch's CUDA build loads it): ", dlerror());
    const auto find = [&](const char* symbol) {
      void* address = dlsym(library, symbol);
      TORCH_CHECK(address != nullptr, "segops: ", symbol, " not found in ", name);
      return address;
    };
    return CublasFunctions{reinterpret_cast<GemmStridedBatchedEx>(find("cublasGemmStridedBatchedEx")),
                           reinterpret_cast<decltype(&cublasGetMathMode)>(find("cublasGetMathMode")),
                           reinterpret_cast<decltype(&cublasSetMathMode)>(find("cublasSetMathMode"))};
  }();
  return functions;
}

inline cudaDataType cublas_data_type(at::ScalarType type) {
  switch (type) {
    case at::kFloat:
      return CUDA_R_32F;
    case at::kDouble:
      return CUDA_R_64F;
    case at::kHalf:
      return CUDA_R_16F;
    case at::kBFloat16:
      return CUDA_R_16BF;
    default:
      TORCH_CHECK(false, "segops: no cuBLAS type for ", type);
  }
}

// One matrix operand of a batch: [batch, rows, cols], unit stride along cols (row-major), any batch stride.
struct GemmOperand {
  const at::Tensor& tensor;
  bool transpose;

  int leading_dimension() const {
    // cuBLAS wants ld >= the stored row length even where a single row makes the stride meaningless.
    const int64_t ld = std::max<int64_t>({tensor.stride(1), tensor.size(2), 1});
    TORCH_CHECK(ld <= INT32_MAX, "segops: a GEMM operand's rows exceed 2^31 elements");
    return static_cast<int>(ld);
  }
};

// out[g] = op(a[g]) @ op(b[g]), or out[g] += that (accumulate), for every g, in one cuBLAS call; float32 operands
// use TF32 tensor cores if allow_tf32. out may be float32 with float16/bfloat16 operands (float32 accumulation
// throughout). Row-major matrices are column-major transposes: cuBLAS computes out^T = op(b)^T op(a)^T.
struct CublasBatchedGemm {
  bool allow_tf32;

  void operator()(const at::Tensor& out, const at::Tensor& a, bool transpose_a, const at::Tensor& b, bool transpose_b,
                  bool accumulate) const {
    for (const at::Tensor* t : {&out, &a, &b}) {
      TORCH_CHECK(t->dim() == 3 && t->stride(2) == 1, "segops: a batched GEMM operand must be 3-D, unit stride last");
    }
    const int64_t batch = out.size(0), m = out.size(1), n = out.size(2), k = transpose_a ? a.size(1) : a.size(2);
    TORCH_CHECK(m <= INT32_MAX && n <= INT32_MAX && k <= INT32_MAX && batch <= INT32_MAX,
                "segops: a batched GEMM's sizes exceed 2^31");
    if (batch == 0 || m == 0 || n == 0) return;
    const GemmOperand a_operand{a, transpose_a}, b_operand{b, transpose_b};
    const bool is_double = a.scalar_type() == at::kDouble;
    const cublasComputeType_t compute = is_double                                     ? CUBLAS_COMPUTE_64F
                                        : allow_tf32 && a.scalar_type() == at::kFloat ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                                      : CUBLAS_COMPUTE_32F;
    const double alpha64 = 1, beta64 = accumulate ? 1 : 0;
    const float alpha32 = 1, beta32 = accumulate ? 1 : 0;
    const void* alpha = is_double ? static_cast<const void*>(&alpha64) : static_cast<const void*>(&alpha32);
    const void* beta = is_double ? static_cast<const void*>(&beta64) : static_cast<const void*>(&beta32);
    const CublasFunctions& cublas = cublas_functions();
    cublasHandle_t handle = at::cuda::getCurrentCUDABlasHandle();
    // The handle carries ATen's math mode (TF32 if torch.backends.cuda.matmul allows it): the compute type decides.
    cublasMath_t math_mode;
    TORCH_CUDABLAS_CHECK(cublas.get_math_mode(handle, &math_mode));
    TORCH_CUDABLAS_CHECK(cublas.set_math_mode(handle, CUBLAS_DEFAULT_MATH));
    const cublasStatus_t status = cublas.gemm_strided_batched_ex(
        handle, transpose_b ? CUBLAS_OP_T : CUBLAS_OP_N, transpose_a ? CUBLAS_OP_T : CUBLAS_OP_N, static_cast<int>(n),
        static_cast<int>(m), static_cast<int>(k), alpha, b.const_data_ptr(), cublas_data_type(b.scalar_type()),
        b_operand.leading_dimension(), b.stride(0), a.const_data_ptr(), cublas_data_type(a.scalar_type()),
        a_operand.leading_dimension(), a.stride(0), beta, out.mutable_data_ptr(), cublas_data_type(out.scalar_type()),
        GemmOperand{out, false}.leading_dimension(), out.stride(0), static_cast<int>(batch), compute,
        CUBLAS_GEMM_DEFAULT);
    TORCH_CUDABLAS_CHECK(cublas.set_math_mode(handle, math_mode));
    TORCH_CUDABLAS_CHECK(status);
  }
};

}  // namespace segops

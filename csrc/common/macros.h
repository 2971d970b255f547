#pragma once
// SEGOPS_HOST_DEVICE marks the shared arithmetic that both the CPU launchers and the CUDA kernels call.
#if defined(__CUDACC__)
#define SEGOPS_HOST_DEVICE __host__ __device__ inline
#else
#define SEGOPS_HOST_DEVICE inline
#endif

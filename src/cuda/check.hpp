// Error checks for the CUDA runtime and cuBLASLt calls of wegeft::cuda (internal to src/cuda/).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "wegeft/core/error.hpp"

#define WEGEFT_CUDA_CHECK(call)                                                                 \
  do {                                                                                          \
    const cudaError_t wegeft_cuda_status_ = (call);                                             \
    WEGEFT_CHECK(wegeft_cuda_status_ == cudaSuccess,                                            \
                 "CUDA: " #call " failed: " << cudaGetErrorName(wegeft_cuda_status_) << " ("    \
                                            << cudaGetErrorString(wegeft_cuda_status_) << ")"); \
  } while (false)

#define WEGEFT_CUBLAS_CHECK(call)                                                                 \
  do {                                                                                            \
    const cublasStatus_t wegeft_cublas_status_ = (call);                                          \
    WEGEFT_CHECK(                                                                                 \
        wegeft_cublas_status_ == CUBLAS_STATUS_SUCCESS,                                           \
        "cuBLASLt: " #call " failed: " << cublasLtGetStatusName(wegeft_cublas_status_) << " ("    \
                                       << cublasLtGetStatusString(wegeft_cublas_status_) << ")"); \
  } while (false)

namespace wegeft::cuda::detail {
/// The launch error of the kernel just launched, as a wegeft::Error naming it.
inline void check_launch(const char* kernel) {
  const cudaError_t status = cudaGetLastError();
  WEGEFT_CHECK(status == cudaSuccess,
               "CUDA kernel " << kernel << " failed to launch: " << cudaGetErrorName(status) << " ("
                              << cudaGetErrorString(status) << ")");
}
}  // namespace wegeft::cuda::detail

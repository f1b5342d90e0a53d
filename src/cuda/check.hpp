// Error checks for the CUDA runtime and cuBLASLt calls of wegeft::cuda (internal to src/cuda/).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include "wegeft/core/error.hpp"
#include "wegeft/core/view.hpp"

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
/// Refuses a view that is not an F32 or BF16 matrix on the GPU, naming the op and the argument.
inline void check_view(const TensorView& v, const char* op, const char* what) {
  WEGEFT_CHECK(
      v.device == Device::cuda && (v.dtype == DType::F32 || v.dtype == DType::BF16) &&
          v.rows >= 0 && v.cols >= 0 && v.ld >= v.cols && (v.data || !v.rows || !v.cols),
      op << ": " << what << " is " << v.describe() << "; wanted an F32 or BF16 view on the GPU");
}
}  // namespace wegeft::cuda::detail

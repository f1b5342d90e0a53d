// Element-wise CUDA kernels over strided 2-D views (included only from .cu files): a scaled,
// converting copy and a fill. One thread per element of a row-chunk, rows over blockIdx.y, so any
// row stride works; the loads and stores of a warp are consecutive within a row.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace wegeft::cuda::kernels {

template <class T>
__device__ inline float load_float(const T* p) {
  if constexpr (sizeof(T) == 2)
    return __bfloat162float(*p);
  else
    return *p;
}
template <class T>
__device__ inline void store_float(T* p, float v) {
  if constexpr (sizeof(T) == 2)
    *p = __float2bfloat16_rn(v);
  else
    *p = v;
}

/// dst [rows, cols] (row stride ldd) = scale * src [rows, cols] (row stride lds), converted.
template <class TD, class TS>
__global__ void scale_copy(TD* __restrict__ dst, std::int64_t ldd, const TS* __restrict__ src,
                           std::int64_t lds, std::int64_t rows, std::int64_t cols, float scale) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y)
    if (j < cols) store_float(dst + i * ldd + j, scale * load_float(src + i * lds + j));
}

/// dst [rows, cols] (row stride ldd) = value.
template <class TD>
__global__ void fill(TD* __restrict__ dst, std::int64_t ldd, std::int64_t rows, std::int64_t cols,
                     float value) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y)
    if (j < cols) store_float(dst + i * ldd + j, value);
}

}  // namespace wegeft::cuda::kernels

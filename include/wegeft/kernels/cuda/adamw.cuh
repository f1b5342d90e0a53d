// The AdamW update as one CUDA kernel over a flat fp32 buffer (included only from .cu files),
// the same arithmetic as kernels/cpu/adamw.hpp: m, v and p each read and written once, four
// values per thread through 16-byte accesses where the buffer allows, a grid-stride loop.
#pragma once

#include <cstdint>

namespace wegeft::cuda::kernels {

struct AdamWCoefficients {
  float b1, a1, b2, a2, sqrt_c2, eps, step, decay;
};

__device__ inline void adamw_one(float& p, float& m, float& v, float g,
                                 const AdamWCoefficients& c) {
  m = c.b1 * m + c.a1 * g;
  v = c.b2 * v + c.a2 * (g * g);
  p = p * c.decay - c.step * m / (sqrtf(v) / c.sqrt_c2 + c.eps);
}

/// p, m, v [n] updated in place from g [n]; n4 = the number of whole float4s when all four
/// pointers are 16-byte aligned (else 0: every value takes the scalar loop).
__global__ void adamw(float* __restrict__ p, float* __restrict__ m, float* __restrict__ v,
                      const float* __restrict__ g, std::int64_t n, std::int64_t n4,
                      AdamWCoefficients c) {
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  const std::int64_t first = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (std::int64_t i = first; i < n4; i += stride) {
    float4 pp = reinterpret_cast<float4*>(p)[i], mm = reinterpret_cast<float4*>(m)[i];
    float4 vv = reinterpret_cast<float4*>(v)[i];
    const float4 gg = reinterpret_cast<const float4*>(g)[i];
    adamw_one(pp.x, mm.x, vv.x, gg.x, c);
    adamw_one(pp.y, mm.y, vv.y, gg.y, c);
    adamw_one(pp.z, mm.z, vv.z, gg.z, c);
    adamw_one(pp.w, mm.w, vv.w, gg.w, c);
    reinterpret_cast<float4*>(p)[i] = pp;
    reinterpret_cast<float4*>(m)[i] = mm;
    reinterpret_cast<float4*>(v)[i] = vv;
  }
  for (std::int64_t i = 4 * n4 + first; i < n; i += stride) adamw_one(p[i], m[i], v[i], g[i], c);
}

/// *out += the sum of g[i]^2 over g [n], summed in double (one atomic add per block).
__global__ void sum_squares(double* out, const float* __restrict__ g, std::int64_t n) {
  __shared__ double partial[256];
  double s = 0;
  const std::int64_t stride = static_cast<std::int64_t>(gridDim.x) * blockDim.x;
  for (std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride)
    s += static_cast<double>(g[i]) * g[i];
  partial[threadIdx.x] = s;
  __syncthreads();
  for (unsigned half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) partial[threadIdx.x] += partial[threadIdx.x + half];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(out, partial[0]);
}

}  // namespace wegeft::cuda::kernels

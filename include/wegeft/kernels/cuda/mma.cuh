// The tensor-core product the bf16 kernels share (included only from .cu files; sm_80 or later):
// mma.sync m16n8k16 with bf16 inputs and fp32 accumulation, and the packing of two floats into
// a bf16 pair.
//
// Fragment layout of mma.m16n8k16 (PTX ISA), lane = 4 g + t: A [16 x 16] registers {row g, cols
// 2t, 2t+1}, {row g+8, same}, {row g, cols 2t+8, 2t+9}, {row g+8, same}; B [16 x 8] {rows 2t, 2t+1,
// col g}, {rows 2t+8, 2t+9, col g}; C [16 x 8] c0, c1 at row g, cols 2t, 2t+1 and c2, c3 at row
// g+8.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace wegeft::cuda::kernels::tc {

/// d (16 x 8) += a (16 x 16) b (16 x 8), in the fragment layouts above.
__device__ inline void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                           std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/// Two floats rounded to bf16 (nearest even), lo in the low half.
__device__ inline std::uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

}  // namespace wegeft::cuda::kernels::tc

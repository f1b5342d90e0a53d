// The adapters' rank-r products on the tensor cores (included only from .cu files; sm_80 or
// later): out [n, R] = x [n, K] W with W [K, R] small (u = x A^T, g = dy sB), bf16 inputs and
// output, fp32 accumulation. The CPU twin is kernels/cpu/rank_r.hpp.
//
// A general GEMM tiles the output; here the output is R <= 32 columns wide, so cuBLASLt's tiles
// leave most of the card idle on a few thousand rows, each block walking all of K alone. This
// kernel gives each block 16 rows and splits K across its 8 warps instead (warp w takes the
// 32-wide chunks w, w + 8, ...), then sums the 8 partial tiles in shared memory.
//
// Within a 32-wide chunk every thread loads 16 bytes per row: the 8 values k0 .. k0 + 7,
// k0 = chunk start + 8 t (lane = 4 g + t). The m16n8k16 fragments want columns 2t, 2t+1, 2t+8,
// 2t+9 of each 16-wide step, but a product's sum over k does not depend on the order of k, so the
// kernel renames: step s's logical columns {2t, 2t+1} are k0 + 4s + {0, 1} and {2t+8, 2t+9} are
// k0 + 4s + {2, 3}, for A and B alike (the renaming depends on the column alone). x is read once,
// 16 bytes at a time; W comes from L2, 16 bytes at a time where its k stride is 1 (u's A^T) and
// one value at a time otherwise (g's sB, whose rows are k).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "wegeft/kernels/cuda/mma.cuh"

namespace wegeft::cuda::kernels {

inline constexpr int kRankRWarps = 8;
inline constexpr int kRankRMax = 32;  // the widest R the kernel takes

/// out [n, R] (row stride ld_out) = x [n, K] (row stride ld_x) W, W(k, j) = w[k w_k + j w_j].
/// K a multiple of 8; x, ld_x and, with KContig (w_k = 1), w and w_j 16-byte aligned (in
/// elements: multiples of 8); out and ld_out 4-byte aligned. Blocks of 32 kRankRWarps threads,
/// grid (n + 15) / 16.
template <int R, bool KContig>
__global__ void __launch_bounds__(32 * kRankRWarps)
    rank_r_product(__nv_bfloat16* out, std::int64_t ld_out, const __nv_bfloat16* x,
                   std::int64_t ld_x, const __nv_bfloat16* w, std::int64_t w_k, std::int64_t w_j,
                   std::int64_t n, std::int64_t K) {
  static_assert(R % 8 == 0 && R <= kRankRMax, "rank_r_product shape");
  constexpr int NT = R / 8, ROWS = 16;
  __shared__ float partial[kRankRWarps][ROWS][R];
  const int warp = static_cast<int>(threadIdx.x) / 32, lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4, t = lane % 4;
  const std::int64_t row0 = static_cast<std::int64_t>(blockIdx.x) * ROWS;
  float acc[NT][4] = {};
  const std::int64_t chunks = (K + 31) / 32;
  for (std::int64_t c = warp; c < chunks; c += kRankRWarps) {
    const std::int64_t k0 = 32 * c + 8 * t;
    const bool in_k = k0 < K;  // K % 8 == 0: a thread's 8 values are all in or all out
    uint4 a[2];                // rows g and g + 8
    for (int h = 0; h < 2; ++h) {
      const std::int64_t row = row0 + g + 8 * h;
      a[h] = in_k && row < n ? *reinterpret_cast<const uint4*>(x + row * ld_x + k0)
                             : make_uint4(0, 0, 0, 0);
    }
    uint4 b[NT];
    for (int nt = 0; nt < NT; ++nt) {
      const std::int64_t j = 8 * nt + g;
      if (!in_k) {
        b[nt] = make_uint4(0, 0, 0, 0);
      } else if constexpr (KContig) {
        b[nt] = *reinterpret_cast<const uint4*>(w + j * w_j + k0);
      } else {
        const __nv_bfloat16* p = w + k0 * w_k + j * w_j;
        std::uint32_t v[4];
        for (int e = 0; e < 4; ++e) {
          const unsigned short lo = __bfloat16_as_ushort(p[(2 * e) * w_k]);
          const unsigned short hi = __bfloat16_as_ushort(p[(2 * e + 1) * w_k]);
          v[e] = static_cast<std::uint32_t>(lo) | (static_cast<std::uint32_t>(hi) << 16);
        }
        b[nt] = make_uint4(v[0], v[1], v[2], v[3]);
      }
    }
    for (int s = 0; s < 2; ++s) {
      const std::uint32_t fa[4] = {s ? a[0].z : a[0].x, s ? a[1].z : a[1].x, s ? a[0].w : a[0].y,
                                   s ? a[1].w : a[1].y};
      for (int nt = 0; nt < NT; ++nt)
        tc::mma(acc[nt], fa, s ? b[nt].z : b[nt].x, s ? b[nt].w : b[nt].y);
    }
  }
  for (int nt = 0; nt < NT; ++nt) {
    const int col = 8 * nt + 2 * t;
    partial[warp][g][col] = acc[nt][0];
    partial[warp][g][col + 1] = acc[nt][1];
    partial[warp][g + 8][col] = acc[nt][2];
    partial[warp][g + 8][col + 1] = acc[nt][3];
  }
  __syncthreads();
  for (int i = static_cast<int>(threadIdx.x); i < ROWS * R / 2; i += 32 * kRankRWarps) {
    const int r = i / (R / 2), col = 2 * (i % (R / 2));
    const std::int64_t row = row0 + r;
    if (row >= n) continue;
    float lo = 0.0f, hi = 0.0f;
    for (int v = 0; v < kRankRWarps; ++v) {
      lo += partial[v][r][col];
      hi += partial[v][r][col + 1];
    }
    *reinterpret_cast<__nv_bfloat162*>(out + row * ld_out + col) = __floats2bfloat162_rn(lo, hi);
  }
}

}  // namespace wegeft::cuda::kernels

// Tensor-core attention for bf16 with head_dim a multiple of 16 up to 128 (included only from .cu
// files; sm_80 or later): the same quantity, lse and delta as attention.cuh's kernels, computed
// flash-style over tiles of 64 queries x 64 keys with both products of each step on the tensor
// cores (wmma 16 x 16 x 16, bf16 inputs, fp32 accumulation).
//
// A block of 4 warps takes 64 rows (queries in the forward and the dq kernel, keys of one
// key/value head in the dk/dv kernel), 16 per warp. Per tile of 64 partners, a warp's 16 x 64
// scores go through shared memory in fp32, where each pair of lanes takes one row for the mask
// and the softmax (the forward's running max and sum, rescaling its fp32 output rows, which stay
// in shared memory); P (or dS) is rounded to bf16 for the second product, as FlashAttention does.
// The backward's accumulators (dq; dk and dv) stay in registers for the whole walk. Key tiles a
// causal query tile cannot see, and query tiles a causal key tile cannot be seen by, are skipped.
#pragma once

#include <cuda_bf16.h>
#include <mma.h>

#include <cstdint>

#include "wegeft/kernels/cuda/attention.cuh"

namespace wegeft::cuda::kernels {

inline constexpr int kTcRows = 64;  // rows of a block (and of a partner tile), 16 per warp
inline constexpr int kTcWarps = kTcRows / 16;
inline constexpr int kTcMaxHeadDim = 128;

namespace tc {

using bf = __nv_bfloat16;
using FragA =
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, bf, nvcuda::wmma::row_major>;
using FragBRow =
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, bf, nvcuda::wmma::row_major>;
using FragBCol =
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 16, bf, nvcuda::wmma::col_major>;
using FragC = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;

/// Shared-memory strides (padded against bank conflicts; wmma wants multiples of 16 bytes) and
/// sizes for head_dim D.
template <int D>
struct Layout {
  static constexpr int ld = D + 8;           // bf16 tiles [64][ld]: q, k, v, dout rows
  static constexpr int ldp = kTcRows + 8;    // bf16 [64][ldp]: P or dS of a tile
  static constexpr int lds = kTcRows + 4;    // fp32 [64][lds]: scores of a tile
  static constexpr int ldo = D + 4;          // fp32 [64][ldo]: output rows
  static constexpr int tile = kTcRows * ld;  // elements of a bf16 tile
  static_assert(kTcRows * ldo <= 2 * kTcRows * lds, "output rows fit in two score tiles");
  static constexpr int forward_bytes =
      3 * tile * 2 + kTcRows * ldp * 2 + kTcRows * lds * 4 + kTcRows * ldo * 4;
  static constexpr int backward_q_bytes = 4 * tile * 2 + kTcRows * ldp * 2 + 2 * kTcRows * lds * 4;
  static constexpr int backward_kv_bytes =
      4 * tile * 2 + 2 * kTcRows * ldp * 2 + 2 * kTcRows * lds * 4 + 2 * kTcRows * 4;
};

/// dst [64][LD] = rows r0 .. r0 + 63 of the D columns at src (row stride lds), zero past `rows`.
/// vec: src and lds are 16-byte aligned, so each thread moves 8 values at a time. Every thread
/// of the block takes part.
template <int D, int LD>
__device__ inline void load_tile(bf* dst, const bf* src, std::int64_t lds, std::int64_t r0,
                                 std::int64_t rows, bool vec) {
  if (vec) {
    constexpr int C = D / 8;  // 16-byte pieces of a row
    for (int e = threadIdx.x; e < kTcRows * C; e += blockDim.x) {
      const int r = e / C, c = 8 * (e % C);
      uint4 piece = make_uint4(0u, 0u, 0u, 0u);
      if (r0 + r < rows) piece = *reinterpret_cast<const uint4*>(src + (r0 + r) * lds + c);
      *reinterpret_cast<uint4*>(dst + r * LD + c) = piece;
    }
    return;
  }
  for (int e = threadIdx.x; e < kTcRows * D; e += blockDim.x) {
    const int r = e / D, c = e % D;
    dst[r * LD + c] = r0 + r < rows ? src[(r0 + r) * lds + c] : __float2bfloat16(0.0f);
  }
}

/// s [16][LDS] = a [16][D] b^T for b [64][D] (both bf16, row stride LD): one warp.
template <int D, int LD, int LDS>
__device__ inline void scores(float* s, const bf* a, const bf* b) {
  for (int t = 0; t < kTcRows / 16; ++t) {
    FragC acc;
    nvcuda::wmma::fill_fragment(acc, 0.0f);
    for (int kk = 0; kk < D / 16; ++kk) {
      FragA fa;
      FragBCol fb;  // element (k, n) at b[(16 t + n) LD + 16 kk + k]: b's rows as columns
      nvcuda::wmma::load_matrix_sync(fa, a + 16 * kk, LD);
      nvcuda::wmma::load_matrix_sync(fb, b + 16 * t * LD + 16 * kk, LD);
      nvcuda::wmma::mma_sync(acc, fa, fb, acc);
    }
    nvcuda::wmma::store_matrix_sync(s + 16 * t, acc, LDS, nvcuda::wmma::mem_row_major);
  }
}

/// acc[t] += p [16][64] (bf16, row stride LDP) m[:, 16 t .. 16 t + 15] for m [64][D] (row stride
/// LD), t < D / 16: one warp.
template <int D, int LD, int LDP>
__device__ inline void accumulate(FragC* acc, const bf* p, const bf* m) {
  for (int kk = 0; kk < kTcRows / 16; ++kk) {
    FragA fa;
    nvcuda::wmma::load_matrix_sync(fa, p + 16 * kk, LDP);
    for (int t = 0; t < D / 16; ++t) {
      FragBRow fb;
      nvcuda::wmma::load_matrix_sync(fb, m + 16 * kk * LD + 16 * t, LD);
      nvcuda::wmma::mma_sync(acc[t], fa, fb, acc[t]);
    }
  }
}

/// Rows 16 w .. 16 w + 15 of a [64][D] bf16 destination (row stride ld, rows past `rows` of the
/// sequence not written) from acc (times `scale`), staged through `stage` [16][LDO]: one warp.
template <int D, int LDO>
__device__ inline void store_rows(bf* dst, std::int64_t ld, std::int64_t r0, std::int64_t rows,
                                  FragC* acc, float* stage, float scale) {
  for (int t = 0; t < D / 16; ++t)
    nvcuda::wmma::store_matrix_sync(stage + 16 * t, acc[t], LDO, nvcuda::wmma::mem_row_major);
  __syncwarp();
  const int lane = threadIdx.x % 32;
  for (int e = lane; e < 16 * D; e += 32) {
    const int r = e / D, c = e % D;
    if (r0 + r < rows) dst[(r0 + r) * ld + c] = __float2bfloat16(stage[r * LDO + c] * scale);
  }
  __syncwarp();
}

}  // namespace tc

/// out [B*T, H*d], lse [B, H, T] from q [B*T, H*d], k, v [B*T, Hkv*d], bf16, d = D.
/// grid (ceil(T / 64), H, B), 128 threads, Layout<D>::forward_bytes of dynamic shared memory.
template <int D>
__global__ void __launch_bounds__(32 * kTcWarps)
    attention_forward_tc(tc::bf* out, float* lse, const tc::bf* q, const tc::bf* k, const tc::bf* v,
                         AttentionArgs a) {
  using L = tc::Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  tc::bf* sq = reinterpret_cast<tc::bf*>(smem);
  tc::bf* sk = sq + L::tile;
  tc::bf* sv = sk + L::tile;
  tc::bf* sp = sv + L::tile;
  float* ss = reinterpret_cast<float*>(sp + kTcRows * L::ldp);
  float* so = ss + kTcRows * L::lds;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, g = h / (a.heads / a.kv_heads);
  const tc::bf* kb = k + b * a.seq * a.ldk + g * D;
  const tc::bf* vb = v + b * a.seq * a.ldv + g * D;
  tc::load_tile<D, L::ld>(sq, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq, a.vec);
  for (int e = threadIdx.x; e < kTcRows * L::ldo; e += blockDim.x) so[e] = 0.0f;
  // This lane's half of row r of the tile (32 of the 64 scores, D / 2 of the output columns).
  const int r = warp * 16 + lane / 2, half = lane % 2;
  const std::int64_t i = i0 + r;
  float m = -INFINITY, l = 0;
  const std::int64_t end = a.causal ? (a.seq < i0 + kTcRows ? a.seq : i0 + kTcRows) : a.seq;
  for (std::int64_t j0 = 0; j0 < end; j0 += kTcRows) {
    __syncthreads();  // the previous tile's k and v have been read
    tc::load_tile<D, L::ld>(sk, kb, a.ldk, j0, a.seq, a.vec);
    tc::load_tile<D, L::ld>(sv, vb, a.ldv, j0, a.seq, a.vec);
    __syncthreads();
    tc::scores<D, L::ld, L::lds>(ss + warp * 16 * L::lds, sq + warp * 16 * L::ld, sk);
    __syncwarp();
    float* srow = ss + r * L::lds + 32 * half;
    tc::bf* prow = sp + r * L::ldp + 32 * half;
    float tmax = -INFINITY;
    for (int c0 = 0; c0 < 32; ++c0) {
      const int c = (c0 + lane) & 31;  // lanes start on different banks
      const std::int64_t j = j0 + 32 * half + c;
      const bool seen = j < a.seq && (!a.causal || j <= i) && key_visible(a, b, j);
      const float s = seen ? srow[c] * a.scale : -INFINITY;
      srow[c] = s;
      tmax = fmaxf(tmax, s);
    }
    tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
    const float mnew = fmaxf(m, tmax);
    const float corr = m == -INFINITY ? 0.0f : __expf(m - mnew);
    float psum = 0;
    for (int c0 = 0; c0 < 32; ++c0) {
      const int c = (c0 + lane) & 31;
      const float p = srow[c] == -INFINITY ? 0.0f : __expf(srow[c] - mnew);
      psum += p;
      prow[c] = __float2bfloat16(p);
    }
    psum += __shfl_xor_sync(0xffffffffu, psum, 1);
    l = l * corr + psum;
    m = mnew;
    float* orow = so + r * L::ldo + (D / 2) * half;
    for (int c = 0; c < D / 2; ++c) orow[c] *= corr;
    __syncwarp();
    for (int t = 0; t < D / 16; ++t) {  // this warp's output rows += P V
      tc::FragC acc;
      float* o = so + warp * 16 * L::ldo + 16 * t;
      nvcuda::wmma::load_matrix_sync(acc, o, L::ldo, nvcuda::wmma::mem_row_major);
      for (int kk = 0; kk < kTcRows / 16; ++kk) {
        tc::FragA fa;
        tc::FragBRow fb;
        nvcuda::wmma::load_matrix_sync(fa, sp + warp * 16 * L::ldp + 16 * kk, L::ldp);
        nvcuda::wmma::load_matrix_sync(fb, sv + 16 * kk * L::ld + 16 * t, L::ld);
        nvcuda::wmma::mma_sync(acc, fa, fb, acc);
      }
      nvcuda::wmma::store_matrix_sync(o, acc, L::ldo, nvcuda::wmma::mem_row_major);
    }
    __syncwarp();
  }
  if (i >= a.seq) return;
  const float inv = l > 0 ? 1.0f / l : 0.0f;  // a row with no visible key gives 0
  tc::bf* oi = out + (b * a.seq + i) * a.ldo + h * D;
  for (int c = (D / 2) * half; c < (D / 2) * (half + 1); ++c)
    oi[c] = __float2bfloat16(so[r * L::ldo + c] * inv);
  if (half == 0) lse[(b * a.heads + h) * a.seq + i] = l > 0 ? m + logf(l) : -INFINITY;
}

/// dq [B*T, H*d] (overwritten) = scale sum_j dS_ij k_j, dS = P o (dP - delta), dP = dout v^T,
/// from the forward's lse and attention_delta's delta. grid (ceil(T / 64), H, B), 128 threads,
/// Layout<D>::backward_q_bytes of dynamic shared memory.
template <int D>
__global__ void __launch_bounds__(32 * kTcWarps)
    attention_backward_q_tc(tc::bf* dq, const tc::bf* dout, const float* lse, const float* delta,
                            const tc::bf* q, const tc::bf* k, const tc::bf* v, AttentionArgs a) {
  using L = tc::Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  tc::bf* sq = reinterpret_cast<tc::bf*>(smem);
  tc::bf* sdo = sq + L::tile;
  tc::bf* sk = sdo + L::tile;
  tc::bf* sv = sk + L::tile;
  tc::bf* sds = sv + L::tile;
  float* ss = reinterpret_cast<float*>(sds + kTcRows * L::ldp);
  float* sdp = ss + kTcRows * L::lds;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, g = h / (a.heads / a.kv_heads);
  const tc::bf* kb = k + b * a.seq * a.ldk + g * D;
  const tc::bf* vb = v + b * a.seq * a.ldv + g * D;
  tc::load_tile<D, L::ld>(sq, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sdo, dout + b * a.seq * a.ldo + h * D, a.ldo, i0, a.seq, a.vec);
  const int r = warp * 16 + lane / 2, half = lane % 2;
  const std::int64_t i = i0 + r, row = (b * a.heads + h) * a.seq + i;
  const float li = i < a.seq ? lse[row] : -INFINITY, di = i < a.seq ? delta[row] : 0.0f;
  tc::FragC acc[D / 16];
  for (auto& f : acc) nvcuda::wmma::fill_fragment(f, 0.0f);
  const std::int64_t end = a.causal ? (a.seq < i0 + kTcRows ? a.seq : i0 + kTcRows) : a.seq;
  for (std::int64_t j0 = 0; j0 < end; j0 += kTcRows) {
    __syncthreads();
    tc::load_tile<D, L::ld>(sk, kb, a.ldk, j0, a.seq, a.vec);
    tc::load_tile<D, L::ld>(sv, vb, a.ldv, j0, a.seq, a.vec);
    __syncthreads();
    tc::scores<D, L::ld, L::lds>(ss + warp * 16 * L::lds, sq + warp * 16 * L::ld, sk);
    tc::scores<D, L::ld, L::lds>(sdp + warp * 16 * L::lds, sdo + warp * 16 * L::ld, sv);
    __syncwarp();
    for (int c0 = 0; c0 < 32; ++c0) {
      const int c = 32 * half + ((c0 + lane) & 31);
      const std::int64_t j = j0 + c;
      const bool seen =
          li != -INFINITY && j < a.seq && (!a.causal || j <= i) && key_visible(a, b, j);
      const float p = seen ? __expf(ss[r * L::lds + c] * a.scale - li) : 0.0f;
      sds[r * L::ldp + c] = __float2bfloat16(p * (sdp[r * L::lds + c] - di));
    }
    __syncwarp();
    tc::accumulate<D, L::ld, L::ldp>(acc, sds + warp * 16 * L::ldp, sk);
  }
  __syncthreads();  // the score tiles become the staging rows
  tc::store_rows<D, L::ldo>(dq + b * a.seq * a.ldq + h * D, a.ldq, i0 + warp * 16, a.seq, acc,
                            ss + warp * 16 * L::ldo, a.scale);
}

/// dk, dv [B*T, Hkv*d] (overwritten): for key j of head g, over the query heads h of its group
/// and the queries i that see it, dv_j = sum P_ij dout_i, dk_j = scale sum dS_ij q_i.
/// grid (ceil(T / 64), Hkv, B), 128 threads, Layout<D>::backward_kv_bytes of dynamic shared memory.
template <int D>
__global__ void __launch_bounds__(32 * kTcWarps)
    attention_backward_kv_tc(tc::bf* dk, tc::bf* dv, const tc::bf* dout, const float* lse,
                             const float* delta, const tc::bf* q, const tc::bf* k, const tc::bf* v,
                             AttentionArgs a) {
  using L = tc::Layout<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  tc::bf* sk = reinterpret_cast<tc::bf*>(smem);
  tc::bf* sv = sk + L::tile;
  tc::bf* sq = sv + L::tile;
  tc::bf* sdo = sq + L::tile;
  tc::bf* sp = sdo + L::tile;
  tc::bf* sds = sp + kTcRows * L::ldp;
  float* ss = reinterpret_cast<float*>(sds + kTcRows * L::ldp);
  float* sdp = ss + kTcRows * L::lds;
  float* slse = sdp + kTcRows * L::lds;
  float* sdelta = slse + kTcRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t g = blockIdx.y, b = blockIdx.z, group = a.heads / a.kv_heads;
  tc::load_tile<D, L::ld>(sk, k + b * a.seq * a.ldk + g * D, a.ldk, j0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sv, v + b * a.seq * a.ldv + g * D, a.ldv, j0, a.seq, a.vec);
  const int r = warp * 16 + lane / 2, half = lane % 2;
  const std::int64_t j = j0 + r;
  const bool visible = j < a.seq && key_visible(a, b, j);
  tc::FragC dk_acc[D / 16], dv_acc[D / 16];
  for (auto& f : dk_acc) nvcuda::wmma::fill_fragment(f, 0.0f);
  for (auto& f : dv_acc) nvcuda::wmma::fill_fragment(f, 0.0f);
  for (std::int64_t h = g * group; h < (g + 1) * group; ++h) {
    for (std::int64_t i0 = a.causal ? j0 : 0; i0 < a.seq; i0 += kTcRows) {
      __syncthreads();  // the previous query tile has been read
      tc::load_tile<D, L::ld>(sq, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq, a.vec);
      tc::load_tile<D, L::ld>(sdo, dout + b * a.seq * a.ldo + h * D, a.ldo, i0, a.seq, a.vec);
      for (int t = threadIdx.x; t < kTcRows; t += blockDim.x) {
        const bool in = i0 + t < a.seq;
        slse[t] = in ? lse[(b * a.heads + h) * a.seq + i0 + t] : -INFINITY;
        sdelta[t] = in ? delta[(b * a.heads + h) * a.seq + i0 + t] : 0.0f;
      }
      __syncthreads();
      // This warp's keys against the tile's queries: S^T and dP^T, [16 keys][64 queries].
      tc::scores<D, L::ld, L::lds>(ss + warp * 16 * L::lds, sk + warp * 16 * L::ld, sq);
      tc::scores<D, L::ld, L::lds>(sdp + warp * 16 * L::lds, sv + warp * 16 * L::ld, sdo);
      __syncwarp();
      for (int c0 = 0; c0 < 32; ++c0) {
        const int c = 32 * half + ((c0 + lane) & 31);
        const std::int64_t i = i0 + c;
        const bool seen = visible && slse[c] != -INFINITY && (!a.causal || j <= i);
        const float p = seen ? __expf(ss[r * L::lds + c] * a.scale - slse[c]) : 0.0f;
        sp[r * L::ldp + c] = __float2bfloat16(p);
        sds[r * L::ldp + c] = __float2bfloat16(p * (sdp[r * L::lds + c] - sdelta[c]));
      }
      __syncwarp();
      tc::accumulate<D, L::ld, L::ldp>(dv_acc, sp + warp * 16 * L::ldp, sdo);
      tc::accumulate<D, L::ld, L::ldp>(dk_acc, sds + warp * 16 * L::ldp, sq);
    }
  }
  __syncthreads();  // the score tiles become the staging rows
  float* stage = ss + warp * 16 * L::ldo;
  tc::store_rows<D, L::ldo>(dk + b * a.seq * a.ldk + g * D, a.ldk, j0 + warp * 16, a.seq, dk_acc,
                            stage, a.scale);
  tc::store_rows<D, L::ldo>(dv + b * a.seq * a.ldv + g * D, a.ldv, j0 + warp * 16, a.seq, dv_acc,
                            stage, 1.0f);
}

}  // namespace wegeft::cuda::kernels

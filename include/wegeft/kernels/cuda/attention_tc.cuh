// Tensor-core attention for bf16 with head_dim a multiple of 16 up to 128 (included only from .cu
// files; sm_80 or later): the same quantity, lse and delta as attention.cuh's kernels, computed
// flash-style over tiles of 64 queries x 64 keys, every product an mma.sync m16n8k16 (bf16
// inputs, fp32 accumulation) with the softmax done on the accumulators in registers, as
// FlashAttention-2 does.
//
// A block of 4 warps takes 64 rows (queries in the forward and the dq kernel, keys of one
// key/value head in the dk/dv kernel), 16 per warp. Per tile of 64 partners a warp computes its
// 16 x 64 scores into registers, masks them and takes the exponentials there; the probabilities
// (or dS) are rounded to bf16 and fed straight back as the A operand of the second product (an
// m16n8k16 accumulator pair has the layout of an A fragment). Operands come from shared memory:
// row-major tiles where the product reduces over head_dim, tiles stored transposed ([d][64]) where
// it reduces over the tile's rows, so every fragment is two 32-bit loads per register pair. The
// forward's output and the backward's dq (or dk and dv) stay in registers for the whole walk.
// Key tiles a causal query tile cannot see, and query tiles a causal key tile cannot be seen by,
// are skipped.
//
// Fragment layout of mma.m16n8k16 (PTX ISA), lane = 4 g + t: A [16 x 16] registers {row g, cols
// 2t, 2t+1}, {row g+8, same}, {row g, cols 2t+8, 2t+9}, {row g+8, same}; B [16 x 8] {rows 2t, 2t+1,
// col g}, {rows 2t+8, 2t+9, col g}; C [16 x 8] c0, c1 at row g, cols 2t, 2t+1 and c2, c3 at row
// g+8.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "wegeft/kernels/cuda/attention.cuh"

namespace wegeft::cuda::kernels {

inline constexpr int kTcRows = 64;  // rows of a block (and of a partner tile), 16 per warp
inline constexpr int kTcWarps = kTcRows / 16;
inline constexpr int kTcMaxHeadDim = 128;

namespace tc {

using bf = __nv_bfloat16;

/// Shared-memory strides (padded so that the 32-bit fragment loads of a warp hit distinct banks)
/// and sizes for head_dim D.
template <int D>
struct Layout {
  static constexpr int ld = D + 8;           // row-major tiles [64][ld]
  static constexpr int ldt = kTcRows + 8;    // transposed tiles [D][ldt]
  static constexpr int tile = kTcRows * ld;  // elements of a row-major tile
  static constexpr int tile_t = D * ldt;     // elements of a transposed tile
  static constexpr int forward_bytes = (2 * tile + tile_t) * 2;
  static constexpr int backward_q_bytes = (4 * tile + tile_t) * 2;
  static constexpr int backward_kv_bytes = (4 * tile + 2 * tile_t) * 2 + 2 * kTcRows * 4;
};

__device__ inline void mma(float (&d)[4], const std::uint32_t (&a)[4], std::uint32_t b0,
                           std::uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
      "{%8, %9}, {%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ inline std::uint32_t word(const bf* p) {  // two bf16 values at an even offset
  return *reinterpret_cast<const std::uint32_t*>(p);
}

__device__ inline std::uint32_t pack(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const std::uint32_t*>(&v);
}

/// The A fragment of rows 16 w .. 16 w + 15, columns 16 kc .. 16 kc + 15 of a row-major tile.
__device__ inline void load_a(std::uint32_t (&a)[4], const bf* tile, int ld, int row0, int kc) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bf* p = tile + (row0 + g) * ld + 16 * kc + 2 * t;
  a[0] = word(p);
  a[1] = word(p + 8 * ld);
  a[2] = word(p + 8);
  a[3] = word(p + 8 * ld + 8);
}

/// The B fragment (k = 16 kc .., n = 8 nt ..) of B[k][n] = tile[n][k] for a tile whose rows are
/// B's columns (row-major over k): scores against row-major k, q, v or dout tiles.
__device__ inline void load_b(std::uint32_t& b0, std::uint32_t& b1, const bf* tile, int ld, int nt,
                              int kc) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const bf* p = tile + (8 * nt + g) * ld + 16 * kc + 2 * t;
  b0 = word(p);
  b1 = word(p + 8);
}

/// s[nt] (16 x 64) = rows row0 .. row0 + 15 of `a` times the 64 rows of `b`, both row-major
/// [.][ld] over D columns (the scores, before scaling).
template <int D>
__device__ inline void scores(float (&s)[8][4], const bf* a, const bf* b, int ld, int row0) {
  for (auto& f : s) f[0] = f[1] = f[2] = f[3] = 0.0f;
  for (int kc = 0; kc < D / 16; ++kc) {
    std::uint32_t fa[4];
    load_a(fa, a, ld, row0, kc);
    for (int nt = 0; nt < 8; ++nt) {
      std::uint32_t b0, b1;
      load_b(b0, b1, b, ld, nt, kc);
      mma(s[nt], fa, b0, b1);
    }
  }
}

/// acc[dt] (16 x D) += p (16 x 64, in accumulator layout) times m (64 x D), m given transposed
/// as mt [D][ldt] (so its pairs along the 64 rows are adjacent).
template <int D>
__device__ inline void accumulate(float (&acc)[D / 8][4], const float (&p)[8][4], const bf* mt,
                                  int ldt) {
  for (int kk = 0; kk < 4; ++kk) {  // 16 of the 64 rows of m at a time
    const std::uint32_t fa[4] = {pack(p[2 * kk][0], p[2 * kk][1]), pack(p[2 * kk][2], p[2 * kk][3]),
                                 pack(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                 pack(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    for (int dt = 0; dt < D / 8; ++dt) {
      std::uint32_t b0, b1;
      load_b(b0, b1, mt, ldt, dt, kk);
      mma(acc[dt], fa, b0, b1);
    }
  }
}

/// dst [64][LD] = rows r0 .. r0 + 63 of the D columns at src (row stride lds), zero past `rows`;
/// with `dst_t`, also its transpose [D][LDT]. vec: src and lds are 16-byte aligned, so each
/// thread moves 8 values at a time. Every thread of the block takes part.
template <int D, int LD, int LDT>
__device__ inline void load_tile(bf* dst, bf* dst_t, const bf* src, std::int64_t lds,
                                 std::int64_t r0, std::int64_t rows, bool vec) {
  constexpr int C = D / 8;  // pieces of 8 values per row
  for (int e = threadIdx.x; e < kTcRows * C; e += blockDim.x) {
    // Consecutive threads take consecutive rows when the transpose is written (its stores then
    // fall in distinct banks), consecutive pieces of a row otherwise (coalesced loads).
    const int r = dst_t ? e % kTcRows : e / C, c = 8 * (dst_t ? e / kTcRows : e % C);
    union {
      uint4 v;
      bf h[8];
    } piece;
    piece.v = make_uint4(0u, 0u, 0u, 0u);
    if (r0 + r < rows) {
      if (vec)
        piece.v = *reinterpret_cast<const uint4*>(src + (r0 + r) * lds + c);
      else
        for (int i = 0; i < 8; ++i) piece.h[i] = src[(r0 + r) * lds + c + i];
    }
    if (dst) *reinterpret_cast<uint4*>(dst + r * LD + c) = piece.v;
    if (dst_t)
      for (int i = 0; i < 8; ++i) dst_t[(c + i) * LDT + r] = piece.h[i];
  }
}

/// Rows row0 .. row0 + 15 (of the sequence; those at or past `rows` not written) of a bf16
/// destination (row stride ld) from accumulators acc (16 x D) times `scale`: one warp.
template <int D>
__device__ inline void store_rows(bf* dst, std::int64_t ld, std::int64_t row0, std::int64_t rows,
                                  const float (&acc)[D / 8][4], float scale0, float scale1) {
  const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  for (int dt = 0; dt < D / 8; ++dt) {
    const int c = 8 * dt + 2 * t;
    if (row0 + g < rows) {
      dst[(row0 + g) * ld + c] = __float2bfloat16(acc[dt][0] * scale0);
      dst[(row0 + g) * ld + c + 1] = __float2bfloat16(acc[dt][1] * scale0);
    }
    if (row0 + g + 8 < rows) {
      dst[(row0 + g + 8) * ld + c] = __float2bfloat16(acc[dt][2] * scale1);
      dst[(row0 + g + 8) * ld + c + 1] = __float2bfloat16(acc[dt][3] * scale1);
    }
  }
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
  tc::bf* svt = sk + L::tile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / (a.heads / a.kv_heads);
  const tc::bf* kb = k + b * a.seq * a.ldk + kvh * D;
  const tc::bf* vb = v + b * a.seq * a.ldv + kvh * D;
  tc::load_tile<D, L::ld, L::ldt>(sq, nullptr, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq,
                                  a.vec);
  __syncthreads();
  std::uint32_t fq[D / 16][4];  // this warp's 16 query rows as A fragments, for every tile
  for (int kc = 0; kc < D / 16; ++kc) tc::load_a(fq[kc], sq, L::ld, 16 * warp, kc);
  const std::int64_t row0 = i0 + 16 * warp + g, row1 = row0 + 8;  // this lane's two rows
  float o[D / 8][4] = {};
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0, l1 = 0;
  const std::int64_t end = a.causal ? (a.seq < i0 + kTcRows ? a.seq : i0 + kTcRows) : a.seq;
  for (std::int64_t j0 = 0; j0 < end; j0 += kTcRows) {
    __syncthreads();  // the previous tile's k and v have been read
    tc::load_tile<D, L::ld, L::ldt>(sk, nullptr, kb, a.ldk, j0, a.seq, a.vec);
    tc::load_tile<D, L::ld, L::ldt>(nullptr, svt, vb, a.ldv, j0, a.seq, a.vec);
    __syncthreads();
    float s[8][4];
    for (auto& f : s) f[0] = f[1] = f[2] = f[3] = 0.0f;
    for (int kc = 0; kc < D / 16; ++kc)
      for (int nt = 0; nt < 8; ++nt) {
        std::uint32_t b0, b1;
        tc::load_b(b0, b1, sk, L::ld, nt, kc);
        tc::mma(s[nt], fq[kc], b0, b1);
      }
    float tmax0 = -INFINITY, tmax1 = -INFINITY;
    for (int nt = 0; nt < 8; ++nt)
      for (int e = 0; e < 2; ++e) {
        const std::int64_t j = j0 + 8 * nt + 2 * t + e;
        const bool key = j < a.seq && key_visible(a, b, j);
        const bool see0 = key && (!a.causal || j <= row0), see1 = key && (!a.causal || j <= row1);
        s[nt][e] = see0 ? s[nt][e] * a.scale : -INFINITY;
        s[nt][2 + e] = see1 ? s[nt][2 + e] * a.scale : -INFINITY;
        tmax0 = fmaxf(tmax0, s[nt][e]);
        tmax1 = fmaxf(tmax1, s[nt][2 + e]);
      }
    for (int x = 1; x < 4; x *= 2) {  // the quad holds the row
      tmax0 = fmaxf(tmax0, __shfl_xor_sync(0xffffffffu, tmax0, x));
      tmax1 = fmaxf(tmax1, __shfl_xor_sync(0xffffffffu, tmax1, x));
    }
    const float n0 = fmaxf(m0, tmax0), n1 = fmaxf(m1, tmax1);
    const float c0 = m0 == -INFINITY ? 0.0f : __expf(m0 - n0);
    const float c1 = m1 == -INFINITY ? 0.0f : __expf(m1 - n1);
    float sum0 = 0, sum1 = 0;
    for (int nt = 0; nt < 8; ++nt)
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = s[nt][e] == -INFINITY ? 0.0f : __expf(s[nt][e] - n0);
        s[nt][2 + e] = s[nt][2 + e] == -INFINITY ? 0.0f : __expf(s[nt][2 + e] - n1);
        sum0 += s[nt][e];
        sum1 += s[nt][2 + e];
      }
    l0 = l0 * c0 + sum0;  // this lane's share of the row sum; the quad adds them at the end
    l1 = l1 * c1 + sum1;
    m0 = n0;
    m1 = n1;
    for (auto& f : o) {
      f[0] *= c0;
      f[1] *= c0;
      f[2] *= c1;
      f[3] *= c1;
    }
    tc::accumulate<D>(o, s, svt, L::ldt);
  }
  for (int x = 1; x < 4; x *= 2) {
    l0 += __shfl_xor_sync(0xffffffffu, l0, x);
    l1 += __shfl_xor_sync(0xffffffffu, l1, x);
  }
  // a row with no visible key gives 0
  tc::store_rows<D>(out + b * a.seq * a.ldo + h * D, a.ldo, i0 + 16 * warp, a.seq, o,
                    l0 > 0 ? 1.0f / l0 : 0.0f, l1 > 0 ? 1.0f / l1 : 0.0f);
  if (t == 0) {
    if (row0 < a.seq) lse[(b * a.heads + h) * a.seq + row0] = l0 > 0 ? m0 + logf(l0) : -INFINITY;
    if (row1 < a.seq) lse[(b * a.heads + h) * a.seq + row1] = l1 > 0 ? m1 + logf(l1) : -INFINITY;
  }
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
  tc::bf* skt = sv + L::tile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / (a.heads / a.kv_heads);
  const tc::bf* kb = k + b * a.seq * a.ldk + kvh * D;
  const tc::bf* vb = v + b * a.seq * a.ldv + kvh * D;
  tc::load_tile<D, L::ld, L::ldt>(sq, nullptr, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq,
                                  a.vec);
  tc::load_tile<D, L::ld, L::ldt>(sdo, nullptr, dout + b * a.seq * a.ldo + h * D, a.ldo, i0, a.seq,
                                  a.vec);
  const std::int64_t row0 = i0 + 16 * warp + g, row1 = row0 + 8;
  const std::int64_t base = (b * a.heads + h) * a.seq;
  const float li0 = row0 < a.seq ? lse[base + row0] : -INFINITY;
  const float li1 = row1 < a.seq ? lse[base + row1] : -INFINITY;
  const float di0 = row0 < a.seq ? delta[base + row0] : 0.0f;
  const float di1 = row1 < a.seq ? delta[base + row1] : 0.0f;
  float acc[D / 8][4] = {};
  const std::int64_t end = a.causal ? (a.seq < i0 + kTcRows ? a.seq : i0 + kTcRows) : a.seq;
  for (std::int64_t j0 = 0; j0 < end; j0 += kTcRows) {
    __syncthreads();
    tc::load_tile<D, L::ld, L::ldt>(sk, skt, kb, a.ldk, j0, a.seq, a.vec);
    tc::load_tile<D, L::ld, L::ldt>(sv, nullptr, vb, a.ldv, j0, a.seq, a.vec);
    __syncthreads();
    float s[8][4], dp[8][4];
    tc::scores<D>(s, sq, sk, L::ld, 16 * warp);
    tc::scores<D>(dp, sdo, sv, L::ld, 16 * warp);
    for (int nt = 0; nt < 8; ++nt)
      for (int e = 0; e < 2; ++e) {
        const std::int64_t j = j0 + 8 * nt + 2 * t + e;
        const bool key = j < a.seq && key_visible(a, b, j);
        const bool see0 = key && li0 != -INFINITY && (!a.causal || j <= row0);
        const bool see1 = key && li1 != -INFINITY && (!a.causal || j <= row1);
        const float p0 = see0 ? __expf(s[nt][e] * a.scale - li0) : 0.0f;
        const float p1 = see1 ? __expf(s[nt][2 + e] * a.scale - li1) : 0.0f;
        s[nt][e] = p0 * (dp[nt][e] - di0);  // dS
        s[nt][2 + e] = p1 * (dp[nt][2 + e] - di1);
      }
    tc::accumulate<D>(acc, s, skt, L::ldt);
  }
  tc::store_rows<D>(dq + b * a.seq * a.ldq + h * D, a.ldq, i0 + 16 * warp, a.seq, acc, a.scale,
                    a.scale);
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
  tc::bf* sqt = sdo + L::tile;
  tc::bf* sdot = sqt + L::tile_t;
  float* slse = reinterpret_cast<float*>(sdot + L::tile_t);
  float* sdelta = slse + kTcRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t kvh = blockIdx.y, b = blockIdx.z, group = a.heads / a.kv_heads;
  tc::load_tile<D, L::ld, L::ldt>(sk, nullptr, k + b * a.seq * a.ldk + kvh * D, a.ldk, j0, a.seq,
                                  a.vec);
  tc::load_tile<D, L::ld, L::ldt>(sv, nullptr, v + b * a.seq * a.ldv + kvh * D, a.ldv, j0, a.seq,
                                  a.vec);
  const std::int64_t key0 = j0 + 16 * warp + g, key1 = key0 + 8;  // this lane's two keys
  const bool vis0 = key0 < a.seq && key_visible(a, b, key0);
  const bool vis1 = key1 < a.seq && key_visible(a, b, key1);
  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};
  for (std::int64_t h = kvh * group; h < (kvh + 1) * group; ++h) {
    for (std::int64_t i0 = a.causal ? j0 : 0; i0 < a.seq; i0 += kTcRows) {
      __syncthreads();  // the previous query tile has been read
      tc::load_tile<D, L::ld, L::ldt>(sq, sqt, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq,
                                      a.vec);
      tc::load_tile<D, L::ld, L::ldt>(sdo, sdot, dout + b * a.seq * a.ldo + h * D, a.ldo, i0, a.seq,
                                      a.vec);
      for (int r = threadIdx.x; r < kTcRows; r += blockDim.x) {
        const bool in = i0 + r < a.seq;
        slse[r] = in ? lse[(b * a.heads + h) * a.seq + i0 + r] : -INFINITY;
        sdelta[r] = in ? delta[(b * a.heads + h) * a.seq + i0 + r] : 0.0f;
      }
      __syncthreads();
      // This warp's 16 keys against the tile's 64 queries: S^T and dP^T.
      float s[8][4], dp[8][4];
      tc::scores<D>(s, sk, sq, L::ld, 16 * warp);
      tc::scores<D>(dp, sv, sdo, L::ld, 16 * warp);
      for (int nt = 0; nt < 8; ++nt)
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * nt + 2 * t + e;
          const std::int64_t i = i0 + c;
          const float li = slse[c], di = sdelta[c];
          const bool see0 = vis0 && li != -INFINITY && (!a.causal || key0 <= i);
          const bool see1 = vis1 && li != -INFINITY && (!a.causal || key1 <= i);
          const float p0 = see0 ? __expf(s[nt][e] * a.scale - li) : 0.0f;
          const float p1 = see1 ? __expf(s[nt][2 + e] * a.scale - li) : 0.0f;
          s[nt][e] = p0;
          s[nt][2 + e] = p1;
          dp[nt][e] = p0 * (dp[nt][e] - di);  // dS^T
          dp[nt][2 + e] = p1 * (dp[nt][2 + e] - di);
        }
      tc::accumulate<D>(dv_acc, s, sdot, L::ldt);
      tc::accumulate<D>(dk_acc, dp, sqt, L::ldt);
    }
  }
  tc::store_rows<D>(dk + b * a.seq * a.ldk + kvh * D, a.ldk, j0 + 16 * warp, a.seq, dk_acc, a.scale,
                    a.scale);
  tc::store_rows<D>(dv + b * a.seq * a.ldv + kvh * D, a.ldv, j0 + 16 * warp, a.seq, dv_acc, 1.0f,
                    1.0f);
}

}  // namespace wegeft::cuda::kernels

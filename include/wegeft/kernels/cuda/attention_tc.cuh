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
// m16n8k16 accumulator pair has the layout of an A fragment). Operands come from row-major tiles
// in shared memory: 32-bit loads where the product reduces over head_dim, ldmatrix.trans where it
// reduces over the tile's rows. The partner tiles are double-buffered: the next one is copied in
// with cp.async (16 bytes a thread where pointers and strides are aligned) while the warps work
// on the current one. The forward's output and the backward's dq (or dk and dv) stay in
// registers for the whole walk.
// Key tiles a causal query tile cannot see, and query tiles a causal key tile cannot be seen by,
// are skipped.
//
// The fragment layouts of mma.m16n8k16 are in mma.cuh.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "wegeft/kernels/cuda/attention.cuh"
#include "wegeft/kernels/cuda/mma.cuh"

namespace wegeft::cuda::kernels {

inline constexpr int kTcRows = 64;  // rows of a block (and of a partner tile), 16 per warp
inline constexpr int kTcWarps = kTcRows / 16;
inline constexpr int kTcMaxHeadDim = 128;

namespace tc {

using bf = __nv_bfloat16;

/// Shared-memory strides (padded so that a warp's fragment loads hit distinct banks) and sizes
/// for head_dim D: row-major tiles [64][ld]; the partner tiles twice (double buffering).
template <int D>
struct Layout {
  static constexpr int ld = D + 8;
  static constexpr int tile = kTcRows * ld;                                 // elements of a tile
  static constexpr int forward_bytes = 5 * tile * 2;                        // q; k, v twice
  static constexpr int backward_q_bytes = 6 * tile * 2;                     // q, dout; k, v twice
  static constexpr int backward_kv_bytes = 6 * tile * 2 + 4 * kTcRows * 4;  // + lse, delta twice
};

__device__ inline std::uint32_t word(const bf* p) {  // two bf16 values at an even offset
  return *reinterpret_cast<const std::uint32_t*>(p);
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

/// The B fragment (k = k0 .. k0 + 15, n = n0 .. n0 + 7) of B = the row-major tile itself (k its
/// rows), by ldmatrix.trans: lanes 0-15 give the addresses of rows k0 .. k0 + 15.
__device__ inline void load_b_trans(std::uint32_t& b0, std::uint32_t& b1, const bf* tile, int ld,
                                    int k0, int n0) {
  const int lane = threadIdx.x % 32;
  const auto addr =
      static_cast<unsigned>(__cvta_generic_to_shared(tile + (k0 + lane % 16) * ld + n0));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(b0), "=r"(b1)
               : "r"(addr));
}

/// acc[dt] (16 x D) += p (16 x 64, in accumulator layout) times m (64 x D, row-major [64][ld]).
template <int D>
__device__ inline void accumulate(float (&acc)[D / 8][4], const float (&p)[8][4], const bf* m,
                                  int ld) {
  for (int kk = 0; kk < 4; ++kk) {  // 16 of the 64 rows of m at a time
    const std::uint32_t fa[4] = {pack(p[2 * kk][0], p[2 * kk][1]), pack(p[2 * kk][2], p[2 * kk][3]),
                                 pack(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                                 pack(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    for (int dt = 0; dt < D / 8; ++dt) {
      std::uint32_t b0, b1;
      load_b_trans(b0, b1, m, ld, 16 * kk, 8 * dt);
      mma(acc[dt], fa, b0, b1);
    }
  }
}

/// Starts copying rows r0 .. r0 + 63 of the D columns at src (row stride lds) into dst [64][LD],
/// zero past `rows`: with vec (src and lds 16-byte aligned) as cp.async copies of 16 bytes, which
/// the caller commits and waits for; otherwise one value at a time, done on return. Every thread
/// of the block takes part.
template <int D, int LD>
__device__ inline void load_tile(bf* dst, const bf* src, std::int64_t lds, std::int64_t r0,
                                 std::int64_t rows, bool vec) {
  constexpr int C = D / 8;  // pieces of 8 values per row
  for (int e = threadIdx.x; e < kTcRows * C; e += blockDim.x) {
    const int r = e / C, c = 8 * (e % C);
    const bool in = r0 + r < rows;
    if (vec) {
      const auto to = static_cast<unsigned>(__cvta_generic_to_shared(dst + r * LD + c));
      const bf* from = in ? src + (r0 + r) * lds + c : src;  // nothing is read when !in
      asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(to), "l"(from),
                   "r"(in ? 16 : 0));
    } else {
      for (int i = 0; i < 8; ++i)
        dst[r * LD + c + i] = in ? src[(r0 + r) * lds + c + i] : __float2bfloat16(0.0f);
    }
  }
}

__device__ inline void copies_commit() {
  asm volatile("cp.async.commit_group;\n" ::);
}
/// The current tile is in shared memory for the whole block: waits for every committed group of
/// copies but the newest when `next_issued` (the next tile's, which stays in flight), else for
/// all of them, then syncs the block.
__device__ inline void tile_ready(bool next_issued) {
  if (next_issued) {
    copies_commit();
    asm volatile("cp.async.wait_group 1;\n" ::);
  } else {
    asm volatile("cp.async.wait_group 0;\n" ::);
  }
  __syncthreads();
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
  tc::bf* sk[2] = {sq + L::tile, sq + 2 * L::tile};
  tc::bf* sv[2] = {sq + 3 * L::tile, sq + 4 * L::tile};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / (a.heads / a.kv_heads);
  const tc::bf* kb = k + b * a.seq * a.ldk + kvh * D;
  const tc::bf* vb = v + b * a.seq * a.ldv + kvh * D;
  const std::int64_t end = a.causal ? (a.seq < i0 + kTcRows ? a.seq : i0 + kTcRows) : a.seq;
  const int tiles = static_cast<int>((end + kTcRows - 1) / kTcRows);
  tc::load_tile<D, L::ld>(sq, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sk[0], kb, a.ldk, 0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sv[0], vb, a.ldv, 0, a.seq, a.vec);
  tc::copies_commit();
  std::uint32_t fq[D / 16][4];  // this warp's 16 query rows as A fragments, for every tile
  const std::int64_t row0 = i0 + 16 * warp + g, row1 = row0 + 8;  // this lane's two rows
  float o[D / 8][4] = {};
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0, l1 = 0;
  for (int it = 0; it < tiles; ++it) {
    const std::int64_t j0 = static_cast<std::int64_t>(it) * kTcRows;
    if (it + 1 < tiles) {  // the next tile into the other buffer, while this one is used
      tc::load_tile<D, L::ld>(sk[(it + 1) % 2], kb, a.ldk, j0 + kTcRows, a.seq, a.vec);
      tc::load_tile<D, L::ld>(sv[(it + 1) % 2], vb, a.ldv, j0 + kTcRows, a.seq, a.vec);
    }
    tc::tile_ready(it + 1 < tiles);
    if (it == 0)
      for (int kc = 0; kc < D / 16; ++kc) tc::load_a(fq[kc], sq, L::ld, 16 * warp, kc);
    const tc::bf* kt = sk[it % 2];
    float s[8][4];
    for (auto& f : s) f[0] = f[1] = f[2] = f[3] = 0.0f;
    for (int kc = 0; kc < D / 16; ++kc)
      for (int nt = 0; nt < 8; ++nt) {
        std::uint32_t b0, b1;
        tc::load_b(b0, b1, kt, L::ld, nt, kc);
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
    tc::accumulate<D>(o, s, sv[it % 2], L::ld);
    __syncthreads();  // this buffer is refilled in the next step
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
  tc::bf* sk[2] = {sq + 2 * L::tile, sq + 3 * L::tile};
  tc::bf* sv[2] = {sq + 4 * L::tile, sq + 5 * L::tile};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const std::int64_t i0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, kvh = h / (a.heads / a.kv_heads);
  const tc::bf* kb = k + b * a.seq * a.ldk + kvh * D;
  const tc::bf* vb = v + b * a.seq * a.ldv + kvh * D;
  const std::int64_t end = a.causal ? (a.seq < i0 + kTcRows ? a.seq : i0 + kTcRows) : a.seq;
  const int tiles = static_cast<int>((end + kTcRows - 1) / kTcRows);
  tc::load_tile<D, L::ld>(sq, q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sdo, dout + b * a.seq * a.ldo + h * D, a.ldo, i0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sk[0], kb, a.ldk, 0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sv[0], vb, a.ldv, 0, a.seq, a.vec);
  tc::copies_commit();
  const std::int64_t row0 = i0 + 16 * warp + g, row1 = row0 + 8;
  const std::int64_t base = (b * a.heads + h) * a.seq;
  const float li0 = row0 < a.seq ? lse[base + row0] : -INFINITY;
  const float li1 = row1 < a.seq ? lse[base + row1] : -INFINITY;
  const float di0 = row0 < a.seq ? delta[base + row0] : 0.0f;
  const float di1 = row1 < a.seq ? delta[base + row1] : 0.0f;
  float acc[D / 8][4] = {};
  for (int it = 0; it < tiles; ++it) {
    const std::int64_t j0 = static_cast<std::int64_t>(it) * kTcRows;
    if (it + 1 < tiles) {
      tc::load_tile<D, L::ld>(sk[(it + 1) % 2], kb, a.ldk, j0 + kTcRows, a.seq, a.vec);
      tc::load_tile<D, L::ld>(sv[(it + 1) % 2], vb, a.ldv, j0 + kTcRows, a.seq, a.vec);
    }
    tc::tile_ready(it + 1 < tiles);
    float s[8][4], dp[8][4];
    tc::scores<D>(s, sq, sk[it % 2], L::ld, 16 * warp);
    tc::scores<D>(dp, sdo, sv[it % 2], L::ld, 16 * warp);
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
    tc::accumulate<D>(acc, s, sk[it % 2], L::ld);
    __syncthreads();  // this buffer is refilled in the next step
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
  tc::bf* sq[2] = {sk + 2 * L::tile, sk + 3 * L::tile};
  tc::bf* sdo[2] = {sk + 4 * L::tile, sk + 5 * L::tile};
  float* slse[2] = {reinterpret_cast<float*>(sk + 6 * L::tile),
                    reinterpret_cast<float*>(sk + 6 * L::tile) + kTcRows};
  float* sdelta[2] = {slse[1] + kTcRows, slse[1] + 2 * kTcRows};
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const std::int64_t j0 = static_cast<std::int64_t>(blockIdx.x) * kTcRows;
  const std::int64_t kvh = blockIdx.y, b = blockIdx.z, group = a.heads / a.kv_heads;
  // The walk: every query head of the group, each over the query tiles that can see these keys.
  const std::int64_t first = a.causal ? j0 / kTcRows : 0;
  const std::int64_t per_head = (a.seq + kTcRows - 1) / kTcRows - first;
  const int steps = static_cast<int>(group * per_head);
  const auto load = [&](int step, int buf) {  // the query, dout, lse and delta tile of a step
    const std::int64_t h = kvh * group + step / per_head;
    const std::int64_t i0 = (first + step % per_head) * kTcRows;
    tc::load_tile<D, L::ld>(sq[buf], q + b * a.seq * a.ldq + h * D, a.ldq, i0, a.seq, a.vec);
    tc::load_tile<D, L::ld>(sdo[buf], dout + b * a.seq * a.ldo + h * D, a.ldo, i0, a.seq, a.vec);
    for (int r = threadIdx.x; r < kTcRows; r += blockDim.x) {
      const bool in = i0 + r < a.seq;
      slse[buf][r] = in ? lse[(b * a.heads + h) * a.seq + i0 + r] : -INFINITY;
      sdelta[buf][r] = in ? delta[(b * a.heads + h) * a.seq + i0 + r] : 0.0f;
    }
  };
  tc::load_tile<D, L::ld>(sk, k + b * a.seq * a.ldk + kvh * D, a.ldk, j0, a.seq, a.vec);
  tc::load_tile<D, L::ld>(sv, v + b * a.seq * a.ldv + kvh * D, a.ldv, j0, a.seq, a.vec);
  load(0, 0);
  tc::copies_commit();
  const std::int64_t key0 = j0 + 16 * warp + g, key1 = key0 + 8;  // this lane's two keys
  const bool vis0 = key0 < a.seq && key_visible(a, b, key0);
  const bool vis1 = key1 < a.seq && key_visible(a, b, key1);
  float dk_acc[D / 8][4] = {}, dv_acc[D / 8][4] = {};
  for (int it = 0; it < steps; ++it) {
    const int buf = it % 2;
    const std::int64_t i0 = (first + it % per_head) * kTcRows;
    if (it + 1 < steps) {
      load(it + 1, 1 - buf);
    }
    tc::tile_ready(it + 1 < steps);
    // This warp's 16 keys against the tile's 64 queries: S^T and dP^T.
    float s[8][4], dp[8][4];
    tc::scores<D>(s, sk, sq[buf], L::ld, 16 * warp);
    tc::scores<D>(dp, sv, sdo[buf], L::ld, 16 * warp);
    for (int nt = 0; nt < 8; ++nt)
      for (int e = 0; e < 2; ++e) {
        const int c = 8 * nt + 2 * t + e;
        const std::int64_t i = i0 + c;
        const float li = slse[buf][c], di = sdelta[buf][c];
        const bool see0 = vis0 && li != -INFINITY && (!a.causal || key0 <= i);
        const bool see1 = vis1 && li != -INFINITY && (!a.causal || key1 <= i);
        const float p0 = see0 ? __expf(s[nt][e] * a.scale - li) : 0.0f;
        const float p1 = see1 ? __expf(s[nt][2 + e] * a.scale - li) : 0.0f;
        s[nt][e] = p0;
        s[nt][2 + e] = p1;
        dp[nt][e] = p0 * (dp[nt][e] - di);  // dS^T
        dp[nt][2 + e] = p1 * (dp[nt][2 + e] - di);
      }
    tc::accumulate<D>(dv_acc, s, sdo[buf], L::ld);
    tc::accumulate<D>(dk_acc, dp, sq[buf], L::ld);
    __syncthreads();  // this buffer is refilled in the next step
  }
  tc::store_rows<D>(dk + b * a.seq * a.ldk + kvh * D, a.ldk, j0 + 16 * warp, a.seq, dk_acc, a.scale,
                    a.scale);
  tc::store_rows<D>(dv + b * a.seq * a.ldv + kvh * D, a.ldv, j0 + 16 * warp, a.seq, dv_acc, 1.0f,
                    1.0f);
}

}  // namespace wegeft::cuda::kernels

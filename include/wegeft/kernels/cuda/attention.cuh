// Scaled dot-product attention on the GPU (included only from .cu files): multi-head, grouped-query,
// causal or bidirectional, with a key padding mask; the same quantity as kernels/cpu/attention.hpp.
// The probabilities are never stored: the forward keeps each query row's log-sum-exp (lse) and
// the backward recomputes P from it, as flash attention does.
//
// One warp per row. The forward and the query-gradient kernel give each warp one query row: its
// lanes take 32 keys at a time (one dot product per lane, the softmax update by warp shuffles),
// then accumulate P V (or dS K) with each lane owning head_dim / 32 output columns. The
// key-gradient kernel gives each warp one key row of one key/value head and walks the queries
// of every query head that shares it, so dk and dv are written once, without atomics. Queries
// after a key/value cache (decoding: few rows, many keys) get a block each instead
// (attention_decode). All sums in fp32; q, k, v, out and their gradients stored as T.
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "wegeft/kernels/cuda/elementwise.cuh"
#include "wegeft/kernels/cuda/transformer.cuh"

namespace wegeft::cuda::kernels {

inline constexpr int kAttentionWarps = 4;  // rows per block
inline constexpr int kMaxHeadDim = 256;    // head_dim <= this (checked on the host)
inline constexpr int kHeadCols = kMaxHeadDim / 32;

struct AttentionArgs {
  std::int64_t batch, seq, heads, kv_heads, head_dim;
  std::int64_t ldq, ldk, ldv, ldo;  // row strides of q, k, v and out (and of their gradients)
  bool causal;
  float scale;               // 1 / sqrt(head_dim)
  const std::uint8_t* mask;  // [batch, seq], 1 = a key to attend to; null = every key
  bool vec = false;          // q, k, v, dout and their strides 16-byte aligned (attention_tc.cuh)
  // Rows of k and v (and of the mask) per sequence, and the position of each sequence's first
  // query row: seq and 0 in training; first + seq and first for the queries that follow `first`
  // cached tokens (decoding with a key/value cache: the forward kernels only).
  std::int64_t kv_seq = 0, first = 0;
  // attention_decode only: when set, the device int32 it points to replaces `first` (read when
  // the kernel runs, so a CUDA graph of a decode step replays at every later position).
  const std::int32_t* first_at = nullptr;
};

__device__ inline bool key_visible(const AttentionArgs& a, std::int64_t b, std::int64_t j) {
  return a.mask == nullptr || a.mask[b * a.kv_seq + j] != 0;
}

/// out [B*T, H*d], lse [B, H, T] from q [B*T, H*d], k, v [B*kv_seq, Hkv*d]; causal: query i sees
/// keys 0 .. first + i. grid (ceil(T / warps), H, B).
template <class T>
__global__ void attention_forward(T* out, float* lse, const T* q, const T* k, const T* v,
                                  AttentionArgs a) {
  __shared__ float sq[kAttentionWarps][kMaxHeadDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kAttentionWarps + warp;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, g = h / (a.heads / a.kv_heads);
  if (i >= a.seq) return;
  const std::int64_t d = a.head_dim;
  const T* qi = q + (b * a.seq + i) * a.ldq + h * d;
  for (std::int64_t c = lane; c < d; c += 32) sq[warp][c] = load_float(qi + c) * a.scale;
  __syncwarp();
  float acc[kHeadCols] = {};
  float m = -INFINITY, l = 0;
  const std::int64_t end = a.causal ? a.first + i + 1 : a.kv_seq;
  for (std::int64_t j0 = 0; j0 < end; j0 += 32) {
    const std::int64_t j = j0 + lane;
    float s = -INFINITY;
    if (j < end && key_visible(a, b, j)) {
      const T* kj = k + (b * a.kv_seq + j) * a.ldk + g * d;
      s = 0;
      for (std::int64_t c = 0; c < d; ++c) s += sq[warp][c] * load_float(kj + c);
    }
    const float cmax = warp_max(s);
    if (cmax == -INFINITY) continue;  // the same on every lane
    const float mnew = fmaxf(m, cmax);
    const float p = s == -INFINITY ? 0.0f : expf(s - mnew);
    const float corr = m == -INFINITY ? 0.0f : expf(m - mnew);
    l = l * corr + warp_sum(p);
    for (int t = 0; t < kHeadCols; ++t) acc[t] *= corr;
    const int count = static_cast<int>(end - j0 < 32 ? end - j0 : 32);
    for (int jj = 0; jj < count; ++jj) {
      const float pj = __shfl_sync(0xffffffffu, p, jj);
      if (pj == 0.0f) continue;
      const T* vj = v + (b * a.kv_seq + j0 + jj) * a.ldv + g * d;
      for (int t = 0; t < kHeadCols; ++t) {
        const std::int64_t c = lane + 32 * t;
        if (c < d) acc[t] += pj * load_float(vj + c);
      }
    }
    m = mnew;
  }
  const float inv = l > 0 ? 1.0f / l : 0.0f;  // a row with no visible key gives 0
  T* oi = out + (b * a.seq + i) * a.ldo + h * d;
  for (int t = 0; t < kHeadCols; ++t) {
    const std::int64_t c = lane + 32 * t;
    if (c < d) store_float(oi + c, acc[t] * inv);
  }
  if (lane == 0) lse[(b * a.heads + h) * a.seq + i] = l > 0 ? m + logf(l) : -INFINITY;
}

inline constexpr int kDecodeThreads = kRowThreads;  // attention_decode's block (block_reduce's)
inline constexpr int kDecodeTile = 256;             // keys scored per round

/// Decoding after a key/value cache: out [T, H*d], lse [H, T] from q [T, H*d] and k, v
/// [kv_seq, Hkv*d] of one sequence (batch 1), query i seeing keys 0 .. first + i (and the mask's,
/// when given). The one-warp-per-row kernel above leaves a single query per head to one warp,
/// whose loads then run one after another; here a block of kDecodeThreads takes one (query,
/// head): per round of kDecodeTile keys its warps score one key each at a time (the lanes split
/// the head's columns, so a key row is one coalesced read), the block takes the round's maximum
/// and exponentials in shared memory, and each thread accumulates p v for one output column over
/// a share of the round's keys; the running maximum and sum rescale the partial sums between
/// rounds (online softmax) and the shares are summed at the end. grid (T, H, S).
/// With `part` (S > 1 splits), block z takes keys [z chunk, (z + 1) chunk) only and writes, per
/// (query i, head h, split z), the row part[((i H + h) S + z) (d + 2) + ..] = its running maximum,
/// its sum of exponentials and its d unnormalised sums of p v, which attention_decode_combine
/// merges: one sequence's few queries then spread over S times as many blocks (split-K).
template <class T>
__global__ void __launch_bounds__(kDecodeThreads)
    attention_decode(T* out, float* lse, const T* q, const T* k, const T* v, AttentionArgs a,
                     float* part, std::int64_t chunk) {
  constexpr int kWarps = kDecodeThreads / 32;
  __shared__ float sq[kMaxHeadDim];
  __shared__ float sp[kDecodeTile];
  __shared__ float red[kWarps];
  __shared__ float sums[kDecodeThreads];
  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const std::int64_t i = blockIdx.x, h = blockIdx.y, g = h / (a.heads / a.kv_heads);
  const int d = static_cast<int>(a.head_dim), shares = kDecodeThreads / d;
  const int col = tid % d, share = tid / d;
  const std::int64_t first = a.first_at ? *a.first_at : a.first;
  const std::int64_t end = a.causal ? first + i + 1 : (a.first_at ? first + a.seq : a.kv_seq);
  const std::int64_t lo = part ? blockIdx.z * chunk : 0;
  const std::int64_t hi = part ? (end < lo + chunk ? end : lo + chunk) : end;
  for (int c = tid; c < d; c += kDecodeThreads)
    sq[c] = load_float(q + i * a.ldq + h * d + c) * a.scale;
  __syncthreads();
  float m = -INFINITY, l = 0, acc = 0;
  for (std::int64_t j0 = lo; j0 < hi; j0 += kDecodeTile) {
    const int n = static_cast<int>(hi - j0 < kDecodeTile ? hi - j0 : kDecodeTile);
    for (int jj = warp; jj < n; jj += kWarps) {
      float s = -INFINITY;
      if (key_visible(a, 0, j0 + jj)) {
        const T* kj = k + (j0 + jj) * a.ldk + g * d;
        s = 0;
        for (int c = lane; c < d; c += 32) s += sq[c] * load_float(kj + c);
        s = warp_sum(s);
      }
      if (lane == 0) sp[jj] = s;
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int jj = tid; jj < n; jj += kDecodeThreads) mx = fmaxf(mx, sp[jj]);
    mx = block_max(mx, red);
    if (mx == -INFINITY) continue;  // every key of the round masked (the same on every thread)
    const float mnew = fmaxf(m, mx);
    const float corr = m == -INFINITY ? 0.0f : expf(m - mnew);
    float sum = 0;
    for (int jj = tid; jj < n; jj += kDecodeThreads) {
      const float p = sp[jj] == -INFINITY ? 0.0f : expf(sp[jj] - mnew);
      sp[jj] = p;
      sum += p;
    }
    l = l * corr + block_sum(sum, red);  // its barrier publishes sp
    acc *= corr;
    if (share < shares) {
      const T* vc = v + g * d + col;
      for (int jj = share; jj < n; jj += shares) acc += sp[jj] * load_float(vc + (j0 + jj) * a.ldv);
    }
    m = mnew;
    __syncthreads();  // sp is rewritten by the next round
  }
  sums[tid] = acc;
  __syncthreads();
  if (part) {
    float* row = part + ((i * a.heads + h) * gridDim.z + blockIdx.z) * (d + 2);
    if (tid < d) {
      float o = 0;
      for (int s = 0; s < shares; ++s) o += sums[s * d + tid];
      row[2 + tid] = o;
    }
    if (tid == 0) {
      row[0] = m;
      row[1] = l;
    }
    return;
  }
  if (tid < d) {
    float o = 0;
    for (int s = 0; s < shares; ++s) o += sums[s * d + tid];
    store_float(out + i * a.ldo + h * d + tid, l > 0 ? o / l : 0.0f);
  }
  if (tid == 0) lse[h * a.seq + i] = l > 0 ? m + logf(l) : -INFINITY;
}

/// Merges attention_decode's `splits` partial rows per (query i, head h): out [T, H*d] = the sum
/// of each split's p v sums rescaled to the largest maximum, over the rescaled sum of
/// exponentials (0 where no key is visible), lse [H, T] its log-sum-exp. grid (T, H).
template <class T>
__global__ void __launch_bounds__(kDecodeThreads)
    attention_decode_combine(T* out, float* lse, const float* part, AttentionArgs a, int splits) {
  const std::int64_t i = blockIdx.x, h = blockIdx.y;
  const int d = static_cast<int>(a.head_dim), w = d + 2;
  const float* rows = part + (i * a.heads + h) * splits * w;
  float mx = -INFINITY, l = 0;
  for (int s = 0; s < splits; ++s) mx = fmaxf(mx, rows[s * w]);
  for (int s = 0; s < splits; ++s)
    if (rows[s * w + 1] > 0) l += rows[s * w + 1] * expf(rows[s * w] - mx);
  for (int c = static_cast<int>(threadIdx.x); c < d; c += static_cast<int>(blockDim.x)) {
    float o = 0;
    for (int s = 0; s < splits; ++s)
      if (rows[s * w + 1] > 0) o += rows[s * w + 2 + c] * expf(rows[s * w] - mx);
    store_float(out + i * a.ldo + h * d + c, l > 0 ? o / l : 0.0f);
  }
  if (threadIdx.x == 0) lse[h * a.seq + i] = l > 0 ? mx + logf(l) : -INFINITY;
}

/// delta [B, H, T] = rowsum(dout o out) per head. grid (ceil(T / warps), H, B).
template <class T>
__global__ void attention_delta(float* delta, const T* dout, const T* out, AttentionArgs a) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kAttentionWarps + warp;
  const std::int64_t h = blockIdx.y, b = blockIdx.z;
  if (i >= a.seq) return;
  const std::int64_t at = (b * a.seq + i) * a.ldo + h * a.head_dim;
  float s = 0;
  for (std::int64_t c = lane; c < a.head_dim; c += 32)
    s += load_float(dout + at + c) * load_float(out + at + c);
  s = warp_sum(s);
  if (lane == 0) delta[(b * a.heads + h) * a.seq + i] = s;
}

/// dq [B*T, H*d] (overwritten) = scale sum_j dS_ij k_j, dS = P o (dP - delta), dP = dout v^T.
/// grid (ceil(T / warps), H, B).
template <class T>
__global__ void attention_backward_q(T* dq, const T* dout, const float* lse, const float* delta,
                                     const T* q, const T* k, const T* v, AttentionArgs a) {
  __shared__ float sq[kAttentionWarps][kMaxHeadDim];
  __shared__ float sdo[kAttentionWarps][kMaxHeadDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t i = static_cast<std::int64_t>(blockIdx.x) * kAttentionWarps + warp;
  const std::int64_t h = blockIdx.y, b = blockIdx.z, g = h / (a.heads / a.kv_heads);
  if (i >= a.seq) return;
  const std::int64_t d = a.head_dim, row = (b * a.heads + h) * a.seq + i;
  const std::int64_t at = (b * a.seq + i) * a.ldq + h * d;
  for (std::int64_t c = lane; c < d; c += 32) {
    sq[warp][c] = load_float(q + at + c) * a.scale;
    sdo[warp][c] = load_float(dout + (b * a.seq + i) * a.ldo + h * d + c);
  }
  __syncwarp();
  float acc[kHeadCols] = {};
  const float li = lse[row], di = delta[row];
  const std::int64_t end = li == -INFINITY ? 0 : (a.causal ? i + 1 : a.seq);
  for (std::int64_t j0 = 0; j0 < end; j0 += 32) {
    const std::int64_t j = j0 + lane;
    float ds = 0;
    if (j < end && key_visible(a, b, j)) {
      const T* kj = k + (b * a.seq + j) * a.ldk + g * d;
      const T* vj = v + (b * a.seq + j) * a.ldv + g * d;
      float s = 0, dp = 0;
      for (std::int64_t c = 0; c < d; ++c) {
        s += sq[warp][c] * load_float(kj + c);
        dp += sdo[warp][c] * load_float(vj + c);
      }
      ds = expf(s - li) * (dp - di);
    }
    const int count = static_cast<int>(end - j0 < 32 ? end - j0 : 32);
    for (int jj = 0; jj < count; ++jj) {
      const float dsj = __shfl_sync(0xffffffffu, ds, jj);
      if (dsj == 0.0f) continue;
      const T* kj = k + (b * a.seq + j0 + jj) * a.ldk + g * d;
      for (int t = 0; t < kHeadCols; ++t) {
        const std::int64_t c = lane + 32 * t;
        if (c < d) acc[t] += dsj * load_float(kj + c);
      }
    }
  }
  for (int t = 0; t < kHeadCols; ++t) {
    const std::int64_t c = lane + 32 * t;
    if (c < d) store_float(dq + at + c, acc[t] * a.scale);
  }
}

/// dk, dv [B*T, Hkv*d] (overwritten): for key j of head g, over the query heads h of its group
/// and the queries i that see it, dv_j = sum P_ij dout_i, dk_j = scale sum dS_ij q_i.
/// grid (ceil(T / warps), Hkv, B).
template <class T>
__global__ void attention_backward_kv(T* dk, T* dv, const T* dout, const float* lse,
                                      const float* delta, const T* q, const T* k, const T* v,
                                      AttentionArgs a) {
  __shared__ float sk[kAttentionWarps][kMaxHeadDim];
  __shared__ float sv[kAttentionWarps][kMaxHeadDim];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * kAttentionWarps + warp;
  const std::int64_t g = blockIdx.y, b = blockIdx.z, group = a.heads / a.kv_heads;
  if (j >= a.seq) return;
  const std::int64_t d = a.head_dim;
  const std::int64_t atk = (b * a.seq + j) * a.ldk + g * d, atv = (b * a.seq + j) * a.ldv + g * d;
  for (std::int64_t c = lane; c < d; c += 32) {
    sk[warp][c] = load_float(k + atk + c) * a.scale;
    sv[warp][c] = load_float(v + atv + c);
  }
  __syncwarp();
  float ak[kHeadCols] = {}, av[kHeadCols] = {};
  const bool visible = key_visible(a, b, j);
  for (std::int64_t h = g * group; visible && h < (g + 1) * group; ++h) {
    for (std::int64_t i0 = a.causal ? j : 0; i0 < a.seq; i0 += 32) {
      const std::int64_t i = i0 + lane;
      float p = 0, ds = 0;
      if (i < a.seq) {
        const std::int64_t row = (b * a.heads + h) * a.seq + i;
        const float li = lse[row];
        if (li != -INFINITY) {
          const T* qi = q + (b * a.seq + i) * a.ldq + h * d;
          const T* doi = dout + (b * a.seq + i) * a.ldo + h * d;
          float s = 0, dp = 0;
          for (std::int64_t c = 0; c < d; ++c) {
            s += sk[warp][c] * load_float(qi + c);
            dp += sv[warp][c] * load_float(doi + c);
          }
          p = expf(s - li);
          ds = p * (dp - delta[row]);
        }
      }
      const int count = static_cast<int>(a.seq - i0 < 32 ? a.seq - i0 : 32);
      for (int ii = 0; ii < count; ++ii) {
        const float pi = __shfl_sync(0xffffffffu, p, ii);
        const float dsi = __shfl_sync(0xffffffffu, ds, ii);
        if (pi == 0.0f && dsi == 0.0f) continue;
        const T* qi = q + (b * a.seq + i0 + ii) * a.ldq + h * d;
        const T* doi = dout + (b * a.seq + i0 + ii) * a.ldo + h * d;
        for (int t = 0; t < kHeadCols; ++t) {
          const std::int64_t c = lane + 32 * t;
          if (c < d) {
            av[t] += pi * load_float(doi + c);
            ak[t] += dsi * load_float(qi + c);
          }
        }
      }
    }
  }
  for (int t = 0; t < kHeadCols; ++t) {
    const std::int64_t c = lane + 32 * t;
    if (c < d) {
      store_float(dk + (b * a.seq + j) * a.ldk + g * d + c, ak[t] * a.scale);
      store_float(dv + (b * a.seq + j) * a.ldv + g * d + c, av[t]);
    }
  }
}

}  // namespace wegeft::cuda::kernels

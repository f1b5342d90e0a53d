// The transformer's row-wise and element-wise CUDA kernels (included only from .cu files): RMSNorm,
// LayerNorm, RoPE, SwiGLU, GELU, tanh, the residual add, the embedding gather and the position
// add, cross-entropy over the vocabulary, the rows' argmax and column sums.
// Storage is T (float or __nv_bfloat16); every sum and every intermediate is fp32. Row kernels run
// one block of kRowThreads per row; element-wise ones one thread per element of a row chunk, rows
// over blockIdx.y (as elementwise.cuh).
#pragma once

#include <cuda_bf16.h>

#include <cstdint>

#include "wegeft/kernels/cuda/elementwise.cuh"

namespace wegeft::cuda::kernels {

inline constexpr int kRowThreads = 256;

__device__ inline float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ inline float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
/// The sum (or, with max, the maximum) of v over the block (kRowThreads threads), returned to
/// every thread. `scratch` holds kRowThreads / 32 floats; the call synchronises the block twice.
template <bool max>
__device__ inline float block_reduce(float v, float* scratch) {
  v = max ? warp_max(v) : warp_sum(v);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  float r = scratch[0];
  for (int w = 1; w < kRowThreads / 32; ++w) r = max ? fmaxf(r, scratch[w]) : r + scratch[w];
  __syncthreads();
  return r;
}
__device__ inline float block_sum(float v, float* scratch) {
  return block_reduce<false>(v, scratch);
}
__device__ inline float block_max(float v, float* scratch) {
  return block_reduce<true>(v, scratch);
}

/// out [n, c] = x * rstd * w [c]; rstd [n] = 1 / sqrt(mean(x^2) + eps). One block per row.
template <class T>
__global__ void rmsnorm_forward(T* out, std::int64_t ldo, float* rstd, const T* x, std::int64_t ldx,
                                const T* w, std::int64_t c, float eps) {
  __shared__ float scratch[kRowThreads / 32];
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * ldx;
  float ss = 0;
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float v = load_float(xi + j);
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / static_cast<float>(c) + eps);
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x)
    store_float(out + i * ldo + j, load_float(xi + j) * r * load_float(w + j));
  if (threadIdx.x == 0) rstd[i] = r;
}

/// dx [n, c] = r w g - r^3 (sum_j g w x / c) x per row (g = dout; dx may alias dout).
template <class T>
__global__ void rmsnorm_backward(T* dx, std::int64_t ldd, const T* dout, std::int64_t ldg,
                                 const T* x, std::int64_t ldx, const T* w, const float* rstd,
                                 std::int64_t c) {
  __shared__ float scratch[kRowThreads / 32];
  const std::int64_t i = blockIdx.x;
  const T *xi = x + i * ldx, *gi = dout + i * ldg;
  float s = 0;
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x)
    s += load_float(gi + j) * load_float(w + j) * load_float(xi + j);
  const float r = rstd[i];
  const float k = r * r * r * block_sum(s, scratch) / static_cast<float>(c);
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x)
    store_float(dx + i * ldd + j,
                r * load_float(gi + j) * load_float(w + j) - k * load_float(xi + j));
}

/// Rotates the pairs (x[i], x[i + half]) of every head of row b * seq + t by direction * angle(t, i)
/// in place; cos, sin [max_positions, half]. With `at` (a device int32), row t takes position
/// *at + t. One thread per (row, head, i).
template <class T>
__global__ void rope(T* x, std::int64_t ldx, const float* cos, const float* sin, std::int64_t rows,
                     std::int64_t seq, std::int64_t heads, std::int64_t half, float direction,
                     const std::int32_t* at) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= heads * half) return;
  const std::int64_t h = j / half, k = j % half, offset = at ? *at : 0;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const std::int64_t t = r % seq + offset;
    T* v = x + r * ldx + h * 2 * half;
    const float c = cos[t * half + k], s = direction * sin[t * half + k];
    const float a = load_float(v + k), b = load_float(v + k + half);
    store_float(v + k, a * c - b * s);
    store_float(v + k + half, b * c + a * s);
  }
}

__device__ inline float silu_sigmoid(float g) {
  return 1.0f / (1.0f + expf(-g));
}

/// out = silu(gate) * up element-wise over [rows, cols].
template <class T>
__global__ void swiglu_forward(T* out, std::int64_t ldo, const T* gate, std::int64_t ldg,
                               const T* up, std::int64_t ldu, std::int64_t rows,
                               std::int64_t cols) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const float g = load_float(gate + i * ldg + j);
    store_float(out + i * ldo + j, g * silu_sigmoid(g) * load_float(up + i * ldu + j));
  }
}

/// dgate = dout * up * silu'(gate), dup = dout * silu(gate); either may alias dout.
template <class T>
__global__ void swiglu_backward(T* dgate, std::int64_t lddg, T* dup, std::int64_t lddu,
                                const T* dout, std::int64_t ldo, const T* gate, std::int64_t ldg,
                                const T* up, std::int64_t ldu, std::int64_t rows,
                                std::int64_t cols) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const float g = load_float(gate + i * ldg + j), u = load_float(up + i * ldu + j);
    const float d = load_float(dout + i * ldo + j), s = silu_sigmoid(g);
    store_float(dgate + i * lddg + j, d * u * s * (1.0f + g * (1.0f - s)));
    store_float(dup + i * lddu + j, d * g * s);
  }
}

/// y += alpha x element-wise over [rows, cols].
template <class T>
__global__ void add(T* y, std::int64_t ldy, const T* x, std::int64_t ldx, std::int64_t rows,
                    std::int64_t cols, float alpha) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y)
    store_float(y + i * ldy + j, load_float(y + i * ldy + j) + alpha * load_float(x + i * ldx + j));
}

/// x [n, d] row i = table [vocab, d] row ids[i] (ids checked on the host). One block per row.
template <class TD, class TS>
__global__ void embedding(TD* x, std::int64_t ldx, const std::int32_t* ids, const TS* table,
                          std::int64_t ldt, std::int64_t d) {
  const std::int64_t i = blockIdx.x;
  const TS* row = table + static_cast<std::int64_t>(ids[i]) * ldt;
  for (std::int64_t j = threadIdx.x; j < d; j += blockDim.x)
    store_float(x + i * ldx + j, load_float(row + j));
}

/// Per row i of logits [n, vocab]: loss[i] = logsumexp(row) - row[t] (0 where t = ignore), and,
/// when dlogits is given, dlogits row = scale (softmax(row) - onehot(t)) (0 where ignored;
/// dlogits may alias logits). The exponentials are summed in fp32 in two passes (max, then sum).
template <class T>
__global__ void cross_entropy(T* dlogits, std::int64_t ldd, float* loss, const T* logits,
                              std::int64_t ldl, const std::int32_t* targets, std::int64_t vocab,
                              std::int32_t ignore, float scale) {
  __shared__ float scratch[kRowThreads / 32];
  const std::int64_t i = blockIdx.x;
  const std::int32_t t = targets[i];
  T* drow = dlogits ? dlogits + i * ldd : nullptr;
  if (t == ignore) {
    if (drow)
      for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x) store_float(drow + j, 0.0f);
    if (threadIdx.x == 0) loss[i] = 0.0f;
    return;
  }
  const T* row = logits + i * ldl;
  float m = -INFINITY;
  for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, load_float(row + j));
  m = block_max(m, scratch);
  float s = 0;
  for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x) s += expf(load_float(row + j) - m);
  s = block_sum(s, scratch);
  const float target = load_float(row + t);  // read by every thread before any write below
  __syncthreads();
  if (threadIdx.x == 0) loss[i] = logf(s) + m - target;
  if (!drow) return;
  const float k = scale / s;
  for (std::int64_t j = threadIdx.x; j < vocab; j += blockDim.x) {
    const float p = expf(load_float(row + j) - m) * k;
    store_float(drow + j, j == t ? p - scale : p);
  }
}

/// out [n, c] = (x - mean) rstd w + b; mean, rstd [n] saved (biased variance, eps inside the
/// root, as nn/norms.hpp). Two passes over x: the mean, then the centred squares. One block per row.
template <class T>
__global__ void layernorm_forward(T* out, std::int64_t ldo, float* mean, float* rstd, const T* x,
                                  std::int64_t ldx, const T* w, const T* b, std::int64_t c,
                                  float eps) {
  __shared__ float scratch[kRowThreads / 32];
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * ldx;
  float s = 0;
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x) s += load_float(xi + j);
  const float m = block_sum(s, scratch) / static_cast<float>(c);
  float ss = 0;
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float v = load_float(xi + j) - m;
    ss += v * v;
  }
  const float r = rsqrtf(block_sum(ss, scratch) / static_cast<float>(c) + eps);
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x)
    store_float(out + i * ldo + j,
                (load_float(xi + j) - m) * r * load_float(w + j) + load_float(b + j));
  if (threadIdx.x == 0) {
    mean[i] = m;
    rstd[i] = r;
  }
}

/// dx [n, c] = rstd (g - mean(g) - xhat mean(g xhat)), g = dout w, xhat = (x - mean) rstd. dx may
/// alias dout (each element is read and then written by the same thread). One block per row.
template <class T>
__global__ void layernorm_backward(T* dx, std::int64_t lddx, const T* dout, std::int64_t ldd,
                                   const T* x, std::int64_t ldx, const T* w, const float* mean,
                                   const float* rstd, std::int64_t c) {
  __shared__ float scratch[kRowThreads / 32];
  const std::int64_t i = blockIdx.x;
  const T* xi = x + i * ldx;
  const T* di = dout + i * ldd;
  const float m = mean[i], r = rstd[i];
  float sg = 0, sgx = 0;
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float g = load_float(di + j) * load_float(w + j);
    sg += g;
    sgx += g * (load_float(xi + j) - m) * r;
  }
  const float inv_c = 1.0f / static_cast<float>(c);
  const float mg = block_sum(sg, scratch) * inv_c, mgx = block_sum(sgx, scratch) * inv_c;
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float g = load_float(di + j) * load_float(w + j);
    const float xhat = (load_float(xi + j) - m) * r;
    store_float(dx + i * lddx + j, r * (g - mg - xhat * mgx));
  }
}

/// GELU and its derivative, exact (erf) or GPT-2's tanh form (nn/activations.hpp).
__device__ inline float gelu_value(float x, bool tanh_form) {
  if (!tanh_form) return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}
__device__ inline float gelu_slope(float x, bool tanh_form) {
  if (!tanh_form)
    return 0.5f * (1.0f + erff(x * 0.70710678118654752f)) +
           x * 0.3989422804014327f * expf(-0.5f * x * x);
  const float t = tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x));
  return 0.5f * (1.0f + t) +
         0.5f * x * (1.0f - t * t) * 0.7978845608028654f * (1.0f + 3.0f * 0.044715f * x * x);
}

/// Element-wise over [rows, cols]: kind 0 out = gelu(x), 1 out = gelu_tanh(x), 2 out = tanh(x);
/// the backward: kind 0 / 1 dx = dout gelu'(in), 2 dx = dout (1 - in^2) with `in` the tanh's
/// output. out may alias x, dx may alias dout.
template <class T>
__global__ void activation_forward(T* out, std::int64_t ldo, const T* x, std::int64_t ldx,
                                   std::int64_t rows, std::int64_t cols, int kind) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const float v = load_float(x + i * ldx + j);
    store_float(out + i * ldo + j, kind == 2 ? tanhf(v) : gelu_value(v, kind == 1));
  }
}
template <class T>
__global__ void activation_backward(T* dx, std::int64_t lddx, const T* dout, std::int64_t ldd,
                                    const T* in, std::int64_t ldi, std::int64_t rows,
                                    std::int64_t cols, int kind) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y) {
    const float v = load_float(in + i * ldi + j), d = load_float(dout + i * ldd + j);
    store_float(dx + i * lddx + j, d * (kind == 2 ? 1.0f - v * v : gelu_slope(v, kind == 1)));
  }
}

/// x [B*T, c] row b*T + t += pos [t] (+ type [0] when given): learned positions and BERT's token
/// type 0.
template <class T>
__global__ void add_positions(T* x, std::int64_t ldx, const T* pos, std::int64_t ldp, const T* type,
                              std::int64_t rows, std::int64_t seq, std::int64_t cols,
                              const std::int32_t* at) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const float ty = type ? load_float(type + j) : 0.0f;
  const std::int64_t offset = at ? *at : 0;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y)
    store_float(x + i * ldx + j,
                load_float(x + i * ldx + j) + load_float(pos + (i % seq + offset) * ldp + j) + ty);
}

/// Rows *at .. *at + rows - 1 of dst = src [rows, cols] (at: a device int32): appending to a
/// key/value cache at a position the host does not fix.
template <class T>
__global__ void copy_rows_at(T* dst, std::int64_t ldd, const T* src, std::int64_t lds,
                             std::int64_t rows, std::int64_t cols, const std::int32_t* at) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const std::int64_t first = *at;
  for (std::int64_t i = blockIdx.y; i < rows; i += gridDim.y)
    dst[(first + i) * ldd + j] = src[i * lds + j];
}

/// patches [B P, C p p] = images [B, C, H, W] (fp32, contiguous) cut into p x p patches in
/// row-major patch order, each row flattened as (c, i, j): the host's patchify (nn/embedding.hpp).
template <class T>
__global__ void patchify(T* patches, std::int64_t ldp, const float* images, std::int64_t rows,
                         std::int64_t channels, std::int64_t height, std::int64_t width,
                         std::int64_t p) {
  const std::int64_t cols = channels * p * p;
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  const std::int64_t pw = width / p, per_image = (height / p) * pw;
  const std::int64_t c = j / (p * p), y = (j / p) % p, x = j % p;
  for (std::int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
    const std::int64_t b = r / per_image, py = (r % per_image) / pw, px = r % pw;
    store_float(patches + r * ldp + j,
                images[((b * channels + c) * height + py * p + y) * width + px * p + x]);
  }
}

/// sums [c] (fp32) += the sum over the rows of x [rows, c]; one thread per column.
template <class T>
__global__ void add_column_sums(float* sums, const T* x, std::int64_t ldx, std::int64_t rows,
                                std::int64_t cols) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= cols) return;
  float s = 0;
  for (std::int64_t i = 0; i < rows; ++i) s += load_float(x + i * ldx + j);
  sums[j] += s;
}

/// out [B, d] = the mean over the tokens of each sequence (rows b T .. b T + T - 1 of hidden
/// [B T, d] whose mask is 1; every row when mask is null), 0 for a sequence with none: the host's
/// pool_forward with Pooling::mean (nn/pooling.hpp). One thread per column, sequences over
/// blockIdx.y; the sum in fp32.
template <class T>
__global__ void mean_pool_forward(T* out, std::int64_t ldo, const T* hidden, std::int64_t ldh,
                                  const std::uint8_t* mask, std::int64_t batch, std::int64_t seq,
                                  std::int64_t d) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  for (std::int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    float s = 0.0f;
    std::int64_t count = 0;
    for (std::int64_t t = 0; t < seq; ++t) {
      if (mask && !mask[b * seq + t]) continue;
      s += load_float(hidden + (b * seq + t) * ldh + j);
      ++count;
    }
    store_float(out + b * ldo + j, count ? s / static_cast<float>(count) : 0.0f);
  }
}

/// dhidden [B T, d] (=) from dout [B, d]: dout[b] / count on each of sequence b's tokens, 0 on
/// padding and on a sequence with no token (the host's pool_backward with Pooling::mean). One
/// thread per column, sequences over blockIdx.y.
template <class T>
__global__ void mean_pool_backward(T* dhidden, std::int64_t ldh, const T* dout, std::int64_t ldo,
                                   const std::uint8_t* mask, std::int64_t batch, std::int64_t seq,
                                   std::int64_t d) {
  const std::int64_t j = static_cast<std::int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= d) return;
  for (std::int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    std::int64_t count = seq;
    if (mask) {
      count = 0;
      for (std::int64_t t = 0; t < seq; ++t) count += mask[b * seq + t] != 0;
    }
    const float g = count ? load_float(dout + b * ldo + j) / static_cast<float>(count) : 0.0f;
    for (std::int64_t t = 0; t < seq; ++t)
      store_float(dhidden + (b * seq + t) * ldh + j, !mask || mask[b * seq + t] ? g : 0.0f);
  }
}

/// ids[i] = the column of the largest value of row i of x [n, c]: the first of equal values, and
/// 0 for a row with no value above -inf (as Eigen's maxCoeff). One block per row.
template <class T>
__global__ void argmax_rows(std::int32_t* ids, const T* x, std::int64_t ldx, std::int64_t c) {
  __shared__ float best[kRowThreads];
  __shared__ std::int64_t where[kRowThreads];
  const T* row = x + static_cast<std::int64_t>(blockIdx.x) * ldx;
  float b = -INFINITY;
  std::int64_t w = c;  // "none yet": larger than every column
  for (std::int64_t j = threadIdx.x; j < c; j += blockDim.x) {
    const float v = load_float(row + j);
    if (v > b) b = v, w = j;  // j grows, so a later equal value never wins
  }
  best[threadIdx.x] = b;
  where[threadIdx.x] = w;
  __syncthreads();
  for (int half = kRowThreads / 2; half > 0; half >>= 1) {
    if (threadIdx.x < half) {
      const float ob = best[threadIdx.x + half];
      const std::int64_t ow = where[threadIdx.x + half];
      if (ob > best[threadIdx.x] || (ob == best[threadIdx.x] && ow < where[threadIdx.x])) {
        best[threadIdx.x] = ob;
        where[threadIdx.x] = ow;
      }
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) ids[blockIdx.x] = static_cast<std::int32_t>(where[0] < c ? where[0] : 0);
}

}  // namespace wegeft::cuda::kernels

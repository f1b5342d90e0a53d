// Launchers of the transformer's CUDA kernels (kernels/cuda/transformer.cuh, attention.cuh). Every
// matrix of one call has the same dtype (checked by the callers in nn.cpp); launch errors are
// left for cudaGetLastError, which the callers check.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "launch.hpp"
#include "wegeft/kernels/cuda/attention.cuh"
#include "wegeft/kernels/cuda/transformer.cuh"

namespace wegeft::cuda::detail {

namespace {
constexpr int kThreads = 256;
using bf = __nv_bfloat16;

cudaStream_t as_stream(void* s) {
  return static_cast<cudaStream_t>(s);
}
unsigned row_grid(std::int64_t rows) {
  return static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(rows, 1), 65535));
}
dim3 grid_2d(std::int64_t rows, std::int64_t cols) {
  return dim3(static_cast<unsigned>((cols + kThreads - 1) / kThreads), row_grid(rows));
}
/// f(T{}) with T the storage type of the call.
template <class F>
void dispatch(bool bf16, F&& f) {
  if (bf16)
    f(bf{});
  else
    f(float{});
}
template <class T>
T* ptr(const Mat& m) {
  return static_cast<T*>(m.data);
}
}  // namespace

void launch_rmsnorm_forward(void* stream, Mat out, float* rstd, Mat x, Mat w, float eps) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::rmsnorm_forward<<<static_cast<unsigned>(x.rows), kernels::kRowThreads, 0,
                               as_stream(stream)>>>(ptr<T>(out), out.ld, rstd, ptr<T>(x), x.ld,
                                                    ptr<T>(w), x.cols, eps);
  });
}

void launch_rmsnorm_backward(void* stream, Mat dx, Mat dout, Mat x, Mat w, const float* rstd) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::rmsnorm_backward<<<static_cast<unsigned>(x.rows), kernels::kRowThreads, 0,
                                as_stream(stream)>>>(ptr<T>(dx), dx.ld, ptr<T>(dout), dout.ld,
                                                     ptr<T>(x), x.ld, ptr<T>(w), rstd, x.cols);
  });
}

void launch_rope(void* stream, Mat x, const float* cos, const float* sin, std::int64_t seq,
                 std::int64_t heads, std::int64_t half, float direction) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::rope<<<grid_2d(x.rows, heads * half), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(x), x.ld, cos, sin, x.rows, seq, heads, half, direction);
  });
}

void launch_swiglu_forward(void* stream, Mat out, Mat gate, Mat up) {
  if (out.rows == 0 || out.cols == 0) return;
  dispatch(out.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::swiglu_forward<<<grid_2d(out.rows, out.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(out), out.ld, ptr<T>(gate), gate.ld, ptr<T>(up), up.ld, out.rows, out.cols);
  });
}

void launch_swiglu_backward(void* stream, Mat dgate, Mat dup, Mat dout, Mat gate, Mat up) {
  if (dout.rows == 0 || dout.cols == 0) return;
  dispatch(dout.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::swiglu_backward<<<grid_2d(dout.rows, dout.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(dgate), dgate.ld, ptr<T>(dup), dup.ld, ptr<T>(dout), dout.ld, ptr<T>(gate), gate.ld,
        ptr<T>(up), up.ld, dout.rows, dout.cols);
  });
}

void launch_add(void* stream, Mat y, Mat x, float alpha) {
  if (y.rows == 0 || y.cols == 0) return;
  dispatch(y.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::add<<<grid_2d(y.rows, y.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(y), y.ld, ptr<T>(x), x.ld, y.rows, y.cols, alpha);
  });
}

void launch_embedding(void* stream, Mat x, const std::int32_t* ids, Mat table) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::embedding<<<static_cast<unsigned>(x.rows), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(x), x.ld, ids, ptr<T>(table), table.ld, x.cols);
  });
}

void launch_cross_entropy(void* stream, Mat dlogits, float* loss, Mat logits,
                          const std::int32_t* targets, std::int32_t ignore, float scale) {
  if (logits.rows == 0) return;
  dispatch(logits.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::cross_entropy<<<static_cast<unsigned>(logits.rows), kernels::kRowThreads, 0,
                             as_stream(stream)>>>(ptr<T>(dlogits), dlogits.ld, loss, ptr<T>(logits),
                                                  logits.ld, targets, logits.cols, ignore, scale);
  });
}

namespace {
kernels::AttentionArgs args_of(const AttentionLaunch& a) {
  return {a.batch,
          a.seq,
          a.heads,
          a.kv_heads,
          a.head_dim,
          a.ldq,
          a.ldk,
          a.ldv,
          a.ldo,
          a.causal,
          static_cast<float>(1.0 / std::sqrt(static_cast<double>(a.head_dim))),
          a.mask};
}
dim3 attention_grid(const AttentionLaunch& a, std::int64_t heads) {
  return dim3(
      static_cast<unsigned>((a.seq + kernels::kAttentionWarps - 1) / kernels::kAttentionWarps),
      static_cast<unsigned>(heads), static_cast<unsigned>(a.batch));
}
}  // namespace

void launch_attention_forward(void* stream, const AttentionLaunch& a, void* out, float* lse,
                              const void* q, const void* k, const void* v) {
  const auto args = args_of(a);
  dispatch(a.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::attention_forward<<<attention_grid(a, a.heads), 32 * kernels::kAttentionWarps, 0,
                                 as_stream(stream)>>>(
        static_cast<T*>(out), lse, static_cast<const T*>(q), static_cast<const T*>(k),
        static_cast<const T*>(v), args);
  });
}

void launch_attention_backward(void* stream, const AttentionLaunch& a, void* dq, void* dk, void* dv,
                               float* delta, const void* dout, const void* out, const float* lse,
                               const void* q, const void* k, const void* v) {
  const auto args = args_of(a);
  const unsigned threads = 32 * kernels::kAttentionWarps;
  dispatch(a.bf16, [&](auto t) {
    using T = decltype(t);
    const auto* qt = static_cast<const T*>(q);
    const auto* kt = static_cast<const T*>(k);
    const auto* vt = static_cast<const T*>(v);
    const auto* dot = static_cast<const T*>(dout);
    kernels::attention_delta<<<attention_grid(a, a.heads), threads, 0, as_stream(stream)>>>(
        delta, dot, static_cast<const T*>(out), args);
    kernels::attention_backward_q<<<attention_grid(a, a.heads), threads, 0, as_stream(stream)>>>(
        static_cast<T*>(dq), dot, lse, delta, qt, kt, vt, args);
    kernels::
        attention_backward_kv<<<attention_grid(a, a.kv_heads), threads, 0, as_stream(stream)>>>(
            static_cast<T*>(dk), static_cast<T*>(dv), dot, lse, delta, qt, kt, vt, args);
  });
}

}  // namespace wegeft::cuda::detail

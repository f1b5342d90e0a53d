// Launchers of the transformer's CUDA kernels (kernels/cuda/transformer.cuh, attention.cuh). Every
// matrix of one call has the same dtype (checked by the callers in nn.cpp); launch errors are
// left for cudaGetLastError, which the callers check.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "launch.hpp"
#include "wegeft/kernels/cuda/attention.cuh"
#include "wegeft/kernels/cuda/attention_tc.cuh"
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
                 std::int64_t heads, std::int64_t half, float direction, const std::int32_t* at) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::rope<<<grid_2d(x.rows, heads * half), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(x), x.ld, cos, sin, x.rows, seq, heads, half, direction, at);
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

void launch_argmax_rows(void* stream, std::int32_t* ids, Mat x) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::
        argmax_rows<<<static_cast<unsigned>(x.rows), kernels::kRowThreads, 0, as_stream(stream)>>>(
            ids, ptr<T>(x), x.ld, x.cols);
  });
}

void launch_layernorm_forward(void* stream, Mat out, float* mean, float* rstd, Mat x, Mat w, Mat b,
                              float eps) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::layernorm_forward<<<static_cast<unsigned>(x.rows), kernels::kRowThreads, 0,
                                 as_stream(stream)>>>(ptr<T>(out), out.ld, mean, rstd, ptr<T>(x),
                                                      x.ld, ptr<T>(w), ptr<T>(b), x.cols, eps);
  });
}

void launch_layernorm_backward(void* stream, Mat dx, Mat dout, Mat x, Mat w, const float* mean,
                               const float* rstd) {
  if (x.rows == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::layernorm_backward<<<static_cast<unsigned>(x.rows), kernels::kRowThreads, 0,
                                  as_stream(stream)>>>(
        ptr<T>(dx), dx.ld, ptr<T>(dout), dout.ld, ptr<T>(x), x.ld, ptr<T>(w), mean, rstd, x.cols);
  });
}

void launch_activation_forward(void* stream, Mat out, Mat x, int kind) {
  if (x.rows == 0 || x.cols == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::activation_forward<<<grid_2d(x.rows, x.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(out), out.ld, ptr<T>(x), x.ld, x.rows, x.cols, kind);
  });
}

void launch_activation_backward(void* stream, Mat dx, Mat dout, Mat in, int kind) {
  if (in.rows == 0 || in.cols == 0) return;
  dispatch(in.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::activation_backward<<<grid_2d(in.rows, in.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(dx), dx.ld, ptr<T>(dout), dout.ld, ptr<T>(in), in.ld, in.rows, in.cols, kind);
  });
}

void launch_add_positions(void* stream, Mat x, Mat pos, const void* type, std::int64_t seq,
                          const std::int32_t* at) {
  if (x.rows == 0 || x.cols == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::add_positions<<<grid_2d(x.rows, x.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(x), x.ld, ptr<T>(pos), pos.ld, static_cast<const T*>(type), x.rows, seq, x.cols, at);
  });
}

void launch_copy_rows_at(void* stream, Mat dst, Mat src, const std::int32_t* at) {
  if (src.rows == 0 || src.cols == 0) return;
  dispatch(src.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::copy_rows_at<<<grid_2d(src.rows, src.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(dst), dst.ld, ptr<T>(src), src.ld, src.rows, src.cols, at);
  });
}

void launch_patchify(void* stream, Mat patches, const float* images, std::int64_t channels,
                     std::int64_t height, std::int64_t width, std::int64_t patch) {
  if (patches.rows == 0) return;
  dispatch(patches.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::patchify<<<grid_2d(patches.rows, patches.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(patches), patches.ld, images, patches.rows, channels, height, width, patch);
  });
}

void launch_add_column_sums(void* stream, float* sums, Mat x) {
  if (x.cols == 0) return;
  dispatch(x.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::add_column_sums<<<static_cast<unsigned>((x.cols + kThreads - 1) / kThreads), kThreads,
                               0, as_stream(stream)>>>(sums, ptr<T>(x), x.ld, x.rows, x.cols);
  });
}

void launch_mean_pool_forward(void* stream, Mat out, Mat hidden, const std::uint8_t* mask,
                              std::int64_t seq) {
  if (out.rows == 0 || out.cols == 0) return;
  dispatch(out.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::mean_pool_forward<<<grid_2d(out.rows, out.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(out), out.ld, ptr<T>(hidden), hidden.ld, mask, out.rows, seq, out.cols);
  });
}

void launch_mean_pool_backward(void* stream, Mat dhidden, Mat dout, const std::uint8_t* mask,
                               std::int64_t seq) {
  if (dout.rows == 0 || dout.cols == 0) return;
  dispatch(dhidden.bf16, [&](auto t) {
    using T = decltype(t);
    kernels::mean_pool_backward<<<grid_2d(dout.rows, dout.cols), kThreads, 0, as_stream(stream)>>>(
        ptr<T>(dhidden), dhidden.ld, ptr<T>(dout), dout.ld, mask, dout.rows, seq, dhidden.cols);
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
          a.mask,
          false,
          a.first + a.seq,
          a.first,
          a.first_at};
}
dim3 attention_grid(const AttentionLaunch& a, std::int64_t heads) {
  return dim3(
      static_cast<unsigned>((a.seq + kernels::kAttentionWarps - 1) / kernels::kAttentionWarps),
      static_cast<unsigned>(heads), static_cast<unsigned>(a.batch));
}

/// f(std::integral_constant<int, D>{}) for the call's head_dim D, a multiple of 16 up to 128.
template <class F>
void with_head_dim(std::int64_t d, F&& f) {
  switch (d) {
    case 16:
      return f(std::integral_constant<int, 16>{});
    case 32:
      return f(std::integral_constant<int, 32>{});
    case 48:
      return f(std::integral_constant<int, 48>{});
    case 64:
      return f(std::integral_constant<int, 64>{});
    case 80:
      return f(std::integral_constant<int, 80>{});
    case 96:
      return f(std::integral_constant<int, 96>{});
    case 112:
      return f(std::integral_constant<int, 112>{});
    case 128:
      return f(std::integral_constant<int, 128>{});
    default:
      break;
  }
}

/// The tensor-core kernels take bf16 calls with a head_dim they tile and no cached tokens before
/// the queries, unless
/// WEGEFT_CUDA_ATTENTION=simt asks for the one-warp-per-row kernels (benchmarks compare both).
bool use_tensor_cores(const AttentionLaunch& a) {
  static const bool simt = [] {
    const char* e = std::getenv("WEGEFT_CUDA_ATTENTION");
    return e != nullptr && std::strcmp(e, "simt") == 0;
  }();
  return a.bf16 && !simt && a.first == 0 && a.head_dim % 16 == 0 &&
         a.head_dim <= kernels::kTcMaxHeadDim;
}

/// Whether every pointer in `ptrs` is 16-byte aligned and every row stride in `lds` a multiple
/// of 8 bf16 values, so that the tiles load 16 bytes at a time.
bool aligned16(std::initializer_list<const void*> ptrs, std::initializer_list<std::int64_t> lds) {
  for (const void* p : ptrs)
    if (reinterpret_cast<std::uintptr_t>(p) % 16 != 0) return false;
  for (const std::int64_t ld : lds)
    if (ld % 8 != 0) return false;
  return true;
}

unsigned tc_grid_x(const AttentionLaunch& a) {
  return static_cast<unsigned>((a.seq + kernels::kTcRows - 1) / kernels::kTcRows);
}
}  // namespace

void prepare_kernels() {
  static const bool done = [] {  // dynamic shared memory past 48 KB must be asked for per kernel
    for (const int d : {16, 32, 48, 64, 80, 96, 112, 128})
      with_head_dim(d, [](auto dc) {
        constexpr int D = decltype(dc)::value;
        using L = kernels::tc::Layout<D>;
        cudaFuncSetAttribute(kernels::attention_forward_tc<D>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, L::forward_bytes);
        cudaFuncSetAttribute(kernels::attention_backward_q_tc<D>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, L::backward_q_bytes);
        cudaFuncSetAttribute(kernels::attention_backward_kv_tc<D>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, L::backward_kv_bytes);
      });
    return true;
  }();
  (void)done;
}

namespace {
void forward_tc(cudaStream_t stream, const AttentionLaunch& a, kernels::AttentionArgs args,
                void* out, float* lse, const void* q, const void* k, const void* v) {
  prepare_kernels();
  args.vec = aligned16({q, k, v}, {a.ldq, a.ldk, a.ldv});
  with_head_dim(a.head_dim, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    kernels::attention_forward_tc<D>
        <<<dim3(tc_grid_x(a), static_cast<unsigned>(a.heads), static_cast<unsigned>(a.batch)),
           32 * kernels::kTcWarps, kernels::tc::Layout<D>::forward_bytes, stream>>>(
            static_cast<bf*>(out), lse, static_cast<const bf*>(q), static_cast<const bf*>(k),
            static_cast<const bf*>(v), args);
  });
}

void backward_tc(cudaStream_t stream, const AttentionLaunch& a, kernels::AttentionArgs args,
                 void* dq, void* dk, void* dv, const float* delta, const void* dout,
                 const float* lse, const void* q, const void* k, const void* v) {
  prepare_kernels();
  args.vec = aligned16({q, k, v, dout}, {a.ldq, a.ldk, a.ldv, a.ldo});
  with_head_dim(a.head_dim, [&](auto dc) {
    constexpr int D = decltype(dc)::value;
    using L = kernels::tc::Layout<D>;
    const auto* qt = static_cast<const bf*>(q);
    const auto* kt = static_cast<const bf*>(k);
    const auto* vt = static_cast<const bf*>(v);
    const auto* dot = static_cast<const bf*>(dout);
    const unsigned threads = 32 * kernels::kTcWarps;
    const auto batch = static_cast<unsigned>(a.batch);
    kernels::attention_backward_q_tc<D>
        <<<dim3(tc_grid_x(a), static_cast<unsigned>(a.heads), batch), threads, L::backward_q_bytes,
           stream>>>(static_cast<bf*>(dq), dot, lse, delta, qt, kt, vt, args);
    kernels::attention_backward_kv_tc<D>
        <<<dim3(tc_grid_x(a), static_cast<unsigned>(a.kv_heads), batch), threads,
           L::backward_kv_bytes, stream>>>(static_cast<bf*>(dk), static_cast<bf*>(dv), dot, lse,
                                           delta, qt, kt, vt, args);
  });
}
}  // namespace

void launch_attention_forward(void* stream, const AttentionLaunch& a, void* out, float* lse,
                              const void* q, const void* k, const void* v) {
  const auto args = args_of(a);
  if (use_tensor_cores(a)) return forward_tc(as_stream(stream), a, args, out, lse, q, k, v);
  if (a.first > 0 && a.batch == 1) {  // queries after a key/value cache: a block per row
    return dispatch(a.bf16, [&](auto t) {
      using T = decltype(t);
      const bool split = a.part != nullptr && a.splits > 1;
      const dim3 grid(static_cast<unsigned>(a.seq), static_cast<unsigned>(a.heads),
                      static_cast<unsigned>(split ? a.splits : 1));
      kernels::attention_decode<<<grid, kernels::kDecodeThreads, 0, as_stream(stream)>>>(
          static_cast<T*>(out), lse, static_cast<const T*>(q), static_cast<const T*>(k),
          static_cast<const T*>(v), args, split ? a.part : nullptr, a.chunk);
      if (split)
        kernels::attention_decode_combine<<<dim3(grid.x, grid.y), kernels::kDecodeThreads, 0,
                                            as_stream(stream)>>>(static_cast<T*>(out), lse, a.part,
                                                                 args, static_cast<int>(a.splits));
    });
  }
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
    if (use_tensor_cores(a))
      return backward_tc(as_stream(stream), a, args, dq, dk, dv, delta, dout, lse, q, k, v);
    kernels::attention_backward_q<<<attention_grid(a, a.heads), threads, 0, as_stream(stream)>>>(
        static_cast<T*>(dq), dot, lse, delta, qt, kt, vt, args);
    kernels::
        attention_backward_kv<<<attention_grid(a, a.kv_heads), threads, 0, as_stream(stream)>>>(
            static_cast<T*>(dk), static_cast<T*>(dv), dot, lse, delta, qt, kt, vt, args);
  });
}

}  // namespace wegeft::cuda::detail

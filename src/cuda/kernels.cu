// Launchers of wegeft's CUDA kernels (kernels/cuda/*.cuh). Launch errors are returned to the host
// side through cudaGetLastError, which the callers in src/cuda/*.cpp check.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>

#include "launch.hpp"
#include "wegeft/kernels/cuda/adamw.cuh"
#include "wegeft/kernels/cuda/elementwise.cuh"
#include "wegeft/kernels/cuda/rank_r.cuh"

namespace wegeft::cuda::detail {

namespace {
constexpr int kThreads = 256;
dim3 grid_2d(std::int64_t rows, std::int64_t cols) {
  const auto x = static_cast<unsigned>((cols + kThreads - 1) / kThreads);
  const auto y =
      static_cast<unsigned>(std::min<std::int64_t>(std::max<std::int64_t>(rows, 1), 65535));
  return dim3(x, y);
}
}  // namespace

void launch_scale_copy(void* stream, void* dst, bool bf16_dst, std::int64_t ldd, const void* src,
                       bool bf16_src, std::int64_t lds, std::int64_t rows, std::int64_t cols,
                       float scale) {
  if (rows == 0 || cols == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 g = grid_2d(rows, cols);
  using bf = __nv_bfloat16;
  if (bf16_dst && bf16_src)
    kernels::scale_copy<<<g, kThreads, 0, s>>>(static_cast<bf*>(dst), ldd,
                                               static_cast<const bf*>(src), lds, rows, cols, scale);
  else if (bf16_dst)
    kernels::scale_copy<<<g, kThreads, 0, s>>>(
        static_cast<bf*>(dst), ldd, static_cast<const float*>(src), lds, rows, cols, scale);
  else if (bf16_src)
    kernels::scale_copy<<<g, kThreads, 0, s>>>(static_cast<float*>(dst), ldd,
                                               static_cast<const bf*>(src), lds, rows, cols, scale);
  else
    kernels::scale_copy<<<g, kThreads, 0, s>>>(
        static_cast<float*>(dst), ldd, static_cast<const float*>(src), lds, rows, cols, scale);
}

void launch_fill(void* stream, void* dst, bool bf16_dst, std::int64_t ldd, std::int64_t rows,
                 std::int64_t cols, float value) {
  if (rows == 0 || cols == 0) return;
  auto s = static_cast<cudaStream_t>(stream);
  const dim3 g = grid_2d(rows, cols);
  if (bf16_dst)
    kernels::fill<<<g, kThreads, 0, s>>>(static_cast<__nv_bfloat16*>(dst), ldd, rows, cols, value);
  else
    kernels::fill<<<g, kThreads, 0, s>>>(static_cast<float*>(dst), ldd, rows, cols, value);
}

void launch_adamw(void* stream, float* p, float* m, float* v, const float* g, std::int64_t n,
                  const float (&c)[8]) {
  if (n == 0) return;
  const auto aligned = [](const void* q) { return reinterpret_cast<std::uintptr_t>(q) % 16 == 0; };
  const std::int64_t n4 = aligned(p) && aligned(m) && aligned(v) && aligned(g) ? n / 4 : 0;
  const kernels::AdamWCoefficients k{c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]};
  const std::int64_t work = std::max<std::int64_t>(n4, n - 4 * n4);
  const auto blocks =
      static_cast<unsigned>(std::min<std::int64_t>((work + kThreads - 1) / kThreads, 132 * 16));
  kernels::adamw<<<std::max(blocks, 1u), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      p, m, v, g, n, n4, k);
}

void launch_sum_squares(void* stream, double* out, const float* g, std::int64_t n) {
  auto s = static_cast<cudaStream_t>(stream);
  cudaMemsetAsync(out, 0, sizeof(double), s);
  if (n == 0) return;
  const auto blocks =
      static_cast<unsigned>(std::min<std::int64_t>((n + kThreads - 1) / kThreads, 132 * 8));
  kernels::sum_squares<<<blocks, kThreads, 0, s>>>(out, g, n);
}

namespace {
template <int R>
void rank_r_with(cudaStream_t s, void* out, std::int64_t ld_out, const void* x, std::int64_t ld_x,
                 const void* w, std::int64_t w_k, std::int64_t w_j, std::int64_t n, std::int64_t k,
                 bool contig) {
  using bf = __nv_bfloat16;
  const auto blocks = static_cast<unsigned>((n + 15) / 16);
  const auto o = static_cast<bf*>(out);
  const auto xp = static_cast<const bf*>(x), wp = static_cast<const bf*>(w);
  constexpr unsigned threads = 32 * kernels::kRankRWarps;
  if (contig)
    kernels::rank_r_product<R, true>
        <<<blocks, threads, 0, s>>>(o, ld_out, xp, ld_x, wp, w_k, w_j, n, k);
  else
    kernels::rank_r_product<R, false>
        <<<blocks, threads, 0, s>>>(o, ld_out, xp, ld_x, wp, w_k, w_j, n, k);
}
}  // namespace

bool launch_rank_r_product(void* stream, void* out, std::int64_t ld_out, const void* x,
                           std::int64_t ld_x, const void* w, std::int64_t w_k, std::int64_t w_j,
                           bool contig, std::int64_t n, std::int64_t k, std::int64_t r) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (r) {
    case 8:
      rank_r_with<8>(s, out, ld_out, x, ld_x, w, w_k, w_j, n, k, contig);
      return true;
    case 16:
      rank_r_with<16>(s, out, ld_out, x, ld_x, w, w_k, w_j, n, k, contig);
      return true;
    case 24:
      rank_r_with<24>(s, out, ld_out, x, ld_x, w, w_k, w_j, n, k, contig);
      return true;
    case 32:
      rank_r_with<32>(s, out, ld_out, x, ld_x, w, w_k, w_j, n, k, contig);
      return true;
    default:
      return false;
  }
}

}  // namespace wegeft::cuda::detail

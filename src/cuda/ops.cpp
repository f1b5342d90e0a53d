// wegeft::cuda's element-wise ops, the rank-r products and the AdamW update: checks, then the
// launchers of kernels.cu.
#include "wegeft/cuda/ops.hpp"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "check.hpp"
#include "context_impl.hpp"
#include "launch.hpp"

namespace wegeft::cuda {

using detail::check_view;

void scale_copy(Context& ctx, const TensorView& dst, const TensorView& src, float scale) {
  check_view(dst, "scale_copy", "destination");
  check_view(src, "scale_copy", "source");
  WEGEFT_CHECK(dst.rows == src.rows && dst.cols == src.cols,
               "scale_copy of " << src.describe() << " into " << dst.describe());
  detail::launch_scale_copy(ctx.stream(), dst.data, dst.dtype == DType::BF16, dst.ld, src.data,
                            src.dtype == DType::BF16, src.ld, dst.rows, dst.cols, scale);
  detail::check_launch("scale_copy");
}

namespace {
bool rank_r_by_gemm() {
  static const bool gemm = [] {
    const char* e = std::getenv("WEGEFT_CUDA_RANK_R");
    return e != nullptr && std::strcmp(e, "gemm") == 0;
  }();
  return gemm;
}

bool aligned(const void* p, std::uintptr_t bytes) {
  return reinterpret_cast<std::uintptr_t>(p) % bytes == 0;
}
}  // namespace

void rank_r_product(Context& ctx, const TensorView& out, const TensorView& x, const TensorView& w,
                    Op op_w) {
  check_view(out, "rank_r_product", "output");
  check_view(x, "rank_r_product", "input x");
  check_view(w, "rank_r_product", "factor w");
  const Index k = op_w == Op::N ? w.rows : w.cols, r = op_w == Op::N ? w.cols : w.rows;
  WEGEFT_CHECK(x.cols == k && out.rows == x.rows && out.cols == r,
               "rank_r_product shapes disagree: x " << x.describe() << " times "
                                                    << (op_w == Op::N ? "w " : "w^T of w ")
                                                    << w.describe() << " into " << out.describe());
  const bool bf16 = out.dtype == DType::BF16 && x.dtype == DType::BF16 && w.dtype == DType::BF16;
  if (x.rows == 0) return;
  const bool fits = bf16 && x.rows <= kRankRKernelRows && k % 8 == 0 && aligned(x.data, 16) &&
                    x.ld % 8 == 0 && aligned(out.data, 4) && out.ld % 2 == 0;
  // W(i, j) = w[i w_k + j w_j]: w^T's rows run along k, w's along r
  const std::int64_t w_k = op_w == Op::T ? 1 : w.ld, w_j = op_w == Op::T ? w.ld : 1;
  const bool contig = op_w == Op::T && aligned(w.data, 16) && w.ld % 8 == 0;
  if (fits && !rank_r_by_gemm() &&
      detail::launch_rank_r_product(ctx.stream(), out.data, out.ld, x.data, x.ld, w.data, w_k, w_j,
                                    contig, x.rows, k, r)) {
    detail::check_launch("rank_r_product");
    return;
  }
  gemm(ctx, out, x, Op::N, w, op_w, 1.0f, 0.0f);  // every other r, or shape, or on request
}

void fill(Context& ctx, const TensorView& dst, float value) {
  check_view(dst, "fill", "destination");
  detail::launch_fill(ctx.stream(), dst.data, dst.dtype == DType::BF16, dst.ld, dst.rows, dst.cols,
                      value);
  detail::check_launch("fill");
}

void adamw_update(Context& ctx, float* p, float* m, float* v, const float* g, std::int64_t n,
                  const AdamWStep& c) {
  WEGEFT_CHECK(n >= 0 && (n == 0 || (p && m && v && g)),
               "adamw_update of " << n << " values got a null pointer");
  const float k[8] = {c.b1,      c.one_minus_b1, c.b2,    c.one_minus_b2,
                      c.sqrt_c2, c.eps,          c.lr_c1, c.decay};
  detail::launch_adamw(ctx.stream(), p, m, v, g, n, k);
  detail::check_launch("adamw");
}

}  // namespace wegeft::cuda

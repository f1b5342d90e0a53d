// wegeft::cuda's element-wise ops and the AdamW update: checks, then the launchers of kernels.cu.
#include "wegeft/cuda/ops.hpp"
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

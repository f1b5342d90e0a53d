// The CPU SIMD kernels against their scalar references (kernels/cpu/reference.hpp), on odd sizes
// that exercise every tile edge, with ranks on both sides of each threshold (padding, rank blocks,
// the Eigen fallback). This file is compiled twice: in wegeft_tests with the default flags, and in
// wegeft_kernel_tests with -march=native, so the vector path of the building machine is tested too.
#include "support.hpp"

#include <wegeft/kernels/cpu/rank_r.hpp>
#include <wegeft/kernels/cpu/reference.hpp>
#include <wegeft/nn/norms.hpp>

using namespace wegeft;

namespace {

/// A copy of `m` inside a wider matrix (row stride cols + pad), to test strided views.
template <class T>
Matrix<T> widened(const Matrix<T>& m, Index pad, Rng& rng) {
  Matrix<T> wide = wt::random_matrix<T>(m.rows(), m.cols() + pad, rng);
  wide.leftCols(m.cols()) = m;
  return wide;
}

}  // namespace

TEMPLATE_TEST_CASE("fused rank-r pass equals its scalar reference on odd sizes", "[kernels][simd]", float, double) {
  using T = TestType;
  const Index r = GENERATE(1, 3, 8, 9, 16, 17, 24, 40, 64, 65);
  const Index n = GENERATE(1, 6, 13);
  const Index d = GENERATE(5, 33, 70);
  INFO("n " << n << " d " << d << " r " << r);
  Rng rng(static_cast<std::uint64_t>(r * 1000 + n * 10 + d));
  const Matrix<T> y = wt::random_matrix<T>(n, d, rng), m = wt::random_matrix<T>(d, r, rng), u = wt::random_matrix<T>(n, r, rng);
  const Matrix<T> g0 = wt::random_matrix<T>(d, r, rng);  // G accumulates onto this
  Matrix<T> g(n, r), G = g0, g_ref(n, r), G_ref = g0;
  rank_r_pass(g.data(), G.data(), y.data(), m.data(), u.data(), n, d, r, d);
  reference::rank_r_pass(g_ref.data(), G_ref.data(), y.data(), m.data(), u.data(), n, d, r);
  CHECK(wt::rel_diff(g, g_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(G, G_ref) < wt::Tol<T>::close);
  // Y as a view into a wider matrix (row stride d + 3)
  const Matrix<T> wide = widened(y, 3, rng);
  Matrix<T> g_strided(n, r), G_strided = g0;
  rank_r_pass(g_strided.data(), G_strided.data(), wide.data(), m.data(), u.data(), n, d, r, d + 3);
  CHECK(wt::rel_diff(g_strided, g_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(G_strided, G_ref) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("rank-r projection u = X A^T equals its scalar reference on odd sizes", "[kernels][simd]", float, double) {
  using T = TestType;
  const Index r = GENERATE(1, 3, 4, 5, 8, 9, 12, 13, 16, 17, 40);
  const Index n = GENERATE(1, 3, 7, 18);
  const Index d = GENERATE(1, 5, 33, 70);
  INFO("n " << n << " d " << d << " r " << r);
  Rng rng(static_cast<std::uint64_t>(r * 1000 + n * 10 + d + 7));
  const Matrix<T> x = wt::random_matrix<T>(n, d, rng), a = wt::random_matrix<T>(r, d, rng);
  Matrix<T> u(n, r), u_ref(n, r);
  rank_r_project(u.data(), x.data(), d, a.data(), n, d, r);
  reference::rank_r_project(u_ref.data(), x.data(), a.data(), n, d, r);
  CHECK(wt::rel_diff(u, u_ref) < wt::Tol<T>::close);
  const Matrix<T> wide = widened(x, 5, rng);
  Matrix<T> u_strided(n, r);
  rank_r_project(u_strided.data(), wide.data(), d + 5, a.data(), n, d, r);
  CHECK(wt::rel_diff(u_strided, u_ref) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("rank-r reduction G += g^T X equals its scalar reference on odd sizes", "[kernels][simd]", float, double) {
  using T = TestType;
  const Index r = GENERATE(1, 3, 4, 5, 8, 9, 12, 13, 16, 17, 40);
  const Index n = GENERATE(1, 3, 7, 18);
  const Index d = GENERATE(1, 5, 33, 70);
  INFO("n " << n << " d " << d << " r " << r);
  Rng rng(static_cast<std::uint64_t>(r * 1000 + n * 10 + d + 11));
  const Matrix<T> x = wt::random_matrix<T>(n, d, rng), g = wt::random_matrix<T>(n, r, rng);
  const Matrix<T> G0 = wt::random_matrix<T>(r, d, rng);  // accumulates onto this
  Matrix<T> G = G0, G_ref = G0;
  rank_r_reduce(G.data(), g.data(), x.data(), d, n, d, r);
  reference::rank_r_reduce(G_ref.data(), g.data(), x.data(), n, d, r);
  CHECK(wt::rel_diff(G, G_ref) < wt::Tol<T>::close);
  const Matrix<T> wide = widened(x, 2, rng);
  Matrix<T> G_strided = G0;
  rank_r_reduce(G_strided.data(), g.data(), wide.data(), d + 2, n, d, r);
  CHECK(wt::rel_diff(G_strided, G_ref) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("rank-r expansion Y = X + b + U Bt equals its scalar reference on odd sizes", "[kernels][simd]", float, double) {
  using T = TestType;
  const Index r = GENERATE(1, 3, 8, 9, 16, 17, 40);
  const Index n = GENERATE(1, 5, 9);
  const Index d = GENERATE(1, 7, 33, 70);
  INFO("n " << n << " d " << d << " r " << r);
  Rng rng(static_cast<std::uint64_t>(r * 1000 + n * 10 + d + 13));
  const Matrix<T> x = wt::random_matrix<T>(n, d, rng), u = wt::random_matrix<T>(n, r, rng), bt = wt::random_matrix<T>(r, d, rng);
  const Vector<T> b = wt::random_matrix<T>(d, 1, rng);
  const T* none = nullptr;
  for (const bool with_x : {false, true})
    for (const bool with_b : {false, true}) {
      INFO("with X " << with_x << ", with b " << with_b);
      const T* xp = with_x ? x.data() : none;
      const T* bp = with_b ? b.data() : none;
      Matrix<T> y_ref(n, d);
      reference::rank_r_expand(y_ref.data(), xp, bp, u.data(), bt.data(), n, d, r);
      // contiguous output, prefilled with garbage that must be overwritten
      Matrix<T> y = wt::random_matrix<T>(n, d, rng);
      rank_r_expand(y.data(), d, xp, d, bp, u.data(), bt.data(), n, d, r);
      CHECK(wt::rel_diff(y, y_ref) < wt::Tol<T>::close);
      // output and X as views into wider matrices; the padding columns stay untouched
      const Matrix<T> x_wide = widened(x, 3, rng);
      Matrix<T> y_wide = wt::random_matrix<T>(n, d + 4, rng);
      const Matrix<T> pad = y_wide.rightCols(4);
      rank_r_expand(y_wide.data(), d + 4, with_x ? x_wide.data() : none, d + 3, bp, u.data(), bt.data(), n, d, r);
      CHECK(wt::rel_diff(Matrix<T>(y_wide.leftCols(d)), y_ref) < wt::Tol<T>::close);
      CHECK(y_wide.rightCols(4) == pad);
    }
  // in place: Y = Y + U Bt
  Matrix<T> y = x, y_ref(n, d);
  reference::rank_r_expand(y_ref.data(), x.data(), none, u.data(), bt.data(), n, d, r);
  rank_r_expand(y.data(), d, y.data(), d, none, u.data(), bt.data(), n, d, r);
  CHECK(wt::rel_diff(y, y_ref) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("vectorised LayerNorm and RMSNorm equal their double-accumulating references", "[kernels][simd]", float, double) {
  using T = TestType;
  const Index c = GENERATE(1, 7, 33, 385);
  const Index n = GENERATE(1, 5);
  INFO("n " << n << " c " << c);
  Rng rng(static_cast<std::uint64_t>(c * 10 + n));
  // rows with a large common offset, where a one-pass variance would lose its digits
  Matrix<T> x = wt::random_matrix<T>(n, c, rng);
  x.array() += T(3);
  const Matrix<T> w = wt::random_matrix<T>(1, c, rng), b = wt::random_matrix<T>(1, c, rng), dout = wt::random_matrix<T>(n, c, rng);
  const Matrix<T> dw0 = wt::random_matrix<T>(1, c, rng), db0 = wt::random_matrix<T>(1, c, rng);
  for (const bool with_bias : {true, false}) {
    INFO("bias " << with_bias);
    const T* bp = with_bias ? b.data() : nullptr;
    Matrix<T> out(n, c), mean(n, 1), rstd(n, 1), out_ref(n, c), mean_ref(n, 1), rstd_ref(n, 1);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bp, n, c, 1e-5);
    reference::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), x.data(), w.data(), bp, n, c, 1e-5);
    CHECK(wt::rel_diff(out, out_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(mean, mean_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(rstd, rstd_ref) < wt::Tol<T>::close);
    Matrix<T> dx(n, c), dw = dw0, db = db0, dx_ref(n, c), dw_ref = dw0, db_ref = db0;
    layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(), mean.data(), rstd.data(), n, c);
    reference::layernorm_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dout.data(), x.data(), w.data(), mean_ref.data(),
                                  rstd_ref.data(), n, c);
    CHECK(wt::rel_diff(dx, dx_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(dw, dw_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(db, db_ref) < wt::Tol<T>::close);
    // frozen parameters: only dx
    Matrix<T> dx_only(n, c);
    layernorm_backward(dx_only.data(), static_cast<T*>(nullptr), static_cast<T*>(nullptr), dout.data(), x.data(), w.data(),
                       mean.data(), rstd.data(), n, c);
    CHECK(wt::rel_diff(dx_only, dx_ref) < wt::Tol<T>::close);
  }
  Matrix<T> out(n, c), rstd(n, 1), out_ref(n, c), rstd_ref(n, 1);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), n, c, 1e-6);
  reference::rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), w.data(), n, c, 1e-6);
  CHECK(wt::rel_diff(out, out_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(rstd, rstd_ref) < wt::Tol<T>::close);
  Matrix<T> dx(n, c), dw = dw0, dx_ref(n, c), dw_ref = dw0;
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), n, c);
  reference::rmsnorm_backward(dx_ref.data(), dw_ref.data(), dout.data(), x.data(), w.data(), rstd_ref.data(), n, c);
  CHECK(wt::rel_diff(dx, dx_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(dw, dw_ref) < wt::Tol<T>::close);
}

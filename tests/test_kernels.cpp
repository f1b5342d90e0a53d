// The CPU SIMD kernels against their scalar references (kernels/cpu/reference.hpp), on odd sizes
// that exercise every tile edge, with ranks on both sides of each threshold (padding, rank blocks,
// the Eigen fallback). This file is compiled twice: in wegeft_tests with the default flags, and in
// wegeft_kernel_tests with -march=native, so the vector path of the building machine is tested too.
#include "support.hpp"

#include <wegeft/kernels/cpu/attention.hpp>
#include <wegeft/kernels/cpu/rank_r.hpp>
#include <wegeft/kernels/cpu/reference.hpp>
#include <wegeft/nn/loss.hpp>
#include <wegeft/nn/norms.hpp>
#include <wegeft/optim/adamw.hpp>

#include <cmath>
#include <type_traits>
#include <vector>

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

TEMPLATE_TEST_CASE("fused rank-r pass equals its scalar reference on odd sizes", "[kernels][simd]",
                   float, double) {
  using T = TestType;
  const Index r = GENERATE(1, 3, 8, 9, 16, 17, 24, 40, 64, 65);
  const Index n = GENERATE(1, 6, 13, 700);  // 700: more than one block of rows at small ranks
  const Index d = GENERATE(5, 33, 70);
  INFO("n " << n << " d " << d << " r " << r);
  Rng rng(static_cast<std::uint64_t>(r * 1000 + n * 10 + d));
  const Matrix<T> y = wt::random_matrix<T>(n, d, rng), m = wt::random_matrix<T>(d, r, rng),
                  u = wt::random_matrix<T>(n, r, rng);
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

TEMPLATE_TEST_CASE("rank-r projection u = X A^T equals its scalar reference on odd sizes",
                   "[kernels][simd]", float, double) {
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

TEMPLATE_TEST_CASE("rank-r reduction G += g^T X equals its scalar reference on odd sizes",
                   "[kernels][simd]", float, double) {
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

TEMPLATE_TEST_CASE("rank-r expansion Y = X + b + U Bt equals its scalar reference on odd sizes",
                   "[kernels][simd]", float, double) {
  using T = TestType;
  const Index r = GENERATE(1, 3, 8, 9, 16, 17, 40);
  const Index n = GENERATE(1, 5, 9);
  const Index d =
      GENERATE(1, 7, 33, 70, 150);  // 150: whole 4-register tiles, single registers, scalar edge
  INFO("n " << n << " d " << d << " r " << r);
  Rng rng(static_cast<std::uint64_t>(r * 1000 + n * 10 + d + 13));
  const Matrix<T> x = wt::random_matrix<T>(n, d, rng), u = wt::random_matrix<T>(n, r, rng),
                  bt = wt::random_matrix<T>(r, d, rng);
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
      rank_r_expand(y_wide.data(), d + 4, with_x ? x_wide.data() : none, d + 3, bp, u.data(),
                    bt.data(), n, d, r);
      CHECK(wt::rel_diff(Matrix<T>(y_wide.leftCols(d)), y_ref) < wt::Tol<T>::close);
      CHECK(y_wide.rightCols(4) == pad);
    }
  // in place: Y = Y + U Bt
  Matrix<T> y = x, y_ref(n, d);
  reference::rank_r_expand(y_ref.data(), x.data(), none, u.data(), bt.data(), n, d, r);
  rank_r_expand(y.data(), d, y.data(), d, none, u.data(), bt.data(), n, d, r);
  CHECK(wt::rel_diff(y, y_ref) < wt::Tol<T>::close);
}

namespace {

/// The fused adapter forward (rank_r_project_expand) and backward (rank_r_backward) against the
/// scalar references of the kernels they combine, with X, Y and Z as views into wider matrices,
/// running their own rows and driven by a caller's blocks of rows.
template <class T>
void check_fused_adapter_kernels(Index n, Index d_in, Index d_out, Index r, std::uint64_t seed) {
  INFO("n " << n << " d_in " << d_in << " d_out " << d_out << " r " << r);
  Rng rng(seed);
  const Matrix<T> x = wt::random_matrix<T>(n, d_in, rng), dy = wt::random_matrix<T>(n, d_out, rng);
  const Matrix<T> a = wt::random_matrix<T>(r, d_in, rng), bt = wt::random_matrix<T>(r, d_out, rng);
  const Matrix<T> m = wt::random_matrix<T>(d_out, r, rng), su = wt::random_matrix<T>(n, r, rng);
  const Vector<T> b = wt::random_matrix<T>(d_out, 1, rng);
  const Matrix<T> G0 = wt::random_matrix<T>(d_out, r, rng), H0 = wt::random_matrix<T>(r, d_in, rng);
  const Matrix<T> x_wide = widened(x, 3, rng), dy_wide = widened(dy, 5, rng);

  Matrix<T> u_ref(n, r), y_ref(n, d_out);
  reference::rank_r_project(u_ref.data(), x.data(), a.data(), n, d_in, r);
  reference::rank_r_expand(y_ref.data(), static_cast<const T*>(nullptr), b.data(), u_ref.data(),
                           bt.data(), n, d_out, r);
  Matrix<T> u(n, r), y_wide = wt::random_matrix<T>(n, d_out + 2, rng);
  const Matrix<T> y_pad = y_wide.rightCols(2);
  rank_r_project_expand(u.data(), x_wide.data(), d_in + 3, a.data(), d_in, y_wide.data(), d_out + 2,
                        b.data(), bt.data(), d_out, n, r);
  CHECK(wt::rel_diff(u, u_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(Matrix<T>(y_wide.leftCols(d_out)), y_ref) < wt::Tol<T>::close);
  CHECK(y_wide.rightCols(2) == y_pad);

  Matrix<T> g_ref(n, r), G_ref = G0, H_ref = H0, z_ref(n, d_in);
  reference::rank_r_pass(g_ref.data(), G_ref.data(), dy.data(), m.data(), su.data(), n, d_out, r);
  reference::rank_r_reduce(H_ref.data(), g_ref.data(), x.data(), n, d_in, r);
  reference::rank_r_expand(z_ref.data(), static_cast<const T*>(nullptr),
                           static_cast<const T*>(nullptr), g_ref.data(), a.data(), n, d_in, r);
  Matrix<T> g(n, r), G = G0, H = H0, z_wide = wt::random_matrix<T>(n, d_in + 4, rng);
  const Matrix<T> z_pad = z_wide.rightCols(4);
  rank_r_backward(g.data(), G.data(), H.data(), z_wide.data(), d_in + 4, dy_wide.data(), d_out + 5,
                  m.data(), su.data(), x_wide.data(), d_in + 3, a.data(), n, d_out, d_in, r);
  CHECK(wt::rel_diff(g, g_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(G, G_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(H, H_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(Matrix<T>(z_wide.leftCols(d_in)), z_ref) < wt::Tol<T>::close);
  CHECK(z_wide.rightCols(4) == z_pad);
  // without the input gradient
  Matrix<T> g2(n, r), G2 = G0, H2 = H0;
  rank_r_backward(g2.data(), G2.data(), H2.data(), static_cast<T*>(nullptr), 0, dy.data(), d_out,
                  m.data(), su.data(), x.data(), d_in, a.data(), n, d_out, d_in, r);
  CHECK(wt::rel_diff(G2, G_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(H2, H_ref) < wt::Tol<T>::close);

  // Driven by a caller's own blocks of rows (as a bf16 GEMM runs them): blocks of 37 rows dealt
  // to three parts in turn; each block's output rows are final once its call returns (a GEMM
  // accumulates onto them next).
  constexpr int parts = 3;
  constexpr Index chunk = 37;
  Index calls = 0, covered = 0;
  const auto drive = [&](const Matrix<T>& out, const Matrix<T>& want) {
    return [&, out_ptr = &out, want_ptr = &want](auto&& rows) {
      for (Index i0 = 0, blk = 0; i0 < n; i0 += chunk, ++blk) {
        const Index i1 = std::min(n, i0 + chunk);
        rows(static_cast<int>(blk % parts), i0, i1);
        CHECK(wt::rel_diff(Matrix<T>(out_ptr->block(i0, 0, i1 - i0, want_ptr->cols())),
                           Matrix<T>(want_ptr->middleRows(i0, i1 - i0))) < wt::Tol<T>::close);
        ++calls;
        covered += i1 - i0;
      }
    };
  };
  Matrix<T> u3(n, r), y3 = wt::random_matrix<T>(n, d_out + 2, rng);
  const Matrix<T> y3_before = y3;
  rank_r_project_expand(u3.data(), x_wide.data(), d_in + 3, a.data(), d_in, y3.data(), d_out + 2,
                        b.data(), bt.data(), d_out, n, r, parts, drive(y3, y_ref));
  CHECK(calls == (n + chunk - 1) / chunk);
  CHECK(covered == n);
  CHECK(wt::rel_diff(u3, u_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(Matrix<T>(y3.leftCols(d_out)), y_ref) < wt::Tol<T>::close);
  CHECK(y3.rightCols(2) == y3_before.rightCols(2));
  Matrix<T> g3(n, r), G3 = G0, H3 = H0, z3 = wt::random_matrix<T>(n, d_in + 4, rng);
  const Matrix<T> z3_before = z3;
  calls = covered = 0;
  rank_r_backward(g3.data(), G3.data(), H3.data(), z3.data(), d_in + 4, dy_wide.data(), d_out + 5,
                  m.data(), su.data(), x_wide.data(), d_in + 3, a.data(), n, d_out, d_in, r, parts,
                  drive(z3, z_ref));
  CHECK(calls == (n + chunk - 1) / chunk);
  CHECK(covered == n);
  CHECK(wt::rel_diff(g3, g_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(G3, G_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(H3, H_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(Matrix<T>(z3.leftCols(d_in)), z_ref) < wt::Tol<T>::close);
  CHECK(z3.rightCols(4) == z3_before.rightCols(4));
}

}  // namespace

TEMPLATE_TEST_CASE("fused adapter forward and backward kernels equal their scalar references",
                   "[kernels][simd]", float, double) {
  const Index r = GENERATE(1, 3, 4, 5, 8, 9, 16, 17);
  const Index n = GENERATE(1, 7, 700);  // 700: several blocks of rows
  const auto [d_in, d_out] =
      GENERATE(std::pair<Index, Index>{5, 33}, std::pair<Index, Index>{70, 13},
               std::pair<Index, Index>{150, 70});
  check_fused_adapter_kernels<TestType>(n, d_in, d_out, r,
                                        static_cast<std::uint64_t>(r * 7919 + n * 31 + d_in));
}

TEMPLATE_TEST_CASE("vectorised LayerNorm and RMSNorm equal their double-accumulating references",
                   "[kernels][simd]", float, double) {
  using T = TestType;
  const Index c = GENERATE(1, 7, 33, 385);
  const Index n = GENERATE(1, 5);
  INFO("n " << n << " c " << c);
  Rng rng(static_cast<std::uint64_t>(c * 10 + n));
  // rows with a large common offset, where a one-pass variance would lose its digits
  Matrix<T> x = wt::random_matrix<T>(n, c, rng);
  x.array() += T(3);
  const Matrix<T> w = wt::random_matrix<T>(1, c, rng), b = wt::random_matrix<T>(1, c, rng),
                  dout = wt::random_matrix<T>(n, c, rng);
  const Matrix<T> dw0 = wt::random_matrix<T>(1, c, rng), db0 = wt::random_matrix<T>(1, c, rng);
  for (const bool with_bias : {true, false}) {
    INFO("bias " << with_bias);
    const T* bp = with_bias ? b.data() : nullptr;
    Matrix<T> out(n, c), mean(n, 1), rstd(n, 1), out_ref(n, c), mean_ref(n, 1), rstd_ref(n, 1);
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), bp, n, c, 1e-5);
    reference::layernorm_forward(out_ref.data(), mean_ref.data(), rstd_ref.data(), x.data(),
                                 w.data(), bp, n, c, 1e-5);
    CHECK(wt::rel_diff(out, out_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(mean, mean_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(rstd, rstd_ref) < wt::Tol<T>::close);
    Matrix<T> dx(n, c), dw = dw0, db = db0, dx_ref(n, c), dw_ref = dw0, db_ref = db0;
    layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                       mean.data(), rstd.data(), n, c);
    reference::layernorm_backward(dx_ref.data(), dw_ref.data(), db_ref.data(), dout.data(),
                                  x.data(), w.data(), mean_ref.data(), rstd_ref.data(), n, c);
    CHECK(wt::rel_diff(dx, dx_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(dw, dw_ref) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(db, db_ref) < wt::Tol<T>::close);
    // frozen parameters: only dx
    Matrix<T> dx_only(n, c);
    layernorm_backward(dx_only.data(), static_cast<T*>(nullptr), static_cast<T*>(nullptr),
                       dout.data(), x.data(), w.data(), mean.data(), rstd.data(), n, c);
    CHECK(wt::rel_diff(dx_only, dx_ref) < wt::Tol<T>::close);
  }
  Matrix<T> out(n, c), rstd(n, 1), out_ref(n, c), rstd_ref(n, 1);
  rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), n, c, 1e-6);
  reference::rmsnorm_forward(out_ref.data(), rstd_ref.data(), x.data(), w.data(), n, c, 1e-6);
  CHECK(wt::rel_diff(out, out_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(rstd, rstd_ref) < wt::Tol<T>::close);
  Matrix<T> dx(n, c), dw = dw0, dx_ref(n, c), dw_ref = dw0;
  rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), n, c);
  reference::rmsnorm_backward(dx_ref.data(), dw_ref.data(), dout.data(), x.data(), w.data(),
                              rstd_ref.data(), n, c);
  CHECK(wt::rel_diff(dx, dx_ref) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(dw, dw_ref) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("vectorised cross-entropy equals its double reference on odd vocabularies",
                   "[kernels][simd]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 2e-6 : 1e-12;
  const Index vocab = GENERATE(1, 2, 7, 33, 1023, 1025, 3001);
  const Index n = GENERATE(1, 5);
  INFO("n " << n << " vocab " << vocab);
  Rng rng(static_cast<std::uint64_t>(vocab * 10 + n + 17));
  // wide logits with a large common offset: exp(x) without the row maximum would overflow
  Matrix<T> logits = T(8) * wt::random_matrix<T>(n, vocab, rng);
  logits.array() += T(90);
  std::vector<std::int32_t> targets(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i)
    targets[std::size_t(i)] = static_cast<std::int32_t>((i * 7919 + 3) % vocab);
  if (n > 1) targets[1] = kIgnoreIndex;
  const double dloss = 0.75;

  Matrix<T> losses_ref(n, 1), dlogits_ref(n, vocab);
  Index counted_ref = -1;
  const double loss_ref = reference::cross_entropy_forward(
      losses_ref.data(), logits.data(), targets.data(), n, vocab, kIgnoreIndex, &counted_ref);
  reference::cross_entropy_backward(dlogits_ref.data(), logits.data(), targets.data(), n, vocab,
                                    counted_ref, dloss, kIgnoreIndex);
  REQUIRE(counted_ref == (n > 1 ? n - 1 : n));

  Matrix<T> losses(n, 1),
      dlogits = wt::random_matrix<T>(n, vocab, rng);  // garbage to be overwritten
  Index counted = -1;
  const double loss = cross_entropy_forward(losses.data(), logits.data(), targets.data(), n, vocab,
                                            kIgnoreIndex, &counted);
  CHECK(counted == counted_ref);
  CHECK(std::abs(loss - loss_ref) <= tol * std::max(1.0, std::abs(loss_ref)));
  CHECK(wt::rel_diff(losses, losses_ref) < tol);
  cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), n, vocab, counted, dloss);
  CHECK(wt::rel_diff(dlogits, dlogits_ref) < tol);

  // forward and backward in one call, into a fresh buffer and in place over the logits
  Matrix<T> fused = wt::random_matrix<T>(n, vocab, rng), fused_losses(n, 1);
  Index fused_counted = -1;
  const double fused_loss =
      cross_entropy_forward_backward(fused.data(), fused_losses.data(), logits.data(),
                                     targets.data(), n, vocab, dloss, kIgnoreIndex, &fused_counted);
  CHECK(fused_counted == counted_ref);
  CHECK(std::abs(fused_loss - loss_ref) <= tol * std::max(1.0, std::abs(loss_ref)));
  CHECK(wt::rel_diff(fused_losses, losses_ref) < tol);
  CHECK(wt::rel_diff(fused, dlogits_ref) < tol);
  Matrix<T> in_place = logits;
  const double in_place_loss = cross_entropy_forward_backward(
      in_place.data(), static_cast<T*>(nullptr), in_place.data(), targets.data(), n, vocab, dloss);
  CHECK(std::abs(in_place_loss - loss_ref) <= tol * std::max(1.0, std::abs(loss_ref)));
  CHECK(wt::rel_diff(in_place, dlogits_ref) < tol);

  // a micro-batch's gradient scaled by the whole batch's count
  Matrix<T> micro(n, vocab), micro_ref(n, vocab);
  cross_entropy_backward(micro.data(), logits.data(), targets.data(), n, vocab, 10, 1.0);
  reference::cross_entropy_backward(micro_ref.data(), logits.data(), targets.data(), n, vocab, 10,
                                    1.0, kIgnoreIndex);
  CHECK(wt::rel_diff(micro, micro_ref) < tol);
}

TEMPLATE_TEST_CASE("vectorised AdamW update equals its double reference over several steps",
                   "[kernels][simd]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  const Index n = GENERATE(1, 3, 17, 1000, 4099);
  const double weight_decay = GENERATE(0.0, 0.1);
  INFO("n " << n << " weight decay " << weight_decay);
  Rng rng(static_cast<std::uint64_t>(n + 5));
  const AdamWConfig config{
      .lr = 1e-2, .beta1 = 0.9, .beta2 = 0.99, .eps = 1e-8, .weight_decay = weight_decay};
  AdamW<T> opt(config);
  const Matrix<T> p0 = wt::random_matrix<T>(n, 1, rng);
  Matrix<T> p = p0, p_ref = p0, m_ref = Matrix<T>::Zero(n, 1), v_ref = Matrix<T>::Zero(n, 1);
  for (std::int64_t t = 1; t <= 6; ++t) {
    Matrix<T> g = wt::random_matrix<T>(n, 1, rng);
    if (t == 3) g *= T(1e-4);  // small gradients: sqrt(v) near eps
    opt.step(std::span<T>(p.data(), std::size_t(n)), std::span<const T>(g.data(), std::size_t(n)));
    reference::adamw_step(p_ref.data(), m_ref.data(), v_ref.data(), g.data(), n, config.lr,
                          config.beta1, config.beta2, config.eps, config.weight_decay, t);
  }
  // measured on the change of the parameters, which is what the update computes
  CHECK(wt::rel_diff(Matrix<T>(p - p0), Matrix<T>(p_ref - p0)) < tol * 0.06);
  const Eigen::Map<const Matrix<T>> m(opt.state().m.data(), n, 1), v(opt.state().v.data(), n, 1);
  CHECK(wt::rel_diff(m, m_ref) < tol);
  CHECK(wt::rel_diff(v, v_ref) < tol);
}

namespace {

/// Random q, k, v and an incoming gradient dout for shape s.
template <class T>
struct AttentionInputs {
  Matrix<T> q, k, v, dout;
  AttentionInputs(const AttentionShape& s, std::uint64_t seed) {
    Rng rng(seed);
    const Index rows = s.batch * s.seq;
    q = wt::random_matrix<T>(rows, s.q_width(), rng);
    k = wt::random_matrix<T>(rows, s.kv_width(), rng);
    v = wt::random_matrix<T>(rows, s.kv_width(), rng);
    dout = wt::random_matrix<T>(rows, s.q_width(), rng);
  }
};

/// dq, dk, dv against the double reference backward from the reference probabilities.
template <class T>
void check_attention_gradients(const Matrix<T>& dq, const Matrix<T>& dk, const Matrix<T>& dv,
                               const AttentionInputs<T>& in, const Matrix<T>& probs_ref,
                               const AttentionShape& s, double tol) {
  Matrix<T> dq_ref(dq.rows(), dq.cols()), dk_ref(dk.rows(), dk.cols()),
      dv_ref(dv.rows(), dv.cols());
  reference::attention_backward(dq_ref.data(), dk_ref.data(), dv_ref.data(), in.dout.data(),
                                probs_ref.data(), in.q.data(), in.k.data(), in.v.data(), s.batch,
                                s.seq, s.heads, s.kv_heads, s.head_dim);
  CHECK(wt::rel_diff(dq, dq_ref) < tol);
  CHECK(wt::rel_diff(dk, dk_ref) < tol);
  CHECK(wt::rel_diff(dv, dv_ref) < tol);
}

/// Attention forward and backward against the double reference; a causal, grouped-query, masked
/// case when `masked`.
template <class T>
void check_attention(const AttentionShape& s, bool masked, double tol, std::uint64_t seed) {
  const Index rows = s.batch * s.seq;
  const AttentionInputs<T> in(s, seed);
  const Matrix<T>&q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(rows), 1);
  for (Index e = 0; e < rows; e += 3)
    mask[std::size_t(e)] = 0;  // padding keys, and in batch 0 a query that sees none
  const std::uint8_t* m = masked ? mask.data() : nullptr;
  Matrix<T> out(rows, s.q_width()), probs(s.batch * s.heads * s.seq, s.seq), out_ref = out,
                                                                             probs_ref = probs;
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), m, s);
  reference::attention_forward(out_ref.data(), probs_ref.data(), q.data(), k.data(), v.data(), m,
                               s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, s.causal);
  CHECK(wt::rel_diff(out, out_ref) < tol);
  CHECK(wt::rel_diff(probs, probs_ref) < tol);
  Matrix<T> dq(rows, s.q_width()), dk(rows, s.kv_width()), dv(rows, s.kv_width());
  attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(),
                     v.data(), s);
  check_attention_gradients(dq, dk, dv, in, probs_ref, s, tol);
}

}  // namespace

TEMPLATE_TEST_CASE("attention equals its double reference (grouped-query, causal, padding mask)",
                   "[kernels]", float, double) {
  using T = TestType;
  const double tol = std::is_same_v<T, float> ? 1e-5 : 1e-12;
  check_attention<T>({.batch = 2, .seq = 7, .heads = 4, .kv_heads = 4, .head_dim = 5}, false, tol,
                     31);
  check_attention<T>(
      {.batch = 3, .seq = 9, .heads = 6, .kv_heads = 2, .head_dim = 3, .causal = true}, true, tol,
      32);
  check_attention<T>({.batch = 2, .seq = 6, .heads = 2, .kv_heads = 1, .head_dim = 4}, true, tol,
                     33);
}

namespace {

/// The flash kernels (bf16: their bf16 twins, T = float) against the double reference on the same
/// inputs. mask: 0 none, 1 every third key of the batch is padding, 2 as 1 and the last sequence
/// all padding.
template <class T>
void check_flash_attention(const AttentionShape& s, int mask, double tol, std::uint64_t seed,
                           bool bf16 = false) {
  CAPTURE(s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, s.causal, mask, bf16);
  const Index rows = s.batch * s.seq;
  const AttentionInputs<T> in(s, seed);
  const Matrix<T>&q = in.q, &k = in.k, &v = in.v, &dout = in.dout;
  std::vector<std::uint8_t> keys(static_cast<std::size_t>(rows), 1);
  for (Index e = 0; e < rows; ++e)
    keys[std::size_t(e)] = (mask >= 1 && e % 3 == 0) || (mask == 2 && e >= rows - s.seq) ? 0 : 1;
  const std::uint8_t* m = mask ? keys.data() : nullptr;
  Matrix<T> out(rows, s.q_width()), lse(s.lse_size(), 1), out_ref = out,
                                                          probs_ref(s.probs_size(), 1);
  out.setConstant(T(7));  // every value must be written
  if constexpr (std::is_same_v<T, float>) {
    if (bf16)
      flash_attention_forward_bf16(out.data(), lse.data(), q.data(), k.data(), v.data(), m, s);
  }
  if (!bf16) flash_attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), m, s);
  reference::attention_forward(out_ref.data(), probs_ref.data(), q.data(), k.data(), v.data(), m,
                               s.batch, s.seq, s.heads, s.kv_heads, s.head_dim, s.causal);
  CHECK(wt::rel_diff(out, out_ref) < tol);
  // lse against the scores in double; -inf exactly where a query sees no key
  const double scale = 1.0 / std::sqrt(double(s.head_dim));
  const Index group = s.heads / s.kv_heads;
  double lse_err = 0;
  int lse_wrong_inf = 0;
  for (Index b = 0; b < s.batch; ++b)
    for (Index h = 0; h < s.heads; ++h)
      for (Index i = 0; i < s.seq; ++i) {
        double mx = -HUGE_VAL, sum = 0;
        std::vector<double> sc;
        for (Index j = 0; j < s.seq; ++j) {
          if ((s.causal && j > i) || (m && !m[b * s.seq + j])) continue;
          double dot = 0;
          for (Index c = 0; c < s.head_dim; ++c)
            dot += double(q(b * s.seq + i, h * s.head_dim + c)) *
                   double(k(b * s.seq + j, (h / group) * s.head_dim + c));
          sc.push_back(dot * scale);
          mx = std::max(mx, dot * scale);
        }
        for (double x : sc) sum += std::exp(x - mx);
        const double got = lse((b * s.heads + h) * s.seq + i);
        if (sc.empty())
          lse_wrong_inf += !(std::isinf(got) && got < 0);
        else
          lse_err = std::max(lse_err, std::abs(got - (mx + std::log(sum))) / (1 + std::abs(mx)));
      }
  CHECK(lse_wrong_inf == 0);
  CHECK(lse_err < tol);
  Matrix<T> dq(rows, s.q_width()), dk(rows, s.kv_width()), dv(rows, s.kv_width());
  dq.setConstant(T(7));
  dk.setConstant(T(7));
  dv.setConstant(T(7));
  if constexpr (std::is_same_v<T, float>) {
    if (bf16)
      flash_attention_backward_bf16(dq.data(), dk.data(), dv.data(), dout.data(), out.data(),
                                    lse.data(), q.data(), k.data(), v.data(), m, s);
  }
  if (!bf16)
    flash_attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), out.data(), lse.data(),
                             q.data(), k.data(), v.data(), m, s);
  check_attention_gradients(dq, dk, dv, in, probs_ref, s, tol);
  if (mask == 2) {  // the all-padding sequence: no output and no gradient
    CHECK(out.bottomRows(s.seq).isZero(0));
    CHECK(dq.bottomRows(s.seq).isZero(0));
    CHECK(dk.bottomRows(s.seq).isZero(0));
  }
}

/// check_flash_attention over seq 1 and one partial block, several query and key blocks with
/// tails (70, 130 = 2 x 64 + 2), head sizes of one value, below a vector, with a vector tail (40,
/// 80) and MiniLM's 32, bidirectional and causal, grouped and not, with and without padding.
template <class T>
void check_flash_cases(double tol, std::uint64_t seed, bool bf16) {
  for (const Index seq : {1, 5, 70, 130})
    for (const Index d : {1, 3, 32, 40, 80})
      for (const bool causal : {false, true}) {
        check_flash_attention<T>(
            {.batch = 2, .seq = seq, .heads = 4, .kv_heads = 2, .head_dim = d, .causal = causal},
            seq > 1 ? 2 : 0, tol, seed++, bf16);
        if (seq == 70)
          check_flash_attention<T>(
              {.batch = 3, .seq = seq, .heads = 3, .kv_heads = 3, .head_dim = d, .causal = causal},
              causal ? 1 : 0, tol, seed++, bf16);
      }
}

}  // namespace

TEMPLATE_TEST_CASE(
    "flash attention equals the double reference across blocks, tails, groups, causal and padding",
    "[kernels]", float, double) {
  check_flash_cases<TestType>(std::is_same_v<TestType, float> ? 2e-5 : 1e-12, 60, false);
}

TEST_CASE("bf16 flash attention stays within bf16 rounding of the double reference",
          "[kernels][bf16]") {
  if (!bf16_gemm_available()) {
    WARN("this CPU has no AVX512-BF16: only the refusal is tested");
    const AttentionShape s{.batch = 1, .seq = 2, .heads = 1, .kv_heads = 1, .head_dim = 2};
    std::vector<float> x(4), lse(2);
    CHECK_THROWS_WITH(flash_attention_forward_bf16(x.data(), lse.data(), x.data(), x.data(),
                                                   x.data(), nullptr, s),
                      Catch::Contains("no AVX512-BF16"));
    return;
  }
  // Operands rounded to bf16 (8 significant bits, relative error <= 2^-9) with fp32 sums: on
  // these inputs the largest error relative to the largest reference value was 3.3e-3 (the fp32
  // kernels stay below 2e-5). The shapes cover the tails of the pairs of k (odd seq, odd head
  // sizes), of the 32-column tiles (40, 80) and query blocks of odd length.
  check_flash_cases<float>(6e-3, 160, true);
  // and the bf16 path is really taken: its output is not the fp32 kernels'
  const AttentionShape s{.batch = 2, .seq = 70, .heads = 4, .kv_heads = 2, .head_dim = 32};
  const AttentionInputs<float> in(s, 7);
  Matrix<float> o32(s.batch * s.seq, s.q_width()), o16 = o32, lse(s.lse_size(), 1);
  flash_attention_forward(o32.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(), nullptr,
                          s);
  flash_attention_forward_bf16(o16.data(), lse.data(), in.q.data(), in.k.data(), in.v.data(),
                               nullptr, s);
  CHECK(wt::rel_diff(o16, o32) > 1e-4);
}

#ifdef _OPENMP
TEST_CASE("kernels split over two OpenMP threads equal their references",
          "[kernels][simd][threads]") {
  // Sizes above the 64K-value threshold at which kernel_threads() hands out more than one thread.
  const int saved = Eigen::nbThreads();
  Eigen::setNbThreads(2);
  REQUIRE((!detail::kKernelsThread || detail::kernel_threads(Index(1) << 16) == 2));
  Rng rng(23);
  const Index n = 301, d = 259, r = 8;
  const Matrix<float> y = wt::random_matrix<float>(n, d, rng),
                      m = wt::random_matrix<float>(d, r, rng),
                      u = wt::random_matrix<float>(n, r, rng),
                      a = wt::random_matrix<float>(r, d, rng);
  Matrix<float> g(n, r), G = Matrix<float>::Zero(d, r), g_ref(n, r),
                         G_ref = Matrix<float>::Zero(d, r);
  rank_r_pass(g.data(), G.data(), y.data(), m.data(), u.data(), n, d, r, d);
  reference::rank_r_pass(g_ref.data(), G_ref.data(), y.data(), m.data(), u.data(), n, d, r);
  CHECK(wt::rel_diff(g, g_ref) < 1e-5);
  CHECK(wt::rel_diff(G, G_ref) < 1e-5);
  Matrix<float> proj(n, r), proj_ref(n, r);
  rank_r_project(proj.data(), y.data(), d, a.data(), n, d, r);
  reference::rank_r_project(proj_ref.data(), y.data(), a.data(), n, d, r);
  CHECK(wt::rel_diff(proj, proj_ref) < 1e-5);
  Matrix<float> red = Matrix<float>::Zero(r, d), red_ref = Matrix<float>::Zero(r, d);
  rank_r_reduce(red.data(), u.data(), y.data(), d, n, d, r);
  reference::rank_r_reduce(red_ref.data(), u.data(), y.data(), n, d, r);
  CHECK(wt::rel_diff(red, red_ref) < 1e-5);
  Matrix<float> e(n, d), e_ref(n, d);
  rank_r_expand(e.data(), d, y.data(), d, static_cast<const float*>(nullptr), u.data(), a.data(), n,
                d, r);
  reference::rank_r_expand(e_ref.data(), y.data(), static_cast<const float*>(nullptr), u.data(),
                           a.data(), n, d, r);
  CHECK(wt::rel_diff(e, e_ref) < 1e-5);

  std::vector<std::int32_t> targets(static_cast<std::size_t>(n));
  for (Index i = 0; i < n; ++i)
    targets[std::size_t(i)] = i % 11 == 0 ? kIgnoreIndex : static_cast<std::int32_t>(i * 31 % d);
  Matrix<float> dl(n, d), dl_ref(n, d);
  Index counted = 0;
  const double loss =
      cross_entropy_forward_backward(dl.data(), static_cast<float*>(nullptr), y.data(),
                                     targets.data(), n, d, 1.0, kIgnoreIndex, &counted);
  const double loss_ref = reference::cross_entropy_forward(
      static_cast<float*>(nullptr), y.data(), targets.data(), n, d, kIgnoreIndex, &counted);
  reference::cross_entropy_backward(dl_ref.data(), y.data(), targets.data(), n, d, counted, 1.0,
                                    kIgnoreIndex);
  CHECK(std::abs(loss - loss_ref) < 2e-6 * loss_ref);
  CHECK(wt::rel_diff(dl, dl_ref) < 2e-6);

  const Index np = Index(1) << 17;
  const Matrix<float> p0 = wt::random_matrix<float>(np, 1, rng),
                      grad = wt::random_matrix<float>(np, 1, rng);
  Matrix<float> p = p0, p_ref = p0, m_ref = Matrix<float>::Zero(np, 1),
                v_ref = Matrix<float>::Zero(np, 1);
  AdamW<float> opt({.lr = 1e-2});
  opt.step(std::span<float>(p.data(), std::size_t(np)),
           std::span<const float>(grad.data(), std::size_t(np)));
  reference::adamw_step(p_ref.data(), m_ref.data(), v_ref.data(), grad.data(), np, 1e-2, 0.9, 0.999,
                        1e-8, 0.01, 1);
  CHECK(wt::rel_diff(Matrix<float>(p - p0), Matrix<float>(p_ref - p0)) < 2e-7);

  // the fused adapter kernels: rows split over the threads (301 x 259 values)
  for (const Index rank : {3, 8, 16}) check_fused_adapter_kernels<float>(301, 259, 251, rank, 35);

  // attention: sequences split over the threads (6 x 4 x 64 x (64 + 8) values of work)
  check_attention<float>(
      {.batch = 6, .seq = 64, .heads = 4, .kv_heads = 2, .head_dim = 8, .causal = true}, true, 1e-5,
      34);
  Eigen::setNbThreads(saved);
}
#endif

TEST_CASE("set_threads sets the products' thread count and refuses zero", "[kernels][threads]") {
  const int saved = Eigen::nbThreads();
  set_threads(1);
  CHECK(gemm_threads() == 1);
  CHECK(Eigen::nbThreads() == 1);
  CHECK_THAT(gemm_backend(), Catch::Contains("1 thread(s)"));
  CHECK_THROWS_WITH(set_threads(0), Catch::Contains("at least one thread, got 0"));
#ifdef _OPENMP
  set_threads(2);  // OpenMP builds can run two; so can OpenBLAS and BLIS
  CHECK(gemm_threads() == 2);
#endif
  set_threads(saved);
}

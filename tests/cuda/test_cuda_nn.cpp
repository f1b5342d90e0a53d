// The transformer's GPU ops (cuda/nn.hpp) against their CPU twins run in double on the same
// (dtype-rounded) inputs: RMSNorm, RoPE, SwiGLU, the residual add, the embedding gather,
// cross-entropy and attention (causal and bidirectional, grouped-query, padded, a sequence with
// no visible key), on odd sizes and strided views. Errors are relative to the largest reference
// value (max_rel): F32 storage 2e-5; BF16 storage 1e-2 on outputs, 2e-2 on gradients (bf16
// rounding of the stored results and of the inputs of the later products).
#include "support_cuda.hpp"

#include <wegeft/nn/activations.hpp>
#include <wegeft/nn/embedding.hpp>
#include <wegeft/nn/norms.hpp>

#include <limits>
#include <vector>

namespace {

using wegeft::DType;
using wegeft::Index;
using wegeft::Matrix;
using wegeft::TensorView;
namespace cu = wegeft::cuda;
using wt::random_matrix;

using namespace wt::cuda;  // context, rounded, d, kNaN, out_tol, grad_tol

/// max |got - want| / max |want| (want not all zero).
double max_rel(const Matrix<float>& got, const Matrix<double>& want) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  REQUIRE(got.allFinite());
  const double scale = want.cwiseAbs().maxCoeff();
  REQUIRE(scale > 0);
  return (got.cast<double>() - want).cwiseAbs().maxCoeff() / scale;
}

/// A device block [rows, cols] of a NaN-filled tensor `extra` columns wider, holding m (rounded).
struct Strided {
  cu::Tensor t;
  TensorView v;
};
Strided strided(cu::Context& ctx, const Matrix<float>& m, DType dtype, Index extra = 3) {
  Strided s{cu::Tensor(dtype, m.rows(), m.cols() + extra), {}};
  cu::fill(ctx, s.t.view(), kNaN);
  s.v = s.t.block(0, 0, m.rows(), m.cols());
  cu::upload(ctx, s.v, m);
  return s;
}
Strided empty(cu::Context& ctx, Index rows, Index cols, DType dtype, Index extra = 5) {
  Strided s{cu::Tensor(dtype, rows, cols + extra), {}};
  cu::fill(ctx, s.t.view(), kNaN);
  s.v = s.t.block(0, 0, rows, cols);
  return s;
}

}  // namespace

TEST_CASE("cuda rmsnorm forward and backward equal the CPU op in double", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(21);
  const Index n = 37, c = 75;
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Matrix<float> x = rounded(random_matrix<float>(n, c, rng), dt);
    const Matrix<float> w = rounded(random_matrix<float>(1, c, rng), dt);
    const Matrix<float> g = rounded(random_matrix<float>(n, c, rng), dt);
    auto xd = strided(ctx, x, dt), wd = strided(ctx, w, dt), gd = strided(ctx, g, dt);
    auto out = empty(ctx, n, c, dt), dx = empty(ctx, n, c, dt);
    cu::Tensor rstd(DType::F32, n, 1);
    cu::rmsnorm_forward(ctx, out.v, rstd.view(), xd.v, wd.v, 1e-5f);
    cu::rmsnorm_backward(ctx, dx.v, gd.v, xd.v, wd.v, rstd.view());

    Matrix<double> X = d(x), W = d(w), G = d(g), ref(n, c), rr(n, 1), dref(n, c);
    wegeft::rmsnorm_forward(ref.data(), rr.data(), X.data(), W.data(), n, c, 1e-5);
    wegeft::rmsnorm_backward<double>(dref.data(), nullptr, G.data(), X.data(), W.data(), rr.data(),
                                     n, c);
    CHECK(max_rel(cu::download(ctx, out.v), ref) < out_tol(dt));
    CHECK(max_rel(cu::download(ctx, rstd.view()), rr) < 2e-6);
    CHECK(max_rel(cu::download(ctx, dx.v), dref) < grad_tol(dt));
    // in place (out = x), as the op allows
    cu::rmsnorm_forward(ctx, xd.v, rstd.view(), xd.v, wd.v, 1e-5f);
    CHECK(max_rel(cu::download(ctx, xd.v), ref) < out_tol(dt));
  }
  cu::Tensor x(DType::F32, 4, 6), w(DType::F32, 1, 5), r(DType::F32, 4, 1);
  CHECK_THROWS_WITH(
      cu::rmsnorm_forward(ctx, x.view(), r.view(), x.view(), w.view(), 1e-5f),
      Catch::Contains("rmsnorm_forward: weight is [1, 5]") && Catch::Contains("wanted [1, 6]"));
}

TEST_CASE("cuda rope forward and backward equal the CPU rotation in double", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(22);
  const Index batch = 3, seq = 7, heads = 5, hd = 10;
  const wegeft::RopeTable<float> table(hd, 16, 10000.0);
  const wegeft::RopeTable<double> table_d(hd, 16, 10000.0);
  cu::Rope rope(ctx, table);
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Matrix<float> x = rounded(random_matrix<float>(batch * seq, heads * hd, rng), dt);
    auto xd = strided(ctx, x, dt);
    cu::rope_forward(ctx, xd.v, rope, batch, seq, heads);
    Matrix<double> ref = d(x);
    wegeft::rope_forward(ref.data(), table_d, batch, seq, heads);
    const Matrix<float> fwd = cu::download(ctx, xd.v);
    CHECK(max_rel(fwd, ref) < out_tol(dt));
    // backward is the inverse rotation: applied to the rotated values it gives x back
    cu::rope_backward(ctx, xd.v, rope, batch, seq, heads);
    Matrix<double> back = d(fwd);
    wegeft::rope_backward(back.data(), table_d, batch, seq, heads);
    CHECK(max_rel(cu::download(ctx, xd.v), back) < out_tol(dt));
  }
  cu::Tensor big(DType::F32, 17, heads * hd);
  CHECK_THROWS_WITH(cu::rope_forward(ctx, big.view(), rope, 1, 17, heads),
                    Catch::Contains("exceeds the RoPE table's 16 positions"));
}

TEST_CASE("cuda swiglu and add equal the CPU ops in double", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(23);
  const Index n = 29, f = 301;
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Matrix<float> gate = rounded(4.0f * random_matrix<float>(n, f, rng), dt);
    const Matrix<float> up = rounded(random_matrix<float>(n, f, rng), dt);
    const Matrix<float> g = rounded(random_matrix<float>(n, f, rng), dt);
    auto gd = strided(ctx, gate, dt), ud = strided(ctx, up, dt), dd = strided(ctx, g, dt);
    auto out = empty(ctx, n, f, dt), dgate = empty(ctx, n, f, dt);
    cu::swiglu_forward(ctx, out.v, gd.v, ud.v);
    // dup written over dout, as the op allows
    cu::swiglu_backward(ctx, dgate.v, dd.v, dd.v, gd.v, ud.v);
    Matrix<double> G = d(gate), U = d(up), D = d(g), ref(n, f), dg(n, f), du(n, f);
    wegeft::swiglu_forward(ref.data(), G.data(), U.data(), n * f);
    wegeft::swiglu_backward(dg.data(), du.data(), D.data(), G.data(), U.data(), n * f);
    CHECK(max_rel(cu::download(ctx, out.v), ref) < out_tol(dt));
    CHECK(max_rel(cu::download(ctx, dgate.v), dg) < grad_tol(dt));
    CHECK(max_rel(cu::download(ctx, dd.v), du) < grad_tol(dt));

    const Matrix<float> y = rounded(random_matrix<float>(n, f, rng), dt);
    auto yd = strided(ctx, y, dt);
    cu::add(ctx, yd.v, ud.v, -0.5f);
    CHECK(max_rel(cu::download(ctx, yd.v), d(y) - 0.5 * U) < out_tol(dt));
  }
}

TEST_CASE("cuda embedding gathers the rows the ids name, exactly", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(24);
  const Index vocab = 53, dim = 41, n = 19;
  std::vector<std::int32_t> ids(n);
  for (Index i = 0; i < n; ++i) ids[i] = static_cast<std::int32_t>((i * 17 + 5) % vocab);
  cu::DeviceArray idd;
  idd.assign(ctx, ids);
  for (DType dt : {DType::F32, DType::BF16}) {
    const Matrix<float> table = rounded(random_matrix<float>(vocab, dim, rng), dt);
    auto td = strided(ctx, table, dt);
    auto x = empty(ctx, n, dim, dt);
    cu::embedding_forward(ctx, x.v, idd, td.v);
    Matrix<float> ref(n, dim);
    wegeft::embedding_forward(ref.data(), ids.data(), table.data(), n, vocab, dim);
    CHECK((cu::download(ctx, x.v) - ref).cwiseAbs().maxCoeff() == 0.0f);
  }
}

TEST_CASE("cuda cross-entropy: losses and gradients equal the CPU op in double, ignored rows zero",
          "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(25);
  const Index n = 13, vocab = 1001;
  std::vector<std::int32_t> targets(n);
  for (Index i = 0; i < n; ++i)
    targets[i] = i % 4 == 1 ? wegeft::kIgnoreIndex : static_cast<std::int32_t>((i * 97) % vocab);
  targets[2] = vocab - 1;
  cu::DeviceArray td;
  td.assign(ctx, targets);
  const Index counted =
      wegeft::detail::count_targets(targets.data(), n, vocab, wegeft::kIgnoreIndex);
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Matrix<float> logits = rounded(8.0f * random_matrix<float>(n, vocab, rng), dt);
    auto ld = strided(ctx, logits, dt), dl = empty(ctx, n, vocab, dt);
    cu::Tensor losses(DType::F32, n, 1);
    const float scale = 1.0f / static_cast<float>(counted);
    cu::cross_entropy(ctx, &dl.v, losses.view(), ld.v, td, scale);
    Matrix<double> L = d(logits), dref(n, vocab), lref(n, 1);
    wegeft::detail::cross_entropy_rows(dref.data(), lref.data(), L.data(), targets.data(), n, vocab,
                                       1.0, -1, wegeft::kIgnoreIndex, nullptr);
    CHECK(max_rel(cu::download(ctx, losses.view()), lref) < 2e-6);
    const Matrix<float> got = cu::download(ctx, dl.v);
    CHECK(max_rel(got, dref) < grad_tol(dt));
    for (Index i = 0; i < n; ++i)
      if (targets[i] == wegeft::kIgnoreIndex) CHECK(got.row(i).cwiseAbs().maxCoeff() == 0.0f);
    // in place over the logits, and the loss alone
    cu::cross_entropy(ctx, &ld.v, losses.view(), ld.v, td, scale);
    CHECK(max_rel(cu::download(ctx, ld.v), dref) < grad_tol(dt));
    auto fresh = strided(ctx, logits, dt);
    cu::cross_entropy(ctx, nullptr, losses.view(), fresh.v, td, scale);
    CHECK(max_rel(cu::download(ctx, losses.view()), lref) < 2e-6);
  }
}

namespace {

/// Attention on the GPU and the CPU op in double, on the same rounded inputs; checks out, dq, dk
/// and dv. Row strides: odd ones, or (aligned) multiples of 8 values, which the tensor-core
/// kernels load 16 bytes at a time.
void check_attention(const wegeft::AttentionShape& s, const std::vector<std::uint8_t>* mask,
                     DType dt, wegeft::Rng& rng, bool aligned = false) {
  const Index e1 = aligned ? 8 : 3, e2 = aligned ? 16 : 5, e3 = aligned ? 8 : 7,
              e4 = aligned ? 8 : 9;
  auto& ctx = context();
  const Index n = s.batch * s.seq;
  const Matrix<float> q = rounded(2.0f * random_matrix<float>(n, s.q_width(), rng), dt);
  const Matrix<float> k = rounded(2.0f * random_matrix<float>(n, s.kv_width(), rng), dt);
  const Matrix<float> v = rounded(random_matrix<float>(n, s.kv_width(), rng), dt);
  const Matrix<float> g = rounded(random_matrix<float>(n, s.q_width(), rng), dt);
  auto qd = strided(ctx, q, dt, e1), kd = strided(ctx, k, dt, e2), vd = strided(ctx, v, dt, e3);
  auto gd = strided(ctx, g, dt, e4);
  Strided out{cu::Tensor(dt, n, s.q_width() + e4), {}};
  cu::fill(ctx, out.t.view(), kNaN);
  out.v = out.t.block(0, 0, n, s.q_width());
  auto dq = empty(ctx, n, s.q_width(), dt, e1), dk = empty(ctx, n, s.kv_width(), dt, e2);
  auto dv = empty(ctx, n, s.kv_width(), dt, e3);
  cu::Tensor lse(DType::F32, s.batch * s.heads, s.seq), delta(DType::F32, s.batch * s.heads, s.seq);
  cu::DeviceArray md;
  if (mask) md.assign(ctx, *mask);
  cu::attention_forward(ctx, out.v, lse.view(), qd.v, kd.v, vd.v, mask ? &md : nullptr, s);
  cu::attention_backward(ctx, dq.v, dk.v, dv.v, delta.view(), gd.v, out.v, lse.view(), qd.v, kd.v,
                         vd.v, mask ? &md : nullptr, s);

  Matrix<double> Q = d(q), K = d(k), V = d(v), G = d(g);
  Matrix<double> o(n, s.q_width()), probs(s.probs_size(), 1);
  Matrix<double> rq(n, s.q_width()), rk(n, s.kv_width()), rv(n, s.kv_width());
  wegeft::attention_forward(o.data(), probs.data(), Q.data(), K.data(), V.data(),
                            mask ? mask->data() : nullptr, s);
  wegeft::attention_backward(rq.data(), rk.data(), rv.data(), G.data(), probs.data(), Q.data(),
                             K.data(), V.data(), s);
  CHECK(max_rel(cu::download(ctx, out.v), o) < out_tol(dt));
  CHECK(max_rel(cu::download(ctx, dq.v), rq) < grad_tol(dt));
  CHECK(max_rel(cu::download(ctx, dk.v), rk) < grad_tol(dt));
  CHECK(max_rel(cu::download(ctx, dv.v), rv) < grad_tol(dt));
  // the padding rows the CPU op leaves at zero are zero here too (no NaN from an empty softmax)
  if (mask)
    for (Index b = 0; b < s.batch; ++b) {
      bool any = false;
      for (Index j = 0; j < s.seq; ++j) any = any || (*mask)[b * s.seq + j];
      if (!any) {
        CHECK(cu::download(ctx, out.v.block(b * s.seq, 0, s.seq, s.q_width()))
                  .cwiseAbs()
                  .maxCoeff() == 0.0f);
        CHECK(cu::download(ctx, dk.v.block(b * s.seq, 0, s.seq, s.kv_width()))
                  .cwiseAbs()
                  .maxCoeff() == 0.0f);
      }
    }
}

}  // namespace

TEST_CASE(
    "cuda attention equals the CPU op in double: causal GQA with padding, bidirectional, "
    "a sequence with no visible key",
    "[cuda][nn]") {
  wegeft::Rng rng(26);
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    {
      INFO("causal, 6 query heads over 2 key/value heads, the second sequence padded");
      const wegeft::AttentionShape s{
          .batch = 2, .seq = 37, .heads = 6, .kv_heads = 2, .head_dim = 40, .causal = true};
      std::vector<std::uint8_t> mask(2 * 37, 1);
      for (Index j = 30; j < 37; ++j) mask[37 + j] = 0;
      check_attention(s, &mask, dt, rng);
    }
    {
      INFO("bidirectional, head_dim 64, 70 tokens (three key chunks), no mask");
      const wegeft::AttentionShape s{
          .batch = 2, .seq = 70, .heads = 3, .kv_heads = 3, .head_dim = 64, .causal = false};
      check_attention(s, nullptr, dt, rng);
    }
    {
      INFO("bidirectional with padding; the third sequence is all padding");
      const wegeft::AttentionShape s{
          .batch = 3, .seq = 11, .heads = 4, .kv_heads = 1, .head_dim = 24, .causal = false};
      std::vector<std::uint8_t> mask(3 * 11, 1);
      for (Index j = 0; j < 11; ++j) mask[22 + j] = 0;
      mask[5] = mask[8] = 0;
      check_attention(s, &mask, dt, rng);
    }
  }
  auto& ctx = context();
  const wegeft::AttentionShape s{.batch = 1, .seq = 4, .heads = 2, .kv_heads = 2, .head_dim = 8};
  cu::Tensor q(DType::F32, 4, 16), k(DType::F32, 4, 16), o(DType::F32, 4, 16),
      lse(DType::F32, 2, 4);
  cu::Tensor kb(DType::BF16, 4, 16);
  CHECK_THROWS_WITH(
      cu::attention_forward(ctx, o.view(), lse.view(), q.view(), kb.view(), k.view(), nullptr, s),
      Catch::Contains("attention_forward: k is") && Catch::Contains("must be F32"));
}

TEST_CASE(
    "cuda bf16 attention on the tensor cores (head_dim a multiple of 16, up to 128) equals the "
    "CPU op in double: several tiles, causal GQA with padding, every tiled head_dim",
    "[cuda][nn]") {
  wegeft::Rng rng(27);
  {
    INFO("causal, 6 query heads over 2 key/value heads, head_dim 64, 150 tokens (3 tiles), padded");
    const wegeft::AttentionShape s{
        .batch = 2, .seq = 150, .heads = 6, .kv_heads = 2, .head_dim = 64, .causal = true};
    std::vector<std::uint8_t> mask(2 * 150, 1);
    for (Index j = 120; j < 150; ++j) mask[150 + j] = 0;
    mask[3] = mask[64] = mask[150 + 7] = 0;
    check_attention(s, &mask, DType::BF16, rng);
    check_attention(s, &mask, DType::BF16, rng, /*aligned=*/true);
  }
  {
    INFO("bidirectional, head_dim 128, 130 tokens, 2 query heads over 1 key/value head");
    const wegeft::AttentionShape s{
        .batch = 1, .seq = 130, .heads = 2, .kv_heads = 1, .head_dim = 128, .causal = false};
    check_attention(s, nullptr, DType::BF16, rng);
    check_attention(s, nullptr, DType::BF16, rng, /*aligned=*/true);
  }
  {
    INFO("bidirectional with padding over 2 tiles; the second sequence is all padding");
    const wegeft::AttentionShape s{
        .batch = 2, .seq = 70, .heads = 2, .kv_heads = 2, .head_dim = 32, .causal = false};
    std::vector<std::uint8_t> mask(2 * 70, 1);
    for (Index j = 0; j < 70; ++j) mask[70 + j] = 0;
    mask[1] = mask[66] = 0;
    check_attention(s, &mask, DType::BF16, rng, /*aligned=*/true);
  }
  for (const Index d : {16, 48, 80, 96, 112}) {
    INFO("causal, head_dim " << d << ", 65 tokens");
    const wegeft::AttentionShape s{
        .batch = 1, .seq = 65, .heads = 2, .kv_heads = 2, .head_dim = d, .causal = true};
    check_attention(s, nullptr, DType::BF16, rng, /*aligned=*/d % 32 == 0);
  }
}

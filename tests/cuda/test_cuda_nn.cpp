// The transformer's GPU ops (cuda/nn.hpp) against their CPU twins run in double on the same
// (dtype-rounded) inputs: RMSNorm, LayerNorm, RoPE, SwiGLU, GELU (both forms), tanh, the residual
// add, the position add, column sums, the embedding gather, ViT's patchify (exact), mean pooling,
// cross-entropy, the rows' argmax (exact), attention (causal and bidirectional, grouped-query, padded, a sequence with
// no visible key) and cached attention (new queries over a key/value cache), on odd sizes and strided views. Errors are relative to the largest reference
// value (max_rel): F32 storage 2e-5; BF16 storage 1e-2 on outputs, 2e-2 on gradients (bf16
// rounding of the stored results and of the inputs of the later products).
#include "support_cuda.hpp"

#include <wegeft/nn/activations.hpp>
#include <wegeft/nn/embedding.hpp>
#include <wegeft/nn/norms.hpp>
#include <wegeft/nn/pooling.hpp>

#include <cstdint>
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

TEST_CASE("cuda layernorm forward and backward equal the CPU op in double", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(24);
  const Index n = 37, c = 385;  // more columns than a block has threads
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    // an offset mean, as a residual stream has, so the centring matters
    const Matrix<float> x = rounded((random_matrix<float>(n, c, rng).array() + 3.0f).matrix(), dt);
    const Matrix<float> w = rounded(random_matrix<float>(1, c, rng), dt);
    const Matrix<float> b = rounded(random_matrix<float>(1, c, rng), dt);
    const Matrix<float> g = rounded(random_matrix<float>(n, c, rng), dt);
    auto xd = strided(ctx, x, dt), wd = strided(ctx, w, dt), bd = strided(ctx, b, dt);
    auto gd = strided(ctx, g, dt);
    auto out = empty(ctx, n, c, dt);
    cu::Tensor mean(DType::F32, n, 1), rstd(DType::F32, n, 1);
    cu::layernorm_forward(ctx, out.v, mean.view(), rstd.view(), xd.v, wd.v, bd.v, 1e-12f);
    cu::layernorm_backward(ctx, gd.v, gd.v, xd.v, wd.v, mean.view(), rstd.view());  // in place

    Matrix<double> X = d(x), W = d(w), B = d(b), G = d(g), ref(n, c), rm(n, 1), rr(n, 1);
    Matrix<double> dref(n, c);
    wegeft::layernorm_forward(ref.data(), rm.data(), rr.data(), X.data(), W.data(), B.data(), n, c,
                              1e-12);
    wegeft::layernorm_backward<double>(dref.data(), nullptr, nullptr, G.data(), X.data(), W.data(),
                                       rm.data(), rr.data(), n, c);
    CHECK(max_rel(cu::download(ctx, out.v), ref) < out_tol(dt));
    CHECK(max_rel(cu::download(ctx, mean.view()), rm) < 2e-6);
    CHECK(max_rel(cu::download(ctx, rstd.view()), rr) < 2e-5);
    CHECK(max_rel(cu::download(ctx, gd.v), dref) < grad_tol(dt));
  }
  cu::Tensor x(DType::F32, 4, 6), w(DType::F32, 1, 6), b(DType::F32, 1, 5), m(DType::F32, 4, 1);
  CHECK_THROWS_WITH(
      cu::layernorm_forward(ctx, x.view(), m.view(), m.view(), x.view(), w.view(), b.view(), 1e-5f),
      Catch::Contains("layernorm_forward: bias is [1, 5]") && Catch::Contains("wanted [1, 6]"));
}

TEST_CASE("cuda gelu (erf and tanh forms) and tanh equal the CPU ops in double", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(25);
  const Index n = 23, f = 301;
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Matrix<float> x = rounded(6.0f * random_matrix<float>(n, f, rng), dt);
    const Matrix<float> g = rounded(random_matrix<float>(n, f, rng), dt);
    const Matrix<double> X = d(x), G = d(g);
    for (auto kind : {wegeft::GeluKind::erf, wegeft::GeluKind::tanh}) {
      INFO((kind == wegeft::GeluKind::erf ? "erf" : "tanh form"));
      auto xd = strided(ctx, x, dt), gd = strided(ctx, g, dt);
      auto out = empty(ctx, n, f, dt);
      cu::gelu_forward(ctx, out.v, xd.v, kind);
      cu::gelu_backward(ctx, gd.v, gd.v, xd.v, kind);  // in place over dout
      Matrix<double> ref(n, f), dref(n, f);
      wegeft::gelu_forward(ref.data(), X.data(), n * f, kind);
      wegeft::gelu_backward(dref.data(), G.data(), X.data(), n * f, kind);
      CHECK(max_rel(cu::download(ctx, out.v), ref) < out_tol(dt));
      CHECK(max_rel(cu::download(ctx, gd.v), dref) < grad_tol(dt));
    }
    auto xd = strided(ctx, x, dt), gd = strided(ctx, g, dt);
    auto out = empty(ctx, n, f, dt), dx = empty(ctx, n, f, dt);
    cu::tanh_forward(ctx, out.v, xd.v);
    Matrix<double> ref(n, f), dref(n, f);
    wegeft::tanh_forward(ref.data(), X.data(), n * f);
    // the backward reads the forward's output as stored (rounded to the dtype)
    const Matrix<double> stored = d(cu::download(ctx, out.v));
    cu::tanh_backward(ctx, dx.v, gd.v, out.v);
    wegeft::tanh_backward(dref.data(), G.data(), stored.data(), n * f);
    CHECK(max_rel(cu::download(ctx, out.v), ref) < out_tol(dt));
    CHECK(max_rel(cu::download(ctx, dx.v), dref) < grad_tol(dt));
  }
}

TEST_CASE("cuda add_positions adds each row's position and the type row; column sums accumulate",
          "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(26);
  const Index batch = 3, seq = 7, c = 45, max_pos = 11;
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Matrix<float> x = rounded(random_matrix<float>(batch * seq, c, rng), dt);
    const Matrix<float> pos = rounded(random_matrix<float>(max_pos, c, rng), dt);
    const Matrix<float> type = rounded(random_matrix<float>(1, c, rng), dt);
    auto xd = strided(ctx, x, dt), pd = strided(ctx, pos, dt), td = strided(ctx, type, dt);
    cu::add_positions(ctx, xd.v, pd.v, &td.v, seq);
    Matrix<double> ref = d(x);
    wegeft::position_embedding_forward(ref.data(), d(pos).data(), batch, seq, c, max_pos);
    ref.rowwise() += d(type).row(0);
    CHECK(max_rel(cu::download(ctx, xd.v), ref) < out_tol(dt));
    auto xd2 = strided(ctx, x, dt);
    cu::add_positions(ctx, xd2.v, pd.v, nullptr, seq);
    Matrix<double> ref2 = d(x);
    wegeft::position_embedding_forward(ref2.data(), d(pos).data(), batch, seq, c, max_pos);
    CHECK(max_rel(cu::download(ctx, xd2.v), ref2) < out_tol(dt));

    cu::Tensor sums(DType::F32, 1, c);
    cu::fill(ctx, sums.view(), 0.5f);
    cu::add_column_sums(ctx, sums.view(), xd.v);
    cu::add_column_sums(ctx, sums.view(), xd.v);  // accumulates
    const Matrix<double> stored = d(cu::download(ctx, xd.v));
    const Matrix<double> want =
        (Matrix<double>::Constant(1, c, 0.5) + 2.0 * stored.colwise().sum()).eval();
    CHECK(max_rel(cu::download(ctx, sums.view()), want) < 2e-6);
  }
  cu::Tensor x(DType::F32, 20, 4), p(DType::F32, 5, 4);
  CHECK_THROWS_WITH(cu::add_positions(ctx, x.view(), p.view(), nullptr, 10),
                    Catch::Contains("in sequences of 10"));
}

TEST_CASE("cuda patchify lays the images out as the CPU patchify, exactly", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(27);
  // 2 images of 3 channels, 8 x 12 (not square), in patches of 4: 6 patches of 48 values each
  const Index batch = 2, channels = 3, h = 8, w = 12, p = 4, per = (h / p) * (w / p);
  std::vector<float> images(static_cast<std::size_t>(batch * channels * h * w));
  for (float& x : images) x = static_cast<float>(2.0 * rng.uniform() - 1.0);
  Matrix<float> want(batch * per, channels * p * p);
  wegeft::patchify(want.data(), images.data(), batch, channels, h, w, p);
  cu::Buffer dev(images.size() * sizeof(float));
  cu::upload_floats(ctx, static_cast<float*>(dev.data()), images.data(), images.size());
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    auto out = strided(ctx, Matrix<float>::Zero(want.rows(), want.cols()), dt);
    cu::patchify(ctx, out.v, static_cast<const float*>(dev.data()), channels, h, w, p);
    CHECK(cu::download(ctx, out.v) == rounded(want, dt));
  }
  cu::Tensor bad(DType::F32, 12, 47);
  CHECK_THROWS_WITH(
      cu::patchify(ctx, bad.view(), static_cast<const float*>(dev.data()), channels, h, w, p),
      Catch::Contains("patchify: patches"));
  CHECK_THROWS_WITH(
      cu::patchify(ctx, bad.view(), static_cast<const float*>(dev.data()), channels, h, 10, p),
      Catch::Contains("not divisible into 4 x 4 patches"));
}

TEST_CASE("cuda mean pooling forward and backward equal the CPU pooling in double", "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(29);
  // 4 sequences of 7 tokens: no padding, two padded, and one with no token at all (pools to 0)
  const Index batch = 4, seq = 7, c = 45;
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(batch * seq), 1);
  for (Index t = 4; t < seq; ++t) mask[static_cast<std::size_t>(1 * seq + t)] = 0;
  mask[static_cast<std::size_t>(2 * seq + 0)] = 0;
  mask[static_cast<std::size_t>(2 * seq + 5)] = 0;
  for (Index t = 0; t < seq; ++t) mask[static_cast<std::size_t>(3 * seq + t)] = 0;
  cu::DeviceArray dmask;
  dmask.assign(ctx, mask);
  for (DType dt : {DType::F32, DType::BF16})
    for (const bool masked : {false, true}) {
      INFO(wegeft::dtype_name(dt) << (masked ? " masked" : " no mask"));
      const std::uint8_t* m = masked ? mask.data() : nullptr;
      const Matrix<float> h = rounded(random_matrix<float>(batch * seq, c, rng), dt);
      const Matrix<float> g = rounded(random_matrix<float>(batch, c, rng), dt);
      Matrix<double> want(batch, c), dwant(batch * seq, c);
      wegeft::pool_forward(want.data(), d(h).data(), m, batch, seq, c, wegeft::Pooling::mean);
      wegeft::pool_backward(dwant.data(), d(g).data(), m, batch, seq, c, wegeft::Pooling::mean);
      auto hd = strided(ctx, h, dt), gd = strided(ctx, g, dt);
      auto out = empty(ctx, batch, c, dt), dh = empty(ctx, batch * seq, c, dt);
      cu::mean_pool_forward(ctx, out.v, hd.v, masked ? &dmask : nullptr, seq);
      cu::mean_pool_backward(ctx, dh.v, gd.v, masked ? &dmask : nullptr, seq);
      const Matrix<float> got = cu::download(ctx, out.v), dgot = cu::download(ctx, dh.v);
      CHECK(max_rel(got, want) < out_tol(dt));
      CHECK(max_rel(dgot, dwant) < out_tol(dt));
      if (masked) {  // the empty sequence: exactly 0 forward, and 0 on each of its rows backward
        CHECK(got.row(3).isZero(0));
        CHECK(dgot.middleRows(3 * seq, seq).isZero(0));
        CHECK(dgot.row(1 * seq + 5).isZero(0));  // a padding row
      }
    }
  cu::Tensor out(DType::F32, 3, 4), h(DType::F32, 20, 4);
  CHECK_THROWS_WITH(cu::mean_pool_forward(ctx, out.view(), h.view(), nullptr, 7),
                    Catch::Contains("mean_pool_forward: hidden"));
  cu::Tensor dout(DType::F32, 4, 4);
  CHECK_THROWS_WITH(cu::mean_pool_backward(ctx, h.view(), dout.view(), &dmask, 5),
                    Catch::Contains("the mask holds 28 values"));
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
  {
    INFO("one sequence of 7 tokens after 5 cached ones: positions 5 .. 11");
    const Matrix<float> x = random_matrix<float>(seq, heads * hd, rng);
    auto xd = strided(ctx, x, DType::F32);
    cu::rope_forward(ctx, xd.v, rope, 1, seq, heads, 5);
    Matrix<double> ref = d(x);
    wegeft::rope_forward(ref.data(), table_d, 1, seq, heads, 5);
    CHECK(max_rel(cu::download(ctx, xd.v), ref) < out_tol(DType::F32));
    CHECK_THROWS_WITH(cu::rope_forward(ctx, xd.v, rope, 1, seq, heads, 10),
                      Catch::Contains("sequence length 17 exceeds the RoPE table's 16 positions"));
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

TEST_CASE("cuda argmax_rows gives Eigen's maxCoeff column: the first of equal values, 0 for -inf",
          "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(71);
  const float inf = std::numeric_limits<float>::infinity();
  for (DType dt : {DType::F32, DType::BF16}) {
    INFO(wegeft::dtype_name(dt));
    const Index n = 37, c = 1003;
    Matrix<float> x = rounded(random_matrix<float>(n, c, rng), dt);
    x.row(3)(10) = x.row(3)(900) = 5.0f;  // one thread's two columns: the first wins
    x.row(4)(44) = x.row(4)(45) = 5.0f;   // two threads' columns
    x.row(6)(700) = x.row(6)(600) = 5.0f;
    x.row(5).setConstant(-inf);  // nothing above -inf: column 0
    x.row(7)(c - 1) = 5.0f;      // the last column
    x.row(8).setConstant(0.25f);
    auto xd = strided(ctx, x, dt);
    cu::Buffer ids(static_cast<std::size_t>(n) * sizeof(std::int32_t));
    cu::argmax_rows(ctx, {ids.data(), DType::I32, wegeft::Device::cuda, n, 1, 1}, xd.v);
    std::vector<std::int32_t> got(static_cast<std::size_t>(n));
    cu::download_bytes(ctx, got.data(), ids.data(), got.size() * sizeof(std::int32_t));
    for (Index i = 0; i < n; ++i) {
      Index want = 0;
      x.row(i).maxCoeff(&want);
      INFO("row " << i);
      CHECK(got[static_cast<std::size_t>(i)] == want);
    }
    CHECK(got[3] == 10);
    CHECK(got[4] == 44);
    CHECK(got[6] == 600);
    CHECK(got[5] == 0);
    CHECK(got[7] == c - 1);
    CHECK(got[8] == 0);
  }
  cu::Tensor x(DType::F32, 4, 9);
  cu::Buffer ids(4 * sizeof(std::int32_t));
  CHECK_THROWS_WITH(
      cu::argmax_rows(ctx, {ids.data(), DType::F32, wegeft::Device::cuda, 4, 1, 1}, x.view()),
      Catch::Contains("wanted a contiguous [4, 1] I32 cuda view"));
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

TEST_CASE(
    "cuda cached attention (new queries over a key/value cache) equals the CPU op in double at "
    "every offset: the first chunk, single tokens, a chunk after many",
    "[cuda][nn]") {
  auto& ctx = context();
  wegeft::Rng rng(28);
  const Index cap = 50;
  for (DType dt : {DType::F32, DType::BF16})
    for (const Index hd : {40, 64}) {  // bf16 with first = 0 and head_dim 64: the tensor cores
      const wegeft::AttentionShape s{.heads = 6, .kv_heads = 2, .head_dim = hd};
      // The cache: [cap, kv_width] blocks of wider NaN-filled tensors; rows past first + m unread.
      Matrix<float> kc = rounded(2.0f * random_matrix<float>(cap, s.kv_width(), rng), dt);
      Matrix<float> vc = rounded(random_matrix<float>(cap, s.kv_width(), rng), dt);
      auto kd = strided(ctx, kc, dt, 8), vd = strided(ctx, vc, dt, 5);
      for (const auto& [first, m] :
           {std::pair<Index, Index>{0, 7}, {7, 1}, {8, 1}, {33, 5}, {1, 40}, {49, 1}}) {
        INFO(wegeft::dtype_name(dt)
             << ", head_dim " << hd << ", " << m << " queries after " << first << " cached tokens");
        const Matrix<float> q = rounded(2.0f * random_matrix<float>(m, s.q_width(), rng), dt);
        auto qd = strided(ctx, q, dt, 3);
        auto out = empty(ctx, m, s.q_width(), dt, 7);
        cu::Tensor lse(DType::F32, s.heads, m);
        const Index len = first + m;
        cu::cached_attention_forward(ctx, out.v, lse.view(), qd.v, kd.v.block(0, 0, len, kd.v.cols),
                                     vd.v.block(0, 0, len, vd.v.cols), first, s);
        const Matrix<double> Q = d(q), K = d(kc).topRows(len), V = d(vc).topRows(len);
        Matrix<double> o(m, s.q_width());
        wegeft::cached_attention_forward(o.data(), Q.data(), K.data(), V.data(), m, first, s);
        CHECK(max_rel(cu::download(ctx, out.v), o) < out_tol(dt));
      }
    }
  const wegeft::AttentionShape s{.heads = 2, .kv_heads = 2, .head_dim = 8};
  cu::Tensor q(DType::F32, 3, 16), kv(DType::F32, 9, 16), o(DType::F32, 3, 16),
      lse(DType::F32, 2, 3);
  cu::DeviceArray at;
  const std::int32_t five = 5;
  at.assign(ctx, &five, 1);
  cu::Tensor small(DType::F32, 3 * 2 * cu::kDecodeSplits - 1, 10);
  CHECK_THROWS_WITH(
      cu::cached_attention_forward(ctx, o.view(), lse.view(), q.view(), kv.view(), kv.view(),
                                   at.data<std::int32_t>(), s, small.view()),
      Catch::Contains("scratch") && Catch::Contains("[192, 10] wanted"));
  CHECK_THROWS_WITH(
      cu::cached_attention_forward(ctx, o.view(), lse.view(), q.view(), kv.view(), kv.view(), 5, s),
      Catch::Contains("cached_attention_forward: k is") && Catch::Contains("[8, 16]"));
}

TEST_CASE(
    "cuda cached attention with the position on the device, its keys split over blocks, equals "
    "the CPU op in double, reads no row past the position, and a graph of it replays at later "
    "positions",
    "[cuda][nn][decode]") {
  auto& ctx = context();
  wegeft::Rng rng(29);
  for (DType dt : {DType::F32, DType::BF16})
    for (const Index hd : {40, 64})
      // capacity 33: 2 splits of 17 keys; 300: 10 of 30; 1100: 32 of 35 (the most)
      for (const Index cap : {33, 300, 1100}) {
        const wegeft::AttentionShape s{.heads = 6, .kv_heads = 2, .head_dim = hd};
        const Matrix<float> kc = rounded(2.0f * random_matrix<float>(cap, s.kv_width(), rng), dt);
        const Matrix<float> vc = rounded(random_matrix<float>(cap, s.kv_width(), rng), dt);
        cu::Tensor scratch(DType::F32, 2 * s.heads * cu::kDecodeSplits, hd + 2);
        for (const Index m : {1, 2}) {
          // positions: the first after one token, one inside a split, one near the end
          const std::vector<Index> firsts{1, cap / 2 + 3, cap - m - 4};
          // rows past the last query's keys hold NaN: reading one would show in every output
          const Index used = firsts.back() + m;
          Matrix<float> kn = kc, vn = vc;
          kn.bottomRows(cap - used).setConstant(kNaN);
          vn.bottomRows(cap - used).setConstant(kNaN);
          auto kd = strided(ctx, kn, dt, 8), vd = strided(ctx, vn, dt, 5);
          const Matrix<float> q = rounded(2.0f * random_matrix<float>(m, s.q_width(), rng), dt);
          auto qd = strided(ctx, q, dt, 3);
          auto out = empty(ctx, m, s.q_width(), dt, 7);
          cu::Tensor lse(DType::F32, s.heads, m);
          cu::DeviceArray at;
          const auto oracle = [&](Index first) {
            const Index len = first + m;
            const Matrix<double> Q = d(q), K = d(kc).topRows(len), V = d(vc).topRows(len);
            Matrix<double> o(m, s.q_width());
            wegeft::cached_attention_forward(o.data(), Q.data(), K.data(), V.data(), m, first, s);
            return o;
          };
          const auto run = [&] {
            cu::cached_attention_forward(ctx, out.v, lse.view(), qd.v, kd.v, vd.v,
                                         at.data<std::int32_t>(), s, scratch.view());
          };
          for (const Index first : firsts) {
            INFO(wegeft::dtype_name(dt) << ", head_dim " << hd << ", capacity " << cap << ", " << m
                                        << " queries after " << first << " cached tokens");
            const auto pos = static_cast<std::int32_t>(first);
            at.assign(ctx, &pos, 1);
            run();
            CHECK(max_rel(cu::download(ctx, out.v), oracle(first)) < out_tol(dt));
          }
          // captured at one position, replayed after the position changes on the device
          cu::Graph graph(ctx, run);
          for (const Index first : {firsts[2], firsts[0], firsts[1]}) {
            INFO(wegeft::dtype_name(dt) << ", head_dim " << hd << ", capacity " << cap
                                        << ", replay at " << first << ", " << m << " queries");
            const auto pos = static_cast<std::int32_t>(first);
            at.assign(ctx, &pos, 1);
            graph.launch(ctx);
            CHECK(max_rel(cu::download(ctx, out.v), oracle(first)) < out_tol(dt));
          }
        }
      }
}

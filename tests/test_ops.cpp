// Transformer ops: each backward against central finite differences (double), each forward and
// backward against PyTorch golden files (float and double), plus the edge cases of each op.
#include "support.hpp"

#include <wegeft/kernels/cpu/attention.hpp>
#include <wegeft/nn/activations.hpp>
#include <wegeft/nn/embedding.hpp>
#include <wegeft/nn/loss.hpp>
#include <wegeft/nn/norms.hpp>
#include <wegeft/nn/pooling.hpp>
#include <wegeft/nn/rope.hpp>

using namespace wegeft;
using M = Matrix<double>;

namespace {

// L = sum(r o out) for a fixed random r, so dL/dout = r.
double dot(const M& out, const M& r) {
  return out.cwiseProduct(r).sum();
}

template <class T>
double golden_tol() {
  return std::is_same_v<T, double> ? 1e-12 : 1e-5;
}

template <class T>
void check_close(const Matrix<T>& got, const M& want, const char* what) {
  INFO(what);
  CHECK(wt::rel_diff(got.template cast<double>(), want) < golden_tol<T>());
}

std::vector<std::uint8_t> mask_of(const M& m) {
  std::vector<std::uint8_t> out;
  for (Index i = 0; i < m.size(); ++i) out.push_back(m.data()[i] != 0);
  return out;
}

}  // namespace

TEST_CASE("layernorm gradients of x, weight and bias match finite differences", "[ops][grad]") {
  Rng rng(1);
  const Index n = 4, c = 9;
  M x = wt::random_matrix<double>(n, c, rng), w = wt::random_matrix<double>(1, c, rng),
    b = wt::random_matrix<double>(1, c, rng), r = wt::random_matrix<double>(n, c, rng);
  M out(n, c), mean(n, 1), rstd(n, 1), dx(n, c), dw = M::Zero(1, c), db = M::Zero(1, c);
  const auto fwd = [&] {
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), n, c,
                      1e-5);
    return dot(out, r);
  };
  fwd();
  layernorm_backward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), mean.data(),
                     rstd.data(), n, c);
  wt::check_gradient<double>("x", x, dx, fwd);
  wt::check_gradient<double>("weight", w, dw, fwd);
  wt::check_gradient<double>("bias", b, db, fwd);
}

TEST_CASE("rmsnorm gradients of x and weight match finite differences", "[ops][grad]") {
  Rng rng(2);
  const Index n = 3, c = 8;
  M x = wt::random_matrix<double>(n, c, rng), w = wt::random_matrix<double>(1, c, rng),
    r = wt::random_matrix<double>(n, c, rng);
  M out(n, c), rstd(n, 1), dx(n, c), dw = M::Zero(1, c);
  const auto fwd = [&] {
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), n, c, 1e-6);
    return dot(out, r);
  };
  fwd();
  rmsnorm_backward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), n, c);
  wt::check_gradient<double>("x", x, dx, fwd);
  wt::check_gradient<double>("weight", w, dw, fwd);
}

TEST_CASE("gelu, tanh and swiglu gradients match finite differences", "[ops][grad]") {
  Rng rng(3);
  const Index n = 5, c = 7;
  M x = 3.0 * wt::random_matrix<double>(n, c, rng), up = wt::random_matrix<double>(n, c, rng),
    r = wt::random_matrix<double>(n, c, rng), out(n, c), dx(n, c), dup(n, c);
  for (GeluKind kind : {GeluKind::erf, GeluKind::tanh}) {
    const auto fwd = [&] {
      gelu_forward(out.data(), x.data(), x.size(), kind);
      return dot(out, r);
    };
    gelu_backward(dx.data(), r.data(), x.data(), x.size(), kind);
    wt::check_gradient<double>(kind == GeluKind::erf ? "gelu erf" : "gelu tanh", x, dx, fwd);
  }
  const auto tanh_fwd = [&] {
    tanh_forward(out.data(), x.data(), x.size());
    return dot(out, r);
  };
  tanh_fwd();
  tanh_backward(dx.data(), r.data(), out.data(), x.size());
  wt::check_gradient<double>("tanh", x, dx, tanh_fwd);
  const auto swiglu_fwd = [&] {
    swiglu_forward(out.data(), x.data(), up.data(), x.size());
    return dot(out, r);
  };
  swiglu_backward(dx.data(), dup.data(), r.data(), x.data(), up.data(), x.size());
  wt::check_gradient<double>("swiglu gate", x, dx, swiglu_fwd);
  wt::check_gradient<double>("swiglu up", up, dup, swiglu_fwd);
}

TEST_CASE("rope backward matches finite differences and rope preserves norms", "[ops][grad]") {
  Rng rng(4);
  const Index batch = 2, seq = 5, heads = 3, hd = 6;
  const RopeTable<double> table(hd, 8, 500.0);
  M x = wt::random_matrix<double>(batch * seq, heads * hd, rng),
    r = wt::random_matrix<double>(batch * seq, heads * hd, rng);
  const auto fwd = [&] {
    M out = x;
    rope_forward(out.data(), table, batch, seq, heads);
    return dot(out, r);
  };
  M dx = r;
  rope_backward(dx.data(), table, batch, seq, heads);
  wt::check_gradient<double>("x", x, dx, fwd);
  M out = x;
  rope_forward(out.data(), table, batch, seq, heads);
  CHECK(out.norm() == Approx(x.norm()).epsilon(1e-12));
  CHECK(out.topRows(1) == x.topRows(1));  // position 0 is not rotated
  CHECK_THROWS_WITH(rope_forward(out.data(), table, 1, 9, heads),
                    Catch::Contains("sequence length 9"));
  CHECK_THROWS_WITH(RopeTable<double>(5, 8, 1e4), Catch::Contains("even head dimension, got 5"));
}

TEST_CASE("attention gradients of q, k and v match finite differences", "[ops][grad]") {
  const auto [heads, kv_heads, causal, padded] = GENERATE(table<Index, Index, bool, bool>(
      {{2, 2, false, false}, {4, 2, true, false}, {3, 1, true, true}, {2, 1, false, true}}));
  INFO("heads " << heads << " kv_heads " << kv_heads << " causal " << causal << " padded "
                << padded);
  Rng rng(5);
  const AttentionShape s{
      .batch = 2, .seq = 5, .heads = heads, .kv_heads = kv_heads, .head_dim = 3, .causal = causal};
  const Index rows = s.batch * s.seq;
  M q = wt::random_matrix<double>(rows, s.q_width(), rng),
    k = wt::random_matrix<double>(rows, s.kv_width(), rng),
    v = wt::random_matrix<double>(rows, s.kv_width(), rng),
    r = wt::random_matrix<double>(rows, s.q_width(), rng);
  std::vector<std::uint8_t> mask = {1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  const std::uint8_t* m = padded ? mask.data() : nullptr;
  M out(rows, s.q_width()), probs(s.probs_size(), 1);
  const auto fwd = [&] {
    attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), m, s);
    return dot(out, r);
  };
  fwd();
  M dq(rows, s.q_width()), dk = M::Constant(rows, s.kv_width(), 7.0),
                           dv = M::Constant(rows, s.kv_width(), 7.0);
  attention_backward(dq.data(), dk.data(), dv.data(), r.data(), probs.data(), q.data(), k.data(),
                     v.data(), s);
  wt::check_gradient<double>("q", q, dq, fwd);
  wt::check_gradient<double>("k", k, dk, fwd);
  wt::check_gradient<double>("v", v, dv, fwd);
}

TEST_CASE("attention gives zero output for a query with every key masked", "[ops]") {
  Rng rng(6);
  const AttentionShape s{
      .batch = 1, .seq = 3, .heads = 1, .kv_heads = 1, .head_dim = 2, .causal = true};
  M q = wt::random_matrix<double>(3, 2, rng), k = wt::random_matrix<double>(3, 2, rng),
    v = wt::random_matrix<double>(3, 2, rng), out(3, 2), probs(9, 1);
  const std::uint8_t mask[] = {0, 1, 1};  // left padding: query 0 sees only key 0, which is masked
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), mask, s);
  CHECK(out.row(0).isZero(0));
  CHECK(out.allFinite());
  CHECK(out.row(1) == v.row(1));  // query 1 sees only key 1
  CHECK_THROWS_WITH((AttentionShape{.heads = 4, .kv_heads = 3}.check()),
                    Catch::Contains("4 query heads cannot be shared evenly by 3"));
}

TEST_CASE("cross-entropy gradient matches finite differences; ignored rows get none",
          "[ops][grad]") {
  Rng rng(7);
  M logits = 2.0 * wt::random_matrix<double>(5, 6, rng), dlogits(5, 6);
  const std::int32_t targets[] = {2, kIgnoreIndex, 5, 0, kIgnoreIndex};
  Index counted = 0;
  const auto fwd = [&] {
    return cross_entropy_forward<double>(nullptr, logits.data(), targets, 5, 6);
  };
  cross_entropy_forward<double>(nullptr, logits.data(), targets, 5, 6, kIgnoreIndex, &counted);
  CHECK(counted == 3);
  cross_entropy_backward(dlogits.data(), logits.data(), targets, 5, 6, counted);
  wt::check_gradient<double>("logits", logits, dlogits, fwd);
  CHECK(dlogits.row(1).isZero(0));
  const std::int32_t all_ignored[] = {kIgnoreIndex, kIgnoreIndex};
  CHECK(cross_entropy_forward<double>(nullptr, logits.data(), all_ignored, 2, 6) == 0.0);
  const std::int32_t bad[] = {1, 6};
  CHECK_THROWS_WITH(cross_entropy_forward<double>(nullptr, logits.data(), bad, 2, 6),
                    Catch::Contains("target 6 at row 1 is outside [0, 6)"));
}

TEST_CASE(
    "embedding, positions, class token and pooling match scalar references and finite differences",
    "[ops][grad]") {
  Rng rng(8);
  const Index vocab = 7, d = 4, batch = 2, seq = 3;
  M table = wt::random_matrix<double>(vocab, d, rng), pos = wt::random_matrix<double>(5, d, rng);
  const std::int32_t ids[] = {3, 0, 6, 3, 3, 1};
  M out(batch * seq, d);
  embedding_forward(out.data(), ids, table.data(), batch * seq, vocab, d);
  position_embedding_forward(out.data(), pos.data(), batch, seq, d, 5);
  for (Index i = 0; i < batch * seq; ++i) CHECK(out.row(i) == table.row(ids[i]) + pos.row(i % seq));
  M r = wt::random_matrix<double>(batch * seq, d, rng), gt = M::Zero(vocab, d), gp = M::Zero(5, d);
  const auto fwd = [&] {
    embedding_forward(out.data(), ids, table.data(), batch * seq, vocab, d);
    position_embedding_forward(out.data(), pos.data(), batch, seq, d, 5);
    return dot(out, r);
  };
  embedding_backward(gt.data(), r.data(), ids, batch * seq, d);
  position_embedding_backward(gp.data(), r.data(), batch, seq, d);
  wt::check_gradient<double>("token table (row 3 used three times)", table, gt, fwd);
  wt::check_gradient<double>("position table", pos, gp, fwd);
  const std::int32_t bad_ids[] = {1, 7};
  CHECK_THROWS_WITH(embedding_forward(out.data(), bad_ids, table.data(), 2, vocab, d),
                    Catch::Contains("token id 7 at position 1 is outside the vocabulary [0, 7)"));
  CHECK_THROWS_WITH(position_embedding_forward(out.data(), pos.data(), 1, 6, d, 5),
                    Catch::Contains("sequence length 6 exceeds the position table's 5"));

  // class token: tokens = [cls; patches] per image
  M patches = wt::random_matrix<double>(batch * seq, d, rng),
    cls = wt::random_matrix<double>(1, d, rng);
  M tokens(batch * (seq + 1), d), rt = wt::random_matrix<double>(batch * (seq + 1), d, rng);
  const auto cls_fwd = [&] {
    class_token_forward(tokens.data(), patches.data(), cls.data(), batch, seq, d);
    return dot(tokens, rt);
  };
  cls_fwd();
  CHECK(tokens.row(4) == cls.row(0));
  CHECK(tokens.row(5) == patches.row(3));
  M dpatches(batch * seq, d), dcls = M::Zero(1, d);
  class_token_backward(dpatches.data(), dcls.data(), rt.data(), batch, seq, d);
  wt::check_gradient<double>("patch embeddings", patches, dpatches, cls_fwd);
  wt::check_gradient<double>("class token", cls, dcls, cls_fwd);

  // pooling
  const std::uint8_t mask[] = {1, 1, 0, 1, 1, 1};
  M hidden = wt::random_matrix<double>(batch * seq, d, rng), pooled(batch, d),
    rp = wt::random_matrix<double>(batch, d, rng);
  for (Pooling p : {Pooling::cls, Pooling::last, Pooling::mean}) {
    const auto pool_fwd = [&] {
      pool_forward(pooled.data(), hidden.data(), mask, batch, seq, d, p);
      return dot(pooled, rp);
    };
    pool_fwd();
    if (p == Pooling::mean) {
      CHECK(wt::rel_diff(M(pooled.row(0)), M((hidden.row(0) + hidden.row(1)) / 2)) < 1e-15);
    } else if (p == Pooling::cls) {
      CHECK(pooled.row(1) == hidden.row(3));
    } else {
      CHECK(pooled.row(0) == hidden.row(1));  // last unmasked token of sequence 0
      CHECK(pooled.row(1) == hidden.row(5));
    }
    M dh(batch * seq, d);
    pool_backward(dh.data(), rp.data(), mask, batch, seq, d, p);
    wt::check_gradient<double>(p == Pooling::cls    ? "cls pooling"
                               : p == Pooling::last ? "last pooling"
                                                    : "mean pooling",
                               hidden, dh, pool_fwd);
  }
}

TEMPLATE_TEST_CASE("norms, activations and rope equal PyTorch golden files", "[ops][golden]", float,
                   double) {
  using T = TestType;
  using MT = Matrix<T>;
  const wt::Golden g("ops.txt");
  {
    const MT x = g.get<T>("layernorm.x"), w = g.get<T>("layernorm.w"), b = g.get<T>("layernorm.b"),
             dout = g.get<T>("layernorm.dout");
    MT out(x.rows(), x.cols()), mean(x.rows(), 1), rstd(x.rows(), 1), dx(x.rows(), x.cols());
    MT dw = MT::Zero(1, x.cols()), db = MT::Zero(1, x.cols());
    layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.data(), b.data(), x.rows(),
                      x.cols(), 1e-5);
    layernorm_backward(dx.data(), dw.data(), db.data(), dout.data(), x.data(), w.data(),
                       mean.data(), rstd.data(), x.rows(), x.cols());
    check_close(out, g.get("layernorm.out"), "layernorm out");
    check_close(dx, g.get("layernorm.dx"), "layernorm dx");
    check_close(dw, g.get("layernorm.dw"), "layernorm dw");
    check_close(db, g.get("layernorm.db"), "layernorm db");
  }
  {
    const MT x = g.get<T>("rmsnorm.x"), w = g.get<T>("rmsnorm.w"), dout = g.get<T>("rmsnorm.dout");
    MT out(x.rows(), x.cols()), rstd(x.rows(), 1), dx(x.rows(), x.cols()),
        dw = MT::Zero(1, x.cols());
    rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), x.rows(), x.cols(), 1e-6);
    rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), x.rows(),
                     x.cols());
    check_close(out, g.get("rmsnorm.out"), "rmsnorm out");
    check_close(dx, g.get("rmsnorm.dx"), "rmsnorm dx");
    check_close(dw, g.get("rmsnorm.dw"), "rmsnorm dw");
  }
  for (const auto& [name, kind] :
       {std::pair{"gelu_erf", GeluKind::erf}, std::pair{"gelu_tanh", GeluKind::tanh}}) {
    const std::string p = name;
    const MT x = g.get<T>(p + ".x"), dout = g.get<T>(p + ".dout");
    MT out(x.rows(), x.cols()), dx(x.rows(), x.cols());
    gelu_forward(out.data(), x.data(), x.size(), kind);
    gelu_backward(dx.data(), dout.data(), x.data(), x.size(), kind);
    check_close(out, g.get(p + ".out"), name);
    check_close(dx, g.get(p + ".dx"), name);
  }
  {
    const MT gate = g.get<T>("swiglu.gate"), up = g.get<T>("swiglu.up"),
             dout = g.get<T>("swiglu.dout");
    MT out(gate.rows(), gate.cols()), dgate(gate.rows(), gate.cols()),
        dup(gate.rows(), gate.cols());
    swiglu_forward(out.data(), gate.data(), up.data(), gate.size());
    swiglu_backward(dgate.data(), dup.data(), dout.data(), gate.data(), up.data(), gate.size());
    check_close(out, g.get("swiglu.out"), "swiglu out");
    check_close(dgate, g.get("swiglu.dgate"), "swiglu dgate");
    check_close(dup, g.get("swiglu.dup"), "swiglu dup");
  }
  {
    const auto cfg = g.get("rope.config");
    const Index batch = Index(cfg(0, 0)), seq = Index(cfg(0, 1)), heads = Index(cfg(0, 2)),
                hd = Index(cfg(0, 3));
    const RopeTable<T> table(hd, seq, cfg(0, 4));
    MT out = g.get<T>("rope.x"), dx = g.get<T>("rope.dout");
    rope_forward(out.data(), table, batch, seq, heads);
    rope_backward(dx.data(), table, batch, seq, heads);
    check_close(out, g.get("rope.out"), "rope out");
    check_close(dx, g.get("rope.dx"), "rope dx");
  }
}

TEMPLATE_TEST_CASE("attention, cross-entropy and patch embedding equal PyTorch golden files",
                   "[ops][golden]", float, double) {
  using T = TestType;
  using MT = Matrix<T>;
  const wt::Golden g("ops.txt");
  const std::string name =
      GENERATE(as<std::string>{}, "attn_causal_gqa", "attn_bidir_pad", "attn_mqa");
  INFO(name);
  const auto cfg = g.get(name + ".config");
  const AttentionShape s{.batch = Index(cfg(0, 0)),
                         .seq = Index(cfg(0, 1)),
                         .heads = Index(cfg(0, 2)),
                         .kv_heads = Index(cfg(0, 3)),
                         .head_dim = Index(cfg(0, 4)),
                         .causal = cfg(0, 5) != 0};
  const MT q = g.get<T>(name + ".q"), k = g.get<T>(name + ".k"), v = g.get<T>(name + ".v"),
           dout = g.get<T>(name + ".dout");
  const auto mask = mask_of(g.get(name + ".key_mask"));
  MT out(q.rows(), q.cols()), probs(s.probs_size(), 1), dq(q.rows(), q.cols()),
      dk(k.rows(), k.cols()), dv(v.rows(), v.cols());
  attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), mask.data(), s);
  attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(), q.data(), k.data(),
                     v.data(), s);
  check_close(out, g.get(name + ".out"), "attention out");
  check_close(dq, g.get(name + ".dq"), "attention dq");
  check_close(dk, g.get(name + ".dk"), "attention dk");
  check_close(dv, g.get(name + ".dv"), "attention dv");

  const MT logits = g.get<T>("ce.logits");
  const M tf = g.get("ce.targets");
  std::vector<std::int32_t> targets;
  for (Index i = 0; i < tf.size(); ++i) targets.push_back(static_cast<std::int32_t>(tf(0, i)));
  Index counted = 0;
  const double loss = cross_entropy_forward<T>(
      nullptr, logits.data(), targets.data(), logits.rows(), logits.cols(), kIgnoreIndex, &counted);
  CHECK(loss == Approx(g.get("ce.loss")(0, 0)).epsilon(golden_tol<T>()));
  MT dlogits(logits.rows(), logits.cols());
  cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), logits.rows(),
                         logits.cols(), counted);
  check_close(dlogits, g.get("ce.dlogits"), "cross-entropy dlogits");

  const MT images = g.get<T>("patch.images"), weight = g.get<T>("patch.weight");
  Vector<T> bias = g.get<T>("patch.bias").transpose();
  MT patches(2 * 6, 3 * 16), emb(2 * 6, 5);
  patchify(patches.data(), images.data(), 2, 3, 8, 12, 4);
  linear_forward<T>(emb, patches, weight, bias.data());
  check_close(emb, g.get("patch.out"), "patch embedding");
  CHECK_THROWS_WITH(patchify(patches.data(), images.data(), 2, 3, 8, 12, 5),
                    Catch::Contains("8x12 is not divisible into 5x5"));
}

TEMPLATE_TEST_CASE("vectorized gelu and swiglu equal their double-precision scalar references",
                   "[ops][simd]", float, double) {
  using T = TestType;
  Rng rng(31);
  const Index n = GENERATE(1, 7, 33, 1001);
  std::vector<T> x(static_cast<std::size_t>(n)), up(x.size()), dout(x.size()), out(x.size()),
      dx(x.size()), dup(x.size());
  for (std::size_t i = 0; i < x.size(); ++i) {
    x[i] = rng.uniform(T(-8), T(8));  // includes the saturated tails
    up[i] = rng.uniform(T(-2), T(2));
    dout[i] = rng.uniform(T(-2), T(2));
  }
  // float: Eigen's vectorized erf and exp are accurate to a few 1e-6 in absolute terms
  const double tol = std::is_same_v<T, double> ? 1e-13 : 1e-5;
  for (GeluKind kind : {GeluKind::erf, GeluKind::tanh}) {
    gelu_forward(out.data(), x.data(), n, kind);
    gelu_backward(dx.data(), dout.data(), x.data(), n, kind);
    for (std::size_t i = 0; i < x.size(); ++i) {
      INFO("x = " << x[i]);
      CHECK(std::abs(out[i] - detail::gelu(x[i], kind)) <=
            tol * std::max(1.0, std::abs(detail::gelu(x[i], kind))));
      const double g = dout[i] * detail::gelu_grad(x[i], kind);
      CHECK(std::abs(dx[i] - g) <= tol * std::max(1.0, std::abs(g)));
    }
  }
  swiglu_forward(out.data(), x.data(), up.data(), n);
  swiglu_backward(dx.data(), dup.data(), dout.data(), x.data(), up.data(), n);
  for (std::size_t i = 0; i < x.size(); ++i) {
    const double s = detail::sigmoid(x[i]);
    CHECK(std::abs(out[i] - x[i] * s * up[i]) <= tol * std::max(1.0, std::abs(x[i] * s * up[i])));
    CHECK(std::abs(dup[i] - dout[i] * x[i] * s) <=
          tol * std::max(1.0, std::abs(dout[i] * x[i] * s)));
    const double dg = dout[i] * up[i] * s * (1 + x[i] * (1 - s));
    CHECK(std::abs(dx[i] - dg) <= tol * std::max(1.0, std::abs(dg)));
  }
}

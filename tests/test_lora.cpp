#include "support.hpp"

using namespace wegeft;

namespace {

// A frozen layer with a LoRA adapter whose A and B are both random (B is zero after init, which
// would hide half of the gradient), a random input and a regression target.
template <class T>
struct LoraSetup {
  Rng rng;
  Matrix<T> w, x, target;
  Vector<T> b;
  ParameterStore<T> store;
  LoraAdapter<T> lora;

  LoraSetup(Index n, Index d_in, Index d_out, LoraConfig config, std::uint64_t seed = 1)
      : rng(seed),
        w(wt::random_matrix<T>(d_out, d_in, rng)),
        x(wt::random_matrix<T>(n, d_in, rng)),
        target(wt::random_matrix<T>(n, d_out, rng)),
        b(wt::random_matrix<T>(d_out, 1, rng)),
        lora(store, FrozenLinear<T>(w, &b), config, rng, "layer") {
    lora.lora_B() = wt::random_matrix<T>(d_out, config.rank, rng);
  }
  Matrix<T> forward(typename LoraAdapter<T>::Cache& cache) {
    Matrix<T> y(x.rows(), w.rows());
    lora.forward(y, cache, x);
    return y;
  }
};

// y = x W^T + b + s ((x * mask) A^T) B^T with scalar loops; mask entries are 0 or 1/(1-p).
template <class T>
Matrix<T> reference_lora(const Matrix<T>& x, const Matrix<T>& w, const Vector<T>& b,
                         const Matrix<T>& a, const Matrix<T>& bm, double s, const Matrix<T>& mask) {
  Matrix<T> xd = x.cwiseProduct(mask);
  Matrix<T> y = wt::reference_linear<T>(x, w, b.data());
  Matrix<T> delta = wt::reference_matmul<T>(wt::reference_matmul<T>(xd, Matrix<T>(a.transpose())),
                                            Matrix<T>(bm.transpose()));
  return y + static_cast<T>(s) * delta;
}

}  // namespace

TEMPLATE_TEST_CASE("lora gradients of A, B and x match finite differences", "[lora][grad]", float,
                   double) {
  using T = TestType;
  const auto [rank, rslora, dropout] = GENERATE(table<Index, bool, double>(
      {{1, false, 0.0}, {3, false, 0.0}, {4, true, 0.0}, {3, false, 0.25}, {1, true, 0.4}}));
  INFO("rank " << rank << " rslora " << rslora << " dropout " << dropout);
  LoraSetup<T> s(6, 7, 5, {.rank = rank, .alpha = 2.5, .use_rslora = rslora, .dropout = dropout});
  const auto rng_state = s.lora.dropout_rng().state();
  typename LoraAdapter<T>::Cache cache;
  const Matrix<T> y = s.forward(cache);
  const Matrix<T> dy = y - s.target;
  Matrix<T> dx(s.x.rows(), s.x.cols());
  s.lora.backward(dx, cache, s.x, dy);
  if (dropout > 0) CHECK(cache.dropped);
  const std::function<double()> loss = [&] {
    s.lora.dropout_rng().set_state(rng_state);  // the same mask for every evaluation
    typename LoraAdapter<T>::Cache c;
    return wt::half_squared_error<T>(s.forward(c), s.target);
  };
  wt::check_gradient<T>("lora_A", s.lora.lora_A(), Matrix<T>(s.lora.grad_A()), loss);
  wt::check_gradient<T>("lora_B", s.lora.lora_B(), Matrix<T>(s.lora.grad_B()), loss);
  wt::check_gradient<T>("x", s.x, dx, loss);
}

TEMPLATE_TEST_CASE("lora forward equals a scalar reference, dropout mask included", "[lora]", float,
                   double) {
  using T = TestType;
  const double p = GENERATE(0.0, 0.3);
  const bool rslora = GENERATE(false, true);
  LoraSetup<T> s(5, 9, 4, {.rank = 3, .alpha = 6.0, .use_rslora = rslora, .dropout = p});
  const auto rng_state = s.lora.dropout_rng().state();
  typename LoraAdapter<T>::Cache cache;
  const Matrix<T> y = s.forward(cache);
  Matrix<T> mask = Matrix<T>::Constant(s.x.rows(), s.x.cols(), T(1));
  if (p > 0) {
    Rng seeds = s.lora.dropout_rng();
    seeds.set_state(rng_state);
    const std::uint64_t seed = seeds.next_u64();
    CHECK(seed == cache.dropout_seed);
    dropout_apply(mask.data(), mask.data(), mask.size(), p, seed);
  }
  const double scale = rslora ? 6.0 / std::sqrt(3.0) : 2.0;
  CHECK(static_cast<double>(s.lora.scale()) == Approx(scale));
  const Matrix<T> ref =
      reference_lora<T>(s.x, s.w, s.b, s.lora.lora_A(), s.lora.lora_B(), scale, mask);
  CHECK(wt::rel_diff(y, ref) < wt::Tol<T>::close);

  s.lora.set_training(false);  // eval mode: no dropout
  const Matrix<T> y_eval = s.forward(cache);
  const Matrix<T> ones = Matrix<T>::Constant(s.x.rows(), s.x.cols(), T(1));
  CHECK(wt::rel_diff(y_eval, reference_lora<T>(s.x, s.w, s.b, s.lora.lora_A(), s.lora.lora_B(),
                                               scale, ones)) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("fresh lora adapter reproduces the frozen layer exactly", "[lora]", float,
                   double) {
  using T = TestType;
  const LoraInit init = GENERATE(LoraInit::kaiming_uniform, LoraInit::gaussian);
  Rng rng(11);
  Matrix<T> w = wt::random_matrix<T>(6, 13, rng), x = wt::random_matrix<T>(7, 13, rng);
  Vector<T> b = wt::random_matrix<T>(6, 1, rng);
  ParameterStore<T> store;
  FrozenLinear<T> base(w, &b);
  LoraAdapter<T> lora(store, base, {.rank = 5, .alpha = 10, .dropout = 0.2, .init = init}, rng);
  CHECK(lora.lora_B().isZero(0));
  CHECK(!lora.lora_A().isZero(0));
  Matrix<T> y_base(7, 6), y(7, 6);
  base.forward(y_base, x);
  typename LoraAdapter<T>::Cache cache;
  lora.forward(y, cache, x);
  CHECK(y == y_base);
  CHECK(wt::rel_diff(y_base, wt::reference_linear<T>(x, w, b.data())) < wt::Tol<T>::close);
}

TEST_CASE("lora init follows PEFT: kaiming-uniform bound 1/sqrt(d_in), gaussian std 1/r",
          "[lora]") {
  Rng rng(4);
  const Index d_in = 300, d_out = 200, r = 16;
  Matrix<double> w = Matrix<double>::Ones(d_out, d_in);
  ParameterStore<double> store;
  LoraAdapter<double> ku(store, FrozenLinear<double>(w), {.rank = r}, rng);
  const double bound = 1.0 / std::sqrt(double(d_in));
  CHECK(ku.lora_A().cwiseAbs().maxCoeff() <= bound);
  CHECK(ku.lora_A().cwiseAbs().maxCoeff() > 0.99 * bound);
  // U(-c, c) has variance c^2 / 3
  CHECK(ku.lora_A().squaredNorm() / double(r * d_in) == Approx(bound * bound / 3).epsilon(0.03));
  LoraAdapter<double> ga(store, FrozenLinear<double>(w), {.rank = r, .init = LoraInit::gaussian},
                         rng, "gaussian");
  CHECK(std::sqrt(ga.lora_A().squaredNorm() / double(r * d_in)) == Approx(1.0 / r).epsilon(0.03));
  CHECK(std::abs(ga.lora_A().mean()) < 0.01 / r);
  CHECK(ku.parameter_count() == r * (d_in + d_out));
  CHECK(store.parameter_count() == 2 * r * (d_in + d_out));
}

TEMPLATE_TEST_CASE("lora merge gives the unmerged output; unmerge restores W", "[lora]", float,
                   double) {
  using T = TestType;
  LoraSetup<T> s(8, 11, 6, {.rank = 2, .alpha = 3.0});
  const Matrix<T> w0 = s.w;
  typename LoraAdapter<T>::Cache cache;
  const Matrix<T> y_unmerged = s.forward(cache);
  s.lora.merge();
  CHECK(s.lora.merged());
  CHECK(wt::rel_diff(s.w, w0 + static_cast<T>(1.5) *
                                   wt::reference_matmul<T>(s.lora.lora_B(), s.lora.lora_A())) <
        wt::Tol<T>::close);
  const Matrix<T> y_merged = s.forward(cache);
  CHECK(wt::rel_diff(y_merged, y_unmerged) < wt::Tol<T>::close);
  CHECK_THROWS_WITH(s.lora.backward(cache, s.x, y_merged), Catch::Contains("merged"));
  CHECK_THROWS_AS(s.lora.merge(), Error);
  s.lora.unmerge();
  CHECK(wt::rel_diff(s.w, w0) < wt::Tol<T>::close);
  CHECK_THROWS_AS(s.lora.unmerge(), Error);
}

TEMPLATE_TEST_CASE("lora gradients over k micro-batches equal one batch of k times the size",
                   "[lora][grad]", float, double) {
  using T = TestType;
  const Index k = 3, n = 4;
  LoraSetup<T> s(k * n, 9, 7, {.rank = 2, .alpha = 4.0});
  typename LoraAdapter<T>::Cache cache;
  const Matrix<T> y = s.forward(cache);
  s.lora.backward(cache, s.x, Matrix<T>(y - s.target));
  const Matrix<T> big_a = s.lora.grad_A(), big_b = s.lora.grad_B();
  s.store.zero_grad();
  for (Index i = 0; i < k; ++i) {
    const Matrix<T> xi = s.x.middleRows(i * n, n), ti = s.target.middleRows(i * n, n);
    Matrix<T> yi(n, 7);
    s.lora.forward(yi, cache, xi);
    s.lora.backward(cache, xi, Matrix<T>(yi - ti));
  }
  CHECK(wt::rel_diff(s.lora.grad_A(), big_a) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(s.lora.grad_B(), big_b) < wt::Tol<T>::close);
  CHECK(!big_a.isZero(0));
}

TEST_CASE("lora rejects bad configurations and shapes with messages naming the sizes",
          "[lora][errors]") {
  Rng rng(1);
  Matrix<float> w = wt::random_matrix<float>(6, 10, rng);
  ParameterStore<float> store;
  FrozenLinear<float> base(w);
  CHECK_THROWS_WITH(LoraAdapter<float>(store, base, {.rank = 0}, rng, "q"),
                    Catch::Contains("rank must be at least 1, got 0") && Catch::Contains("'q'"));
  CHECK_THROWS_WITH(LoraAdapter<float>(store, base, {.rank = 7}, rng),
                    Catch::Contains("rank 7 exceeds min(d_in, d_out) = min(10, 6)"));
  CHECK_THROWS_WITH(LoraAdapter<float>(store, base, {.rank = 2, .alpha = NAN}, rng),
                    Catch::Contains("alpha must be finite and non-zero, got nan"));
  CHECK_THROWS_WITH(LoraAdapter<float>(store, base, {.rank = 2, .alpha = INFINITY}, rng),
                    Catch::Contains("alpha must be finite and non-zero, got inf"));
  CHECK_THROWS_WITH(LoraAdapter<float>(store, base, {.rank = 2, .dropout = 1.0}, rng),
                    Catch::Contains("dropout must be in [0, 1), got 1"));
  LoraAdapter<float> lora(store, base, {.rank = 2}, rng);
  LoraAdapter<float> other(store, base, {.rank = 2}, rng, "other");
  Matrix<float> x(3, 9), y(3, 6);
  LoraAdapter<float>::Cache cache;
  CHECK_THROWS_WITH(lora.forward(y, cache, x),
                    Catch::Contains("[3, 9]") && Catch::Contains("10 columns"));
  Matrix<float> x_ok = wt::random_matrix<float>(3, 10, rng), y_bad(3, 5);
  CHECK_THROWS_WITH(lora.forward(y_bad, cache, x_ok), Catch::Contains("[3, 5], expected [3, 6]"));
  lora.forward(y, cache, x_ok);
  Matrix<float> dy_bad(3, 7), dx(3, 10), dx_bad(2, 10);
  CHECK_THROWS_WITH(lora.backward(cache, x_ok, dy_bad), Catch::Contains("[3, 7], expected [3, 6]"));
  CHECK_THROWS_WITH(lora.backward(dx_bad, cache, x_ok, y),
                    Catch::Contains("[2, 10], expected [3, 10]"));
  CHECK_THROWS_WITH(other.backward(cache, x_ok, y), Catch::Contains("another layer"));
}

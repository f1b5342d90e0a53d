// DoRA against Hugging Face PEFT (tests/golden/dora.txt, tools/reference/make_dora_golden.py):
// output, every gradient, the initial magnitude and the merged weight; the dropout path against a
// reference with the same mask; merge and unmerge.
#include "support.hpp"

using namespace wegeft;

namespace {

/// y = x W^T + b + (g - 1) * (xd W^T) + g * s (xd A^T) B^T, g = m / ||W + s B A||, xd = mask * x.
template <class T>
Matrix<T> reference_dora(const Matrix<T>& x, const Matrix<T>& w, const T* b, const Matrix<T>& a,
                         const Matrix<T>& bm, const Matrix<T>& m, double s, const Matrix<T>& mask) {
  const Matrix<double> wd = w.template cast<double>(),
                       xd = x.cwiseProduct(mask).template cast<double>();
  const Matrix<double> adapted = wd + s * (bm.template cast<double>() * a.template cast<double>());
  Matrix<double> y = x.template cast<double>() * wd.transpose();
  const Matrix<double> zb = xd * wd.transpose();
  const Matrix<double> zl =
      s * (xd * a.template cast<double>().transpose()) * bm.template cast<double>().transpose();
  for (Index j = 0; j < w.rows(); ++j) {
    const double g = static_cast<double>(m(0, j)) / adapted.row(j).norm();
    y.col(j) += (g - 1) * zb.col(j) + g * zl.col(j);
    if (b) y.col(j).array() += static_cast<double>(b[j]);
  }
  return y.template cast<T>();
}

}  // namespace

TEMPLATE_TEST_CASE(
    "dora equals PEFT's use_dora layer: output, input and parameter gradients, init, merge",
    "[dora][golden]", float, double) {
  using T = TestType;
  const std::string name = GENERATE(as<std::string>{}, "dora_bias", "dora_rs");
  INFO(name);
  const wt::Golden g("dora.txt");
  const Matrix<double> cfg = g.get(name + ".config");
  const bool has_bias = cfg(0, 3) != 0;
  Matrix<T> w = g.get(name + ".W").cast<T>();
  Vector<T> b;
  if (has_bias) b = g.get(name + ".b").cast<T>().transpose();
  ParameterStore<T> store;
  Rng rng(3);
  DoraAdapter<T> dora(
      store, FrozenLinear<T>(w, has_bias ? &b : nullptr),
      {.rank = static_cast<Index>(cfg(0, 0)), .alpha = cfg(0, 1), .use_rslora = cfg(0, 2) != 0},
      rng, "lin");
  CHECK(dora.lora_B().isZero(0));
  CHECK(wt::rel_diff(dora.magnitude(), g.get(name + ".m_init").cast<T>()) < wt::Tol<T>::close);
  dora.lora_A() = g.get(name + ".A").cast<T>();
  dora.lora_B() = g.get(name + ".B").cast<T>();
  dora.magnitude() = g.get(name + ".m").cast<T>();
  const Matrix<T> x = g.get(name + ".x").cast<T>(), dy = g.get(name + ".dy").cast<T>();
  Matrix<T> y(x.rows(), w.rows()), dx(x.rows(), w.cols());
  typename DoraAdapter<T>::Cache cache;
  dora.forward(y, cache, x);
  dora.backward(dx, cache, x, dy);
  const double tol = std::is_same_v<T, double> ? 1e-12 : 1e-5;
  CHECK(wt::rel_diff(y, g.get(name + ".y").cast<T>()) < tol);
  CHECK(wt::rel_diff(dx, g.get(name + ".dx").cast<T>()) < tol);
  CHECK(wt::rel_diff(dora.grad_A(), g.get(name + ".dA").cast<T>()) < tol);
  CHECK(wt::rel_diff(dora.grad_B(), g.get(name + ".dB").cast<T>()) < tol);
  CHECK(wt::rel_diff(dora.grad_magnitude(), g.get(name + ".dm").cast<T>()) < tol);
  // Without dx the parameter gradients are the same.
  store.zero_grad();
  dora.backward(cache, x, dy);
  CHECK(wt::rel_diff(dora.grad_A(), g.get(name + ".dA").cast<T>()) < tol);
  CHECK(wt::rel_diff(dora.grad_magnitude(), g.get(name + ".dm").cast<T>()) < tol);
  // merge() gives PEFT's merge_and_unload() weight, and the merged layer PEFT's output.
  dora.merge();
  CHECK(wt::rel_diff(w, g.get(name + ".W_merged").cast<T>()) < tol);
  Matrix<T> y_merged(x.rows(), w.rows());
  dora.forward(y_merged, cache, x);
  CHECK(wt::rel_diff(y_merged, g.get(name + ".y").cast<T>()) < tol);
  CHECK_THROWS_WITH(dora.backward(cache, x, dy), Catch::Contains("merged"));
  dora.unmerge();
  CHECK(wt::rel_diff(w, g.get(name + ".W").cast<T>()) < wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE(
    "dora forward with dropout equals a reference with the same mask; eval mode has none", "[dora]",
    float, double) {
  using T = TestType;
  Rng rng(8);
  Matrix<T> w = wt::random_matrix<T>(7, 10, rng), x = wt::random_matrix<T>(6, 10, rng);
  Vector<T> b = wt::random_matrix<T>(7, 1, rng);
  ParameterStore<T> store;
  DoraAdapter<T> dora(store, FrozenLinear<T>(w, &b), {.rank = 3, .alpha = 5.0, .dropout = 0.4}, rng,
                      "d");
  dora.lora_B() = wt::random_matrix<T>(7, 3, rng);
  dora.magnitude() =
      (dora.magnitude().array() * (1 + 0.3 * wt::random_matrix<T>(1, 7, rng).array())).matrix();
  const auto state = dora.dropout_rng().state();
  Matrix<T> y(6, 7);
  typename DoraAdapter<T>::Cache cache;
  dora.forward(y, cache, x);
  Rng seeds = dora.dropout_rng();
  seeds.set_state(state);
  CHECK(seeds.next_u64() == cache.dropout_seed);
  Matrix<T> mask = Matrix<T>::Ones(6, 10);
  dropout_apply(mask.data(), mask.data(), mask.size(), 0.4, cache.dropout_seed);
  const double s = 5.0 / 3.0;
  CHECK(wt::rel_diff(y, reference_dora<T>(x, w, b.data(), dora.lora_A(), dora.lora_B(),
                                          dora.magnitude(), s, mask)) < wt::Tol<T>::close);

  // Input gradient with the mask: finite differences of <y, dy> in x with the norm and mask fixed
  // (the norm does not depend on x, so this is the exact gradient).
  const Matrix<T> dy = wt::random_matrix<T>(6, 7, rng);
  Matrix<T> dx(6, 10);
  dora.backward(dx, cache, x, dy);
  Matrix<T> xv = x;
  const std::function<double()> loss = [&] {
    return (reference_dora<T>(xv, w, b.data(), dora.lora_A(), dora.lora_B(), dora.magnitude(), s,
                              mask)
                .template cast<double>()
                .cwiseProduct(dy.template cast<double>()))
        .sum();
  };
  wt::check_gradient<T>("x", xv, dx, loss);

  dora.set_training(false);
  dora.forward(y, cache, x);
  CHECK(wt::rel_diff(y, reference_dora<T>(x, w, b.data(), dora.lora_A(), dora.lora_B(),
                                          dora.magnitude(), s, Matrix<T>::Ones(6, 10))) <
        wt::Tol<T>::close);
}

TEMPLATE_TEST_CASE("a fresh dora adapter reproduces the frozen layer", "[dora]", float, double) {
  using T = TestType;
  Rng rng(9);
  Matrix<T> w = wt::random_matrix<T>(5, 8, rng), x = wt::random_matrix<T>(4, 8, rng);
  Vector<T> b = wt::random_matrix<T>(5, 1, rng);
  ParameterStore<T> store;
  DoraAdapter<T> dora(store, FrozenLinear<T>(w, &b), {.rank = 2, .alpha = 4}, rng);
  dora.set_training(false);
  Matrix<T> y(4, 5);
  typename DoraAdapter<T>::Cache cache;
  dora.forward(y, cache, x);
  CHECK(wt::rel_diff(y, wt::reference_linear<T>(x, w, b.data())) < wt::Tol<T>::close);
  CHECK(store.parameter_count() == 2 * (8 + 5) + 5);
  CHECK_THROWS_WITH((DoraAdapter<T>(store, FrozenLinear<T>(w), {.rank = 2, .alpha = 0}, rng)),
                    Catch::Contains("alpha"));
}

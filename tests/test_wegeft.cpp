#include "support.hpp"

using namespace wegeft;

namespace {

// One generator shared by three frozen layers with the same d_in and different d_out, each with
// its own input and target. Phi is random (it starts at zero, which would hide Psi's gradient).
template <class T>
struct GroupSetup {
  static constexpr Index kLayers = 3;
  Rng rng;
  Index n, d_in;
  std::vector<Matrix<T>> w, x, target;
  std::vector<Vector<T>> b;
  ParameterStore<T> store;
  WeGeFTGenerator<T> gen;
  std::vector<WeGeFTAdapter<T>> layers;

  GroupSetup(Index n_, Index d_in_, std::array<Index, kLayers> d_out, WeGeFTConfig config,
             WeGeFTOrder order, std::uint64_t seed = 2)
      : rng(seed), n(n_), d_in(d_in_), gen(store, d_in_, config, rng, "q_proj") {
    w.reserve(kLayers);
    b.reserve(kLayers);
    for (Index l = 0; l < kLayers; ++l) {
      w.push_back(wt::random_matrix<T>(d_out[l], d_in, rng));
      b.push_back(wt::random_matrix<T>(d_out[l], 1, rng));
      x.push_back(wt::random_matrix<T>(n, d_in, rng));
      target.push_back(wt::random_matrix<T>(n, d_out[l], rng));
    }
    for (Index l = 0; l < kLayers; ++l)
      layers.emplace_back(gen, FrozenLinear<T>(w[l], &b[l]), rng, order);
    gen.phi() = wt::random_matrix<T>(config.rank, d_in, rng);
  }
  Matrix<T> forward(Index l, typename WeGeFTAdapter<T>::Cache& cache) {
    Matrix<T> y(n, w[l].rows());
    layers[l].forward(y, cache, x[l]);
    return y;
  }
  double loss() {
    double total = 0;
    for (Index l = 0; l < kLayers; ++l) {
      typename WeGeFTAdapter<T>::Cache c;
      total += wt::half_squared_error<T>(forward(l, c), target[l]);
    }
    return total;
  }
  // One step over all layers; returns each layer's input gradient.
  std::vector<Matrix<T>> step() {
    std::vector<Matrix<T>> dx;
    for (Index l = 0; l < kLayers; ++l) {
      typename WeGeFTAdapter<T>::Cache c;
      const Matrix<T> y = forward(l, c);
      dx.emplace_back(n, d_in);
      layers[l].backward(dx.back(), c, x[l], Matrix<T>(y - target[l]));
    }
    return dx;
  }
};

// y = x W^T + b + s x (D(W) Phi^T Psi)^T with scalar loops, D given as a 0 or 1/(1-p) mask.
template <class T>
Matrix<T> reference_wegeft(const Matrix<T>& x, const Matrix<T>& w, const Vector<T>& b,
                           const Matrix<T>& phi, const Matrix<T>& psi, double s,
                           const Matrix<T>& mask) {
  const Matrix<T> generated = wt::reference_matmul<T>(
      wt::reference_matmul<T>(Matrix<T>(w.cwiseProduct(mask)), Matrix<T>(phi.transpose())), psi);
  return wt::reference_linear<T>(x, w, b.data()) +
         static_cast<T>(s) * wt::reference_linear<T>(x, generated, nullptr);
}

}  // namespace

TEMPLATE_TEST_CASE("wegeft gradients of a generator shared by 3 layers match finite differences",
                   "[wegeft][grad]", float, double) {
  using T = TestType;
  const auto [order, dropout, rank] =
      GENERATE(table<WeGeFTOrder, double, Index>({{WeGeFTOrder::weight_side, 0.0, 3},
                                                  {WeGeFTOrder::input_edit, 0.0, 3},
                                                  {WeGeFTOrder::weight_side, 0.0, 1},
                                                  {WeGeFTOrder::input_edit, 0.0, 1},
                                                  {WeGeFTOrder::weight_side, 0.3, 2},
                                                  {WeGeFTOrder::automatic, 0.2, 1}}));
  INFO("order " << to_string(order) << " dropout " << dropout << " rank " << rank);
  GroupSetup<T> s(5, 7, {7, 3, 11}, {.rank = rank, .alpha = 2.0 * rank, .dropout = dropout}, order);
  std::vector<Rng::State> states;
  for (auto& layer : s.layers) states.push_back(layer.dropout_rng().state());
  const auto restore = [&] {
    for (std::size_t l = 0; l < states.size(); ++l) s.layers[l].dropout_rng().set_state(states[l]);
  };
  const auto dx = s.step();
  const std::function<double()> loss = [&] {
    restore();
    return s.loss();
  };
  wt::check_gradient<T>("Phi (summed over 3 layers)", s.gen.phi(), Matrix<T>(s.gen.grad_phi()),
                        loss);
  wt::check_gradient<T>("Psi (summed over 3 layers)", s.gen.psi(), Matrix<T>(s.gen.grad_psi()),
                        loss);
  for (Index l = 0; l < GroupSetup<T>::kLayers; ++l)
    wt::check_gradient<T>("x of one layer", s.x[l], dx[l], loss);
}

TEMPLATE_TEST_CASE("wegeft input-edit order equals weight-side order", "[wegeft]", float, double) {
  using T = TestType;
  const Index rank = GENERATE(1, 4);
  GroupSetup<T> side(6, 9, {9, 4, 13}, {.rank = rank, .alpha = 8.0}, WeGeFTOrder::weight_side, 5);
  GroupSetup<T> edit(6, 9, {9, 4, 13}, {.rank = rank, .alpha = 8.0}, WeGeFTOrder::input_edit, 5);
  REQUIRE(side.gen.phi() == edit.gen.phi());
  for (Index l = 0; l < 3; ++l) {
    typename WeGeFTAdapter<T>::Cache cs, ce;
    CHECK(wt::rel_diff(side.forward(l, cs), edit.forward(l, ce)) < wt::Tol<T>::close);
    CHECK(cs.order == WeGeFTOrder::weight_side);
    CHECK(ce.order == WeGeFTOrder::input_edit);
  }
  const auto dx_side = side.step();
  const auto dx_edit = edit.step();
  for (Index l = 0; l < 3; ++l) CHECK(wt::rel_diff(dx_side[l], dx_edit[l]) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(side.gen.grad_phi(), edit.gen.grad_phi()) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(side.gen.grad_psi(), edit.gen.grad_psi()) < wt::Tol<T>::close);
  CHECK(!side.gen.grad_psi().isZero(0));
}

TEMPLATE_TEST_CASE("wegeft forward equals a scalar reference, weight dropout included", "[wegeft]",
                   float, double) {
  using T = TestType;
  const double p = GENERATE(0.0, 0.25);
  GroupSetup<T> s(4, 8, {8, 5, 3}, {.rank = 2, .alpha = 6.0, .dropout = p}, WeGeFTOrder::automatic);
  for (Index l = 0; l < 3; ++l) {
    const auto state = s.layers[l].dropout_rng().state();
    typename WeGeFTAdapter<T>::Cache cache;
    const Matrix<T> y = s.forward(l, cache);
    Matrix<T> mask = Matrix<T>::Ones(s.w[l].rows(), s.w[l].cols());
    if (p > 0) {
      CHECK(cache.order == WeGeFTOrder::weight_side);
      Rng seeds(0);
      seeds.set_state(state);
      dropout_apply(mask.data(), mask.data(), mask.size(), p, seeds.next_u64());
      CHECK(mask.minCoeff() == 0);
    }
    CHECK(wt::rel_diff(y, reference_wegeft<T>(s.x[l], s.w[l], s.b[l], s.gen.phi(), s.gen.psi(), 3.0,
                                              mask)) < wt::Tol<T>::close);
    s.layers[l].set_training(false);  // eval: the full W in the generator path
    const Matrix<T> y_eval = s.forward(l, cache);
    CHECK(wt::rel_diff(y_eval, reference_wegeft<T>(
                                   s.x[l], s.w[l], s.b[l], s.gen.phi(), s.gen.psi(), 3.0,
                                   Matrix<T>::Ones(mask.rows(), mask.cols()))) < wt::Tol<T>::close);
  }
}

TEMPLATE_TEST_CASE("fresh wegeft layer reproduces the frozen layer exactly; only Phi gets gradient",
                   "[wegeft]", float, double) {
  using T = TestType;
  const WeGeFTOrder order = GENERATE(WeGeFTOrder::weight_side, WeGeFTOrder::input_edit);
  Rng rng(8);
  Matrix<T> w = wt::random_matrix<T>(9, 6, rng), x = wt::random_matrix<T>(5, 6, rng);
  Vector<T> b = wt::random_matrix<T>(9, 1, rng);
  ParameterStore<T> store;
  FrozenLinear<T> base(w, &b);
  WeGeFTGenerator<T> gen(store, 6, {.rank = 3, .alpha = 6}, rng);
  WeGeFTAdapter<T> layer(gen, base, rng, order);
  CHECK(gen.phi().isZero(0));
  const T bound = static_cast<T>(1 / std::sqrt(6.0));
  CHECK(gen.psi().cwiseAbs().maxCoeff() <= bound);
  CHECK(!gen.psi().isZero(0));
  Matrix<T> y_base(5, 9), y(5, 9), dx(5, 6);
  base.forward(y_base, x);
  typename WeGeFTAdapter<T>::Cache cache;
  layer.forward(y, cache, x);
  CHECK(y == y_base);
  layer.backward(dx, cache, x, wt::random_matrix<T>(5, 9, rng));
  CHECK(gen.grad_psi().isZero(0));
  CHECK(!gen.grad_phi().isZero(0));
}

TEMPLATE_TEST_CASE("wegeft merge gives the unmerged output; unmerge restores W", "[wegeft]", float,
                   double) {
  using T = TestType;
  GroupSetup<T> s(5, 10, {10, 6, 14}, {.rank = 3, .alpha = 1.5}, WeGeFTOrder::automatic);
  for (Index l = 0; l < 3; ++l) {
    const Matrix<T> w0 = s.w[l];
    typename WeGeFTAdapter<T>::Cache cache;
    const Matrix<T> y_unmerged = s.forward(l, cache);
    const Matrix<T> generated =
        static_cast<T>(0.5) *
        wt::reference_matmul<T>(wt::reference_matmul<T>(w0, Matrix<T>(s.gen.phi().transpose())),
                                s.gen.psi());
    s.layers[l].merge();
    CHECK(wt::rel_diff(s.w[l], Matrix<T>(w0 + generated)) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(s.forward(l, cache), y_unmerged) < wt::Tol<T>::close);
    CHECK_THROWS_WITH(s.layers[l].backward(cache, s.x[l], y_unmerged), Catch::Contains("merged"));
    CHECK_THROWS_AS(s.layers[l].projected_weight(), Error);
    s.layers[l].unmerge();
    CHECK(wt::rel_diff(s.w[l], w0) < wt::Tol<T>::close);
  }
}

TEMPLATE_TEST_CASE("wegeft projected weight C equals W Phi^T", "[wegeft]", float, double) {
  using T = TestType;
  GroupSetup<T> s(3, 7, {5, 7, 2}, {.rank = 2, .alpha = 4}, WeGeFTOrder::automatic);
  for (Index l = 0; l < 3; ++l) {
    const Matrix<T> c = s.layers[l].projected_weight();
    CHECK(wt::rel_diff(c, wt::reference_matmul<T>(s.w[l], Matrix<T>(s.gen.phi().transpose()))) <
          wt::Tol<T>::close);
  }
}

TEMPLATE_TEST_CASE("wegeft gradients over k micro-batches equal one batch of k times the size",
                   "[wegeft][grad]", float, double) {
  using T = TestType;
  const WeGeFTOrder order = GENERATE(WeGeFTOrder::weight_side, WeGeFTOrder::input_edit);
  const Index k = 3, n = 4;
  GroupSetup<T> s(k * n, 6, {6, 9, 4}, {.rank = 2, .alpha = 4}, order);
  s.step();
  const Matrix<T> big_phi = s.gen.grad_phi(), big_psi = s.gen.grad_psi();
  s.store.zero_grad();
  for (Index l = 0; l < 3; ++l) {
    for (Index i = 0; i < k; ++i) {
      const Matrix<T> xi = s.x[l].middleRows(i * n, n), ti = s.target[l].middleRows(i * n, n);
      Matrix<T> yi(n, s.w[l].rows());
      typename WeGeFTAdapter<T>::Cache cache;
      s.layers[l].forward(yi, cache, xi);
      s.layers[l].backward(cache, xi, Matrix<T>(yi - ti));
    }
  }
  CHECK(wt::rel_diff(s.gen.grad_phi(), big_phi) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(s.gen.grad_psi(), big_psi) < wt::Tol<T>::close);
  CHECK(!big_psi.isZero(0));
}

TEST_CASE("wegeft automatic order picks the cheaper exact order", "[wegeft]") {
  Rng rng(1);
  Matrix<float> square = Matrix<float>::Ones(64, 64), down = Matrix<float>::Ones(16, 64);
  ParameterStore<float> store;
  WeGeFTGenerator<float> gen(store, 64, {.rank = 8, .alpha = 16}, rng);
  WeGeFTAdapter<float> sq(gen, FrozenLinear<float>(square), rng);
  WeGeFTAdapter<float> dn(gen, FrozenLinear<float>(down), rng);
  // cost = extra multiply-adds + 2 passes x 11 x N d_in for input_edit (wegeft_order_cost)
  // square 64 x 64, r = 8: input edit 4480 N, weight side 3072 N + 65536: input edit while N <= 46.5
  CHECK(sq.resolve_order(1) == WeGeFTOrder::input_edit);
  CHECK(sq.resolve_order(46) == WeGeFTOrder::input_edit);
  CHECK(sq.resolve_order(47) == WeGeFTOrder::weight_side);
  CHECK(sq.resolve_order(100000) == WeGeFTOrder::weight_side);
  // down projection 64 -> 16: input edit 4480 N, weight side 1920 N + 16384: input edit while N <= 6.4
  CHECK(dn.resolve_order(6) == WeGeFTOrder::input_edit);
  CHECK(dn.resolve_order(7) == WeGeFTOrder::weight_side);
  CHECK(wegeft_order_cost(WeGeFTOrder::input_edit, 10, 8, 64, 16) ==
        6.0 * 10 * 8 * 64 + 2 * 11.0 * 10 * 64);
  CHECK(wegeft_order_cost(WeGeFTOrder::weight_side, 10, 8, 64, 16) ==
        wegeft_extra_macs(WeGeFTOrder::weight_side, 10, 8, 64, 16));
  // the layer of the benchmark (N = 2048, d = 768): weight side at r = 8 and 16, input edit at 64
  Matrix<float> big = Matrix<float>::Ones(768, 768);
  for (const auto& [rank, want] :
       {std::pair{8, WeGeFTOrder::weight_side}, std::pair{16, WeGeFTOrder::weight_side},
        std::pair{64, WeGeFTOrder::input_edit}}) {
    WeGeFTGenerator<float> g(store, 768, {.rank = rank, .alpha = 16}, rng,
                             "bench_r" + std::to_string(rank));
    WeGeFTAdapter<float> layer(g, FrozenLinear<float>(big), rng);
    CHECK(layer.resolve_order(2048) == want);
  }
  CHECK(wegeft_extra_macs(WeGeFTOrder::input_edit, 2048, 8, 768, 768) == 6.0 * 2048 * 8 * 768);
  CHECK(wegeft_extra_macs(WeGeFTOrder::weight_side, 2048, 8, 768, 768) ==
        3.0 * 2048 * 8 * 1536 + 2.0 * 8 * 768 * 768);

  WeGeFTGenerator<float> dropgen(store, 64, {.rank = 8, .alpha = 16, .dropout = 0.1}, rng,
                                 "dropout");
  WeGeFTAdapter<float> drop_auto(dropgen, FrozenLinear<float>(square), rng);
  CHECK(drop_auto.resolve_order(1) == WeGeFTOrder::weight_side);
  drop_auto.set_training(false);
  CHECK(drop_auto.resolve_order(1) == WeGeFTOrder::input_edit);
  WeGeFTAdapter<float> drop_edit(dropgen, FrozenLinear<float>(square), rng,
                                 WeGeFTOrder::input_edit);
  CHECK_THROWS_WITH(drop_edit.resolve_order(1), Catch::Contains("cannot apply weight dropout"));
}

TEST_CASE("wegeft rejects bad configurations and shapes with messages naming the sizes",
          "[wegeft][errors]") {
  Rng rng(1);
  ParameterStore<double> store;
  CHECK_THROWS_WITH(WeGeFTGenerator<double>(store, 8, {.rank = 0}, rng, "v"),
                    Catch::Contains("rank must be at least 1, got 0") && Catch::Contains("'v'"));
  CHECK_THROWS_WITH(WeGeFTGenerator<double>(store, 8, {.rank = 9}, rng),
                    Catch::Contains("rank 9 exceeds d_in = 8"));
  CHECK_THROWS_WITH(WeGeFTGenerator<double>(store, 8, {.rank = 2, .alpha = NAN}, rng),
                    Catch::Contains("alpha must be finite and non-zero, got nan"));
  CHECK_THROWS_WITH(WeGeFTGenerator<double>(store, 8, {.rank = 2, .alpha = -INFINITY}, rng),
                    Catch::Contains("alpha must be finite and non-zero, got -inf"));
  CHECK_THROWS_WITH(WeGeFTGenerator<double>(store, 8, {.rank = 2, .dropout = -0.1}, rng),
                    Catch::Contains("dropout must be in [0, 1)"));
  WeGeFTGenerator<double> gen(store, 8, {.rank = 2, .alpha = 4}, rng, "k_proj");
  Matrix<double> w8 = wt::random_matrix<double>(4, 8, rng),
                 w9 = wt::random_matrix<double>(4, 9, rng);
  WeGeFTAdapter<double> ok(gen, FrozenLinear<double>(w8), rng);
  CHECK_THROWS_WITH(WeGeFTAdapter<double>(gen, FrozenLinear<double>(w9), rng),
                    Catch::Contains("'k_proj' has d_in = 8") && Catch::Contains("W [4, 9]"));
  CHECK(gen.layer_count() == 1);
  Matrix<double> x = wt::random_matrix<double>(3, 8, rng), y(3, 4), x_bad(3, 7), y_bad(2, 4);
  WeGeFTAdapter<double>::Cache cache;
  CHECK_THROWS_WITH(ok.forward(y, cache, x_bad),
                    Catch::Contains("[3, 7]") && Catch::Contains("8 columns"));
  CHECK_THROWS_WITH(ok.forward(y_bad, cache, x), Catch::Contains("[2, 4], expected [3, 4]"));
  ok.forward(y, cache, x);
  Matrix<double> dy_bad(3, 5), dx_bad(3, 9);
  CHECK_THROWS_WITH(ok.backward(cache, x, dy_bad), Catch::Contains("[3, 5], expected [3, 4]"));
  CHECK_THROWS_WITH(ok.backward(dx_bad, cache, x, y), Catch::Contains("[3, 9], expected [3, 8]"));
  WeGeFTAdapter<double> other(gen, FrozenLinear<double>(w8), rng);
  CHECK_THROWS_WITH(other.backward(cache, x, y), Catch::Contains("another layer"));
}

TEMPLATE_TEST_CASE("adapters give the same results on strided views as on contiguous matrices",
                   "[wegeft][lora]", float, double) {
  using T = TestType;
  Rng rng(21);
  const Index n = 6, d_in = 9, d_out = 7, pad = 3;
  Matrix<T> w = wt::random_matrix<T>(d_out, d_in, rng);
  // x, dy and dx live inside wider matrices, so their views have a row stride larger than their width
  Matrix<T> xw = wt::random_matrix<T>(n, d_in + pad, rng),
            dyw = wt::random_matrix<T>(n, d_out + pad, rng);
  Matrix<T> dxw = Matrix<T>::Zero(n, d_in + pad);
  const Matrix<T> x = xw.leftCols(d_in), dy = dyw.leftCols(d_out);
  ParameterStore<T> s1, s2;
  Rng r1(5), r2(5);
  LoraAdapter<T> a(s1, FrozenLinear<T>(w), {.rank = 3, .alpha = 6}, r1),
      b(s2, FrozenLinear<T>(w), {.rank = 3, .alpha = 6}, r2);
  a.lora_B() = wt::random_matrix<T>(d_out, 3, rng);
  b.lora_B() = a.lora_B();
  typename LoraAdapter<T>::Cache ca, cb;
  Matrix<T> ya(n, d_out), yb(n, d_out), dxa(n, d_in);
  a.forward(ya, ca, x);
  b.forward(yb, cb, xw.leftCols(d_in));
  a.backward(dxa, ca, x, dy);
  b.backward(dxw.leftCols(d_in), cb, xw.leftCols(d_in), dyw.leftCols(d_out));
  CHECK(wt::rel_diff(yb, ya) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(Matrix<T>(dxw.leftCols(d_in)), dxa) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(b.grad_A(), a.grad_A()) < wt::Tol<T>::close);
  CHECK(wt::rel_diff(b.grad_B(), a.grad_B()) < wt::Tol<T>::close);
  CHECK(dxw.rightCols(pad).isZero(0));  // nothing written outside the view

  for (WeGeFTOrder order : {WeGeFTOrder::weight_side, WeGeFTOrder::input_edit}) {
    INFO(to_string(order));
    ParameterStore<T> g1, g2;
    Rng q1(6), q2(6);
    WeGeFTGenerator<T> ga(g1, d_in, {.rank = 2, .alpha = 4}, q1),
        gb(g2, d_in, {.rank = 2, .alpha = 4}, q2);
    ga.phi() = wt::random_matrix<T>(2, d_in, rng);
    gb.phi() = ga.phi();
    WeGeFTAdapter<T> la(ga, FrozenLinear<T>(w), q1, order), lb(gb, FrozenLinear<T>(w), q2, order);
    typename WeGeFTAdapter<T>::Cache wa, wb;
    dxw.setZero();
    la.forward(ya, wa, x);
    lb.forward(yb, wb, xw.leftCols(d_in));
    la.backward(dxa, wa, x, dy);
    lb.backward(dxw.leftCols(d_in), wb, xw.leftCols(d_in), dyw.leftCols(d_out));
    CHECK(wt::rel_diff(yb, ya) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(Matrix<T>(dxw.leftCols(d_in)), dxa) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(gb.grad_phi(), ga.grad_phi()) < wt::Tol<T>::close);
    CHECK(wt::rel_diff(gb.grad_psi(), ga.grad_psi()) < wt::Tol<T>::close);
    CHECK(dxw.rightCols(pad).isZero(0));
  }
}

// The bf16 products: gemm_bf16 against a double sum over the bf16-rounded operands, the frozen
// layer and the adapters with bf16 products against the same oracle, and whole models against
// their fp32 selves. Where the CPU has no AVX512-BF16, the refusals are what is tested; where it
// has AMX, the GEMM is tested through both kernels and the models through AMX (the automatic
// choice).
#include "support.hpp"

namespace {

using wegeft::Bf16Panels;
using wegeft::Index;
using wegeft::Matrix;

float bf16_round(float v) {
  return wegeft::bf16_to_float(wegeft::float_to_bf16(v));
}

Matrix<float> random_matrix(Index rows, Index cols, std::uint64_t seed) {
  wegeft::Rng rng(seed);
  Matrix<float> m(rows, cols);
  wegeft::fill_uniform(m, rng, -1.0f, 1.0f);
  return m;
}

/// |c - (c0 + a b^T)| <= 1e-5 sum |terms| + 1e-30 per entry, the sum in double over a and b
/// rounded to bf16 (the products of two bf16 values are exact in fp32; what remains is the fp32
/// summation's rounding). a [M, K] (row stride lda), b [N, K], c and c0 [M, N] (row stride ldc).
void check_against_double(const float* c, const float* c0, Index ldc, const float* a, Index lda,
                          const Matrix<float>& b, Index m) {
  const Index n = b.rows(), k = b.cols();
  double worst = 0;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      double sum = c0 != nullptr ? c0[i * ldc + j] : 0.0, mag = std::abs(sum);
      for (Index p = 0; p < k; ++p) {
        const double t = double(bf16_round(a[i * lda + p])) * double(bf16_round(b(j, p)));
        sum += t;
        mag += std::abs(t);
      }
      const double err = std::abs(c[i * ldc + j] - sum);
      worst = std::max(worst, err / (mag + 1e-30));
      REQUIRE(err <= 1e-5 * mag + 1e-30);
    }
  INFO("worst relative error " << worst);
  CHECK(worst < 1e-5);
}

}  // namespace

TEST_CASE("bf16 panels hold each weight rounded to nearest even, both orientations", "[bf16]") {
  const Index n = 45, k = 61, ld = 64;
  Matrix<float> w = random_matrix(n, ld, 3);
  w(0, 0) = 1.0f + 1.0f / 256;  // a tie: rounds to the even 1.0
  w(0, 1) = 1.0f + 3.0f / 256;  // a tie: rounds to the even 1 + 4/256
  const auto rows = Bf16Panels::from_rows(w.data(), n, k, ld);
  REQUIRE(rows.rows() == n);
  REQUIRE(rows.cols() == k);
  for (Index i = 0; i < n; ++i)
    for (Index j = 0; j < k; ++j) REQUIRE(rows.at(i, j) == bf16_round(w(i, j)));
  CHECK(rows.at(0, 0) == 1.0f);
  CHECK(rows.at(0, 1) == 1.0f + 4.0f / 256);
  // from_cols packs the transpose: B[i][j] = M[j][i] for M [k = 45, n = 61]
  const auto cols = Bf16Panels::from_cols(w.data(), n, k, ld);
  REQUIRE(cols.rows() == k);
  REQUIRE(cols.cols() == n);
  for (Index i = 0; i < k; ++i)
    for (Index j = 0; j < n; ++j) REQUIRE(cols.at(i, j) == bf16_round(w(j, i)));
  CHECK_THROWS_WITH(Bf16Panels::from_rows(w.data(), n, k, 10),
                    Catch::Contains("row stride 10 is below the 61 columns"));
}

TEST_CASE("bf16 GEMM equals a double sum of the bf16-rounded operands on odd sizes", "[bf16]") {
  if (!wegeft::bf16_gemm_available()) {
    WARN("this CPU has no AVX512-BF16: only the refusal is tested");
    Matrix<float> b = random_matrix(4, 4, 1), a = random_matrix(2, 4, 2), c(2, 4);
    const auto p = Bf16Panels::from_rows(b.data(), 4, 4, 4);
    CHECK_THROWS_WITH(wegeft::gemm_bf16(c.data(), 4, a.data(), 4, 2, p, false),
                      Catch::Contains("no AVX512-BF16"));
    return;
  }
  // (M, K, N): single entries, partial panels and micro-tiles, several blocks of k (> 384), of
  // rows (> 240 and > 256) and of panels (N > 16 x 32: two whole blocks of panels and a third of
  // two, the last one partial), odd K (the last pair half padding), K pairs not a multiple of an
  // AMX tile's 16. Each kernel this CPU runs (AMX only where it has it) against the same oracle.
  const std::vector<std::array<Index, 3>> shapes = {{1, 1, 1},      {13, 2, 31},   {37, 61, 45},
                                                    {253, 500, 70}, {12, 385, 32}, {250, 16, 33},
                                                    {64, 64, 64},   {300, 33, 97}, {29, 70, 1069}};
  std::vector<wegeft::Bf16Kernel> kernels = {wegeft::Bf16Kernel::avx512bf16};
  if (wegeft::amx_bf16_available())
    kernels.push_back(wegeft::Bf16Kernel::amx);
  else
    WARN("this CPU has no AMX-BF16: only the AVX512-BF16 kernel is tested");
  for (const auto kernel : kernels) {
    wegeft::set_bf16_kernel(kernel);
    std::uint64_t seed = 10;
    for (const auto& [m, k, n] : shapes) {
      for (const bool accumulate : {false, true}) {
        INFO(wegeft::bf16_kernel_name()
             << ": M " << m << " K " << k << " N " << n << (accumulate ? " +=" : " ="));
        const Index lda = k + 3, ldc = n + 5;  // strided rows on both sides
        const Matrix<float> a = random_matrix(m, lda, ++seed), b = random_matrix(n, k, ++seed);
        const Matrix<float> c0 = random_matrix(m, ldc, ++seed);
        Matrix<float> c = c0;
        const auto p = Bf16Panels::from_rows(b.data(), n, k, k);
        wegeft::gemm_bf16(c.data(), ldc, a.data(), lda, m, p, accumulate);
        check_against_double(c.data(), accumulate ? c0.data() : nullptr, ldc, a.data(), lda, b, m);
        for (Index i = 0; i < m; ++i)  // the padding between rows of c is untouched
          for (Index j = n; j < ldc; ++j) REQUIRE(c(i, j) == c0(i, j));
      }
    }
  }
  wegeft::set_bf16_kernel(wegeft::Bf16Kernel::automatic);
}

TEST_CASE("the bf16 kernel is chosen by the CPU and can be forced to one it has", "[bf16]") {
  wegeft::set_bf16_kernel(wegeft::Bf16Kernel::automatic);
  if (!wegeft::bf16_gemm_available()) {
    CHECK(wegeft::bf16_kernel_name() == "none");
    CHECK_THROWS_WITH(wegeft::set_bf16_kernel(wegeft::Bf16Kernel::avx512bf16),
                      Catch::Contains("no AVX512-BF16"));
    CHECK_THROWS_WITH(wegeft::set_bf16_kernel(wegeft::Bf16Kernel::amx),
                      Catch::Contains("AMX is not available"));
    return;
  }
  const bool amx = wegeft::amx_bf16_available();
  CHECK(wegeft::bf16_kernel() == (amx ? wegeft::Bf16Kernel::amx : wegeft::Bf16Kernel::avx512bf16));
  wegeft::set_bf16_kernel(wegeft::Bf16Kernel::avx512bf16);
  CHECK(wegeft::bf16_kernel_name() == "AVX512-BF16");
  if (amx) {
    wegeft::set_bf16_kernel(wegeft::Bf16Kernel::amx);
    CHECK(wegeft::bf16_kernel_name() == "AMX");
  } else {
    CHECK_THROWS_WITH(wegeft::set_bf16_kernel(wegeft::Bf16Kernel::amx),
                      Catch::Contains("AMX is not available"));
  }
  wegeft::set_bf16_kernel(wegeft::Bf16Kernel::automatic);
}

TEST_CASE("a frozen layer with bf16 products equals the double sum over bf16-rounded operands",
          "[bf16]") {
  const Index n = 29, d_in = 70, d_out = 51;
  Matrix<float> w = random_matrix(d_out, d_in, 5), bias = random_matrix(1, d_out, 6);
  wegeft::Bf16Weight packed;
  const wegeft::FrozenLinear<float> layer(w.data(), d_out, d_in, bias.data(), &packed);
  CHECK_FALSE(layer.bf16());  // nothing packed yet: fp32
  if (!wegeft::bf16_gemm_available()) {
    WARN("this CPU has no AVX512-BF16: only the fp32 layer is tested");
    return;
  }
  packed.pack(w.data(), d_out, d_in);
  REQUIRE(layer.bf16());
  const Matrix<float> x = random_matrix(n, d_in, 7), dy = random_matrix(n, d_out, 8);
  Matrix<float> y(n, d_out), bias_rows(n, d_out);
  bias_rows.rowwise() = bias.row(0);
  layer.forward(y, x);
  check_against_double(y.data(), bias_rows.data(), d_out, x.data(), d_in, w, n);
  Matrix<float> dx(n, d_in);
  layer.backward_input(dx, dy);
  const Matrix<float> wt = w.transpose();
  check_against_double(dx.data(), nullptr, d_in, dy.data(), d_out, wt, n);
  const Matrix<float> dx0 = random_matrix(n, d_in, 9);
  dx = dx0;
  layer.accumulate_backward_input(dx, dy);
  check_against_double(dx.data(), dx0.data(), d_in, dy.data(), d_out, wt, n);
  packed.clear();
  CHECK_FALSE(layer.bf16());
  layer.forward(y, x);  // back to fp32: Eigen's product
  const Matrix<float> y32 = (x * w.transpose()).rowwise() + bias.row(0);
  CHECK((y - y32).cwiseAbs().maxCoeff() < 1e-5);
}

namespace {

using MatD = Eigen::Matrix<double, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

MatD dbl(const Matrix<float>& m) {
  return m.cast<double>();
}
MatD dbl_rounded(const Matrix<float>& m) {
  return m.unaryExpr([](float v) { return bf16_round(v); }).cast<double>();
}

/// |got - want| <= tol * mag entry by entry (mag: the sum of the terms' magnitudes).
void check_entries(const Matrix<float>& got, const MatD& want, const MatD& mag, double tol) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  double worst = 0;
  for (Index i = 0; i < want.rows(); ++i)
    for (Index j = 0; j < want.cols(); ++j) {
      const double err = std::abs(double(got(i, j)) - want(i, j));
      worst = std::max(worst, err / (mag(i, j) + 1e-30));
      REQUIRE(err <= tol * mag(i, j) + 1e-30);
    }
  INFO("worst relative error " << worst);
  CHECK(worst < tol);
}

}  // namespace

TEST_CASE(
    "bf16 LoRA and WeGeFT weight-side layers equal a double oracle in output and every gradient",
    "[bf16][lora][wegeft]") {
  if (!wegeft::bf16_gemm_available()) {
    WARN("this CPU has no AVX512-BF16: the bf16 adapter layers are not tested");
    return;
  }
  // 37 rows: one block of the GEMM's rows; 613: three, the last partial; 1300: enough values
  // (N d_out >= 64K) for the kernels to split the rows over the threads where they have several.
  const Index n = GENERATE(37, 613, 1300), d_in = 70, d_out = 51;
  INFO("N " << n);
  Matrix<float> w = random_matrix(d_out, d_in, 31), bias = random_matrix(1, d_out, 32);
  const Matrix<float> x = random_matrix(n, d_in, 33), dy = random_matrix(n, d_out, 34);
  wegeft::Bf16Weight packed;
  packed.pack(w.data(), d_out, d_in);
  const wegeft::FrozenLinear<float> base(w.data(), d_out, d_in, bias.data(), &packed);
  REQUIRE(base.bf16());
  const MatD X = dbl(x), DY = dbl(dy), W = dbl(w), Xr = dbl_rounded(x), Wr = dbl_rounded(w);
  const MatD DYr = dbl_rounded(dy), ones = MatD::Ones(n, 1);
  const MatD frozen = ones * dbl(bias) + Xr * Wr.transpose();
  const MatD frozen_mag = ones * dbl(bias).cwiseAbs() + Xr.cwiseAbs() * Wr.cwiseAbs().transpose();
  const MatD dx_frozen = DYr * Wr, dx_frozen_mag = DYr.cwiseAbs() * Wr.cwiseAbs();
  const auto max_rel = [](const Matrix<float>& got, const MatD& want) {
    return (got.cast<double>() - want).cwiseAbs().maxCoeff() / want.cwiseAbs().maxCoeff();
  };
  // y = frozen + s (x D^T) E^T and dx = dy W + s (dy E) D for the adapter's down factor D [r,
  // d_in] and up factor E [d_out, r] (Emag: its entries' magnitudes); returns d u = s dy E.
  const auto check_step = [&](const Matrix<float>& y, const Matrix<float>& dx, const MatD& D,
                              const MatD& E, const MatD& Emag, double sc) {
    check_entries(y, frozen + sc * X * D.transpose() * E.transpose(),
                  frozen_mag + sc * (X.cwiseAbs() * D.cwiseAbs().transpose()) * Emag.transpose(),
                  2e-5);
    const MatD G = sc * DY * E;
    check_entries(dx, dx_frozen + G * D, dx_frozen_mag + sc * (DY.cwiseAbs() * Emag) * D.cwiseAbs(),
                  2e-5);
    return G;
  };
  // the adapter's values random and non-zero, then its forward and backward: y and dx
  const auto run = [&](auto& layer, wegeft::ParameterStore<float>& store, wegeft::Rng& rng) {
    for (float& v : store.values()) v = rng.uniform(-0.5f, 0.5f);
    typename std::remove_reference_t<decltype(layer)>::Cache cache;
    std::pair<Matrix<float>, Matrix<float>> out{Matrix<float>(n, d_out), Matrix<float>(n, d_in)};
    layer.forward(out.first, cache, x);
    layer.backward(out.second, cache, x, dy);
    return out;
  };
  for (const Index r : {1, 8, 16, 17}) {
    INFO("LoRA rank " << r);
    wegeft::Rng rng(40 + static_cast<std::uint64_t>(r));
    wegeft::ParameterStore<float> store;
    wegeft::LoraAdapter<float> lora(store, base, {.rank = r, .alpha = 2.0 * r}, rng, "q");
    const auto [y, dx] = run(lora, store, rng);
    const MatD A = dbl(Matrix<float>(lora.lora_A())), B = dbl(Matrix<float>(lora.lora_B()));
    const MatD G = check_step(y, dx, A, B, B.cwiseAbs(), lora.scale());
    CHECK(max_rel(Matrix<float>(lora.grad_A()), G.transpose() * X) < 1e-5);
    CHECK(max_rel(Matrix<float>(lora.grad_B()), lora.scale() * DY.transpose() * X * A.transpose()) <
          1e-5);
  }
  for (const Index r : {8, 16}) {
    INFO("WeGeFT weight side, rank " << r);
    wegeft::Rng rng(60 + static_cast<std::uint64_t>(r));
    wegeft::ParameterStore<float> store;
    wegeft::WeGeFTGenerator<float> gen(store, d_in, {.rank = r, .alpha = 2.0 * r}, rng, "q");
    wegeft::WeGeFTAdapter<float> layer(gen, base, rng, wegeft::WeGeFTOrder::weight_side);
    const auto [y, dx] = run(layer, store, rng);
    const MatD Phi = dbl(Matrix<float>(gen.phi())), Psi = dbl(Matrix<float>(gen.psi()));
    // the up factor is P = W Phi^T, in fp32: y += s (x Psi^T) P^T
    const MatD G = check_step(y, dx, Psi, W * Phi.transpose(),
                              W.cwiseAbs() * Phi.cwiseAbs().transpose(), gen.scale());
    CHECK(max_rel(Matrix<float>(gen.grad_psi()), G.transpose() * X) < 1e-5);
    // d Phi = s u^T (dy W) with u = x Psi^T
    CHECK(max_rel(Matrix<float>(gen.grad_phi()),
                  gen.scale() * (X * Psi.transpose()).transpose() * DY * W) < 1e-5);
  }
}

namespace {

/// One loss and the gradients of every trainable tensor of a tiny model of `family` with
/// `method` on every linear (and, for bert, a classifier), with or without bf16 products.
struct StepResult {
  double loss;
  Matrix<float> grads;
};

StepResult model_step(wegeft::Family family, int method, bool bf16) {
  wegeft::ModelConfig c;
  c.family = family;
  c.vocab_size = 97;
  c.hidden = 48;
  c.layers = 2;
  c.heads = 4;
  c.kv_heads = family == wegeft::Family::llama ? 2 : 4;
  c.intermediate = 80;
  c.max_positions = 32;
  wegeft::Transformer<float> model(c);
  wegeft::Rng rng(21);
  model.init_random(rng, 0.2);
  wegeft::ParameterStore<float> store;
  model.attach({.target_modules = {"all-linear"}, .method = wt::method_config(method, 4, 8.0)},
               store);
  // Non-zero adapter weights, so every adapter term reaches the loss.
  wegeft::Rng init(22);
  for (float& v : store.values()) v = init.uniform(-0.1f, 0.1f);
  if (family == wegeft::Family::bert) model.add_classifier(3, store);
  if (bf16) model.set_bf16_products(true);
  const Index batch = 3, seq = 11;
  std::vector<std::int32_t> ids(batch * seq), targets(batch * seq), labels = {0, 2, 1};
  for (Index i = 0; i < batch * seq; ++i) {
    ids[i] = static_cast<std::int32_t>((i * 37 + 5) % 97);
    targets[i] = static_cast<std::int32_t>((i * 11 + 3) % 97);
  }
  wegeft::Transformer<float>::Activations acts;
  model.forward(acts, {.ids = ids.data(), .batch = batch, .seq = seq});
  const double loss = family == wegeft::Family::bert
                          ? model.classification_loss(acts, labels.data())
                          : model.lm_loss(acts, targets.data());
  model.backward(acts);
  const auto g = store.grads();
  return {loss, Eigen::Map<const Matrix<float>>(g.data(), 1, static_cast<Index>(g.size()))};
}

}  // namespace

TEST_CASE("a model step with bf16 products tracks the fp32 step within bf16 rounding",
          "[bf16][model]") {
  if (!wegeft::bf16_gemm_available()) {
    wegeft::Transformer<float> model(wegeft::ModelConfig::tiny(wegeft::Family::llama));
    CHECK_THROWS_WITH(model.set_bf16_products(true), Catch::Contains("AVX512-BF16"));
    WARN("this CPU has no AVX512-BF16: only the refusal is tested");
    return;
  }
  // bf16 keeps 8 significant bits (relative rounding 2^-9 per operand): the loss within 1 % and
  // the gradient vector within 3 % (relative norm of the difference) of fp32, and never equal to
  // it (the bf16 path is really taken).
  for (const auto family : {wegeft::Family::bert, wegeft::Family::llama})
    for (int method = 0; method < 2; ++method) {
      INFO("family " << static_cast<int>(family) << ", method " << method);
      const StepResult f = model_step(family, method, false), b = model_step(family, method, true);
      CHECK(std::abs(b.loss - f.loss) <= 0.01 * std::abs(f.loss));
      CHECK(b.loss != f.loss);
      const double rel = (b.grads - f.grads).norm() / f.grads.norm();
      INFO("gradient relative difference " << rel << ", loss " << f.loss << " vs " << b.loss);
      CHECK(rel < 0.03);
      CHECK(rel > 0.0);
    }
}

TEST_CASE("bf16 products switch off again and are refused for double models", "[bf16][model]") {
  wegeft::ModelConfig c;
  c.family = wegeft::Family::llama;
  c.vocab_size = 50;
  c.hidden = 16;
  c.layers = 1;
  c.heads = 2;
  c.kv_heads = 2;
  c.intermediate = 24;
  c.max_positions = 8;
  wegeft::Transformer<double> d(c);
  CHECK_THROWS_WITH(d.set_bf16_products(true), Catch::Contains("float model"));
  if (!wegeft::bf16_gemm_available()) return;
  wegeft::Transformer<float> model(c);
  wegeft::Rng rng(4);
  model.init_random(rng, 0.2);
  model.set_bf16_products(true);
  CHECK(model.bf16_products());
  CHECK(model.bf16_attention());  // automatic: the bf16 flash kernels
  model.set_attention_kernel(wegeft::AttentionKernel::probabilities);
  CHECK_FALSE(model.bf16_attention());  // the probabilities kernels stay in fp32
  model.set_attention_kernel(wegeft::AttentionKernel::automatic);
  // each linear twice (forward, backward) and the LM head twice, 2 bytes per weight, padded
  CHECK(model.bf16_bytes() >= 2 * 2 * (4 * 16 * 16 + 3 * 16 * 24 + 50 * 16));
  model.set_bf16_products(false);
  CHECK_FALSE(model.bf16_products());
  CHECK(model.bf16_bytes() == 0);
}

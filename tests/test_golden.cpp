// Forward outputs and every gradient against PyTorch (tools/reference/make_adapter_golden.py):
// LoRA as Hugging Face PEFT computes it, WeGeFT from the materialised generated weight.
#include "support.hpp"

using namespace wegeft;

namespace {

template <class T>
double golden_tol() {
  return std::is_same_v<T, double> ? 1e-12 : 2e-5;
}

}  // namespace

TEMPLATE_TEST_CASE("lora forward and gradients equal PyTorch/PEFT golden files", "[lora][golden]",
                   float, double) {
  using T = TestType;
  const wt::Golden g("adapters.txt");
  const std::string name = GENERATE(as<std::string>{}, "lora_r1", "lora_rslora", "lora_nobias");
  INFO("case " << name);
  const auto cfg = g.get(name + ".config");
  const Index r = static_cast<Index>(cfg(0, 0));
  const bool has_bias = cfg(0, 3) != 0.0;
  Matrix<T> w = g.get<T>(name + ".W");
  Vector<T> b = has_bias ? Vector<T>(g.get<T>(name + ".b").transpose()) : Vector<T>();
  const Matrix<T> x = g.get<T>(name + ".x"), dy = g.get<T>(name + ".dy");
  ParameterStore<T> store;
  Rng rng(0);
  LoraAdapter<T> lora(store, FrozenLinear<T>(w, has_bias ? &b : nullptr),
                      {.rank = r, .alpha = cfg(0, 1), .use_rslora = cfg(0, 2) != 0.0}, rng);
  lora.lora_A() = g.get<T>(name + ".A");
  lora.lora_B() = g.get<T>(name + ".B");
  typename LoraAdapter<T>::Cache cache;
  Matrix<T> y(x.rows(), w.rows()), dx(x.rows(), x.cols());
  lora.forward(y, cache, x);
  lora.backward(dx, cache, x, dy);
  const double tol = golden_tol<T>();
  CHECK(wt::rel_diff(y.template cast<double>(), g.get(name + ".y")) < tol);
  CHECK(wt::rel_diff(dx.template cast<double>(), g.get(name + ".dx")) < tol);
  CHECK(wt::rel_diff(Matrix<T>(lora.grad_A()).template cast<double>(), g.get(name + ".dA")) < tol);
  CHECK(wt::rel_diff(Matrix<T>(lora.grad_B()).template cast<double>(), g.get(name + ".dB")) < tol);
}

TEMPLATE_TEST_CASE(
    "wegeft forward and group-summed gradients equal PyTorch golden files, both orders",
    "[wegeft][golden]", float, double) {
  using T = TestType;
  const wt::Golden g("adapters.txt");
  const std::string name = GENERATE(as<std::string>{}, "wegeft_group", "wegeft_r1", "wegeft_wide");
  const WeGeFTOrder order = GENERATE(WeGeFTOrder::weight_side, WeGeFTOrder::input_edit);
  INFO("case " << name << " order " << to_string(order));
  const auto cfg = g.get(name + ".config");
  const Index r = static_cast<Index>(cfg(0, 0));
  const auto n_layers = static_cast<std::size_t>(cfg(0, 2));
  std::vector<Matrix<T>> w;
  std::vector<Vector<T>> b;
  w.reserve(n_layers);
  b.reserve(n_layers);
  for (std::size_t l = 0; l < n_layers; ++l) {
    const std::string p = name + "." + std::to_string(l) + ".";
    w.push_back(g.get<T>(p + "W"));
    b.emplace_back(g.get<T>(p + "b").transpose());
  }
  ParameterStore<T> store;
  Rng rng(0);
  WeGeFTGenerator<T> gen(store, w[0].cols(), {.rank = r, .alpha = cfg(0, 1)}, rng);
  gen.phi() = g.get<T>(name + ".phi");
  gen.psi() = g.get<T>(name + ".psi");
  const double tol = golden_tol<T>();
  for (std::size_t l = 0; l < n_layers; ++l) {
    const std::string p = name + "." + std::to_string(l) + ".";
    WeGeFTAdapter<T> layer(gen, FrozenLinear<T>(w[l], &b[l]), rng, order);
    const Matrix<T> x = g.get<T>(p + "x"), dy = g.get<T>(p + "dy");
    Matrix<T> y(x.rows(), w[l].rows()), dx(x.rows(), x.cols());
    typename WeGeFTAdapter<T>::Cache cache;
    layer.forward(y, cache, x);
    layer.backward(dx, cache, x, dy);
    CHECK(wt::rel_diff(y.template cast<double>(), g.get(p + "y")) < tol);
    CHECK(wt::rel_diff(dx.template cast<double>(), g.get(p + "dx")) < tol);
  }
  CHECK(wt::rel_diff(Matrix<T>(gen.grad_phi()).template cast<double>(), g.get(name + ".dphi")) <
        tol);
  CHECK(wt::rel_diff(Matrix<T>(gen.grad_psi()).template cast<double>(), g.get(name + ".dpsi")) <
        tol);
}

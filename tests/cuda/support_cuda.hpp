// What the CUDA tests share: the one device context, and the values a device tensor of a dtype
// holds for host data.
#pragma once

#include "../support.hpp"

#include <wegeft/cuda.hpp>

#include <limits>
#include <variant>

namespace wt::cuda {

/// Device 0's context, created by the first test that needs it.
inline wegeft::cuda::Context& context() {
  static wegeft::cuda::Context ctx(0);
  return ctx;
}

/// The values a device tensor of `dtype` holds for `m` (bf16: rounded to nearest even).
inline wegeft::Matrix<float> rounded(const wegeft::Matrix<float>& m, wegeft::DType dtype) {
  if (dtype == wegeft::DType::F32) return m;
  return m.unaryExpr([](float v) { return wegeft::bf16_to_float(wegeft::float_to_bf16(v)); });
}

inline wegeft::Matrix<double> d(const wegeft::Matrix<float>& m) {
  return m.cast<double>();
}

/// Tolerances relative to the largest reference value, by storage dtype: outputs and input
/// gradients; parameter gradients (sums over N of products of rounded intermediates).
inline double out_tol(wegeft::DType t) {
  return t == wegeft::DType::F32 ? 2e-5 : 1e-2;
}
inline double grad_tol(wegeft::DType t) {
  return t == wegeft::DType::F32 ? 2e-5 : 2e-2;
}

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

/// Gives every trainable value of m a random value in [-0.2, 0.2] (LoRA's B = 0 would hide half
/// the gradients) and, for BF16, rounds those and every frozen tensor to bf16, so that the CPU
/// model and a BF16 GPU model start from the same numbers.
inline void randomise_and_round(wegeft::Transformer<float>& m, wegeft::DType dtype,
                                wegeft::Rng& rng) {
  for (float& v : m.store().values()) v = 0.2f * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
  if (dtype != wegeft::DType::BF16) return;
  // In place (an expression, not a temporary that Eigen would move in): the adapters' frozen
  // views point at these tensors' storage.
  const auto round = [](float v) { return wegeft::bf16_to_float(wegeft::float_to_bf16(v)); };
  for (auto& [name, t] : m.tensors()) m.tensor(name) = t.unaryExpr(round);
  for (float& v : m.store().values()) v = round(v);
}

/// Merges every adapter of m into its layer's weight (as `wegeft eval --merge` does).
inline void merge_adapters(wegeft::Transformer<float>& m) {
  for (auto& mod : m.modules())
    if (mod.adapter) std::visit([](auto& a) { a.merge(); }, *mod.adapter);
}

/// A store holding a copy of `from`'s gradients (same layout).
inline wegeft::ParameterStore<float> gradients_of(const wegeft::ParameterStore<float>& from) {
  wegeft::ParameterStore<float> out;
  for (const auto& e : from.entries()) out.add(e.name, e.rows, e.cols);
  std::copy(from.grads().begin(), from.grads().end(), out.grads().begin());
  return out;
}

/// Every gradient of `got` within tol of `want`'s, relative to the largest value of each.
inline void check_gradients(const wegeft::ParameterStore<float>& want,
                            const wegeft::ParameterStore<float>& got, double tol) {
  REQUIRE(want.entries().size() == got.entries().size());
  for (std::size_t i = 0; i < want.entries().size(); ++i) {
    const wegeft::ParamId id{i};
    INFO(want.entry(id).name);
    const wegeft::Matrix<double> w = want.grad(id).cast<double>();
    const wegeft::Matrix<double> g = got.grad(id).cast<double>();
    REQUIRE(g.allFinite());
    REQUIRE(w.cwiseAbs().maxCoeff() > 0);
    CHECK((g - w).cwiseAbs().maxCoeff() / w.cwiseAbs().maxCoeff() < tol);
  }
}

}  // namespace wt::cuda

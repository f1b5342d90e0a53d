// AdamW (Loshchilov and Hutter) over a flat parameter buffer, with PyTorch's torch.optim.AdamW
// semantics: decoupled weight decay p *= 1 - lr * wd, bias-corrected moments, eps added to the
// corrected square root. The moment buffers are allocated at the first step and can be saved and
// restored with state() / set_state().
//
//   wegeft::AdamW<float> opt({.lr = 1e-3, .weight_decay = 0.01});
//   ... forward / backward into store.grads() ...
//   opt.step(store.values(), store.grads());
//   store.zero_grad();
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

#include "wegeft/core/error.hpp"

namespace wegeft {

struct AdamWConfig {
  double lr = 1e-3;
  double beta1 = 0.9, beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.01;
};

template <class T>
class AdamW {
 public:
  struct State {
    std::int64_t step = 0;
    std::vector<T> m, v;
  };

  explicit AdamW(const AdamWConfig& config = {}) : m_config(config) {
    WEGEFT_CHECK(config.lr >= 0 && std::isfinite(config.lr), "AdamW lr must be >= 0, got " << config.lr);
    WEGEFT_CHECK(config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
                 "AdamW betas must be in [0, 1), got (" << config.beta1 << ", " << config.beta2 << ")");
    WEGEFT_CHECK(config.eps >= 0, "AdamW eps must be >= 0, got " << config.eps);
    WEGEFT_CHECK(config.weight_decay >= 0, "AdamW weight_decay must be >= 0, got " << config.weight_decay);
  }

  /// One update of params from grads (same length every call). `lr` overrides the configured
  /// learning rate for this step (for schedules); pass a negative value to use the config's.
  void step(std::span<T> params, std::span<const T> grads, double lr = -1.0) {
    WEGEFT_CHECK(params.size() == grads.size(), "AdamW got " << params.size() << " parameters and "
                                                 << grads.size() << " gradients");
    if (m_state.m.empty()) {
      m_state.m.assign(params.size(), T(0));
      m_state.v.assign(params.size(), T(0));
    }
    WEGEFT_CHECK(m_state.m.size() == params.size(), "AdamW state holds " << m_state.m.size()
                 << " parameters but the step got " << params.size());
    if (lr < 0) lr = m_config.lr;
    const std::int64_t t = ++m_state.step;
    const double b1 = m_config.beta1, b2 = m_config.beta2;
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(t));
    const double sqrt_c2 = std::sqrt(1.0 - std::pow(b2, static_cast<double>(t)));
    const double step_size = lr / c1, decay = 1.0 - lr * m_config.weight_decay;
    for (std::size_t i = 0; i < params.size(); ++i) {
      const double g = grads[i];
      const double m = b1 * m_state.m[i] + (1.0 - b1) * g;
      const double v = b2 * m_state.v[i] + (1.0 - b2) * g * g;
      m_state.m[i] = static_cast<T>(m);
      m_state.v[i] = static_cast<T>(v);
      const double denom = std::sqrt(static_cast<double>(m_state.v[i])) / sqrt_c2 + m_config.eps;
      params[i] = static_cast<T>(params[i] * decay - step_size * m_state.m[i] / denom);
    }
  }

  const AdamWConfig& config() const { return m_config; }
  const State& state() const { return m_state; }
  void set_state(State state) {
    WEGEFT_CHECK(state.m.size() == state.v.size() && state.step >= 0,
                 "AdamW state has " << state.m.size() << " first and " << state.v.size()
                 << " second moments at step " << state.step);
    m_state = std::move(state);
  }

 private:
  AdamWConfig m_config;
  State m_state;
};

}  // namespace wegeft

// AdamW (Loshchilov and Hutter) over a flat parameter buffer, with PyTorch's torch.optim.AdamW
// semantics: decoupled weight decay p *= 1 - lr * wd, bias-corrected moments, eps added to the
// corrected square root. The moment buffers are allocated at the first step and can be saved and
// restored with state() / set_state().
//
// The update is one vectorised pass in the compute type (Eigen packets: m, v and the parameter
// each read and written once), split over OpenMP threads for large buffers like the other CPU
// kernels (kernels/cpu/threads.hpp); reference::adamw_step is its double-precision oracle.
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
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/adamw.hpp"
#include "wegeft/kernels/cpu/threads.hpp"

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
    WEGEFT_CHECK(config.lr >= 0 && std::isfinite(config.lr),
                 "AdamW lr must be >= 0, got " << config.lr);
    WEGEFT_CHECK(
        config.beta1 >= 0 && config.beta1 < 1 && config.beta2 >= 0 && config.beta2 < 1,
        "AdamW betas must be in [0, 1), got (" << config.beta1 << ", " << config.beta2 << ")");
    WEGEFT_CHECK(config.eps >= 0, "AdamW eps must be >= 0, got " << config.eps);
    WEGEFT_CHECK(config.weight_decay >= 0,
                 "AdamW weight_decay must be >= 0, got " << config.weight_decay);
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
    WEGEFT_CHECK(m_state.m.size() == params.size(),
                 "AdamW state holds " << m_state.m.size() << " parameters but the step got "
                                      << params.size());
    if (lr < 0) lr = m_config.lr;
    const std::int64_t t = ++m_state.step;
    const double b1 = m_config.beta1, b2 = m_config.beta2;
    const double c1 = 1.0 - std::pow(b1, static_cast<double>(t));
    const double sqrt_c2 = std::sqrt(1.0 - std::pow(b2, static_cast<double>(t)));
    const detail::AdamWCoefficients<T> c{
        static_cast<T>(b1),      static_cast<T>(1.0 - b1),
        static_cast<T>(b2),      static_cast<T>(1.0 - b2),
        static_cast<T>(sqrt_c2), static_cast<T>(m_config.eps),
        static_cast<T>(lr / c1), static_cast<T>(1.0 - lr * m_config.weight_decay)};
    T* p = params.data();
    T* m = m_state.m.data();
    T* v = m_state.v.data();
    const T* g = grads.data();
    const auto n = static_cast<Index>(params.size());
    const int threads = detail::kernel_threads(n);
    if (threads > 1)
      detail::for_each_part(n, 1024, threads, [&](Index, Index b, Index e) {
        detail::adamw_update(p, m, v, g, b, e, c);
      });
    else
      detail::adamw_update(p, m, v, g, 0, n, c);
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

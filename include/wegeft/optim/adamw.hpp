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
#include "wegeft/kernels/cpu/threads.hpp"

#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace wegeft {

namespace detail {

/// The per-step constants of an AdamW update, in the compute type.
template <class T>
struct AdamWCoefficients {
  T beta1, one_minus_beta1, beta2, one_minus_beta2, sqrt_c2, eps, step_size, decay;
};

/// Elements [begin, end) of one AdamW update: m = b1 m + (1 - b1) g, v = b2 v + (1 - b2) g^2,
/// p = p * decay - step_size * m / (sqrt(v) / sqrt_c2 + eps).
template <class T>
void adamw_update(T* p, T* m, T* v, const T* g, Index begin, Index end, const AdamWCoefficients<T>& c) {
  namespace ei = Eigen::internal;
  using Packet = typename ei::packet_traits<T>::type;
  constexpr Index PS = ei::unpacket_traits<Packet>::size;
  const Packet b1 = ei::pset1<Packet>(c.beta1), a1 = ei::pset1<Packet>(c.one_minus_beta1);
  const Packet b2 = ei::pset1<Packet>(c.beta2), a2 = ei::pset1<Packet>(c.one_minus_beta2);
  const Packet sc2 = ei::pset1<Packet>(c.sqrt_c2), eps = ei::pset1<Packet>(c.eps);
  const Packet step = ei::pset1<Packet>(c.step_size), decay = ei::pset1<Packet>(c.decay);
  Index i = begin;
  for (; i + PS <= end; i += PS) {
    const Packet gi = ei::ploadu<Packet>(g + i);
    const Packet mi = ei::pmadd(b1, ei::ploadu<Packet>(m + i), ei::pmul(a1, gi));
    const Packet vi = ei::pmadd(b2, ei::ploadu<Packet>(v + i), ei::pmul(a2, ei::pmul(gi, gi)));
    ei::pstoreu(m + i, mi);
    ei::pstoreu(v + i, vi);
    const Packet denom = ei::padd(ei::pdiv(ei::psqrt(vi), sc2), eps);
    ei::pstoreu(p + i, ei::psub(ei::pmul(ei::ploadu<Packet>(p + i), decay), ei::pdiv(ei::pmul(step, mi), denom)));
  }
  for (; i < end; ++i) {
    const T mi = c.beta1 * m[i] + c.one_minus_beta1 * g[i];
    const T vi = c.beta2 * v[i] + c.one_minus_beta2 * (g[i] * g[i]);
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * c.decay - c.step_size * mi / (std::sqrt(vi) / c.sqrt_c2 + c.eps);
  }
}

}  // namespace detail

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
    const detail::AdamWCoefficients<T> c{static_cast<T>(b1), static_cast<T>(1.0 - b1), static_cast<T>(b2),
                                         static_cast<T>(1.0 - b2), static_cast<T>(sqrt_c2),
                                         static_cast<T>(m_config.eps), static_cast<T>(lr / c1),
                                         static_cast<T>(1.0 - lr * m_config.weight_decay)};
    T* p = params.data();
    T* m = m_state.m.data();
    T* v = m_state.v.data();
    const T* g = grads.data();
    const auto n = static_cast<Index>(params.size());
    const int threads = detail::kernel_threads(n);
    if (threads > 1)
      detail::for_each_part(n, 1024, threads, [&](Index, Index b, Index e) { detail::adamw_update(p, m, v, g, b, e, c); });
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

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

// The AdamW update as one vectorised pass in the compute type (Eigen packets: m, v and the
// parameter each read and written once); optim/adamw.hpp splits it over threads and holds the
// state. reference::adamw_step is its double-precision oracle.
#pragma once

#include <cmath>

#include "wegeft/core/tensor.hpp"

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
void adamw_update(T* p, T* m, T* v, const T* g, Index begin, Index end,
                  const AdamWCoefficients<T>& c) {
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
    ei::pstoreu(p + i, ei::psub(ei::pmul(ei::ploadu<Packet>(p + i), decay),
                                ei::pdiv(ei::pmul(step, mi), denom)));
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

}  // namespace wegeft

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

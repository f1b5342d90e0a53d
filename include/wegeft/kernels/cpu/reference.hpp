// Scalar references of the CPU kernels: plain loops accumulating in long double. They are the
// oracle of the equivalence tests, not a fast path.
#pragma once

#include "wegeft/core/tensor.hpp"

namespace wegeft::reference {

/// g[N, r] = Y[N, d] M[d, r];  G[d, r] += Y^T U[N, r].
template <class T>
void rank_r_pass(T* g, T* G, const T* Y, const T* M, const T* U, Index n, Index d, Index r) {
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < r; ++k) {
      long double acc = 0;
      for (Index o = 0; o < d; ++o) acc += static_cast<long double>(Y[i * d + o]) * M[o * r + k];
      g[i * r + k] = static_cast<T>(acc);
    }
  for (Index o = 0; o < d; ++o)
    for (Index k = 0; k < r; ++k) {
      long double acc = 0;
      for (Index i = 0; i < n; ++i) acc += static_cast<long double>(Y[i * d + o]) * U[i * r + k];
      G[o * r + k] += static_cast<T>(acc);
    }
}

}  // namespace wegeft::reference

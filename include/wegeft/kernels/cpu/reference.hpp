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

/// Y[N, d] = X[N, d] + 1 b^T + U[N, r] Bt[r, d]; X and b may be null. All contiguous.
template <class T>
void rank_r_expand(T* Y, const T* X, const T* b, const T* U, const T* Bt, Index n, Index d, Index r) {
  for (Index i = 0; i < n; ++i)
    for (Index c = 0; c < d; ++c) {
      long double acc = 0;
      if (X != nullptr) acc += X[i * d + c];
      if (b != nullptr) acc += b[c];
      for (Index k = 0; k < r; ++k) acc += static_cast<long double>(U[i * r + k]) * Bt[k * d + c];
      Y[i * d + c] = static_cast<T>(acc);
    }
}

/// u[N, r] = X[N, d] A[r, d]^T.
template <class T>
void rank_r_project(T* u, const T* X, const T* A, Index n, Index d, Index r) {
  for (Index i = 0; i < n; ++i)
    for (Index k = 0; k < r; ++k) {
      long double acc = 0;
      for (Index c = 0; c < d; ++c) acc += static_cast<long double>(X[i * d + c]) * A[k * d + c];
      u[i * r + k] = static_cast<T>(acc);
    }
}

/// G[r, d] += g[N, r]^T X[N, d].
template <class T>
void rank_r_reduce(T* G, const T* g, const T* X, Index n, Index d, Index r) {
  for (Index k = 0; k < r; ++k)
    for (Index c = 0; c < d; ++c) {
      long double acc = 0;
      for (Index i = 0; i < n; ++i) acc += static_cast<long double>(g[i * r + k]) * X[i * d + c];
      G[k * d + c] += static_cast<T>(acc);
    }
}

}  // namespace wegeft::reference

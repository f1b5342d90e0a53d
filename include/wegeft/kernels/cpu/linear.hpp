// Dense linear products in the compute type: y = x W^T + b and dx = dy W. The products go
// through Eigen, and through the BLAS when wegeft::blas is linked.
#pragma once

#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// y[N, d_out] = x[N, d_in] W[d_out, d_in]^T (+ b[d_out]). Overwrites y. The bias is written
/// first and the GEMM accumulates onto it (a GEMM into a fresh output zero-fills it anyway).
template <class T>
void linear_forward(MatRef<T> y, CMatRef<T> x, CMatRef<T> w, const T* bias) {
  if (bias == nullptr) {
    y.noalias() = x * w.transpose();
    return;
  }
  y.rowwise() = ConstVectorMap<T>(bias, w.rows()).transpose();
  y.noalias() += x * w.transpose();
}

/// dx[N, d_in] = dy[N, d_out] W[d_out, d_in]. Overwrites dx.
template <class T>
void linear_backward_input(MatRef<T> dx, CMatRef<T> dy, CMatRef<T> w) {
  dx.noalias() = dy * w;
}

}  // namespace wegeft

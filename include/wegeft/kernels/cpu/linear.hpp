// Dense linear products: y = x W^T + b, its rank-r-augmented form, and dx = dy W. The products go
// through Eigen, and through the BLAS when wegeft::blas is linked.
#pragma once

#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/rank_r.hpp"

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

/// y = x W^T + b + u Bt (u [N, r], Bt [r, d_out]): a linear layer plus a rank-r term, written as
/// one pass (bias and rank-r term) followed by the GEMM accumulating onto it. Overwrites y.
template <class T>
void linear_forward_plus(MatRef<T> y, CMatRef<T> x, CMatRef<T> w, const T* bias, const Matrix<T>& u,
                         const Matrix<T>& bt) {
  rank_r_expand(y.data(), y.outerStride(), static_cast<const T*>(nullptr), 0, bias, u.data(),
                bt.data(), y.rows(), y.cols(), u.cols());
  y.noalias() += x * w.transpose();
}

/// dx[N, d_in] = dy[N, d_out] W[d_out, d_in]. Overwrites dx.
template <class T>
void linear_backward_input(MatRef<T> dx, CMatRef<T> dy, CMatRef<T> w) {
  dx.noalias() = dy * w;
}

}  // namespace wegeft

// LayerNorm and RMSNorm over the last dimension, forward and backward.
//
// Conventions (llm.c style): outputs first, then inputs, then sizes; every tensor is row-major
// with its shape in the comment. Parameter gradients accumulate (+=) and may be null when the
// parameter is frozen; activation gradients are overwritten (=). Each row is a few vectorised
// Eigen array expressions with sums in the compute type (as PyTorch's float kernels); the
// double-accumulating scalar loops in kernels/cpu/reference.hpp are their test oracle.
#pragma once

#include <cmath>

#include "wegeft/core/tensor.hpp"

namespace wegeft {

namespace detail {
template <class T>
using RowArray = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
template <class T>
using ConstRowArray = Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>;
}  // namespace detail

/// out [N, C] = (x - mean) * rstd * weight [C] + bias [C]; saves mean [N], rstd [N] for backward.
/// bias may be null. PyTorch's LayerNorm: biased variance, eps inside the square root.
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                       Index n, Index c, double eps) {
  const detail::ConstRowArray<T> w(weight, c);
  for (Index i = 0; i < n; ++i) {
    const detail::ConstRowArray<T> xi(x + i * c, c);
    detail::RowArray<T> oi(out + i * c, c);
    const T m = xi.mean();
    const T r =
        static_cast<T>(1.0 / std::sqrt(static_cast<double>((xi - m).square().mean()) + eps));
    if (bias != nullptr) {
      oi = (xi - m) * r * w + detail::ConstRowArray<T>(bias, c);
    } else {
      oi = (xi - m) * r * w;
    }
    mean[i] = m;
    rstd[i] = r;
  }
}

/// dx [N, C] = d/dx; dweight [C] += sum_n dout * xhat; dbias [C] += sum_n dout.
/// dx, dweight and dbias may each be null.
template <class T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight,
                        const T* mean, const T* rstd, Index n, Index c) {
  const detail::ConstRowArray<T> w(weight, c);
  const T inv_c = T(1) / static_cast<T>(c);
  for (Index i = 0; i < n; ++i) {
    const detail::ConstRowArray<T> xi(x + i * c, c), gi(dout + i * c, c);
    const T m = mean[i], r = rstd[i];
    const auto xhat = (xi - m) * r;
    if (dweight) detail::RowArray<T>(dweight, c) += gi * xhat;
    if (dbias) detail::RowArray<T>(dbias, c) += gi;
    if (!dx) continue;
    const T sum_g = (gi * w).sum();          // sum of g = dout * weight
    const T sum_gx = (gi * w * xhat).sum();  // sum of g * xhat
    detail::RowArray<T>(dx + i * c, c) = r * (gi * w - inv_c * sum_g - xhat * (inv_c * sum_gx));
  }
}

/// out [N, C] = x * rstd * weight [C], rstd = 1 / sqrt(mean(x^2) + eps); saves rstd [N].
/// (Llama's RMSNorm.)
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* weight, Index n, Index c, double eps) {
  const detail::ConstRowArray<T> w(weight, c);
  for (Index i = 0; i < n; ++i) {
    const detail::ConstRowArray<T> xi(x + i * c, c);
    const T r = static_cast<T>(1.0 / std::sqrt(static_cast<double>(xi.square().mean()) + eps));
    detail::RowArray<T>(out + i * c, c) = xi * r * w;
    rstd[i] = r;
  }
}

/// dx [N, C] (may be null), dweight [C] += sum_n dout * x * rstd (may be null).
template <class T>
void rmsnorm_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight, const T* rstd,
                      Index n, Index c) {
  const detail::ConstRowArray<T> w(weight, c);
  for (Index i = 0; i < n; ++i) {
    const detail::ConstRowArray<T> xi(x + i * c, c), gi(dout + i * c, c);
    const T r = rstd[i];
    if (dweight) detail::RowArray<T>(dweight, c) += gi * xi * r;
    if (!dx) continue;
    const T k = r * r * r * (gi * w * xi).sum() / static_cast<T>(c);
    detail::RowArray<T>(dx + i * c, c) = r * gi * w - k * xi;
  }
}

}  // namespace wegeft

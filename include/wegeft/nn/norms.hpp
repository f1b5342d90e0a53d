// LayerNorm and RMSNorm over the last dimension, forward and backward.
//
// Conventions (llm.c style): outputs first, then inputs, then sizes; every tensor is row-major
// with its shape in the comment. Parameter gradients accumulate (+=) and may be null when the
// parameter is frozen; activation gradients are overwritten (=). Statistics are accumulated in
// double, so these loops are also the scalar reference for faster kernels.
#pragma once

#include <cmath>

#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// out [N, C] = (x - mean) * rstd * weight [C] + bias [C]; saves mean [N], rstd [N] for backward.
/// bias may be null. PyTorch's LayerNorm: biased variance, eps inside the square root.
template <class T>
void layernorm_forward(T* out, T* mean, T* rstd, const T* x, const T* weight, const T* bias,
                       Index n, Index c, double eps) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    double m = 0;
    for (Index j = 0; j < c; ++j) m += xi[j];
    m /= static_cast<double>(c);
    double v = 0;
    for (Index j = 0; j < c; ++j) v += (xi[j] - m) * (xi[j] - m);
    v /= static_cast<double>(c);
    const double r = 1.0 / std::sqrt(v + eps);
    for (Index j = 0; j < c; ++j) {
      const double norm = (xi[j] - m) * r;
      out[i * c + j] = static_cast<T>(norm * weight[j] + (bias ? static_cast<double>(bias[j]) : 0.0));
    }
    mean[i] = static_cast<T>(m);
    rstd[i] = static_cast<T>(r);
  }
}

/// dx [N, C] = d/dx; dweight [C] += sum_n dout * xhat; dbias [C] += sum_n dout.
/// dx, dweight and dbias may each be null.
template <class T>
void layernorm_backward(T* dx, T* dweight, T* dbias, const T* dout, const T* x, const T* weight,
                        const T* mean, const T* rstd, Index n, Index c) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    const T* gi = dout + i * c;
    const double m = mean[i], r = rstd[i];
    double sum_g = 0, sum_gx = 0;  // sums of g = dout * weight and of g * xhat
    for (Index j = 0; j < c; ++j) {
      const double xhat = (xi[j] - m) * r;
      const double g = static_cast<double>(gi[j]) * weight[j];
      sum_g += g;
      sum_gx += g * xhat;
      if (dweight) dweight[j] += static_cast<T>(gi[j] * xhat);
      if (dbias) dbias[j] += gi[j];
    }
    if (!dx) continue;
    const double inv_c = 1.0 / static_cast<double>(c);
    for (Index j = 0; j < c; ++j) {
      const double xhat = (xi[j] - m) * r;
      const double g = static_cast<double>(gi[j]) * weight[j];
      dx[i * c + j] = static_cast<T>(r * (g - inv_c * sum_g - xhat * inv_c * sum_gx));
    }
  }
}

/// out [N, C] = x * rstd * weight [C], rstd = 1 / sqrt(mean(x^2) + eps); saves rstd [N].
/// (Llama's RMSNorm.)
template <class T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* weight, Index n, Index c, double eps) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    double ss = 0;
    for (Index j = 0; j < c; ++j) ss += static_cast<double>(xi[j]) * xi[j];
    const double r = 1.0 / std::sqrt(ss / static_cast<double>(c) + eps);
    for (Index j = 0; j < c; ++j) out[i * c + j] = static_cast<T>(xi[j] * r * weight[j]);
    rstd[i] = static_cast<T>(r);
  }
}

/// dx [N, C] (may be null), dweight [C] += sum_n dout * x * rstd (may be null).
template <class T>
void rmsnorm_backward(T* dx, T* dweight, const T* dout, const T* x, const T* weight,
                      const T* rstd, Index n, Index c) {
  for (Index i = 0; i < n; ++i) {
    const T* xi = x + i * c;
    const T* gi = dout + i * c;
    const double r = rstd[i];
    double dot = 0;  // sum_j g_j x_j with g = dout * weight
    for (Index j = 0; j < c; ++j) {
      dot += static_cast<double>(gi[j]) * weight[j] * xi[j];
      if (dweight) dweight[j] += static_cast<T>(gi[j] * xi[j] * r);
    }
    if (!dx) continue;
    const double k = r * r * r * dot / static_cast<double>(c);
    for (Index j = 0; j < c; ++j)
      dx[i * c + j] = static_cast<T>(r * gi[j] * weight[j] - k * xi[j]);
  }
}

}  // namespace wegeft

// Elementwise activations: GELU (exact erf form and tanh approximation) and SwiGLU.
// Outputs first; activation gradients are overwritten (=). Computed in double per element, so
// these loops are also the scalar reference for faster kernels.
#pragma once

#include <cmath>
#include <numbers>

#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// erf: x Phi(x) (BERT, ViT, PyTorch's default); tanh: GPT-2's "gelu_new" approximation.
enum class GeluKind { erf, tanh };

namespace detail {
inline constexpr double kSqrt2OverPi = 0.7978845608028654;  // sqrt(2 / pi)
inline constexpr double kGeluTanhCubic = 0.044715;
inline constexpr double kInvSqrt2 = 0.7071067811865476;  // 1 / sqrt(2)

inline double gelu(double x, GeluKind kind) {
  if (kind == GeluKind::erf) return 0.5 * x * (1.0 + std::erf(x * kInvSqrt2));
  return 0.5 * x * (1.0 + std::tanh(kSqrt2OverPi * (x + kGeluTanhCubic * x * x * x)));
}
inline double gelu_grad(double x, GeluKind kind) {
  if (kind == GeluKind::erf) {
    const double cdf = 0.5 * (1.0 + std::erf(x * kInvSqrt2));
    const double pdf = std::exp(-0.5 * x * x) * std::numbers::inv_sqrtpi * kInvSqrt2;
    return cdf + x * pdf;
  }
  const double inner = kSqrt2OverPi * (x + kGeluTanhCubic * x * x * x);
  const double t = std::tanh(inner);
  const double d_inner = kSqrt2OverPi * (1.0 + 3.0 * kGeluTanhCubic * x * x);
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner;
}
inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
}  // namespace detail

/// out [n] = gelu(x [n]). out may alias x.
template <class T>
void gelu_forward(T* out, const T* x, Index n, GeluKind kind) {
  for (Index i = 0; i < n; ++i) out[i] = static_cast<T>(detail::gelu(x[i], kind));
}

/// dx [n] = dout [n] * gelu'(x [n]). dx may alias dout.
template <class T>
void gelu_backward(T* dx, const T* dout, const T* x, Index n, GeluKind kind) {
  for (Index i = 0; i < n; ++i) dx[i] = static_cast<T>(dout[i] * detail::gelu_grad(x[i], kind));
}

/// out [N, F] = silu(gate [N, F]) * up [N, F], silu(g) = g sigmoid(g) (Llama's MLP).
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, Index n) {
  for (Index i = 0; i < n; ++i) {
    const double g = gate[i];
    out[i] = static_cast<T>(g * detail::sigmoid(g) * up[i]);
  }
}

/// dgate [n], dup [n] from dout [n]; either output may alias dout.
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, Index n) {
  for (Index i = 0; i < n; ++i) {
    const double g = gate[i], s = detail::sigmoid(g), d = dout[i], u = up[i];
    const double silu = g * s;
    dgate[i] = static_cast<T>(d * u * s * (1.0 + g * (1.0 - s)));
    dup[i] = static_cast<T>(d * silu);
  }
}

/// out [n] = tanh(x [n]) (BERT's pooler). out may alias x.
template <class T>
void tanh_forward(T* out, const T* x, Index n) {
  for (Index i = 0; i < n; ++i) out[i] = static_cast<T>(std::tanh(static_cast<double>(x[i])));
}

/// dx [n] = dout [n] * (1 - out [n]^2), from the forward's output. dx may alias dout.
template <class T>
void tanh_backward(T* dx, const T* dout, const T* out, Index n) {
  for (Index i = 0; i < n; ++i) dx[i] = static_cast<T>(dout[i] * (1.0 - static_cast<double>(out[i]) * out[i]));
}

}  // namespace wegeft

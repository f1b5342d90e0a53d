// Elementwise activations: GELU (exact erf form and tanh approximation), SwiGLU and tanh.
// Outputs first; activation gradients are overwritten (=). The kernels are vectorized Eigen array
// expressions in the compute type; detail::gelu / gelu_grad / sigmoid are double-precision scalar
// references for the tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <numbers>

#include <unsupported/Eigen/SpecialFunctions>

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
inline double sigmoid(double x) {
  return 1.0 / (1.0 + std::exp(-x));
}
}  // namespace detail

namespace detail {
template <class T>
using ConstArrayMap = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
template <class T>
using ArrayMap = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
/// Elementwise kernels that need intermediates run over blocks of this many elements, whose
/// intermediates live on the stack (no heap allocation per call).
inline constexpr Index kActivationBlock = 256;
template <class T>
using BlockArray = Eigen::Array<T, Eigen::Dynamic, 1, 0, kActivationBlock, 1>;
}  // namespace detail

/// out [n] = gelu(x [n]). out may alias x. Vectorized (Eigen's erf, tanh and exp packets);
/// detail::gelu is the double-precision scalar reference.
template <class T>
void gelu_forward(T* out, const T* x, Index n, GeluKind kind) {
  const detail::ConstArrayMap<T> v(x, n);
  detail::ArrayMap<T> o(out, n);
  if (kind == GeluKind::erf) {
    o = T(0.5) * v * (T(1) + (v * T(detail::kInvSqrt2)).erf());
  } else {
    o = T(0.5) * v *
        (T(1) + (T(detail::kSqrt2OverPi) * (v + T(detail::kGeluTanhCubic) * v.cube())).tanh());
  }
}

/// dx [n] = dout [n] * gelu'(x [n]). dx may alias dout.
template <class T>
void gelu_backward(T* dx, const T* dout, const T* x, Index n, GeluKind kind) {
  const detail::ConstArrayMap<T> v(x, n), g(dout, n);
  detail::ArrayMap<T> d(dx, n);
  if (kind == GeluKind::erf) {
    const T inv_sqrt_2pi = T(0.3989422804014327);
    d = g * (T(0.5) * (T(1) + (v * T(detail::kInvSqrt2)).erf()) +
             v * inv_sqrt_2pi * (T(-0.5) * v.square()).exp());
  } else {
    for (Index i = 0; i < n; i += detail::kActivationBlock) {
      const Index len = std::min(detail::kActivationBlock, n - i);
      const auto vb = v.segment(i, len);
      const detail::BlockArray<T> t =
          (T(detail::kSqrt2OverPi) * (vb + T(detail::kGeluTanhCubic) * vb.cube())).tanh();
      d.segment(i, len) =
          g.segment(i, len) *
          (T(0.5) * (T(1) + t) + T(0.5) * vb * (T(1) - t.square()) * T(detail::kSqrt2OverPi) *
                                     (T(1) + T(3 * detail::kGeluTanhCubic) * vb.square()));
    }
  }
}

/// out [N, F] = silu(gate [N, F]) * up [N, F], silu(g) = g sigmoid(g) (Llama's MLP).
template <class T>
void swiglu_forward(T* out, const T* gate, const T* up, Index n) {
  const detail::ConstArrayMap<T> g(gate, n), u(up, n);
  detail::ArrayMap<T>(out, n) = g * g.logistic() * u;
}

/// dgate [n], dup [n] from dout [n]; either output may alias dout.
template <class T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, Index n) {
  for (Index i = 0; i < n; i += detail::kActivationBlock) {
    const Index len = std::min(detail::kActivationBlock, n - i);
    const detail::ConstArrayMap<T> g(gate + i, len), u(up + i, len), d(dout + i, len);
    const detail::BlockArray<T> s = g.logistic();
    const detail::BlockArray<T> dg =
        d * u * s * (T(1) + g * (T(1) - s));  // before dup may overwrite dout
    detail::ArrayMap<T>(dup + i, len) = d * g * s;
    detail::ArrayMap<T>(dgate + i, len) = dg;
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
  for (Index i = 0; i < n; ++i)
    dx[i] = static_cast<T>(dout[i] * (1.0 - static_cast<double>(out[i]) * out[i]));
}

}  // namespace wegeft

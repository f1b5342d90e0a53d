// What the CUDA tests share: the one device context, and the values a device tensor of a dtype
// holds for host data.
#pragma once

#include "../support.hpp"

#include <wegeft/cuda.hpp>

#include <limits>

namespace wt::cuda {

/// Device 0's context, created by the first test that needs it.
inline wegeft::cuda::Context& context() {
  static wegeft::cuda::Context ctx(0);
  return ctx;
}

/// The values a device tensor of `dtype` holds for `m` (bf16: rounded to nearest even).
inline wegeft::Matrix<float> rounded(const wegeft::Matrix<float>& m, wegeft::DType dtype) {
  if (dtype == wegeft::DType::F32) return m;
  return m.unaryExpr([](float v) { return wegeft::bf16_to_float(wegeft::float_to_bf16(v)); });
}

inline wegeft::Matrix<double> d(const wegeft::Matrix<float>& m) {
  return m.cast<double>();
}

/// Tolerances relative to the largest reference value, by storage dtype: outputs and input
/// gradients; parameter gradients (sums over N of products of rounded intermediates).
inline double out_tol(wegeft::DType t) {
  return t == wegeft::DType::F32 ? 2e-5 : 1e-2;
}
inline double grad_tol(wegeft::DType t) {
  return t == wegeft::DType::F32 ? 2e-5 : 2e-2;
}

inline const float kNaN = std::numeric_limits<float>::quiet_NaN();

}  // namespace wt::cuda

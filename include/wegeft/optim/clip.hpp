// Global-norm gradient clipping, as torch.nn.utils.clip_grad_norm_: if the 2-norm of all
// gradients exceeds max_norm, every gradient is scaled by max_norm / (norm + 1e-6).
#pragma once

#include <cmath>
#include <span>

#include "wegeft/core/error.hpp"

namespace wegeft {

/// Returns the norm before clipping. A non-finite norm throws (the step would poison the weights).
template <class T>
double clip_grad_norm(std::span<T> grads, double max_norm) {
  WEGEFT_CHECK(max_norm > 0, "clip_grad_norm needs max_norm > 0, got " << max_norm);
  double ss = 0;
  for (const T g : grads) ss += static_cast<double>(g) * g;
  const double norm = std::sqrt(ss);
  WEGEFT_CHECK(std::isfinite(norm),
               "gradient norm is " << norm << "; a gradient is NaN or infinite");
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    for (T& g : grads) g = static_cast<T>(g * coef);
  return norm;
}

}  // namespace wegeft

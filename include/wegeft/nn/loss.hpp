// Cross-entropy over logits with an ignore index, mean over the counted rows (PyTorch's
// F.cross_entropy with reduction="mean"). Computed in double per row.
#pragma once

#include <cmath>
#include <cstdint>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

inline constexpr std::int32_t kIgnoreIndex = -100;

/// Returns the mean of -log softmax(logits [N, V])[target] over rows whose target [N] is not
/// ignore_index; writes the number of counted rows to *counted if given. losses [N] (may be null)
/// gets each row's loss, 0 for ignored rows. With no counted row the mean is 0 (PyTorch: NaN).
/// A target outside [0, V) that is not ignore_index throws.
template <class T>
double cross_entropy_forward(T* losses, const T* logits, const std::int32_t* targets, Index n,
                             Index vocab, std::int32_t ignore_index = kIgnoreIndex,
                             Index* counted = nullptr) {
  double total = 0;
  Index count = 0;
  for (Index i = 0; i < n; ++i) {
    const std::int32_t t = targets[i];
    if (t == ignore_index) {
      if (losses) losses[i] = T(0);
      continue;
    }
    WEGEFT_CHECK(t >= 0 && t < vocab, "target " << t << " at row " << i << " is outside [0, "
                                      << vocab << ") and is not the ignore index " << ignore_index);
    const T* row = logits + i * vocab;
    double max = row[0];
    for (Index j = 1; j < vocab; ++j) max = std::max(max, static_cast<double>(row[j]));
    double sum = 0;
    for (Index j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
    const double loss = std::log(sum) + max - row[t];
    if (losses) losses[i] = static_cast<T>(loss);
    total += loss;
    ++count;
  }
  if (counted) *counted = count;
  return count ? total / static_cast<double>(count) : 0.0;
}

/// dlogits [N, V] (overwritten) = dloss / counted * (softmax(logits) - onehot(target)) for
/// counted rows, 0 for ignored rows; `counted` is what the forward reported.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const std::int32_t* targets, Index n,
                            Index vocab, Index counted, double dloss = 1.0,
                            std::int32_t ignore_index = kIgnoreIndex) {
  const double scale = counted ? dloss / static_cast<double>(counted) : 0.0;
  for (Index i = 0; i < n; ++i) {
    T* drow = dlogits + i * vocab;
    const std::int32_t t = targets[i];
    if (t == ignore_index) {
      std::fill(drow, drow + vocab, T(0));
      continue;
    }
    const T* row = logits + i * vocab;
    double max = row[0];
    for (Index j = 1; j < vocab; ++j) max = std::max(max, static_cast<double>(row[j]));
    double sum = 0;
    for (Index j = 0; j < vocab; ++j) sum += std::exp(row[j] - max);
    for (Index j = 0; j < vocab; ++j)
      drow[j] = static_cast<T>(scale * (std::exp(row[j] - max) / sum - (j == t ? 1.0 : 0.0)));
  }
}

}  // namespace wegeft

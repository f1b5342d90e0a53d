// Cross-entropy over logits with an ignore index, mean over the counted rows (PyTorch's
// F.cross_entropy with reduction="mean"), over the vectorised kernel of
// kernels/cpu/cross_entropy.hpp.
#pragma once

#include <cstdint>

#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/cross_entropy.hpp"

namespace wegeft {

/// Returns the mean of -log softmax(logits [N, V])[target] over rows whose target [N] is not
/// ignore_index; writes the number of counted rows to *counted if given. losses [N] (may be null)
/// gets each row's loss, 0 for ignored rows. With no counted row the mean is 0 (PyTorch: NaN).
/// A target outside [0, V) that is not ignore_index throws.
template <class T>
double cross_entropy_forward(T* losses, const T* logits, const std::int32_t* targets, Index n,
                             Index vocab, std::int32_t ignore_index = kIgnoreIndex,
                             Index* counted = nullptr) {
  return detail::cross_entropy_rows<T>(nullptr, losses, logits, targets, n, vocab, 1.0, -1,
                                       ignore_index, counted);
}

/// dlogits [N, V] (overwritten) = dloss / counted * (softmax(logits) - onehot(target)) for
/// counted rows, 0 for ignored rows; `counted` is what the forward reported, or the counted rows
/// of a whole batch when this is one of its micro-batches.
template <class T>
void cross_entropy_backward(T* dlogits, const T* logits, const std::int32_t* targets, Index n,
                            Index vocab, Index counted, double dloss = 1.0,
                            std::int32_t ignore_index = kIgnoreIndex) {
  WEGEFT_CHECK(counted >= 0, "cross_entropy_backward got a negative row count " << counted);
  detail::cross_entropy_rows<T>(dlogits, nullptr, logits, targets, n, vocab, dloss, counted,
                                ignore_index, nullptr);
}

/// Forward and backward together: returns the mean loss as cross_entropy_forward does and
/// overwrites dlogits [N, V] as cross_entropy_backward does, reading the logits once less and
/// taking each exponential once. dlogits may alias logits (the gradient then replaces them).
template <class T>
double cross_entropy_forward_backward(T* dlogits, T* losses, const T* logits,
                                      const std::int32_t* targets, Index n, Index vocab,
                                      double dloss = 1.0, std::int32_t ignore_index = kIgnoreIndex,
                                      Index* counted = nullptr) {
  return detail::cross_entropy_rows<T>(dlogits, losses, logits, targets, n, vocab, dloss, -1,
                                       ignore_index, counted);
}

}  // namespace wegeft

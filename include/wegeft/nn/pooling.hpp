// Sequence pooling for classification heads: the first token (BERT's [CLS], ViT's class token),
// the last non-padding token (GPT-2 and Llama sequence classification) or the mean over
// non-padding tokens.
#pragma once

#include <cstdint>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

enum class Pooling { cls, last, mean };

namespace detail {
// Row of the pooled token for cls / last pooling (last: the last token whose mask is set; 0 if
// none is).
inline Index pooled_row(const std::uint8_t* mask, Index b, Index seq, Pooling pooling) {
  if (pooling == Pooling::cls) return 0;
  Index last = 0;
  for (Index t = 0; t < seq; ++t)
    if (!mask || mask[b * seq + t]) last = t;
  return last;
}
}  // namespace detail

/// out [B, d] from hidden [B*T, d]; mask [B, T] (1 = token, 0 = padding, null = all tokens) is
/// used by last and mean pooling. A sequence with no token pools to 0.
template <class T>
void pool_forward(T* out, const T* hidden, const std::uint8_t* mask, Index batch, Index seq,
                  Index d, Pooling pooling) {
  for (Index b = 0; b < batch; ++b) {
    T* o = out + b * d;
    if (pooling != Pooling::mean) {
      const T* row = hidden + (b * seq + detail::pooled_row(mask, b, seq, pooling)) * d;
      std::copy(row, row + d, o);
      continue;
    }
    std::fill(o, o + d, T(0));
    Index count = 0;
    for (Index t = 0; t < seq; ++t) {
      if (mask && !mask[b * seq + t]) continue;
      ++count;
      for (Index j = 0; j < d; ++j) o[j] += hidden[(b * seq + t) * d + j];
    }
    if (count)
      for (Index j = 0; j < d; ++j) o[j] /= static_cast<T>(count);
  }
}

/// dhidden [B*T, d] (overwritten; 0 for rows that were not pooled) from dout [B, d].
template <class T>
void pool_backward(T* dhidden, const T* dout, const std::uint8_t* mask, Index batch, Index seq,
                   Index d, Pooling pooling) {
  std::fill(dhidden, dhidden + batch * seq * d, T(0));
  for (Index b = 0; b < batch; ++b) {
    const T* g = dout + b * d;
    if (pooling != Pooling::mean) {
      std::copy(g, g + d, dhidden + (b * seq + detail::pooled_row(mask, b, seq, pooling)) * d);
      continue;
    }
    Index count = 0;
    for (Index t = 0; t < seq; ++t) count += !mask || mask[b * seq + t];
    if (!count) continue;
    for (Index t = 0; t < seq; ++t) {
      if (mask && !mask[b * seq + t]) continue;
      for (Index j = 0; j < d; ++j) dhidden[(b * seq + t) * d + j] = g[j] / static_cast<T>(count);
    }
  }
}

}  // namespace wegeft

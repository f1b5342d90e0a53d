// Rotary position embeddings as in Hugging Face's Llama: for each head, the pair
// (x[i], x[i + d/2]) of a token at position t is rotated by the angle t * theta^(-2i/d).
#pragma once

#include <cmath>
#include <string>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// cos and sin of every (position, frequency) pair: [max_positions, head_dim / 2] each.
/// Angles are computed in double and rounded once to T.
template <class T>
struct RopeTable {
  Index head_dim = 0, max_positions = 0;
  std::vector<T> cos, sin;

  RopeTable(Index head_dim_, Index max_positions_, double theta)
      : head_dim(head_dim_), max_positions(max_positions_) {
    WEGEFT_CHECK(head_dim > 0 && head_dim % 2 == 0,
                 "RoPE needs an even head dimension, got " << head_dim);
    WEGEFT_CHECK(max_positions > 0, "RoPE needs max_positions > 0, got " << max_positions);
    WEGEFT_CHECK(theta > 0 && std::isfinite(theta), "RoPE theta must be positive, got " << theta);
    const Index half = head_dim / 2;
    cos.resize(static_cast<std::size_t>(max_positions * half));
    sin.resize(cos.size());
    for (Index t = 0; t < max_positions; ++t)
      for (Index i = 0; i < half; ++i) {
        const double inv_freq =
            std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
        const double angle = static_cast<double>(t) * inv_freq;
        cos[static_cast<std::size_t>(t * half + i)] = static_cast<T>(std::cos(angle));
        sin[static_cast<std::size_t>(t * half + i)] = static_cast<T>(std::sin(angle));
      }
  }
};

namespace detail {
// Rotates every head of every token in place by +angle (direction = 1) or -angle (-1).
template <class T>
void rope_rotate(T* x, const RopeTable<T>& table, Index batch, Index seq, Index heads, T direction,
                 Index first = 0) {
  WEGEFT_CHECK(first >= 0 && first + seq <= table.max_positions,
               "sequence length " << seq << (first > 0 ? " after " : "")
                                  << (first > 0 ? std::to_string(first) + " cached tokens" : "")
                                  << " exceeds the RoPE table's " << table.max_positions
                                  << " positions");
  const Index hd = table.head_dim, half = hd / 2;
  for (Index b = 0; b < batch; ++b)
    for (Index t = 0; t < seq; ++t) {
      const T* c = table.cos.data() + (first + t) * half;
      const T* s = table.sin.data() + (first + t) * half;
      T* row = x + (b * seq + t) * heads * hd;
      for (Index h = 0; h < heads; ++h) {
        T* v = row + h * hd;
        for (Index i = 0; i < half; ++i) {
          const T a = v[i], bb = v[i + half], si = direction * s[i];
          v[i] = a * c[i] - bb * si;
          v[i + half] = bb * c[i] + a * si;
        }
      }
    }
}
}  // namespace detail

/// x [B*T, H*head_dim] rotated in place; the token in row b*T + t has position first + t (first:
/// the tokens before these ones, e.g. those a decoding cache holds).
template <class T>
void rope_forward(T* x, const RopeTable<T>& table, Index batch, Index seq, Index heads,
                  Index first = 0) {
  detail::rope_rotate(x, table, batch, seq, heads, T(1), first);
}

/// dx [B*T, H*head_dim] in place: the transpose of a rotation is the inverse rotation.
template <class T>
void rope_backward(T* dx, const RopeTable<T>& table, Index batch, Index seq, Index heads) {
  detail::rope_rotate(dx, table, batch, seq, heads, T(-1));
}

}  // namespace wegeft

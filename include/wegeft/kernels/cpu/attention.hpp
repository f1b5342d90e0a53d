// Scaled dot-product attention over projected q, k, v: multi-head, grouped-query (several query
// heads share one key/value head), causal or bidirectional, with an optional key padding mask.
//
// Per sequence b and query head h (key/value head g = h / (heads / kv_heads)):
//   S = Q_h K_g^T / sqrt(d),  masked entries -> -inf,  P = softmax_rows(S),  O_h = P V_g.
// A query row whose keys are all masked gets P = 0 and O = 0 (PyTorch would give NaN there).
//
// Sequences are independent, so with threads (kernels/cpu/threads.hpp) each thread takes whole
// sequences and runs their per-head products itself: one OpenMP region per call instead of one
// threaded BLAS call per head-sized product. Every sequence is computed the same way whatever the
// thread count, so results do not depend on it.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/threads.hpp"

namespace wegeft {

struct AttentionShape {
  Index batch = 1, seq = 1, heads = 1, kv_heads = 1, head_dim = 1;
  bool causal = false;

  void check() const {
    WEGEFT_CHECK(batch > 0 && seq > 0 && heads > 0 && kv_heads > 0 && head_dim > 0,
                 "attention sizes must be positive: batch "
                     << batch << ", seq " << seq << ", heads " << heads << ", kv_heads " << kv_heads
                     << ", head_dim " << head_dim);
    WEGEFT_CHECK(heads % kv_heads == 0, "attention: " << heads
                                                      << " query heads cannot be shared "
                                                         "evenly by "
                                                      << kv_heads << " key/value heads");
  }
  Index q_width() const { return heads * head_dim; }
  Index kv_width() const { return kv_heads * head_dim; }
  Index probs_size() const { return batch * heads * seq * seq; }
};

namespace detail {
template <class T>
using HeadMap = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using MutHeadMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;

/// f(b) for every sequence b of the batch, split over the kernel threads.
template <class F>
void for_each_sequence(const AttentionShape& s, F&& f) {
  const Index work = s.batch * s.heads * s.seq * (s.seq + s.head_dim);
  const int threads = static_cast<int>(std::min<Index>(kernel_threads(work), s.batch));
  for_each_step(0, s.batch, 1, threads, f);
}
}  // namespace detail

/// out [B*T, H*d], probs [B, H, T, T] (saved for backward) from q [B*T, H*d], k, v [B*T, Hkv*d]
/// and key_mask [B, T] (1 = attend, 0 = padding; null = attend to all).
template <class T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                       const std::uint8_t* key_mask, const AttentionShape& s) {
  s.check();
  const Index L = s.seq, d = s.head_dim, group = s.heads / s.kv_heads;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  constexpr T kNegInf = -std::numeric_limits<T>::infinity();
  detail::for_each_sequence(s, [&](Index b) {
    // This sequence's padding as a row to add to the scores (0 or -inf) and one to multiply the
    // exponentials by (1 or 0), so every softmax step is a vector operation over the row. Per
    // thread, reused across calls.
    thread_local Eigen::Array<T, 1, Eigen::Dynamic> add, keep;
    if (key_mask) {
      add.resize(L);
      keep.resize(L);
      for (Index j = 0; j < L; ++j) {
        keep[j] = key_mask[b * L + j] ? T(1) : T(0);
        add[j] = key_mask[b * L + j] ? T(0) : kNegInf;
      }
    }
    for (Index h = 0; h < s.heads; ++h) {
      const Index g = h / group;
      detail::HeadMap<T> qh(q + b * L * s.q_width() + h * d, L, d,
                            Eigen::OuterStride<>(s.q_width()));
      detail::HeadMap<T> kh(k + b * L * s.kv_width() + g * d, L, d,
                            Eigen::OuterStride<>(s.kv_width()));
      detail::HeadMap<T> vh(v + b * L * s.kv_width() + g * d, L, d,
                            Eigen::OuterStride<>(s.kv_width()));
      MatrixMap<T> p(probs + (b * s.heads + h) * L * L, L, L);
      p.noalias() = qh * kh.transpose();
      p *= scale;
      for (Index i = 0; i < L; ++i) {
        // Keys this query may see: j <= i when causal, and not padding.
        const Index visible = s.causal ? i + 1 : L;
        auto row = p.row(i).head(visible).array();
        const T max = key_mask ? (row + add.head(visible)).maxCoeff() : row.maxCoeff();
        if (max == kNegInf) {  // every visible key is padding
          p.row(i).setZero();
          continue;
        }
        if (key_mask)
          row = (row - max).exp() * keep.head(visible);
        else
          row = (row - max).exp();
        row /= row.sum();
        p.row(i).tail(L - visible).setZero();
      }
      detail::MutHeadMap<T> oh(out + b * L * s.q_width() + h * d, L, d,
                               Eigen::OuterStride<>(s.q_width()));
      oh.noalias() = p * vh;
    }
  });
}

/// dq [B*T, H*d], dk, dv [B*T, Hkv*d] (all overwritten) from dout [B*T, H*d] and the forward's
/// probs, q, k, v.
template <class T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q, const T* k,
                        const T* v, const AttentionShape& s) {
  s.check();
  const Index L = s.seq, d = s.head_dim, group = s.heads / s.kv_heads;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  MatrixMap<T>(dk, s.batch * L, s.kv_width()).setZero();
  MatrixMap<T>(dv, s.batch * L, s.kv_width()).setZero();
  // Heads of one key/value group add into the same dk, dv rows, so threads split sequences.
  detail::for_each_sequence(s, [&](Index b) {
    thread_local Matrix<T> dp;  // per thread, reused across calls
    dp.resize(L, L);
    for (Index h = 0; h < s.heads; ++h) {
      const Index g = h / group;
      const auto qs = Eigen::OuterStride<>(s.q_width()), ks = Eigen::OuterStride<>(s.kv_width());
      detail::HeadMap<T> qh(q + b * L * s.q_width() + h * d, L, d, qs);
      detail::HeadMap<T> kh(k + b * L * s.kv_width() + g * d, L, d, ks);
      detail::HeadMap<T> vh(v + b * L * s.kv_width() + g * d, L, d, ks);
      detail::HeadMap<T> doh(dout + b * L * s.q_width() + h * d, L, d, qs);
      detail::MutHeadMap<T> dqh(dq + b * L * s.q_width() + h * d, L, d, qs);
      detail::MutHeadMap<T> dkh(dk + b * L * s.kv_width() + g * d, L, d, ks);
      detail::MutHeadMap<T> dvh(dv + b * L * s.kv_width() + g * d, L, d, ks);
      ConstMatrixMap<T> p(probs + (b * s.heads + h) * L * L, L, L);
      dvh.noalias() += p.transpose() * doh;
      dp.noalias() = doh * vh.transpose();
      // softmax backward: dS = P o (dP - rowsum(dP o P)), then the 1/sqrt(d) scale
      for (Index i = 0; i < L; ++i) {
        const T dot = p.row(i).dot(dp.row(i));
        dp.row(i) = (p.row(i).array() * (dp.row(i).array() - dot)) * scale;
      }
      dqh.noalias() = dp * kh;
      dkh.noalias() += dp.transpose() * qh;
    }
  });
}

}  // namespace wegeft

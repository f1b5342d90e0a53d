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
//
// Two implementations of the same op:
// - attention_forward / attention_backward keep the probabilities P [B, H, T, T] for backward
//   (per-head products through Eigen or the BLAS);
// - flash_attention_forward / flash_attention_backward (the model's choice for causal attention,
//   Transformer::set_attention_kernel) keep only each query row's log-sum-exp [B, H, T] and
//   recompute P block by block in backward. They walk blocks of kFlashRows queries against
//   blocks of kFlashKeys keys with the softmax kept online (FlashAttention's scheme), skip key
//   blocks a causal mask hides whole, and run every product through a register-tiled kernel over
//   contiguous copies of the blocks, so no per-head BLAS call and no T x T buffer remain. Forward threads split (sequence, head) pairs; backward splits
//   (sequence, key/value head) pairs, each adding its group's query heads into its own dk, dv rows.
//   flash_attention_forward_bf16 / flash_attention_backward_bf16 (float, AVX512-BF16) are the same
//   loops with every product's operands rounded to bf16 pairs and summed in fp32 (vdpbf16ps); the
//   model runs them while its frozen products are in bf16 (Transformer::bf16_attention).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/gemm_bf16.hpp"
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
  Index lse_size() const { return batch * heads * seq; }
};

namespace detail {
template <class T>
using HeadMap = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>;
template <class T>
using MutHeadMap = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;

/// -infinity in T: the bias of a padded key, the log-sum-exp of a row whose keys are all padding.
template <class T>
inline constexpr T kNegInf = -std::numeric_limits<T>::infinity();

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
        add[j] = key_mask[b * L + j] ? T(0) : detail::kNegInf<T>;
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
        if (max == detail::kNegInf<T>) {  // every visible key is padding
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

/// Which pair of kernels a model runs (Transformer::set_attention_kernel).
/// Causal attention of m new query rows of one sequence over every key it has so far, for
/// decoding with a key/value cache (Transformer::decode): out [m, H*d] (=) from q [m, H*d] (the
/// queries at positions first .. first + m - 1) and k, v [first + m, Hkv*d] (the keys and values
/// of positions 0 .. first + m - 1); query i sees keys 0 .. first + i. No padding; s.batch and
/// s.seq are not read.
template <class T>
void cached_attention_forward(T* out, const T* q, const T* k, const T* v, Index m, Index first,
                              const AttentionShape& s) {
  s.check();
  WEGEFT_CHECK(m > 0 && first >= 0,
               "cached attention: " << m << " queries after " << first << " cached tokens");
  const Index d = s.head_dim, group = s.heads / s.kv_heads, qw = s.q_width(), kw = s.kv_width(),
              len = first + m;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d)));
  thread_local Matrix<T> p;  // [m, len] scores, then probabilities
  p.resize(m, len);
  for (Index h = 0; h < s.heads; ++h) {
    const Index g = h / group;
    const detail::HeadMap<T> qh(q + h * d, m, d, Eigen::OuterStride<>(qw));
    const detail::HeadMap<T> kg(k + g * d, len, d, Eigen::OuterStride<>(kw));
    const detail::HeadMap<T> vg(v + g * d, len, d, Eigen::OuterStride<>(kw));
    p.noalias() = (qh * kg.transpose()) * scale;
    for (Index i = 0; i < m; ++i) {
      const Index vis = first + i + 1;
      auto row = p.row(i).head(vis).array();
      row = (row - row.maxCoeff()).exp();
      row /= row.sum();
      p.row(i).tail(len - vis).setZero();
    }
    detail::MutHeadMap<T>(out + h * d, m, d, Eigen::OuterStride<>(qw)).noalias() = p * vg;
  }
}

enum class AttentionKernel { automatic, flash, probabilities };

/// Query rows and keys per block of the flash kernels.
inline constexpr Index kFlashRows = 32, kFlashKeys = 64;

namespace detail {

// Bytes of the widest SIMD register the compiler may use here, and the product tiles' rows: a tile
// of kTileRows x 2 vectors keeps its accumulators in the register file (32 registers with AVX-512,
// 16 otherwise). Measured on Zen 4 (AVX-512, one thread, depth 32-64): 8 x 32 floats 91-99 GFLOP/s
// of a 117 FMA peak, 4 x 64 49-57.
#if defined(__AVX512F__)
inline constexpr int kSimdBytes = 64, kTileRows = 8;
#elif defined(__AVX__)
inline constexpr int kSimdBytes = 32, kTileRows = 6;
#else
inline constexpr int kSimdBytes = 16, kTileRows = 6;
#endif

/// c[MR x NR] (= or, when add, +=) a[MR x kk] b[kk x NR]: c and b row-major (leading dimensions
/// ldc, ldb), a's element (r, p) at a[r * ar + p * ap] (row-major or transposed). MR and NR are
/// fixed so that the compiler keeps the accumulators in registers.
template <class T, int MR, int NR>
inline void tile_product(T* c, Index ldc, const T* a, Index ar, Index ap, const T* b, Index ldb,
                         Index kk, bool add) {
  T acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = add ? c[r * ldc + j] : T(0);
  for (Index p = 0; p < kk; ++p) {
    const T* bp = b + p * ldb;
    for (int r = 0; r < MR; ++r) {
      const T x = a[r * ar + p * ap];
      for (int j = 0; j < NR; ++j) acc[r][j] += x * bp[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) c[r * ldc + j] = acc[r][j];
}

/// The same for n < one vector of columns (a tail), n at run time.
template <class T, int MR>
inline void tile_product_tail(T* c, Index ldc, const T* a, Index ar, Index ap, const T* b,
                              Index ldb, Index n, Index kk, bool add) {
  constexpr int kMax = kSimdBytes / int(sizeof(T));
  T acc[MR][kMax];
  for (int r = 0; r < MR; ++r)
    for (Index j = 0; j < n; ++j) acc[r][j] = add ? c[r * ldc + j] : T(0);
  for (Index p = 0; p < kk; ++p)
    for (int r = 0; r < MR; ++r) {
      const T x = a[r * ar + p * ap];
      for (Index j = 0; j < n; ++j) acc[r][j] += x * b[p * ldb + j];
    }
  for (int r = 0; r < MR; ++r)
    for (Index j = 0; j < n; ++j) c[r * ldc + j] = acc[r][j];
}

/// MR rows of c [MR x n] (= or +=) a [MR x kk] b [kk x n]: tiles of NR columns, then halves of NR
/// down to one vector, then the tail.
template <class T, int MR, int NR>
inline void rows_product(T* c, Index ldc, const T* a, Index ar, Index ap, const T* b, Index ldb,
                         Index n, Index kk, bool add) {
  Index j = 0;
  for (; j + NR <= n; j += NR) tile_product<T, MR, NR>(c + j, ldc, a, ar, ap, b + j, ldb, kk, add);
  if (j == n) return;
  if constexpr (NR * int(sizeof(T)) > kSimdBytes)
    rows_product<T, MR, NR / 2>(c + j, ldc, a, ar, ap, b + j, ldb, n - j, kk, add);
  else
    tile_product_tail<T, MR>(c + j, ldc, a, ar, ap, b + j, ldb, n - j, kk, add);
}

/// c [m x n] (= or, when add, +=) op(a) [m x kk] b [kk x n]: c and b row-major, a [m x kk]
/// row-major (lda) or, when a_transposed, a [kk x m] row-major (lda) read as its transpose.
/// Small dense products on blocks that sit in the cache, in register tiles of kTileRows rows, the
/// last rows in tiles of 4, 2 and 1.
template <class T>
void block_product(T* c, Index ldc, const T* a, Index lda, bool a_transposed, const T* b, Index ldb,
                   Index m, Index n, Index kk, bool add) {
  constexpr int kCols = 2 * kSimdBytes / int(sizeof(T));
  const Index ar = a_transposed ? 1 : lda, ap = a_transposed ? lda : 1;
  Index r = 0;
  for (; r + kTileRows <= m; r += kTileRows)
    rows_product<T, kTileRows, kCols>(c + r * ldc, ldc, a + r * ar, ar, ap, b, ldb, n, kk, add);
  const auto rest = [&]<int R>() {
    if (r + R <= m) {
      rows_product<T, R, kCols>(c + r * ldc, ldc, a + r * ar, ar, ap, b, ldb, n, kk, add);
      r += R;
    }
  };
  rest.template operator()<4>();
  rest.template operator()<2>();
  rest.template operator()<1>();
}

/// dst [d, padded] = the `rows` rows of src (row stride ld, d columns) transposed, zero in columns
/// rows .. padded.
template <class T, class Buffer>
void transpose_rows(Buffer& dst, const T* src, Index ld, Index rows, Index padded, Index d) {
  for (Index j = 0; j < rows; ++j)  // reads whole rows in order, writes into the cache
    for (Index c = 0; c < d; ++c) dst[std::size_t(c * padded + j)] = src[j * ld + c];
  for (Index c = 0; c < d; ++c)
    std::fill(dst.data() + c * padded + rows, dst.data() + (c + 1) * padded, T(0));
}

/// One thread's blocks for the flash kernels, kept per thread across calls (resizing to the same
/// sizes does not allocate). Aligned as Eigen's packets, so that the softmax rows (whole multiples
/// of kFlashKeys from the start) run Eigen's vector exp from their first value.
template <class T>
struct FlashScratch {
  template <class U>
  using Buffer = std::vector<U, Eigen::aligned_allocator<U>>;
  Buffer<T> bias;          // [Tp]: 0 for a key that may be attended, -inf otherwise
  Buffer<T> qs, dob, acc;  // [kFlashRows, d]: scaled Q rows, dO rows, O or dQ sums
  Buffer<T> s, dp;         // [kFlashRows, kFlashKeys]: scores / P, dP / dS
  Buffer<T> m, l, delta;   // [kFlashRows]: running max and sum, rowsum(dO o O)

  void plan(Index padded, Index d) {
    const auto sz = [](Index n) { return static_cast<std::size_t>(n); };
    bias.resize(sz(padded));
    for (auto* v : {&qs, &dob, &acc}) v->resize(sz(kFlashRows * d));
    for (auto* v : {&s, &dp}) v->resize(sz(kFlashRows * kFlashKeys));
    for (auto* v : {&m, &l, &delta}) v->resize(sz(kFlashRows));
  }

  /// bias for sequence b: 0 where key_mask allows a key, -inf for padding and past the sequence.
  void plan_bias(const std::uint8_t* key_mask, Index b, Index seq, Index padded) {
    for (Index j = 0; j < padded; ++j)
      bias[std::size_t(j)] = j < seq && (!key_mask || key_mask[b * seq + j]) ? T(0) : kNegInf<T>;
  }
};

/// The flash kernels' block products in T: register-tiled block_product over contiguous K^T and
/// V^T copies of one sequence's key/value head, and over the scratch's Q and dO rows. A block
/// holds `rows` <= kFlashRows queries and keys j0 .. j0 + cols (cols <= kFlashKeys); s, p, ds are
/// [rows, kFlashKeys] row-major, acc [rows, d]. Per thread, kept across calls.
template <class T>
struct FlashProducts {
  std::vector<T, Eigen::aligned_allocator<T>> kt, vt;  // [d, padded]: K^T, V^T (backward)
  const T *kg = nullptr, *vg = nullptr, *qs = nullptr, *dob = nullptr;
  Index kw = 0, d = 0, padded = 0;

  /// One sequence's key/value head: k, v [L rows of d, row stride ld].
  void keys(const T* k, const T* v, Index ld, Index L, Index pad, Index dim, bool backward) {
    kg = k, vg = v, kw = ld, d = dim, padded = pad;
    kt.resize(static_cast<std::size_t>(d * padded));
    transpose_rows(kt, k, ld, L, padded, d);
    if (backward) {
      vt.resize(static_cast<std::size_t>(d * padded));
      transpose_rows(vt, v, ld, L, padded, d);
    }
  }
  /// The block's scaled queries q [rows, d] and, in backward, output gradients o [rows, d].
  void queries(const T* q, const T* o, Index) { qs = q, dob = o; }
  /// s [rows, kFlashKeys] = Q K^T (keys past the sequence give 0).
  void scores(T* s, Index rows, Index j0) const {
    block_product(s, kFlashKeys, qs, d, false, kt.data() + j0, padded, rows, kFlashKeys, d, false);
  }
  /// dp [rows, kFlashKeys] = dO V^T.
  void dprobs(T* dp, Index rows, Index j0) const {
    block_product(dp, kFlashKeys, dob, d, false, vt.data() + j0, padded, rows, kFlashKeys, d,
                  false);
  }
  /// acc += P V (P's first cols columns).
  void add_pv(T* acc, const T* p, Index rows, Index cols, Index j0) const {
    block_product(acc, d, p, kFlashKeys, false, vg + j0 * kw, kw, rows, d, cols, true);
  }
  /// dv [cols rows of d, stride kw] += P^T dO.
  void add_dv(T* dv, const T* p, Index rows, Index cols) const {
    block_product(dv, kw, p, kFlashKeys, true, dob, d, cols, d, rows, true);
  }
  /// dk [cols rows of d, stride kw] += dS^T Q.
  void add_dk(T* dk, const T* ds, Index rows, Index cols) const {
    block_product(dk, kw, ds, kFlashKeys, true, qs, d, cols, d, rows, true);
  }
  /// acc += dS K.
  void add_dq(T* acc, const T* ds, Index rows, Index cols, Index j0) const {
    block_product(acc, d, ds, kFlashKeys, false, kg + j0 * kw, kw, rows, d, cols, true);
  }
};

#if WEGEFT_BF16_X86
/// c [MR, n <= 16 NV] (= or, when add, +=) A B over kp pairs of k: A's pair (r, p) the word
/// a[r * ar + p * ap] (bf16 of A[r][2p] in the low half, A[r][2p + 1] in the high), B's pair
/// (p, j) the word b[p * ldb + j] (B[2p][j] low, B[2p + 1][j] high); sums in fp32 (vdpbf16ps).
/// Full: n = 32, B read without masks (with masked loads GCC -O3 spills the accumulators).
template <int MR, int NV, bool Full>
WEGEFT_TARGET_BF16 inline void bf16_tile(float* c, Index ldc, const std::uint32_t* a, Index ar,
                                         Index ap, const std::uint32_t* b, Index ldb, Index n,
                                         Index kp, bool add) {
  const __mmask16 m0 = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1u);
  const __mmask16 m1 =
      n >= 32 ? __mmask16(0xffff) : (n <= 16 ? __mmask16(0) : __mmask16((1u << (n - 16)) - 1u));
  __m512 acc0[MR], acc1[MR];  // two arrays, not one [MR][2]: GCC keeps these in registers
  for (int r = 0; r < MR; ++r) {
    acc0[r] = add ? _mm512_maskz_loadu_ps(m0, c + r * ldc) : _mm512_setzero_ps();
    acc1[r] = NV == 2 && add ? _mm512_maskz_loadu_ps(m1, c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (Index p = 0; p < kp; ++p) {
    const std::uint32_t* bp = b + p * ldb;
    const std::uint32_t* pa = a + p * ap;
    const __m512bh b0 =
        (__m512bh)(Full ? _mm512_loadu_si512(bp) : _mm512_maskz_loadu_epi32(m0, bp));
    const __m512bh b1 =
        (__m512bh)(Full ? _mm512_loadu_si512(bp + 16) : _mm512_maskz_loadu_epi32(m1, bp + 16));
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(pa[r * ar]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
      if constexpr (NV == 2) acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
    if constexpr (NV == 2) _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
  }
}

inline constexpr int kBf16TileRows = 12;  // 24 accumulators, two vectors of B, one of A

/// bf16_tile for mr <= MR rows at run time.
template <int MR, int NV, bool Full>
WEGEFT_TARGET_BF16 inline void bf16_tile_rows(int mr, float* c, Index ldc, const std::uint32_t* a,
                                              Index ar, Index ap, const std::uint32_t* b, Index ldb,
                                              Index n, Index kp, bool add) {
  if constexpr (MR > 0) {
    if (mr == MR) return bf16_tile<MR, NV, Full>(c, ldc, a, ar, ap, b, ldb, n, kp, add);
    return bf16_tile_rows<MR - 1, NV, Full>(mr, c, ldc, a, ar, ap, b, ldb, n, kp, add);
  }
}

/// c [m, n] (= or +=) A [m, 2 kp] B [2 kp, n] with A and B as bf16 pairs (bf16_tile's layouts):
/// tiles of kBf16TileRows rows and 32 columns, the edges masked.
WEGEFT_TARGET_BF16 inline void bf16_block_product(float* c, Index ldc, const std::uint32_t* a,
                                                  Index ar, Index ap, const std::uint32_t* b,
                                                  Index ldb, Index m, Index n, Index kp, bool add) {
  for (Index j = 0; j < n; j += 32) {
    const Index nc = std::min<Index>(32, n - j);
    for (Index r = 0; r < m; r += kBf16TileRows) {
      const int mr = static_cast<int>(std::min<Index>(kBf16TileRows, m - r));
      float* cp = c + r * ldc + j;
      const std::uint32_t* arow = a + r * ar;
      if (nc == 32)
        bf16_tile_rows<kBf16TileRows, 2, true>(mr, cp, ldc, arow, ar, ap, b + j, ldb, nc, kp, add);
      else if (nc > 16)
        bf16_tile_rows<kBf16TileRows, 2, false>(mr, cp, ldc, arow, ar, ap, b + j, ldb, nc, kp, add);
      else
        bf16_tile_rows<kBf16TileRows, 1, false>(mr, cp, ldc, arow, ar, ap, b + j, ldb, nc, kp, add);
    }
  }
}

/// dst [ceil(k / 2), n] (row stride ldd words): word (p, j) = bf16 of x[2p][j] (low half) and of
/// x[2p + 1][j] (high half; 0 past row k), from x [k, n] (fp32, row stride ldx), nearest even.
WEGEFT_TARGET_BF16 inline void bf16_pack_row_pairs(std::uint32_t* dst, Index ldd, const float* x,
                                                   Index ldx, Index k, Index n) {
  // 16-bit lane 2j takes lane j (row 2p), lane 2j + 1 lane 16 + j (row 2p + 1)
  alignas(64) static constexpr std::uint16_t kInterleave[32] = {
      0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
      8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i order = _mm512_load_si512(kInterleave);
  for (Index p = 0; 2 * p < k; ++p) {
    const float* r0 = x + 2 * p * ldx;
    const bool second = 2 * p + 1 < k;
    for (Index j = 0; j < n; j += 16) {
      const Index left = std::min<Index>(16, n - j);
      const __mmask16 mk = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
      const __m512 lo = _mm512_maskz_loadu_ps(mk, r0 + j);
      const __m512 hi = second ? _mm512_maskz_loadu_ps(mk, r0 + ldx + j) : _mm512_setzero_ps();
      const __m512i v = _mm512_permutexvar_epi16(order, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      _mm512_mask_storeu_epi32(dst + p * ldd + j, mk, v);
    }
  }
}

/// The flash kernels' block products with bf16 operands and fp32 sums (vdpbf16ps): the same
/// interface as FlashProducts<float>, over one sequence's key/value head packed in bf16 pairs
/// once per task and the block's Q, dO, P and dS packed as they are formed.
struct FlashProductsBf16 {
  using Words = std::vector<std::uint32_t, Eigen::aligned_allocator<std::uint32_t>>;
  Words kt, vt;    // [dp, padded]: word (p, j) = key j's pair p of columns of K (of V)
  Words kr, vr;    // [ceil(L / 2), d]: word (p, c) = column c of keys 2p, 2p + 1 of K (of V)
  Words rows_tmp;  // [L, dp]: one head's K or V rows as pairs of columns
  Words qa, oa;    // [kFlashRows, dp]: the block's Q, dO rows as pairs of columns
  Words qr, orr;   // [kFlashRows / 2, d]: Q, dO pairs of rows
  Words pa;        // [kFlashRows, kFlashKeys / 2]: P or dS rows as pairs of columns
  Words pr;        // [kFlashRows / 2, kFlashKeys]: P or dS pairs of rows
  Index kw = 0, d = 0, dp = 0, padded = 0;

  WEGEFT_TARGET_BF16 void keys(const float* k, const float* v, Index ld, Index L, Index pad,
                               Index dim, bool backward) {
    kw = ld, d = dim, dp = (dim + 1) / 2, padded = pad;
    const auto sz = [](Index n) { return static_cast<std::size_t>(n); };
    for (Words* w : {&kt, &vt}) w->resize(sz(dp * padded));
    for (Words* w : {&kr, &vr}) w->resize(sz((L + 1) / 2 * d));
    rows_tmp.resize(sz(L * dp));
    qa.resize(sz(kFlashRows * dp));
    oa.resize(sz(kFlashRows * dp));
    qr.resize(sz(kFlashRows / 2 * d));
    orr.resize(sz(kFlashRows / 2 * d));
    pa.resize(sz(kFlashRows * kFlashKeys / 2));
    pr.resize(sz(kFlashRows / 2 * kFlashKeys));
    column_pairs_transposed(kt, k, L);
    if (backward) {
      column_pairs_transposed(vt, v, L);
      bf16_pack_row_pairs(kr.data(), d, k, ld, L, d);
    } else {
      bf16_pack_row_pairs(vr.data(), d, v, ld, L, d);
    }
  }
  WEGEFT_TARGET_BF16 void queries(const float* q, const float* o, Index rows) {
    bf16_pack_a(qa.data(), dp, q, d, rows, 0, dp, d);
    if (o) {
      bf16_pack_a(oa.data(), dp, o, d, rows, 0, dp, d);
      bf16_pack_row_pairs(qr.data(), d, q, d, rows, d);
      bf16_pack_row_pairs(orr.data(), d, o, d, rows, d);
    }
  }
  WEGEFT_TARGET_BF16 void scores(float* s, Index rows, Index j0) const {
    bf16_block_product(s, kFlashKeys, qa.data(), dp, 1, kt.data() + j0, padded, rows, kFlashKeys,
                       dp, false);
  }
  WEGEFT_TARGET_BF16 void dprobs(float* dpr, Index rows, Index j0) const {
    bf16_block_product(dpr, kFlashKeys, oa.data(), dp, 1, vt.data() + j0, padded, rows, kFlashKeys,
                       dp, false);
  }
  WEGEFT_TARGET_BF16 void add_pv(float* acc, const float* p, Index rows, Index cols, Index j0) {
    keys_product(acc, p, rows, cols, vr.data() + j0 / 2 * d);
  }
  WEGEFT_TARGET_BF16 void add_dv(float* dv, const float* p, Index rows, Index cols) {
    rows_product(dv, p, rows, cols, orr.data());
  }
  WEGEFT_TARGET_BF16 void add_dk(float* dk, const float* ds, Index rows, Index cols) {
    rows_product(dk, ds, rows, cols, qr.data());
  }
  WEGEFT_TARGET_BF16 void add_dq(float* acc, const float* ds, Index rows, Index cols, Index j0) {
    keys_product(acc, ds, rows, cols, kr.data() + j0 / 2 * d);
  }

 private:
  /// dst [dp, padded] = the L rows of x (row stride kw) as pairs of columns, transposed; zero
  /// past key L.
  WEGEFT_TARGET_BF16 void column_pairs_transposed(Words& dst, const float* x, Index L) {
    bf16_pack_a(rows_tmp.data(), dp, x, kw, L, 0, dp, d);
    transpose_rows(dst, rows_tmp.data(), dp, L, padded, dp);
  }
  /// acc [rows, d] += X [rows, cols] Y, Y's pairs of keys at y ([ceil(cols / 2), d] words).
  WEGEFT_TARGET_BF16 void keys_product(float* acc, const float* x, Index rows, Index cols,
                                       const std::uint32_t* y) {
    const Index kp = (cols + 1) / 2;
    bf16_pack_a(pa.data(), kFlashKeys / 2, x, kFlashKeys, rows, 0, kp, cols);
    bf16_block_product(acc, d, pa.data(), kFlashKeys / 2, 1, y, d, rows, d, kp, true);
  }
  /// out [cols rows of d, stride kw] += X^T Y for X [rows, cols] and Y's pairs of rows at y.
  WEGEFT_TARGET_BF16 void rows_product(float* out, const float* x, Index rows, Index cols,
                                       const std::uint32_t* y) {
    bf16_pack_row_pairs(pr.data(), kFlashKeys, x, kFlashKeys, rows, cols);
    bf16_block_product(out, kw, pr.data(), 1, kFlashKeys, y, d, cols, d, (rows + 1) / 2, true);
  }
};
#endif

/// Sizes and thread count shared by the flash forward and backward; `tasks` independent units.
template <class T>
struct FlashPlan {
  Index L, d, group, qw, kw, padded, tasks;
  T scale;
  int threads;
  FlashPlan(const AttentionShape& s, Index task_count)
      : L((s.check(), s.seq)),
        d(s.head_dim),
        group(s.heads / s.kv_heads),
        qw(s.q_width()),
        kw(s.kv_width()),
        padded((s.seq + kFlashKeys - 1) / kFlashKeys * kFlashKeys),
        tasks(task_count),
        scale(static_cast<T>(1.0 / std::sqrt(static_cast<double>(s.head_dim)))),
        threads(static_cast<int>(std::min<Index>(
            kernel_threads(s.batch * s.heads * s.seq * (s.seq + s.head_dim)), task_count))) {}
};

/// Keys query row i may see in the key block starting at j0 with `cols` keys (causal: j <= i).
inline Index visible_keys(const AttentionShape& s, Index i, Index j0, Index cols) {
  return s.causal ? std::clamp<Index>(i + 1 - j0, 0, cols) : cols;
}

/// flash_attention_forward with the block products of `Products` (FlashProducts<T> or, for
/// float, FlashProductsBf16).
template <class T, class Products>
void flash_forward(T* out, T* lse, const T* q, const T* k, const T* v, const std::uint8_t* key_mask,
                   const AttentionShape& s) {
  using Row = Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>>;
  const FlashPlan<T> plan(s, s.batch * s.heads);
  const Index L = plan.L, d = plan.d, group = plan.group, qw = plan.qw, kw = plan.kw,
              padded = plan.padded;
  const T scale = plan.scale;
  for_each_step(0, plan.tasks, 1, plan.threads, [&](Index task) {
    const Index b = task / s.heads, h = task % s.heads, g = h / group;
    thread_local FlashScratch<T> w;
    thread_local Products mul;
    w.plan(padded, d);
    mul.keys(k + b * L * kw + g * d, v + b * L * kw + g * d, kw, L, padded, d, false);
    w.plan_bias(key_mask, b, L, padded);
    for (Index i0 = 0; i0 < L; i0 += kFlashRows) {
      const Index rows = std::min(kFlashRows, L - i0);
      for (Index r = 0; r < rows; ++r)
        for (Index c = 0; c < d; ++c)
          w.qs[std::size_t(r * d + c)] = scale * q[(b * L + i0 + r) * qw + h * d + c];
      mul.queries(w.qs.data(), nullptr, rows);
      std::fill(w.acc.begin(), w.acc.end(), T(0));
      std::fill(w.m.begin(), w.m.end(), kNegInf<T>);
      std::fill(w.l.begin(), w.l.end(), T(0));
      const Index key_end = s.causal ? i0 + rows : L;
      for (Index j0 = 0; j0 < key_end; j0 += kFlashKeys) {
        const Index cols = std::min(kFlashKeys, key_end - j0);
        mul.scores(w.s.data(), rows, j0);
        for (Index r = 0; r < rows; ++r) {
          T* sr = w.s.data() + r * kFlashKeys;
          const Index vis = visible_keys(s, i0 + r, j0, cols);
          std::fill(sr + vis, sr + cols, T(0));
          if (vis == 0) continue;
          Row row(sr, vis);
          row += Eigen::Map<const Eigen::Array<T, 1, Eigen::Dynamic>>(w.bias.data() + j0, vis);
          const T m_new = std::max(w.m[std::size_t(r)], row.maxCoeff());
          if (m_new == kNegInf<T>) {  // every key seen so far is padding
            row.setZero();
            continue;
          }
          const T alpha = std::exp(w.m[std::size_t(r)] - m_new);
          row = (row - m_new).exp();
          w.l[std::size_t(r)] = w.l[std::size_t(r)] * alpha + row.sum();
          w.m[std::size_t(r)] = m_new;
          if (alpha != T(1)) Row(w.acc.data() + r * d, d) *= alpha;
        }
        mul.add_pv(w.acc.data(), w.s.data(), rows, cols, j0);
      }
      for (Index r = 0; r < rows; ++r) {
        const T l = w.l[std::size_t(r)], inv = l > T(0) ? T(1) / l : T(0);
        T* o = out + (b * L + i0 + r) * qw + h * d;
        for (Index c = 0; c < d; ++c) o[c] = w.acc[std::size_t(r * d + c)] * inv;
        lse[(b * s.heads + h) * L + i0 + r] =
            l > T(0) ? w.m[std::size_t(r)] + std::log(l) : kNegInf<T>;
      }
    }
  });
}

/// flash_attention_backward with the block products of `Products`.
template <class T, class Products>
void flash_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse, const T* q,
                    const T* k, const T* v, const std::uint8_t* key_mask, const AttentionShape& s) {
  const FlashPlan<T> plan(s, s.batch * s.kv_heads);
  const Index L = plan.L, d = plan.d, group = plan.group, qw = plan.qw, kw = plan.kw,
              padded = plan.padded;
  const T scale = plan.scale;
  for_each_step(0, plan.tasks, 1, plan.threads, [&](Index task) {
    const Index b = task / s.kv_heads, g = task % s.kv_heads;
    thread_local FlashScratch<T> w;
    thread_local Products mul;
    w.plan(padded, d);
    mul.keys(k + b * L * kw + g * d, v + b * L * kw + g * d, kw, L, padded, d, true);
    w.plan_bias(key_mask, b, L, padded);
    T* dkg = dk + b * L * kw + g * d;
    T* dvg = dv + b * L * kw + g * d;
    for (Index j = 0; j < L; ++j) {
      std::fill(dkg + j * kw, dkg + j * kw + d, T(0));
      std::fill(dvg + j * kw, dvg + j * kw + d, T(0));
    }
    for (Index h = g * group; h < (g + 1) * group; ++h)
      for (Index i0 = 0; i0 < L; i0 += kFlashRows) {
        const Index rows = std::min(kFlashRows, L - i0);
        for (Index r = 0; r < rows; ++r) {
          const Index at = (b * L + i0 + r) * qw + h * d;
          T dot = 0;
          for (Index c = 0; c < d; ++c) {
            w.qs[std::size_t(r * d + c)] = scale * q[at + c];
            w.dob[std::size_t(r * d + c)] = dout[at + c];
            dot += dout[at + c] * out[at + c];
          }
          w.delta[std::size_t(r)] = dot;
          w.m[std::size_t(r)] = lse[(b * s.heads + h) * L + i0 + r];
        }
        mul.queries(w.qs.data(), w.dob.data(), rows);
        std::fill(w.acc.begin(), w.acc.end(), T(0));
        const Index key_end = s.causal ? i0 + rows : L;
        for (Index j0 = 0; j0 < key_end; j0 += kFlashKeys) {
          const Index cols = std::min(kFlashKeys, key_end - j0);
          mul.scores(w.s.data(), rows, j0);
          mul.dprobs(w.dp.data(), rows, j0);
          for (Index r = 0; r < rows; ++r) {
            T* p = w.s.data() + r * kFlashKeys;
            T* ds = w.dp.data() + r * kFlashKeys;
            const T row_lse = w.m[std::size_t(r)], dot = w.delta[std::size_t(r)];
            const Index vis = row_lse == kNegInf<T> ? 0 : visible_keys(s, i0 + r, j0, cols);
            for (Index c = 0; c < vis; ++c) p[c] += w.bias[std::size_t(j0 + c)] - row_lse;
            Eigen::Map<Eigen::Array<T, 1, Eigen::Dynamic>> pr(p, vis);
            pr = pr.exp();
            std::fill(p + vis, p + cols, T(0));
            for (Index c = 0; c < cols; ++c) ds[c] = p[c] * (ds[c] - dot);
          }
          // dV += P^T dO, dK += dS^T (scale Q), dQ += dS K (scaled once at the end)
          mul.add_dv(dvg + j0 * kw, w.s.data(), rows, cols);
          mul.add_dk(dkg + j0 * kw, w.dp.data(), rows, cols);
          mul.add_dq(w.acc.data(), w.dp.data(), rows, cols, j0);
        }
        for (Index r = 0; r < rows; ++r) {
          T* o = dq + (b * L + i0 + r) * qw + h * d;
          for (Index c = 0; c < d; ++c) o[c] = scale * w.acc[std::size_t(r * d + c)];
        }
      }
  });
}
}  // namespace detail

/// out [B*T, H*d] (=) and lse [B, H, T] (=, each query row's log-sum-exp of its scaled, visible
/// scores; -inf for a row whose keys are all padding, whose output is 0) from q [B*T, H*d], k, v
/// [B*T, Hkv*d] and key_mask [B, T] (1 = attend, 0 = padding; null = attend to all).
template <class T>
void flash_attention_forward(T* out, T* lse, const T* q, const T* k, const T* v,
                             const std::uint8_t* key_mask, const AttentionShape& s) {
  detail::flash_forward<T, detail::FlashProducts<T>>(out, lse, q, k, v, key_mask, s);
}

/// dq [B*T, H*d], dk, dv [B*T, Hkv*d] (all =) from dout [B*T, H*d] and the forward's out, lse,
/// q, k, v and key_mask.
template <class T>
void flash_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* out, const T* lse,
                              const T* q, const T* k, const T* v, const std::uint8_t* key_mask,
                              const AttentionShape& s) {
  detail::flash_backward<T, detail::FlashProducts<T>>(dq, dk, dv, dout, out, lse, q, k, v, key_mask,
                                                      s);
}

/// flash_attention_forward with its products in bf16: Q, K, V and the probabilities rounded to
/// bf16 (nearest even) as they enter a product, the sums in fp32 (vdpbf16ps); the softmax, its
/// running max and sum, out and lse in fp32. Needs bf16_gemm_available(); throws otherwise.
inline void flash_attention_forward_bf16(float* out, float* lse, const float* q, const float* k,
                                         const float* v, const std::uint8_t* key_mask,
                                         const AttentionShape& s) {
  WEGEFT_CHECK(bf16_gemm_available(),
               "bf16 attention: this CPU has no AVX512-BF16 (vdpbf16ps); use the fp32 kernels");
#if WEGEFT_BF16_X86
  detail::flash_forward<float, detail::FlashProductsBf16>(out, lse, q, k, v, key_mask, s);
#else
  (void)out, (void)lse, (void)q, (void)k, (void)v, (void)key_mask, (void)s;
#endif
}

/// flash_attention_backward with its products in bf16: Q, K, V, dO, P and dS rounded to bf16 as
/// they enter a product, the sums (dq, dk, dv) in fp32. Needs bf16_gemm_available().
inline void flash_attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout,
                                          const float* out, const float* lse, const float* q,
                                          const float* k, const float* v,
                                          const std::uint8_t* key_mask, const AttentionShape& s) {
  WEGEFT_CHECK(bf16_gemm_available(),
               "bf16 attention: this CPU has no AVX512-BF16 (vdpbf16ps); use the fp32 kernels");
#if WEGEFT_BF16_X86
  detail::flash_backward<float, detail::FlashProductsBf16>(dq, dk, dv, dout, out, lse, q, k, v,
                                                           key_mask, s);
#else
  (void)dq, (void)dk, (void)dv, (void)dout, (void)out, (void)lse, (void)q, (void)k, (void)v,
      (void)key_mask, (void)s;
#endif
}

}  // namespace wegeft

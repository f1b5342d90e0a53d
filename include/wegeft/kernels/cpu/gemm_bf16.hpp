// A bf16 GEMM for the frozen products of a linear layer: C [M, N] (=|+=) A [M, K] B^T, where B
// [N, K] is frozen (a layer's weight, or its transpose) and packed once in bf16, A is fp32 and
// rounded to bf16 (nearest even) block by block as the product runs, and the products are summed
// in fp32. It runs on AVX512-BF16 (vdpbf16ps: 32 multiply-adds of bf16 pairs into 16 fp32 lanes per
// instruction, twice the fp32 FMA's); the ISA is checked at run time (`bf16_gemm_available`), so a
// binary built without -march flags uses it where the CPU has it.
//
//   auto wf = wegeft::Bf16Panels::from_rows(w.data(), d_out, d_in, d_in);  // B = W: y = x W^T
//   auto wb = wegeft::Bf16Panels::from_cols(w.data(), d_out, d_in, d_in);  // B = W^T: dx = dy W
//   wegeft::gemm_bf16(y.data(), d_out, x.data(), d_in, N, wf, /*accumulate=*/true);
//
// Layout: B is cut into panels of 32 of its rows (C's columns); a panel holds, for each pair of
// k, 32 lanes of 32 bits, lane i the bf16 pair (B[n0 + i][2kk], B[n0 + i][2kk + 1]), zero-padded
// past N and K. A is converted per block of rows and k into row-major bf16 pairs; the micro-kernel
// broadcasts one pair of a row of A against two vectors of a panel, 12 rows x 32 columns of C in
// 24 registers. Blocks: 192 pairs of k (a panel's slice is 24 KB, in L1), 240 rows of A (180 KB,
// in L2). Threads take contiguous blocks of rows of C (kernels/cpu/threads.hpp).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "wegeft/core/dtype.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/threads.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WEGEFT_BF16_X86 1
#define WEGEFT_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define WEGEFT_BF16_X86 0
#endif

namespace wegeft {

/// Whether gemm_bf16 can run here: this CPU executes AVX512-BF16 (and this build is for x86-64
/// with GCC or Clang).
inline bool bf16_gemm_available() {
#if WEGEFT_BF16_X86
  static const bool has = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
  }();
  return has;
#else
  return false;
#endif
}

/// A frozen [N, K] matrix rounded to bf16 and packed for gemm_bf16 (layout in the file comment).
class Bf16Panels {
 public:
  static constexpr Index kPanel = 32;  // rows of B (columns of C) per panel

  Bf16Panels() = default;

  /// B = the [n, k] row-major matrix at b (row stride ld): for y = x W^T, pass W [d_out, d_in].
  static Bf16Panels from_rows(const float* b, Index n, Index k, Index ld) {
    WEGEFT_CHECK(ld >= k, "Bf16Panels: row stride " << ld << " is below the " << k << " columns");
    return pack(n, k, [&](Index i, Index j) { return b[i * ld + j]; });
  }
  /// B = M^T for the [k, n] row-major matrix M at m (row stride ld): for dx = dy W, pass W
  /// [d_out, d_in] with k = d_out, n = d_in.
  static Bf16Panels from_cols(const float* m, Index k, Index n, Index ld) {
    WEGEFT_CHECK(ld >= n, "Bf16Panels: row stride " << ld << " is below the " << n << " columns");
    return pack(n, k, [&](Index i, Index j) { return m[j * ld + i]; });
  }

  Index rows() const { return m_n; }      // N
  Index cols() const { return m_k; }      // K
  Index k_pairs() const { return m_kp; }  // ceil(K / 2)
  bool empty() const { return m_n == 0; }
  /// Bytes held (for memory reports).
  std::size_t bytes() const { return m_data.size() * sizeof(std::uint32_t); }
  /// Panel p: k_pairs() x 32 words.
  const std::uint32_t* panel(Index p) const {
    return m_data.data() + static_cast<std::size_t>(p * m_kp * kPanel);
  }
  /// B[i][j] as the bf16 value it holds (for tests and checks).
  float at(Index i, Index j) const {
    const std::uint32_t w = panel(i / kPanel)[(j / 2) * kPanel + i % kPanel];
    return bf16_to_float(static_cast<std::uint16_t>(j % 2 ? w >> 16 : w & 0xffffu));
  }

 private:
  template <class Get>
  static Bf16Panels pack(Index n, Index k, Get get) {
    WEGEFT_CHECK(n > 0 && k > 0, "Bf16Panels: empty matrix [" << n << ", " << k << "]");
    Bf16Panels p;
    p.m_n = n;
    p.m_k = k;
    p.m_kp = (k + 1) / 2;
    const Index panels = (n + kPanel - 1) / kPanel;
    p.m_data.assign(static_cast<std::size_t>(panels * p.m_kp * kPanel), 0u);
    for (Index i = 0; i < n; ++i) {
      std::uint32_t* dst =
          p.m_data.data() + static_cast<std::size_t>((i / kPanel) * p.m_kp * kPanel);
      for (Index j = 0; j < k; ++j) {
        const std::uint32_t h = float_to_bf16(get(i, j));
        dst[(j / 2) * kPanel + i % kPanel] |= j % 2 ? h << 16 : h;
      }
    }
    return p;
  }

  Index m_n = 0, m_k = 0, m_kp = 0;
  std::vector<std::uint32_t, Eigen::aligned_allocator<std::uint32_t>> m_data;
};

namespace detail {
inline constexpr Index kBf16Mr = 12;   // rows of C per micro-kernel
inline constexpr Index kBf16Kc = 192;  // pairs of k per block
inline constexpr Index kBf16Mc = 240;  // rows of A per block (a multiple of kBf16Mr)

#if WEGEFT_BF16_X86
/// c [mr, nc <= 32] (+)= a [mr rows of kc pairs, row stride lda pairs] . panel [kc pairs x 32].
template <int MR>
WEGEFT_TARGET_BF16 inline void bf16_micro(float* c, Index ldc, const std::uint32_t* a, Index lda,
                                          const std::uint32_t* b, Index kc, Index nc, bool load) {
  __m512 acc0[MR], acc1[MR];
  const __mmask16 m0 = nc >= 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1u);
  const __mmask16 m1 =
      nc >= 32 ? __mmask16(0xffff) : (nc <= 16 ? __mmask16(0) : __mmask16((1u << (nc - 16)) - 1u));
  for (int r = 0; r < MR; ++r) {
    acc0[r] = load ? _mm512_maskz_loadu_ps(m0, c + r * ldc) : _mm512_setzero_ps();
    acc1[r] = load ? _mm512_maskz_loadu_ps(m1, c + r * ldc + 16) : _mm512_setzero_ps();
  }
  for (Index kk = 0; kk < kc; ++kk) {
    const __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + kk * 32);
    const __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + kk * 32 + 16);
    for (int r = 0; r < MR; ++r) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(static_cast<int>(a[r * lda + kk]));
      acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
      acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
    }
  }
  for (int r = 0; r < MR; ++r) {
    _mm512_mask_storeu_ps(c + r * ldc, m0, acc0[r]);
    _mm512_mask_storeu_ps(c + r * ldc + 16, m1, acc1[r]);
  }
}

template <int MR>
WEGEFT_TARGET_BF16 inline void bf16_micro_dispatch(int mr, float* c, Index ldc,
                                                   const std::uint32_t* a, Index lda,
                                                   const std::uint32_t* b, Index kc, Index nc,
                                                   bool load) {
  if constexpr (MR > 0) {
    if (mr == MR) return bf16_micro<MR>(c, ldc, a, lda, b, kc, nc, load);
    return bf16_micro_dispatch<MR - 1>(mr, c, ldc, a, lda, b, kc, nc, load);
  }
}

/// dst [rows x kc pairs, row stride ld pairs] = bf16 pairs of a [rows, columns k0 .. k0 + 2 kc)
/// (fp32, row stride lda; columns at or past K read as zero), nearest even.
WEGEFT_TARGET_BF16 inline void bf16_pack_a(std::uint32_t* dst, Index ld, const float* a, Index lda,
                                           Index rows, Index k0, Index kc, Index K) {
  const Index cols = std::min<Index>(2 * kc, K - k0);  // real columns in this block
  for (Index r = 0; r < rows; ++r) {
    const float* src = a + r * lda + k0;
    std::uint32_t* out = dst + r * ld;
    Index j = 0;
    for (; j + 32 <= cols; j += 32) {
      const __m512 lo = _mm512_loadu_ps(src + j), hi = _mm512_loadu_ps(src + j + 16);
      _mm512_storeu_si512(out + j / 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
    }
    if (j < cols) {
      const Index left = cols - j;
      const __mmask16 ml = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1u);
      const __mmask16 mh = left <= 16 ? __mmask16(0) : __mmask16((1u << (left - 16)) - 1u);
      const __m512 lo = _mm512_maskz_loadu_ps(ml, src + j),
                   hi = _mm512_maskz_loadu_ps(mh, src + j + 16);
      const __m512i v = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
      const Index words = (left + 1) / 2;
      _mm512_mask_storeu_epi32(out + j / 2, __mmask16((1u << words) - 1u), v);
      j += 2 * words;
    }
    for (Index w = j / 2; w < kc; ++w) out[w] = 0u;  // pairs past K
  }
}

/// Rows [m0, m1) of C: the blocked loops over k, rows of A and panels of B.
WEGEFT_TARGET_BF16 inline void bf16_gemm_rows(float* c, Index ldc, const float* a, Index lda,
                                              Index m0, Index m1, const Bf16Panels& b,
                                              bool accumulate) {
  thread_local std::vector<std::uint32_t, Eigen::aligned_allocator<std::uint32_t>> apack;
  apack.resize(static_cast<std::size_t>(kBf16Mc * kBf16Kc));
  const Index N = b.rows(), K = b.cols(), KP = b.k_pairs();
  const Index panels = (N + Bf16Panels::kPanel - 1) / Bf16Panels::kPanel;
  for (Index mb = m0; mb < m1; mb += kBf16Mc) {
    const Index mc = std::min(kBf16Mc, m1 - mb);
    for (Index kb = 0; kb < KP; kb += kBf16Kc) {
      const Index kc = std::min(kBf16Kc, KP - kb);
      bf16_pack_a(apack.data(), kc, a + mb * lda, lda, mc, 2 * kb, kc, K);
      const bool load = accumulate || kb > 0;
      for (Index p = 0; p < panels; ++p) {
        const std::uint32_t* bp = b.panel(p) + kb * Bf16Panels::kPanel;
        const Index n0 = p * Bf16Panels::kPanel, nc = std::min(Bf16Panels::kPanel, N - n0);
        for (Index r = 0; r < mc; r += kBf16Mr) {
          const int mr = static_cast<int>(std::min(kBf16Mr, mc - r));
          float* cp = c + (mb + r) * ldc + n0;
          const std::uint32_t* ap = apack.data() + r * kc;
          if (mr == kBf16Mr)
            bf16_micro<kBf16Mr>(cp, ldc, ap, kc, bp, kc, nc, load);
          else
            bf16_micro_dispatch<kBf16Mr - 1>(mr, cp, ldc, ap, kc, bp, kc, nc, load);
        }
      }
    }
  }
}
#endif
}  // namespace detail

/// c [m, N] (+)= a [m, K] B^T, with B = `b` [N, K] (bf16) and a fp32 (row strides lda >= K, ldc >=
/// N), a rounded to bf16 and the products summed in fp32. accumulate: c += (else c =). Needs
/// bf16_gemm_available(); threads over blocks of rows (kernels/cpu/threads.hpp).
inline void gemm_bf16(float* c, Index ldc, const float* a, Index lda, Index m, const Bf16Panels& b,
                      bool accumulate) {
  WEGEFT_CHECK(!b.empty(), "gemm_bf16: the packed matrix is empty");
  WEGEFT_CHECK(lda >= b.cols() && ldc >= b.rows(), "gemm_bf16: strides lda "
                                                       << lda << " / ldc " << ldc << " below K "
                                                       << b.cols() << " / N " << b.rows());
  WEGEFT_CHECK(bf16_gemm_available(),
               "gemm_bf16: this CPU has no AVX512-BF16 (vdpbf16ps); use the fp32 products");
  if (m <= 0) return;
#if WEGEFT_BF16_X86
  const int threads = detail::kernel_threads(m * b.rows());
  detail::for_each_part(m, detail::kBf16Mr, threads, [&](int, Index m0, Index m1) {
    detail::bf16_gemm_rows(c, ldc, a, lda, m0, m1, b, accumulate);
  });
#else
  (void)c;
  (void)ldc;
  (void)a;
  (void)lda;
  (void)accumulate;
#endif
}

}  // namespace wegeft

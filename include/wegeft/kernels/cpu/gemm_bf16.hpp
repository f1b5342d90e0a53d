// A bf16 GEMM for the frozen products of a linear layer: C [M, N] (=|+=) A [M, K] B^T, where B
// [N, K] is frozen (a layer's weight, or its transpose) and packed once in bf16, A is fp32 and
// rounded to bf16 (nearest even) block by block as the product runs, and the products are summed
// in fp32. Two kernels, chosen at run time (`bf16_kernel`), so a binary built without -march flags
// uses the best one the CPU has:
// - AMX (Intel Sapphire Rapids and later: tdpbf16ps, a 16 x 16 fp32 tile += a 16 x 32 bf16 tile
//   times a 32 x 16 one, 8192 multiply-adds per instruction), when the CPU has AMX-BF16 and the
//   kernel lets this process use the tile registers (Linux: arch_prctl ARCH_REQ_XCOMP_PERM);
// - AVX512-BF16 (AMD Zen 4, Intel Cooper Lake and later: vdpbf16ps, 32 multiply-adds of bf16
//   pairs into 16 fp32 lanes per instruction, twice the fp32 FMA's).
// `set_bf16_kernel` (or WEGEFT_BF16_KERNEL=amx|avx512bf16 in the environment) forces one.
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
// in L2). The AMX kernel reads the same panels as tiles (16 pairs of k x 16 columns, a row stride
// of 128 bytes; a panel's pairs are stored zero-padded to a multiple of 16 for it) and the
// converted A as tiles of 16 rows x 16 pairs; its micro-kernel keeps 32 x 32 outputs of C in four
// accumulator tiles, with two tiles of A and two of B. Threads take contiguous blocks of rows of C
// (kernels/cpu/threads.hpp).
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "wegeft/core/dtype.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/threads.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define WEGEFT_BF16_X86 1
#define WEGEFT_TARGET_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#define WEGEFT_TARGET_AMX \
  __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
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

/// Whether the AMX kernel can run here: the CPU has AMX-TILE and AMX-BF16 (and AVX512-BF16, whose
/// conversions it uses), and the operating system let this process use the tile registers (on
/// Linux, arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA), asked once).
inline bool amx_bf16_available() {
#if WEGEFT_BF16_X86 && defined(__linux__)
  static const bool has = [] {
    if (!bf16_gemm_available()) return false;
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
    const bool amx_bf16 = (edx >> 22) & 1u, amx_tile = (edx >> 24) & 1u;
    if (!amx_bf16 || !amx_tile) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return has;
#else
  return false;
#endif
}

/// The kernels behind gemm_bf16: automatic picks AMX where amx_bf16_available(), else AVX512-BF16.
enum class Bf16Kernel { automatic, amx, avx512bf16 };

namespace detail {
inline std::atomic<int>& bf16_kernel_setting() {
  static std::atomic<int> setting = [] {
    const char* env = std::getenv("WEGEFT_BF16_KERNEL");
    if (env == nullptr || *env == '\0' || std::strcmp(env, "automatic") == 0)
      return static_cast<int>(Bf16Kernel::automatic);
    if (std::strcmp(env, "amx") == 0) return static_cast<int>(Bf16Kernel::amx);
    WEGEFT_CHECK(std::strcmp(env, "avx512bf16") == 0,
                 "WEGEFT_BF16_KERNEL is '" << env << "'; it must be automatic, amx or avx512bf16");
    return static_cast<int>(Bf16Kernel::avx512bf16);
  }();
  return setting;
}
}  // namespace detail

/// Forces gemm_bf16's kernel (automatic: the best one this CPU has). Throws, naming the missing
/// ISA, for a kernel this CPU or system cannot run.
inline void set_bf16_kernel(Bf16Kernel k) {
  WEGEFT_CHECK(k != Bf16Kernel::amx || amx_bf16_available(),
               "set_bf16_kernel: AMX is not available here (the CPU has no AMX-BF16, or the "
               "system refused the tile registers)");
  WEGEFT_CHECK(k == Bf16Kernel::automatic || bf16_gemm_available(),
               "set_bf16_kernel: this CPU has no AVX512-BF16 (vdpbf16ps)");
  detail::bf16_kernel_setting().store(static_cast<int>(k));
}

/// The kernel gemm_bf16 runs now (never automatic); meaningful where bf16_gemm_available().
inline Bf16Kernel bf16_kernel() {
  const auto k = static_cast<Bf16Kernel>(detail::bf16_kernel_setting().load());
  if (k == Bf16Kernel::automatic)
    return amx_bf16_available() ? Bf16Kernel::amx : Bf16Kernel::avx512bf16;
  WEGEFT_CHECK(k != Bf16Kernel::amx || amx_bf16_available(),
               "WEGEFT_BF16_KERNEL=amx: AMX is not available here (the CPU has no AMX-BF16, or "
               "the system refused the tile registers)");
  return k;
}

/// "AMX" or "AVX512-BF16" (for reports), or "none" without AVX512-BF16.
inline std::string bf16_kernel_name() {
  if (!bf16_gemm_available()) return "none";
  return bf16_kernel() == Bf16Kernel::amx ? "AMX" : "AVX512-BF16";
}

/// A frozen [N, K] matrix rounded to bf16 and packed for gemm_bf16 (layout in the file comment).
class Bf16Panels {
 public:
  static constexpr Index kPanel = 32;      // rows of B (columns of C) per panel
  static constexpr Index kPairAlign = 16;  // stored pairs per panel: a multiple of an AMX tile's

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
  /// Pairs stored per panel: k_pairs() rounded up to kPairAlign, the ones past k_pairs() zero.
  Index stored_pairs() const { return m_kps; }
  /// Panel p: stored_pairs() x 32 words.
  const std::uint32_t* panel(Index p) const {
    return m_data.data() + static_cast<std::size_t>(p * m_kps * kPanel);
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
    p.m_kps = (p.m_kp + kPairAlign - 1) / kPairAlign * kPairAlign;
    const Index panels = (n + kPanel - 1) / kPanel;
    p.m_data.assign(static_cast<std::size_t>(panels * p.m_kps * kPanel), 0u);
    for (Index i = 0; i < n; ++i) {
      std::uint32_t* dst =
          p.m_data.data() + static_cast<std::size_t>((i / kPanel) * p.m_kps * kPanel);
      for (Index j = 0; j < k; ++j) {
        const std::uint32_t h = float_to_bf16(get(i, j));
        dst[(j / 2) * kPanel + i % kPanel] |= j % 2 ? h << 16 : h;
      }
    }
    return p;
  }

  Index m_n = 0, m_k = 0, m_kp = 0, m_kps = 0;
  std::vector<std::uint32_t, Eigen::aligned_allocator<std::uint32_t>> m_data;
};

namespace detail {
inline constexpr Index kBf16Mr = 12;   // rows of C per micro-kernel
inline constexpr Index kBf16Kc = 192;  // pairs of k per block
inline constexpr Index kBf16Mc = 240;  // rows of A per block (a multiple of kBf16Mr)
inline constexpr Index kBf16Nb = 16;   // panels of B per block (16 x kBf16Kc pairs: 384 KB)

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

/// Rows [m0, m1) of C: the blocked loops over k, rows of A and panels of B; before(mb, mb + mc)
/// ahead of each block of rows. Inside a block of k, each tile of kBf16Mr rows of the packed A
/// (kc pairs, in L1) runs across a block of kBf16Nb panels (in L2) before the next tile, so
/// neither is fetched from further out once per product; a wide B (an LM head's) is taken
/// kBf16Nb panels at a time.
template <class Before>
WEGEFT_TARGET_BF16 inline void bf16_gemm_rows(float* c, Index ldc, const float* a, Index lda,
                                              Index m0, Index m1, const Bf16Panels& b,
                                              bool accumulate, Before&& before) {
  thread_local std::vector<std::uint32_t, Eigen::aligned_allocator<std::uint32_t>> apack;
  apack.resize(static_cast<std::size_t>(kBf16Mc * kBf16Kc));
  const Index N = b.rows(), K = b.cols(), KP = b.k_pairs();
  const Index panels = (N + Bf16Panels::kPanel - 1) / Bf16Panels::kPanel;
  for (Index mb = m0; mb < m1; mb += kBf16Mc) {
    const Index mc = std::min(kBf16Mc, m1 - mb);
    before(mb, mb + mc);
    for (Index kb = 0; kb < KP; kb += kBf16Kc) {
      const Index kc = std::min(kBf16Kc, KP - kb);
      bf16_pack_a(apack.data(), kc, a + mb * lda, lda, mc, 2 * kb, kc, K);
      const bool load = accumulate || kb > 0;
      for (Index pb = 0; pb < panels; pb += kBf16Nb) {
        const Index pe = std::min(panels, pb + kBf16Nb);
        for (Index r = 0; r < mc; r += kBf16Mr) {
          const int mr = static_cast<int>(std::min(kBf16Mr, mc - r));
          const std::uint32_t* ap = apack.data() + r * kc;
          for (Index p = pb; p < pe; ++p) {
            const std::uint32_t* bp = b.panel(p) + kb * Bf16Panels::kPanel;
            const Index n0 = p * Bf16Panels::kPanel, nc = std::min(Bf16Panels::kPanel, N - n0);
            float* cp = c + (mb + r) * ldc + n0;
            if (mr == kBf16Mr)
              bf16_micro<kBf16Mr>(cp, ldc, ap, kc, bp, kc, nc, load);
            else
              bf16_micro_dispatch<kBf16Mr - 1>(mr, cp, ldc, ap, kc, bp, kc, nc, load);
          }
        }
      }
    }
  }
}

inline constexpr Index kAmxMr = 32;   // rows of C per micro-kernel (two tiles of 16)
inline constexpr Index kAmxKt = 16;   // pairs of k per tile
inline constexpr Index kAmxMc = 256;  // rows of A per block (a multiple of kAmxMr)

/// The tile configuration: tiles 0-3 accumulate C (16 rows x 16 fp32), 4-5 hold A (16 rows x 16
/// pairs), 6-7 hold B (16 pairs x 16 columns); every tile is 16 rows of 64 bytes.
struct alignas(64) AmxTileConfig {
  std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
  AmxTileConfig() {
    for (int t = 0; t < 8; ++t) {
      colsb[t] = 64;
      rows[t] = 16;
    }
  }
};

/// c [32, 32] (+)= a [32 rows of kc pairs, row stride lda pairs] . panel [kc pairs x 32], kc a
/// multiple of 16, c with row stride ldc floats; the tile configuration is loaded.
WEGEFT_TARGET_AMX inline void amx_micro(float* c, Index ldc, const std::uint32_t* a, Index lda,
                                        const std::uint32_t* b, Index kc, bool load) {
  const auto cs = static_cast<long>(ldc * sizeof(float));
  const auto as = static_cast<long>(lda * sizeof(std::uint32_t));
  constexpr long bs = Bf16Panels::kPanel * sizeof(std::uint32_t);
  if (load) {
    _tile_loadd(0, c, cs);
    _tile_loadd(1, c + 16, cs);
    _tile_loadd(2, c + 16 * ldc, cs);
    _tile_loadd(3, c + 16 * ldc + 16, cs);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (Index k = 0; k < kc; k += kAmxKt) {
    _tile_loadd(4, a + k, as);
    _tile_loadd(5, a + 16 * lda + k, as);
    _tile_loadd(6, b + k * Bf16Panels::kPanel, bs);
    _tile_loadd(7, b + k * Bf16Panels::kPanel + 16, bs);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, cs);
  _tile_stored(1, c + 16, cs);
  _tile_stored(2, c + 16 * ldc, cs);
  _tile_stored(3, c + 16 * ldc + 16, cs);
}

/// Rows [m0, m1) of C through AMX: the blocked loops of bf16_gemm_rows, with 32 x 32 tiles of C;
/// edge tiles (fewer rows or columns) go through a 32 x 32 buffer.
template <class Before>
WEGEFT_TARGET_AMX inline void amx_gemm_rows(float* c, Index ldc, const float* a, Index lda,
                                            Index m0, Index m1, const Bf16Panels& b,
                                            bool accumulate, Before&& before) {
  thread_local std::vector<std::uint32_t, Eigen::aligned_allocator<std::uint32_t>> apack;
  apack.resize(static_cast<std::size_t>(kAmxMc * kBf16Kc));
  alignas(64) float edge[kAmxMr * Bf16Panels::kPanel];
  const AmxTileConfig config;
  _tile_loadconfig(&config);
  const Index N = b.rows(), K = b.cols(), KP = b.k_pairs();
  const Index panels = (N + Bf16Panels::kPanel - 1) / Bf16Panels::kPanel;
  for (Index mb = m0; mb < m1; mb += kAmxMc) {
    const Index mc = std::min(kAmxMc, m1 - mb);
    const Index mcp = (mc + kAmxMr - 1) / kAmxMr * kAmxMr;
    before(mb, mb + mc);
    for (Index kb = 0; kb < KP; kb += kBf16Kc) {
      const Index kc = std::min(kBf16Kc, KP - kb);
      const Index kcp = (kc + kAmxKt - 1) / kAmxKt * kAmxKt;  // within the panels' stored pairs
      bf16_pack_a(apack.data(), kcp, a + mb * lda, lda, mc, 2 * kb, kcp, K);
      std::fill(apack.begin() + mc * kcp, apack.begin() + mcp * kcp, 0u);
      const bool load = accumulate || kb > 0;
      for (Index p = 0; p < panels; ++p) {
        const std::uint32_t* bp = b.panel(p) + kb * Bf16Panels::kPanel;
        const Index n0 = p * Bf16Panels::kPanel, nc = std::min(Bf16Panels::kPanel, N - n0);
        for (Index r = 0; r < mcp; r += kAmxMr) {
          const Index rows = std::min(kAmxMr, mc - r);
          float* cp = c + (mb + r) * ldc + n0;
          const std::uint32_t* ap = apack.data() + r * kcp;
          if (rows == kAmxMr && nc == Bf16Panels::kPanel) {
            amx_micro(cp, ldc, ap, kcp, bp, kcp, load);
            continue;
          }
          if (load)
            for (Index i = 0; i < kAmxMr; ++i)
              for (Index j = 0; j < Bf16Panels::kPanel; ++j)
                edge[i * Bf16Panels::kPanel + j] = i < rows && j < nc ? cp[i * ldc + j] : 0.f;
          amx_micro(edge, Bf16Panels::kPanel, ap, kcp, bp, kcp, load);
          for (Index i = 0; i < rows; ++i)
            std::copy_n(edge + i * Bf16Panels::kPanel, nc, cp + i * ldc);
        }
      }
    }
  }
  _tile_release();
}
#endif
}  // namespace detail

/// The number of parts (threads, each a contiguous range of rows) gemm_bf16 splits m rows of C
/// into for the packed `b`: the `part` that gemm_bf16_with passes is below it.
inline int gemm_bf16_parts(Index m, const Bf16Panels& b) {
#if WEGEFT_BF16_X86
  const Index grain = bf16_kernel() == Bf16Kernel::amx ? detail::kAmxMr : detail::kBf16Mr;
#else
  const Index grain = detail::kBf16Mr;
#endif
  const Index blocks = (m + grain - 1) / grain;
  return static_cast<int>(
      std::max<Index>(1, std::min<Index>(detail::kernel_threads(m * b.rows()), blocks)));
}

/// gemm_bf16 that calls before(part, i0, i1) on each block of rows [i0, i1) of C (at most a few
/// hundred rows), on the thread that computes them, just ahead of the product's work on them:
/// an adapter's rank-r products over the same rows of a (and writes into them in c, which the
/// product then accumulates onto) run while those rows are in this core's cache. `part` is the
/// thread's part, below gemm_bf16_parts(m, b). The blocks cover [0, m) once each.
template <class Before>
void gemm_bf16_with(float* c, Index ldc, const float* a, Index lda, Index m, const Bf16Panels& b,
                    bool accumulate, Before&& before) {
  WEGEFT_CHECK(!b.empty(), "gemm_bf16: the packed matrix is empty");
  WEGEFT_CHECK(lda >= b.cols() && ldc >= b.rows(), "gemm_bf16: strides lda "
                                                       << lda << " / ldc " << ldc << " below K "
                                                       << b.cols() << " / N " << b.rows());
  WEGEFT_CHECK(bf16_gemm_available(),
               "gemm_bf16: this CPU has no AVX512-BF16 (vdpbf16ps); use the fp32 products");
  if (m <= 0) return;
#if WEGEFT_BF16_X86
  const int threads = gemm_bf16_parts(m, b);
  if (bf16_kernel() == Bf16Kernel::amx) {
    detail::for_each_part(m, detail::kAmxMr, threads, [&](int t, Index m0, Index m1) {
      detail::amx_gemm_rows(c, ldc, a, lda, m0, m1, b, accumulate,
                            [&](Index i0, Index i1) { before(t, i0, i1); });
    });
    return;
  }
  detail::for_each_part(m, detail::kBf16Mr, threads, [&](int t, Index m0, Index m1) {
    detail::bf16_gemm_rows(c, ldc, a, lda, m0, m1, b, accumulate,
                           [&](Index i0, Index i1) { before(t, i0, i1); });
  });
#else
  (void)c;
  (void)ldc;
  (void)a;
  (void)lda;
  (void)accumulate;
  (void)before;
#endif
}

/// c [m, N] (+)= a [m, K] B^T, with B = `b` [N, K] (bf16) and a fp32 (row strides lda >= K, ldc >=
/// N), a rounded to bf16 and the products summed in fp32. accumulate: c += (else c =). Needs
/// bf16_gemm_available(); threads over blocks of rows (kernels/cpu/threads.hpp).
inline void gemm_bf16(float* c, Index ldc, const float* a, Index lda, Index m, const Bf16Panels& b,
                      bool accumulate) {
  gemm_bf16_with(c, ldc, a, lda, m, b, accumulate, [](int, Index, Index) {});
}

}  // namespace wegeft

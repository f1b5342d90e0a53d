// The machine's measured single-thread peaks: fp32 FMA (independent chains of vector FMAs on the
// widest vectors this build targets: 16 chains on AVX-512's 32 registers, 12 on AVX2+FMA's 16, so
// that the accumulators and the two constants stay in registers, else scalar) and, where the CPU has
// AVX512-BF16, the bf16 dot product vdpbf16ps (16 chains, 32 multiply-adds per instruction), so
// latency is hidden and only throughput counts.
#pragma once

#include <algorithm>
#include <chrono>

#include <wegeft/kernels/cpu/gemm_bf16.hpp>

#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace wegeft_bench {

inline double measured_fma_peak_gflops() {
  const long iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
#if defined(__AVX512F__)
    constexpr int kLanes = 16, kChains = 16;
    __m512 acc[kChains];
    const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(1.0f + c);
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], m, a);
    }
    float sink = 0, lanes[16];
    for (int c = 0; c < kChains; ++c) {
      _mm512_storeu_ps(lanes, acc[c]);
      sink += lanes[0];
    }
#elif defined(__FMA__)
    constexpr int kLanes = 8, kChains = 12;  // 16 accumulators would spill two to the stack
    __m256 acc[kChains];
    const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(1.0f + c);
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
      for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], m, a);
    }
    float sink = 0, lanes[8];
    for (int c = 0; c < kChains; ++c) {
      _mm256_storeu_ps(lanes, acc[c]);
      sink += lanes[0];
    }
#else
    constexpr int kLanes = 1, kChains = 16;
    float acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = 1.0f + c;
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters; ++i)
      for (int c = 0; c < kChains; ++c) acc[c] = acc[c] * 0.999999f + 1e-7f;
    float sink = 0;
    for (int c = 0; c < kChains; ++c) sink += acc[c];
#endif
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    asm volatile("" ::"g"(sink));
    best = std::max(best, 2.0 * kLanes * kChains * static_cast<double>(iters) / s * 1e-9);
  }
  return best;
}

#if WEGEFT_BF16_X86
WEGEFT_TARGET_BF16 inline double bf16_peak_run(long iters) {
  constexpr int kChains = 16;
  __m512 acc[kChains];
  const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80),  // (1, 1)
      b = (__m512bh)_mm512_set1_epi32(0x33d633d6);             // (1e-7, 1e-7)
  for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(1.0f + c);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_dpbf16_ps(acc[c], a, b);
  }
  float sink = 0, lanes[16];
  for (int c = 0; c < kChains; ++c) {
    _mm512_storeu_ps(lanes, acc[c]);
    sink += lanes[0];
  }
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  asm volatile("" ::"g"(sink));
  return 2.0 * 32 * kChains * static_cast<double>(iters) / s * 1e-9;
}
#endif

/// GFLOP/s of vdpbf16ps on one thread (a multiply-add counted as 2), or 0 without AVX512-BF16.
inline double measured_bf16_peak_gflops() {
  double best = 0;
#if WEGEFT_BF16_X86
  if (wegeft::bf16_gemm_available())
    for (int rep = 0; rep < 3; ++rep) best = std::max(best, bf16_peak_run(10'000'000));
#endif
  return best;
}

}  // namespace wegeft_bench

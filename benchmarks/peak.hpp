// The machine's measured single-thread fp32 FMA peak: 16 independent chains of vector FMAs on the
// widest vectors this build targets (AVX-512, AVX2+FMA, else 4-wide), so latency is hidden and
// only throughput counts.
#pragma once

#include <algorithm>
#include <chrono>

#if defined(__AVX512F__) || defined(__FMA__)
#include <immintrin.h>
#endif

namespace wegeft_bench {

inline double measured_fma_peak_gflops() {
  constexpr int kChains = 16;
  const long iters = 20'000'000;
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
#if defined(__AVX512F__)
    constexpr int kLanes = 16;
    __m512 acc[kChains];
    const __m512 m = _mm512_set1_ps(0.999999f), a = _mm512_set1_ps(1e-7f);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(1.0f + c);
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
      for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], m, a);
    }
    float sink = 0;
    for (int c = 0; c < kChains; ++c) sink += _mm512_reduce_add_ps(acc[c]);
#elif defined(__FMA__)
    constexpr int kLanes = 8;
    __m256 acc[kChains];
    const __m256 m = _mm256_set1_ps(0.999999f), a = _mm256_set1_ps(1e-7f);
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(1.0f + c);
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
      for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], m, a);
    }
    float sink = 0, lanes[8];
    for (int c = 0; c < kChains; ++c) {
      _mm256_storeu_ps(lanes, acc[c]);
      sink += lanes[0];
    }
#else
    constexpr int kLanes = 1;
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

}  // namespace wegeft_bench

// The machine's measured single-thread peaks: fp32 FMA (independent chains of vector FMAs on the
// widest vectors this build targets: 16 chains on AVX-512's 32 registers, 12 on AVX2+FMA's 16, so
// that the accumulators and the two constants stay in registers, else scalar) and, where the CPU has
// AVX512-BF16, the bf16 dot product vdpbf16ps (16 chains, 32 multiply-adds per instruction), so
// latency is hidden and only throughput counts; where it has AMX, tdpbf16ps into four independent
// accumulator tiles (8192 multiply-adds per instruction). measured_bf16_kernel_peak_gflops() is
// the peak of the kernel gemm_bf16 runs now (wegeft::bf16_kernel).
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

/// GFLOP/s of tdpbf16ps on one thread: four accumulator tiles, the same two A and two B tiles.
WEGEFT_TARGET_AMX inline double amx_peak_run(long iters) {
  alignas(64) std::uint16_t ones[16 * 32], small[16 * 32];
  std::fill(std::begin(ones), std::end(ones), std::uint16_t{0x3f80});    // 1
  std::fill(std::begin(small), std::end(small), std::uint16_t{0x33d6});  // 1e-7
  alignas(64) float out[16 * 16];
  const wegeft::detail::AmxTileConfig config;
  _tile_loadconfig(&config);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, ones, 64);
  _tile_loadd(5, ones, 64);
  _tile_loadd(6, small, 64);
  _tile_loadd(7, small, 64);
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < iters; ++i) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, 64);
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  _tile_release();
  asm volatile("" ::"g"(out[0]));
  return 2.0 * 16 * 16 * 32 * 4 * static_cast<double>(iters) / s * 1e-9;
}
#endif

/// GFLOP/s of tdpbf16ps on one thread (a multiply-add counted as 2), or 0 without AMX.
inline double measured_amx_peak_gflops() {
  double best = 0;
#if WEGEFT_BF16_X86
  if (wegeft::amx_bf16_available())
    for (int rep = 0; rep < 3; ++rep) best = std::max(best, amx_peak_run(2'000'000));
#endif
  return best;
}

/// GFLOP/s of vdpbf16ps on one thread (a multiply-add counted as 2), or 0 without AVX512-BF16.
inline double measured_bf16_peak_gflops() {
  double best = 0;
#if WEGEFT_BF16_X86
  if (wegeft::bf16_gemm_available())
    for (int rep = 0; rep < 3; ++rep) best = std::max(best, bf16_peak_run(10'000'000));
#endif
  return best;
}

/// The measured peak of the kernel gemm_bf16 runs now (AMX or AVX512-BF16), or 0 without either.
inline double measured_bf16_kernel_peak_gflops() {
  if (!wegeft::bf16_gemm_available()) return 0;
  return wegeft::bf16_kernel() == wegeft::Bf16Kernel::amx ? measured_amx_peak_gflops()
                                                          : measured_bf16_peak_gflops();
}

/// "tdpbf16ps" or "vdpbf16ps": the instruction of the kernel gemm_bf16 runs now.
inline const char* bf16_kernel_instruction() {
  return wegeft::bf16_gemm_available() && wegeft::bf16_kernel() == wegeft::Bf16Kernel::amx
             ? "tdpbf16ps"
             : "vdpbf16ps";
}

}  // namespace wegeft_bench

// Threads: set_threads / gemm_threads / gemm_backend for the dense products and the BLAS, and how
// the CPU kernels of wegeft (rank-r products, cross-entropy, AdamW, attention) use threads.
//
// Built with OpenMP (wegeft::openmp), a kernel over a large tensor splits its rows or blocks over
// Eigen's thread count (Eigen::setNbThreads). With a BLAS backend (EIGEN_USE_BLAS) they stay on
// one thread unless the BLAS runs on the same OpenMP runtime (WEGEFT_BLAS_OPENMP, defined by the
// wegeft::blas target for OpenMP builds of OpenBLAS and BLIS): a pthread BLAS keeps its own pool
// spinning on the cores after each product, and an OpenMP team started then competes with it
// (measured with pthread OpenBLAS: LoRA r = 8 layer step at 2 threads 1.21-1.23x the base with
// threaded kernels, 1.14-1.19x without).
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

#ifndef WEGEFT_GEMM_BACKEND
#define WEGEFT_GEMM_BACKEND "Eigen"
#endif

// The thread-count entry points of the BLAS that wegeft::blas linked, if any.
#if defined(EIGEN_USE_BLAS) && defined(WEGEFT_BLAS_OpenBLAS)
extern "C" void openblas_set_num_threads(int);
extern "C" int openblas_get_num_threads(void);
#elif defined(EIGEN_USE_BLAS) && defined(WEGEFT_BLAS_BLIS)
extern "C" void bli_thread_set_num_threads(std::int64_t);
extern "C" std::int64_t bli_thread_get_num_threads(void);
#endif

namespace wegeft {
/// Threads for everything wegeft runs: Eigen's products and wegeft's kernels (when built with
/// wegeft::openmp) and the BLAS's own pool (OpenBLAS or BLIS through wegeft::blas). n >= 1.
inline void set_threads(int n) {
  WEGEFT_CHECK(n >= 1, "set_threads needs at least one thread, got " << n);
  Eigen::setNbThreads(n);
#if defined(EIGEN_USE_BLAS) && defined(WEGEFT_BLAS_OpenBLAS)
  openblas_set_num_threads(n);
#elif defined(EIGEN_USE_BLAS) && defined(WEGEFT_BLAS_BLIS)
  bli_thread_set_num_threads(n);
#endif
}

/// The threads the dense products use: the BLAS's count with a BLAS, else Eigen's.
inline int gemm_threads() {
#if defined(EIGEN_USE_BLAS) && defined(WEGEFT_BLAS_OpenBLAS)
  return openblas_get_num_threads();
#elif defined(EIGEN_USE_BLAS) && defined(WEGEFT_BLAS_BLIS)
  return static_cast<int>(bli_thread_get_num_threads());
#else
  return Eigen::nbThreads();
#endif
}

/// The dense-product backend this translation unit was built with, its SIMD and its threads:
/// e.g. "Eigen (Eigen 3.4.0, SIMD AVX512, FMA, ...), 1 thread(s)" or "OpenBLAS (OpenMP) (...)".
inline std::string gemm_backend() {
  return std::string(WEGEFT_GEMM_BACKEND) + " (Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
         std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) +
         ", SIMD " + Eigen::SimdInstructionSetsInUse() + "), " + std::to_string(gemm_threads()) +
         " thread(s)";
}
}  // namespace wegeft

namespace wegeft::detail {

/// True when the kernels may start OpenMP threads of their own.
inline constexpr bool kKernelsThread =
#if defined(_OPENMP) && (!defined(EIGEN_USE_BLAS) || defined(WEGEFT_BLAS_OPENMP))
    true;
#else
    false;
#endif

/// Threads for a kernel over `elements` values: Eigen's thread count when kKernelsThread and the
/// tensor has 64K values or more (smaller ones do not pay for starting a team), else 1.
inline int kernel_threads(Index elements) {
  if constexpr (kKernelsThread)
    return elements >= (Index(1) << 16) ? std::max(1, Eigen::nbThreads()) : 1;
  (void)elements;
  return 1;
}

/// f(i) for i = begin, begin + step, ... < end: across `threads` OpenMP threads when there are
/// more than one, else as a plain loop (an OpenMP region outlines the loop, and on one thread
/// that ran slower: LoRA r = 8 layer step 1.134-1.148x the base against 1.080-1.085x).
template <class F>
void for_each_step(Index begin, Index end, Index step, int threads, F&& f) {
  if (threads > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(threads) schedule(static)
#endif
    for (Index i = begin; i < end; i += step) f(i);
  } else {
    for (Index i = begin; i < end; i += step) f(i);
  }
}

/// f(t, begin, end) for `threads` contiguous, near-equal parts [begin, end) of [0, n) whose
/// bounds are multiples of `grain` (the last ends at n); t is the part's index.
template <class F>
void for_each_part(Index n, Index grain, int threads, F&& f) {
  const Index blocks = (n + grain - 1) / grain;
  threads = static_cast<int>(std::max<Index>(1, std::min<Index>(threads, blocks)));
  for_each_step(0, threads, 1, threads, [&](Index t) {
    const Index b = std::min(n, blocks * t / threads * grain),
                e = std::min(n, blocks * (t + 1) / threads * grain);
    f(t, b, e);
  });
}

}  // namespace wegeft::detail

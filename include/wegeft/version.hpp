#pragma once

#define WEGEFT_VERSION_MAJOR 0
#define WEGEFT_VERSION_MINOR 1
#define WEGEFT_VERSION_PATCH 0

#include <Eigen/Core>
#include <cstdint>
#include <string>

#include "wegeft/core/error.hpp"

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
inline constexpr const char* version = "0.1.0";

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
         std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) + ", SIMD " +
         Eigen::SimdInstructionSetsInUse() + "), " + std::to_string(gemm_threads()) + " thread(s)";
}
}  // namespace wegeft

#pragma once

#define WEGEFT_VERSION_MAJOR 0
#define WEGEFT_VERSION_MINOR 1
#define WEGEFT_VERSION_PATCH 0

#include <Eigen/Core>
#include <string>

#ifndef WEGEFT_GEMM_BACKEND
#define WEGEFT_GEMM_BACKEND "Eigen"
#endif

namespace wegeft {
inline constexpr const char* version = "0.1.0";

/// The dense-product backend this translation unit was built with, its SIMD and its threads:
/// e.g. "Eigen 3.4.0 (AVX512, FMA, ...), 1 thread" or "OpenBLAS via Eigen ...".
inline std::string gemm_backend() {
  return std::string(WEGEFT_GEMM_BACKEND) + " (Eigen " + std::to_string(EIGEN_WORLD_VERSION) + "." +
         std::to_string(EIGEN_MAJOR_VERSION) + "." + std::to_string(EIGEN_MINOR_VERSION) + ", SIMD " +
         Eigen::SimdInstructionSetsInUse() + "), " + std::to_string(Eigen::nbThreads()) + " thread(s)";
}
}  // namespace wegeft

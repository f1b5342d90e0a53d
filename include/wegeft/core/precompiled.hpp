// Explicit instantiation of the library's largest templates for float and double.
//
// Each header that defines one lists its instantiations once, as a macro LIST(EXTERN, T):
//
//   #define WEGEFT_MODEL_TEMPLATES(EXTERN, T) EXTERN template class Transformer<T>;
//   WEGEFT_EXTERN_TEMPLATES(WEGEFT_MODEL_TEMPLATES)
//
// A program that links wegeft::precompiled is compiled with WEGEFT_PRECOMPILED: every listed
// template is then only declared (`extern template`) in the program's translation units and
// compiled once, in the library (src/precompiled/), which expands each list with an empty EXTERN.
// Without WEGEFT_PRECOMPILED the library stays header-only and the macros expand to nothing.
//
// The program and the library must agree on Eigen's configuration: its alignment (set by the
// vector extensions, -march), whether products go through a BLAS (EIGEN_USE_BLAS) and OpenMP.
// Every translation unit references a symbol named after its own configuration, which only the
// library's matching configuration defines; a mismatch fails to link with an undefined reference
// to `wegeft_precompiled_config_align<bytes>_<blas|noblas>_<openmp|noopenmp>`.
#pragma once

#include "wegeft/core/tensor.hpp"

#ifdef WEGEFT_PRECOMPILED
#define WEGEFT_EXTERN_TEMPLATES(LIST) LIST(extern, float) LIST(extern, double)

#ifdef EIGEN_USE_BLAS
#define WEGEFT_PRECOMPILED_BLAS blas
#else
#define WEGEFT_PRECOMPILED_BLAS noblas
#endif
#ifdef _OPENMP
#define WEGEFT_PRECOMPILED_OPENMP openmp
#else
#define WEGEFT_PRECOMPILED_OPENMP noopenmp
#endif
#define WEGEFT_PRECOMPILED_NAME_(align, blas, omp) \
  wegeft_precompiled_config_align##align##_##blas##_##omp
#define WEGEFT_PRECOMPILED_NAME(align, blas, omp) WEGEFT_PRECOMPILED_NAME_(align, blas, omp)
/// The symbol naming this translation unit's configuration (defined by src/precompiled/model.cpp).
#define WEGEFT_PRECOMPILED_CONFIG \
  WEGEFT_PRECOMPILED_NAME(EIGEN_MAX_ALIGN_BYTES, WEGEFT_PRECOMPILED_BLAS, WEGEFT_PRECOMPILED_OPENMP)
extern "C" const int WEGEFT_PRECOMPILED_CONFIG;
namespace wegeft::detail {
[[gnu::used]] static const int* const precompiled_config_check = &WEGEFT_PRECOMPILED_CONFIG;
}  // namespace wegeft::detail
#else
#define WEGEFT_EXTERN_TEMPLATES(LIST)
#endif

// The kernel launchers of src/cuda/kernels.cu, in plain types so that the host sources (compiled
// by the C++ compiler, with Eigen) and the CUDA source share no headers but this one.
#pragma once

#include <cstdint>

namespace wegeft::cuda::detail {

/// dst = scale * src over [rows, cols]; bf16_* says which side is BF16 (else F32).
void launch_scale_copy(void* stream, void* dst, bool bf16_dst, std::int64_t ldd, const void* src,
                       bool bf16_src, std::int64_t lds, std::int64_t rows, std::int64_t cols,
                       float scale);
void launch_fill(void* stream, void* dst, bool bf16_dst, std::int64_t ldd, std::int64_t rows,
                 std::int64_t cols, float value);
/// The AdamW kernel; c = {b1, 1 - b1, b2, 1 - b2, sqrt_c2, eps, lr / c1, decay}.
void launch_adamw(void* stream, float* p, float* m, float* v, const float* g, std::int64_t n,
                  const float (&c)[8]);

}  // namespace wegeft::cuda::detail

// The CUDA ops, one signature each: outputs first, row-major TensorViews on Device::cuda, sizes
// from the views (checked against each other), `=` or `+=` stated. The dense product goes through
// cuBLASLt (fp32 accumulation, bias fused in its epilogue); the rest are kernels of our own
// (kernels/cuda/*.cuh). All run on the context's stream and return before the work finishes.
//
//   wegeft::cuda::gemm(ctx, y, x, wegeft::cuda::Op::N, w, wegeft::cuda::Op::T, 1.0f, 0.0f, &b);
//   // y [N, d_out] = x [N, d_in] W^T ([d_out, d_in]) + b
#pragma once

#include <cstdint>

#include "wegeft/core/view.hpp"
#include "wegeft/cuda/runtime.hpp"

namespace wegeft::cuda {

enum class Op { N, T };

/// c [m, n] = alpha op(a) op(b) + beta c (+ bias [1, n] on every row when bias is given).
/// op(a) is [m, k], op(b) [k, n]. a and b: both F32 or both BF16; c: F32, or BF16 with BF16
/// inputs; bias: c's dtype. Products accumulate in fp32 (F32 inputs: full fp32, no TF32).
/// beta = 0 overwrites c (its old contents are never read, NaN included).
void gemm(Context& ctx, const TensorView& c, const TensorView& a, Op op_a, const TensorView& b,
          Op op_b, float alpha, float beta, const TensorView* bias = nullptr);

/// out [n, r] = x [n, k] op(w) (op(w): [k, r]); out is overwritten (beta = 0). The adapters'
/// rank-r products (u = x A^T with w = A and Op::T, g = dy sB with w = sB and Op::N). All BF16
/// with n up to kRankRKernelRows, r 8, 16, 24 or 32, k a multiple of 8, x's rows 16-byte aligned
/// and out's 4-byte aligned runs wegeft's own tensor-core kernel (kernels/cuda/rank_r.cuh: the
/// sum over k split across each block's warps, where cuBLASLt's few output tiles leave most of
/// the card idle); anything else, or the environment variable WEGEFT_CUDA_RANK_R=gemm, runs
/// gemm(ctx, out, x, Op::N, w, op_w, 1, 0). From 8192 rows on the kernel measured no faster than
/// cuBLASLt alone and slower inside a layer's step (docs/cuda.md), hence the bound.
inline constexpr Index kRankRKernelRows = 4096;
void rank_r_product(Context& ctx, const TensorView& out, const TensorView& x, const TensorView& w,
                    Op op_w);

/// dst [r, c] = scale * src [r, c], converting between F32 and BF16 (round to nearest even).
void scale_copy(Context& ctx, const TensorView& dst, const TensorView& src, float scale = 1.0f);

/// dst [r, c] = value.
void fill(Context& ctx, const TensorView& dst, float value);

/// One AdamW update of n fp32 values with PyTorch's torch.optim.AdamW semantics, the step's
/// coefficients computed on the host (as optim/adamw.hpp does):
///   m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;
///   p = p * decay - lr_c1 * m / (sqrt(v) / sqrt_c2 + eps)
/// p, m, v: updated in place (=); g: read. All device pointers.
struct AdamWStep {
  float b1, one_minus_b1, b2, one_minus_b2, sqrt_c2, eps, lr_c1, decay;
};
void adamw_update(Context& ctx, float* p, float* m, float* v, const float* g, std::int64_t n,
                  const AdamWStep& c);

}  // namespace wegeft::cuda

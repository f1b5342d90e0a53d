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
/// *out = sum of g[i]^2 over n floats, in double (out: device memory).
void launch_sum_squares(void* stream, double* out, const float* g, std::int64_t n);
/// The AdamW kernel; c = {b1, 1 - b1, b2, 1 - b2, sqrt_c2, eps, lr / c1, decay}.
void launch_adamw(void* stream, float* p, float* m, float* v, const float* g, std::int64_t n,
                  const float (&c)[8]);
/// out [n, r] (BF16) = x [n, k] (BF16) W, W(i, j) = w[i w_k + j w_j] (BF16), by
/// kernels/cuda/rank_r.cuh, n > 0: k a multiple of 8, the alignments that kernel states; contig:
/// w_k = 1 with w and w_j 16-byte aligned (checked by the caller). Returns false, launching
/// nothing, for an r the kernel has no instance of (it has 8, 16, 24 and 32).
bool launch_rank_r_product(void* stream, void* out, std::int64_t ld_out, const void* x,
                           std::int64_t ld_x, const void* w, std::int64_t w_k, std::int64_t w_j,
                           bool contig, std::int64_t n, std::int64_t k, std::int64_t r);

}  // namespace wegeft::cuda::detail

namespace wegeft::cuda::detail {

/// A device matrix in plain types: F32 (bf16 = false) or BF16, row-major, row stride ld.
struct Mat {
  void* data;
  bool bf16;
  std::int64_t rows, cols, ld;
};

/// The transformer's kernels (src/cuda/transformer.cu); sizes checked by the callers.
void launch_rmsnorm_forward(void* stream, Mat out, float* rstd, Mat x, Mat w, float eps);
void launch_rmsnorm_backward(void* stream, Mat dx, Mat dout, Mat x, Mat w, const float* rstd);
/// `at` (null, or a device int32): the position of row 0 read on the device, for rope, the
/// position table and the cache append of a decode step that a CUDA graph replays.
void launch_rope(void* stream, Mat x, const float* cos, const float* sin, std::int64_t seq,
                 std::int64_t heads, std::int64_t half, float direction, const std::int32_t* at);
void launch_swiglu_forward(void* stream, Mat out, Mat gate, Mat up);
void launch_swiglu_backward(void* stream, Mat dgate, Mat dup, Mat dout, Mat gate, Mat up);
void launch_add(void* stream, Mat y, Mat x, float alpha);
void launch_embedding(void* stream, Mat x, const std::int32_t* ids, Mat table);
void launch_cross_entropy(void* stream, Mat dlogits, float* loss, Mat logits,
                          const std::int32_t* targets, std::int32_t ignore, float scale);
void launch_argmax_rows(void* stream, std::int32_t* ids, Mat x);
void launch_layernorm_forward(void* stream, Mat out, float* mean, float* rstd, Mat x, Mat w, Mat b,
                              float eps);
void launch_layernorm_backward(void* stream, Mat dx, Mat dout, Mat x, Mat w, const float* mean,
                               const float* rstd);
/// kind: 0 GELU (erf), 1 GELU (tanh form), 2 tanh; the backward's `in` is x for GELU and the
/// forward's output for tanh.
void launch_activation_forward(void* stream, Mat out, Mat x, int kind);
void launch_activation_backward(void* stream, Mat dx, Mat dout, Mat in, int kind);
void launch_add_positions(void* stream, Mat x, Mat pos, const void* type, std::int64_t seq,
                          const std::int32_t* at);
/// Rows *at .. *at + src.rows - 1 of dst = src (dst's dtype is src's).
void launch_copy_rows_at(void* stream, Mat dst, Mat src, const std::int32_t* at);
void launch_add_column_sums(void* stream, float* sums, Mat x);
/// out [B, d] = the mean of each sequence's unmasked rows of hidden [B seq, d]; dhidden from
/// dout, 0 on padding (mask: null or a device uint8 [B seq]).
void launch_mean_pool_forward(void* stream, Mat out, Mat hidden, const std::uint8_t* mask,
                              std::int64_t seq);
void launch_mean_pool_backward(void* stream, Mat dhidden, Mat dout, const std::uint8_t* mask,
                               std::int64_t seq);
/// patches [rows, channels patch^2] from images (F32, contiguous; rows = images x patches).
void launch_patchify(void* stream, Mat patches, const float* images, std::int64_t channels,
                     std::int64_t height, std::int64_t width, std::int64_t patch);

/// Attention: the shape, strides (q's for q and dq, k's for k and dk, ...; out's for out and
/// dout) and mask as attention.cuh's AttentionArgs.
struct AttentionLaunch {
  std::int64_t batch, seq, heads, kv_heads, head_dim;
  std::int64_t ldq, ldk, ldv, ldo;
  bool causal, bf16;
  const std::uint8_t* mask;
  std::int64_t first = 0;  // cached tokens before each sequence's queries (forward only)
  const std::int32_t* first_at = nullptr;  // attention_decode: `first` read on the device
  // attention_decode split over the keys (splits > 1): `chunk` keys a block, the partial rows in
  // part [seq * heads * splits, head_dim + 2] (F32)
  float* part = nullptr;
  std::int64_t splits = 1, chunk = 0;
};
/// Sets up the attention kernels that need more than 48 KB of shared memory, once; the
/// launchers call it, and so does a graph capture first (it is not a stream operation).
void prepare_kernels();
void launch_attention_forward(void* stream, const AttentionLaunch& a, void* out, float* lse,
                              const void* q, const void* k, const void* v);
void launch_attention_backward(void* stream, const AttentionLaunch& a, void* dq, void* dk, void* dv,
                               float* delta, const void* dout, const void* out, const float* lse,
                               const void* q, const void* k, const void* v);

}  // namespace wegeft::cuda::detail

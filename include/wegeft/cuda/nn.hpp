// The transformer's ops on the GPU, each the twin of a CPU op (nn/norms.hpp, nn/rope.hpp,
// nn/activations.hpp, kernels/cpu/attention.hpp, kernels/cpu/cross_entropy.hpp, nn/embedding.hpp,
// nn/pooling.hpp)
// with the same arguments as TensorViews on Device::cuda: outputs first, `d`-prefixed gradients,
// `=` or `+=` stated, sizes from the views (checked against each other). Every matrix of one call
// has the same dtype (F32 or BF16) except the saved row statistics (rstd, lse, losses: F32);
// sums and intermediates are fp32. Integer inputs (token ids, targets, masks) are device arrays
// (DeviceArray). All run on the context's stream and return before the work finishes.
//
//   cu::rmsnorm_forward(ctx, h, rstd, x, w, 1e-5f);        // h [N, d], rstd [N, 1] F32
//   cu::attention_forward(ctx, o, lse, q, k, v, mask.data<std::uint8_t>(), shape);
#pragma once

#include <cstdint>
#include <vector>

#include "wegeft/core/view.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/kernels/cpu/attention.hpp"
#include "wegeft/kernels/cpu/cross_entropy.hpp"
#include "wegeft/nn/activations.hpp"
#include "wegeft/nn/rope.hpp"

namespace wegeft::cuda {

/// A device copy of a host array of integers (token ids, targets, a padding mask).
class DeviceArray {
 public:
  DeviceArray() = default;
  /// Room for `bytes`; assign() fills it.
  explicit DeviceArray(std::size_t bytes) : m_buffer(bytes) {}
  /// Copies `count` values to the device (growing the buffer when it is too small).
  template <class I>
  void assign(Context& ctx, const I* host, std::size_t count) {
    if (count * sizeof(I) > m_buffer.bytes()) m_buffer = Buffer(count * sizeof(I));
    upload_bytes(ctx, m_buffer.data(), host, count * sizeof(I));
    m_count = count;
  }
  template <class I>
  void assign(Context& ctx, const std::vector<I>& host) {
    assign(ctx, host.data(), host.size());
  }
  template <class I>
  const I* data() const {
    return static_cast<const I*>(m_buffer.data());
  }
  std::size_t size() const { return m_count; }

 private:
  Buffer m_buffer;
  std::size_t m_count = 0;
};

/// out [N, C] = x [N, C] * rstd * weight [1, C]; rstd [N, 1] (F32, saved for backward) =
/// 1 / sqrt(mean(x^2) + eps). Overwrites out (which may be x).
void rmsnorm_forward(Context& ctx, const TensorView& out, const TensorView& rstd,
                     const TensorView& x, const TensorView& weight, float eps);
/// dx [N, C] = d(out)/dx applied to dout [N, C], from the forward's x and rstd. Overwrites dx
/// (which may be dout). The weight is frozen: no gradient for it.
void rmsnorm_backward(Context& ctx, const TensorView& dx, const TensorView& dout,
                      const TensorView& x, const TensorView& weight, const TensorView& rstd);

/// out [N, C] = (x [N, C] - mean) * rstd * weight [1, C] + bias [1, C]; mean and rstd [N, 1]
/// (F32, saved for backward) are each row's mean and 1 / sqrt(biased variance + eps). Overwrites
/// out (which may be x).
void layernorm_forward(Context& ctx, const TensorView& out, const TensorView& mean,
                       const TensorView& rstd, const TensorView& x, const TensorView& weight,
                       const TensorView& bias, float eps);
/// dx [N, C] = d(out)/dx applied to dout [N, C], from the forward's x, mean and rstd. Overwrites
/// dx (which may be dout). Weight and bias are frozen: no gradients for them.
void layernorm_backward(Context& ctx, const TensorView& dx, const TensorView& dout,
                        const TensorView& x, const TensorView& weight, const TensorView& mean,
                        const TensorView& rstd);

/// out [N, F] = gelu(x [N, F]) of `kind` (erf: BERT and ViT; tanh: GPT-2). Overwrites out (which
/// may be x).
void gelu_forward(Context& ctx, const TensorView& out, const TensorView& x, GeluKind kind);
/// dx [N, F] = dout [N, F] * gelu'(x). Overwrites dx (which may be dout).
void gelu_backward(Context& ctx, const TensorView& dx, const TensorView& dout, const TensorView& x,
                   GeluKind kind);
/// out [N, F] = tanh(x [N, F]). Overwrites out (which may be x).
void tanh_forward(Context& ctx, const TensorView& out, const TensorView& x);
/// dx [N, F] = dout * (1 - out^2), from the forward's output. Overwrites dx (which may be dout).
void tanh_backward(Context& ctx, const TensorView& dx, const TensorView& dout,
                   const TensorView& out);

/// x [B*T, d] += positions [t] (row t of a [max_positions, d] table) on row b*T + t, and
/// type_row [1, d] on every row when given (BERT's token type 0). seq = T <= max_positions.
/// With first_at (a device int32, read when the work runs), row b*T + t takes table row
/// *first_at + t instead; the host cannot check it: the caller keeps *first_at + T within the
/// table.
void add_positions(Context& ctx, const TensorView& x, const TensorView& positions,
                   const TensorView* type_row, Index seq, const std::int32_t* first_at = nullptr);
/// sums [1, C] (F32, contiguous) += the column sums of x [N, C] (a bias gradient).
void add_column_sums(Context& ctx, const TensorView& sums, const TensorView& x);

/// RoPE's cos and sin tables on the device ([max_positions, head_dim / 2] each, F32), from the
/// host table the CPU model uses.
class Rope {
 public:
  Rope(Context& ctx, const RopeTable<float>& host);
  Index head_dim() const { return m_head_dim; }
  Index max_positions() const { return m_cos.rows(); }
  const float* cos() const { return static_cast<const float*>(m_cos.view().data); }
  const float* sin() const { return static_cast<const float*>(m_sin.view().data); }

 private:
  Tensor m_cos, m_sin;
  Index m_head_dim;
};
/// x [B*T, heads*head_dim] rotated in place; row b*T + t has position first + t (nn/rope.hpp;
/// first > 0: tokens that follow `first` cached ones). With first_at (a device int32, read when
/// the work runs, so that a CUDA graph replays at later positions) the position is *first_at + t
/// and `first` must be 0; the caller keeps *first_at + T within the table.
void rope_forward(Context& ctx, const TensorView& x, const Rope& rope, Index batch, Index seq,
                  Index heads, Index first = 0, const std::int32_t* first_at = nullptr);
/// dx [B*T, heads*head_dim] in place: the inverse rotation.
void rope_backward(Context& ctx, const TensorView& dx, const Rope& rope, Index batch, Index seq,
                   Index heads);

/// out [N, F] = silu(gate [N, F]) * up [N, F]. Overwrites out.
void swiglu_forward(Context& ctx, const TensorView& out, const TensorView& gate,
                    const TensorView& up);
/// dgate [N, F], dup [N, F] (overwritten; either may be dout) from dout and the forward's inputs.
void swiglu_backward(Context& ctx, const TensorView& dgate, const TensorView& dup,
                     const TensorView& dout, const TensorView& gate, const TensorView& up);

/// Rows *first_at .. *first_at + N - 1 of dst [capacity, C] = src [N, C] (the same dtype; first_at
/// a device int32, read when the work runs): appending to a key/value cache in a CUDA graph. The
/// host checks N <= capacity only; the caller keeps *first_at + N <= capacity.
void copy_rows_at(Context& ctx, const TensorView& dst, const TensorView& src,
                  const std::int32_t* first_at);

/// patches [B P, C p p] (=) from images [B, C, H, W] (device F32, contiguous; H and W multiples
/// of p, P = (H / p) (W / p)): row b P + (py W / p + px) holds patch (py, px) of image b,
/// flattened as (c, i, j), as the host's patchify (nn/embedding.hpp) and a Conv2d weight [d, C, p,
/// p] viewed as [d, C p p] lay it out. B is patches.rows / P.
void patchify(Context& ctx, const TensorView& patches, const float* images, Index channels,
              Index height, Index width, Index patch);

/// out [B, d] (=) = the mean of each sequence's token rows of hidden [B seq, d] (rows b seq ..
/// b seq + seq - 1; only those whose mask is 1 when key_mask, a device uint8 array [B seq], is
/// given), 0 for a sequence with no token: the host's pool_forward with Pooling::mean. B is
/// out.rows.
void mean_pool_forward(Context& ctx, const TensorView& out, const TensorView& hidden,
                       const DeviceArray* key_mask, Index seq);
/// dhidden [B seq, d] (=) from dout [B, d]: dout[b] / (sequence b's token count) on its token
/// rows, 0 on padding rows (the host's pool_backward with Pooling::mean).
void mean_pool_backward(Context& ctx, const TensorView& dhidden, const TensorView& dout,
                        const DeviceArray* key_mask, Index seq);

/// y [N, C] += alpha x [N, C] (the residual stream).
void add(Context& ctx, const TensorView& y, const TensorView& x, float alpha = 1.0f);

/// x [N, d] = rows ids [N] (a device array of int32, each in [0, vocab)) of table [vocab, d].
/// The ids are not checked on the device: check them on the host before assign().
void embedding_forward(Context& ctx, const TensorView& x, const DeviceArray& ids,
                       const TensorView& table);

/// Per row i of logits [N, V]: losses [N, 1] (F32) = logsumexp(row) - row[target] (0 where the
/// target is ignore_index); when dlogits [N, V] is given, dlogits = scale (softmax(row) -
/// onehot(target)), 0 on ignored rows (dlogits may be logits). targets: device int32 [N], each in
/// [0, V) or ignore_index (checked on the host: count_targets). Overwrites losses and dlogits.
void cross_entropy(Context& ctx, const TensorView* dlogits, const TensorView& losses,
                   const TensorView& logits, const DeviceArray& targets, float scale,
                   std::int32_t ignore_index = kIgnoreIndex);

/// ids [N, 1] (I32, contiguous) = the column of the largest value in each row of x [N, C]: the
/// first of equal values, 0 for a row with none above -inf (Eigen's maxCoeff on the host).
/// Overwrites ids. For greedy decoding and exact match over logits.
void argmax_rows(Context& ctx, const TensorView& ids, const TensorView& x);

/// out [B*T, H*d] and lse [B*H, T] (F32: each query row's log-sum-exp of its scaled scores,
/// -inf where every key is masked, saved for backward) from q [B*T, H*d], k, v [B*T, Hkv*d] and
/// key_mask (null, or a device uint8 array [B*T]: 1 = attend, 0 = padding). Overwrites out. A
/// row with no visible key gets out = 0, as on the CPU. head_dim <= 256.
void attention_forward(Context& ctx, const TensorView& out, const TensorView& lse,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const DeviceArray* key_mask, const AttentionShape& shape);
/// Causal attention of m new query rows of one sequence over every key it has so far, for
/// decoding with a key/value cache (CausalLM::decode; the CPU twin is cached_attention_forward in
/// kernels/cpu/attention.hpp): out [m, H*d] (=) and lse [H, m] (F32 scratch) from q [m, H*d] (the
/// queries at positions first .. first + m - 1) and k, v [first + m, Hkv*d] (the keys and values
/// of positions 0 .. first + m - 1; any row stride); query i sees keys 0 .. first + i. shape
/// gives heads, kv_heads and head_dim (its batch, seq and causal are not read).
void cached_attention_forward(Context& ctx, const TensorView& out, const TensorView& lse,
                              const TensorView& q, const TensorView& k, const TensorView& v,
                              Index first, const AttentionShape& shape);
/// The overload below splits the keys in one range per kDecodeSplitRows rows of the cache, at
/// most kDecodeSplits ranges per query and head.
inline constexpr Index kDecodeSplitRows = 32, kDecodeSplits = 32;
/// The same with the number of cached tokens read on the device when the work runs (first_at, a
/// device int32 >= 1), for a CUDA graph of a decode step: k, v are the whole cache [capacity,
/// Hkv*d] (capacity > m), of which rows 0 .. *first_at + m - 1 are read; the caller keeps
/// *first_at + m <= capacity. The keys are split into up to kDecodeSplits ranges (by capacity:
/// one per kDecodeSplitRows rows), each scored by its own block, and merged after; scratch is F32, contiguous,
/// at least [m * heads * kDecodeSplits, head_dim + 2] (overwritten).
void cached_attention_forward(Context& ctx, const TensorView& out, const TensorView& lse,
                              const TensorView& q, const TensorView& k, const TensorView& v,
                              const std::int32_t* first_at, const AttentionShape& shape,
                              const TensorView& scratch);
/// dq [B*T, H*d], dk, dv [B*T, Hkv*d] (overwritten; row strides those of q, k and v) from dout
/// (out's row stride) and the forward's out, lse, q, k, v; delta [B*H, T] F32 is scratch.
void attention_backward(Context& ctx, const TensorView& dq, const TensorView& dk,
                        const TensorView& dv, const TensorView& delta, const TensorView& dout,
                        const TensorView& out, const TensorView& lse, const TensorView& q,
                        const TensorView& k, const TensorView& v, const DeviceArray* key_mask,
                        const AttentionShape& shape);

}  // namespace wegeft::cuda

// CausalLM's implementation (model.cpp), shared with the decoder classifier (classifier.cpp),
// which runs the same blocks and final norm under its own head: the per-block activations and
// the shared scratch (model.cpp's header comment says how they are laid out), and the trunk's
// forward and backward.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "model_parts.hpp"
#include "wegeft/cuda/model.hpp"

namespace wegeft::cuda {

namespace detail {

struct DecoderBlock {
  Lin q, k, v, qkv, o, gate, up, down;
  Tensor norm1, norm2;        // [1, d]
  Tensor norm1b, norm2b;      // [1, d] LayerNorm biases (gpt2)
  Act x;                      // block input [N, d]
  Act hq, hk, hv;             // norm1's output; hk, hv: copies for an adapted k, v (llama)
  Act q_out, k_out, v_out;    // after RoPE [N, H hd], [N, Hkv hd] (llama)
  Act qkv_out;                // [N, 3d]: q, k, v side by side (gpt2)
  Act attn;                   // [N, d] attention output
  Act x2;                     // [N, d] the residual after attention
  Act hg, hu;                 // norm2's output; hu: a copy for an adapted up (llama)
  Act gate_out, up_out, act;  // [N, F]; gpt2: up_out before GELU, act after it
  Buffer mean1, mean2;        // LayerNorm means (gpt2)
  Buffer rstd1, rstd2, lse;
};

/// The block's linear of each role.
constexpr std::pair<LinearRole, Lin DecoderBlock::*> kLinears[] = {
    {LinearRole::q, &DecoderBlock::q},   {LinearRole::k, &DecoderBlock::k},
    {LinearRole::v, &DecoderBlock::v},   {LinearRole::qkv, &DecoderBlock::qkv},
    {LinearRole::o, &DecoderBlock::o},   {LinearRole::gate, &DecoderBlock::gate},
    {LinearRole::up, &DecoderBlock::up}, {LinearRole::down, &DecoderBlock::down}};

}  // namespace detail

struct CausalLM::Impl {
  Context* ctx;
  Transformer<float>* host;
  ModelConfig cfg;
  DType dtype;
  DeviceStore store;
  bool gpt2 = false;
  std::unique_ptr<Rope> rope;                           // llama
  Tensor embed, head_untied, final_norm, final_norm_b;  // final_norm_b: gpt2's LayerNorm bias
  Tensor positions;                                     // gpt2: [max_positions, d]
  std::vector<detail::DecoderBlock> blocks;
  Index spare = 0;
  // planned size and the shared buffers
  Index capacity = 0;
  detail::Act x_last, hf, logits;
  detail::Act d_res, t1, dh, d_attn, dq, dk, dv, dqkv, dgate, dup;
  Buffer meanf, rstdf, losses, delta, argmax;
  DeviceArray ids, targets, mask;
  Index last_n = 0;            // tokens of the last step
  bool last_backward = false;  // whether it overwrote the logits with their gradient
  // the trunk's last forward: its shape and mask (null: none), which its backward reuses
  AttentionShape last_shape{};
  const DeviceArray* last_mask = nullptr;
  // a decoder classifier's trunk: the host has a classification head, and no LM head is kept
  bool trunk_only = false;

  /// trunk_only: the host's classification head is the caller's (classifier.cpp); the model
  /// keeps no LM head, and step() and decode() are not used.
  Impl(Context& c, Transformer<float>& h, DType dt, bool trunk = false)
      : ctx(&c), host(&h), cfg(h.config()), dtype(dt), store(c, h.store()), trunk_only(trunk) {}

  const Tensor& head() const { return cfg.tied_lm_head || gpt2 ? embed : head_untied; }
  Tensor upload(const std::string& name) {
    return Tensor::from_host(*ctx, host->tensor(name), dtype);
  }
  /// Decoding: one block's cache and the position of the first new token; with `at`, that
  /// position is read on the device (a decode step that a CUDA graph replays), and k and v are
  /// used whole.
  struct Decode {
    const Tensor* k;
    const Tensor* v;
    Index first;
    const std::int32_t* at = nullptr;
  };
  // One token after the cache: its position on the device and the step's CUDA graph, captured
  // for the cache's buffers (decode_key) and dropped when they or the activations change.
  DeviceArray position;
  Tensor decode_part;  // the split attention's partial rows (F32, cached_attention_forward's)
  bool decode_graphs = true;
  std::unique_ptr<Graph> decode_graph;
  std::vector<const void*> decode_key;
  /// The decode step's work on the device after its ids (and position) are uploaded: the
  /// embeddings, every block over the cache, the final norm and the LM head on the last token.
  void decode_forward(CausalLM::KvCache& cache, Index m, Index first, const std::int32_t* at);
  void build();
  void allocate(Index n);
  /// Uploads the batch's ids [batch * seq] (checked) and mask (null: none) and runs the
  /// embeddings, every block and the final norm: hf.v(batch * seq) holds the final norm's output.
  void trunk_forward(const std::int32_t* ids, const std::uint8_t* mask, Index batch, Index seq);
  /// From t1.v(n) = d(hf) of the last trunk_forward: the adapters' gradients (+=) of every block.
  void trunk_backward();
  /// The weight-dtype copies of every adapter's parameters.
  void refresh_adapters();
  /// b.attn = attention over q, k, v [n rows]; with dec, k and v are first appended to the cache
  /// and the queries attend to every cached key before them.
  void attend(detail::DecoderBlock& b, const TensorView& q, const TensorView& k,
              const TensorView& v, Index n, const AttentionShape& s, const DeviceArray* m,
              const Decode* dec);
  void block_forward(detail::DecoderBlock& b, const TensorView& out, Index n,
                     const AttentionShape& s, const DeviceArray* m, const Decode* dec = nullptr);
  void block_backward(detail::DecoderBlock& b, bool first, Index n, const AttentionShape& s,
                      const DeviceArray* m);
  void gpt2_forward(detail::DecoderBlock& b, const TensorView& out, Index n,
                    const AttentionShape& s, const DeviceArray* m, const Decode* dec = nullptr);
  void gpt2_backward(detail::DecoderBlock& b, bool first, Index n, const AttentionShape& s,
                     const DeviceArray* m);
  /// Columns [part d, (part + 1) d) of a gpt2 [N, 3d] q/k/v activation or gradient.
  TensorView third(const detail::Act& a, Index n, int part) const {
    return a.t.block(0, part * cfg.hidden, n, cfg.hidden);
  }
  /// The final norm: llama's RMSNorm or gpt2's LayerNorm, forward and backward.
  void final_norm_forward(Index n);
  void final_norm_backward(Index n);
  TensorView lse(const detail::DecoderBlock& b, const AttentionShape& s) const {
    return detail::stats(b.lse, s.batch * s.heads, s.seq);
  }
};

}  // namespace wegeft::cuda

// A Llama- or GPT-2-family causal language model on the GPU: the host Transformer's frozen
// weights uploaded once (BF16 or F32), its LoRA and WeGeFT adapters as AdaptedLinear layers over
// one DeviceStore, and a training step (forward, cross-entropy, backward) that never leaves the
// device. It is the host model's step, op for op. Llama: embedding, per block RMSNorm, q/k/v, RoPE,
// attention (causal, grouped-query, padded), o, the residual add, RMSNorm, gate/up, SwiGLU, down,
// the residual add; the final RMSNorm and the (tied or untied) LM head. GPT-2: token and learned
// position embeddings, per block LayerNorm, the fused q/k/v projection (c_attn), causal attention,
// c_proj, the residual add, LayerNorm, c_fc, GELU (tanh form), c_proj, the residual add; the final
// LayerNorm and the LM head tied to the token embedding. The loss is the mean over counted targets.
//
//   wegeft::Transformer<float> host = ...;           // loaded, adapters attached (dropout 0)
//   wegeft::cuda::Context ctx;
//   wegeft::cuda::CausalLM gpu(ctx, host, wegeft::DType::BF16);
//   wegeft::cuda::AdamW opt({.lr = 2e-3});
//   double loss = gpu.train_step({.ids = ids, .mask = mask, .targets = targets, .batch = 16, .seq = 64});
//   opt.step(ctx, gpu.store());  gpu.store().zero_grad(ctx);  gpu.refresh();
//   gpu.store().download(ctx, host.store());         // then save_adapter as on the CPU
//
// Activations and scratch are planned once for the largest batch x seq seen (plan()); a step of
// that size or smaller allocates nothing. Refused: other families (bert and vit), a
// classification head (cuda::SequenceClassifier runs it), trainable norms, adapter dropout and
// methods other than LoRA and WeGeFT.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "wegeft/core/view.hpp"
#include "wegeft/cuda/linear.hpp"
#include "wegeft/cuda/nn.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/cuda/store.hpp"
#include "wegeft/nn/model.hpp"

namespace wegeft::cuda {

/// One batch on the host: ids and targets [batch * seq] (kIgnoreIndex: no loss at that position),
/// mask [batch * seq] (1 = token, 0 = padding; null = no padding).
struct LmBatch {
  const std::int32_t* ids = nullptr;
  const std::uint8_t* mask = nullptr;
  const std::int32_t* targets = nullptr;
  Index batch = 0, seq = 0;
};

class CausalLM {
 public:
  /// Uploads host's frozen weights in `dtype` and mirrors its store (the adapters' parameters)
  /// on the device. host must outlive this object; its store is read now and by download().
  CausalLM(Context& ctx, Transformer<float>& host, DType dtype = DType::BF16);
  ~CausalLM();
  CausalLM(const CausalLM&) = delete;
  CausalLM& operator=(const CausalLM&) = delete;

  DeviceStore& store();
  const ModelConfig& config() const;
  DType dtype() const;

  /// Forward and loss: the mean cross-entropy over the batch's counted targets (0 when none).
  /// With `backward`, also the backward pass: the adapters' gradients += d(dloss * loss)/d(p)
  /// into store(), where loss is the sum over counted targets divided by `divisor` (< 0: their
  /// count), so micro-batches of one optimizer step can share one divisor. Waits for the loss.
  double step(const LmBatch& batch, bool backward, double dloss = 1.0, Index divisor = -1);
  double train_step(const LmBatch& batch) { return step(batch, true); }
  double eval_loss(const LmBatch& batch) { return step(batch, false); }
  /// The per-position losses of the last step [batch * seq] (0 where not counted), on the host.
  std::vector<float> position_losses();
  /// The logits of the last step, [batch * seq, vocab] on the device (after a backward step they
  /// hold the logits' gradient instead).
  TensorView logits() const;
  /// The most likely next token at each position of the last step [batch * seq], on the host
  /// (argmax of each logits row, the first of equal ones): greedy decoding and exact match. Only
  /// after a forward-only step (eval_loss); a backward step has replaced the logits.
  std::vector<std::int32_t> greedy_tokens();

  /// One sequence's keys and values so far on the device, per block (keys after RoPE), for
  /// decode(): rows 0 .. length - 1 of each [capacity, kv_width] tensor of the model's dtype.
  /// clear() starts a new sequence.
  struct KvCache {
    Index length = 0;
    std::vector<Tensor> k, v;
    void clear() { length = 0; }
  };
  /// Incremental decoding, the GPU twin of Transformer::decode: runs tokens ids [m] (on the host)
  /// of one sequence at positions cache.length .. cache.length + m - 1, attending to the cached
  /// tokens before them, appends their keys and values to `cache` and returns the next-token
  /// logits after the last of them, [1, vocab] on the device (valid until the next step or
  /// decode; greedy_tokens() gives its argmax). Nothing is kept for backward. It runs in the
  /// step's planned buffers (planning 1 x m when they are smaller) and replaces the last step's
  /// logits and losses. The cache grows by doubling, up to max_positions.
  TensorView decode(KvCache& cache, const std::int32_t* ids, Index m);
  /// Whether decode() replays a CUDA graph for one token after the cache (the default: on). The
  /// graph is captured after the first such step on each cache buffer (the cache's doubling
  /// makes new ones) and replayed at every later position; off, each step launches its kernels
  /// one by one. The results are the same either way.
  void use_decode_graphs(bool on);

  /// Writes the weight-dtype copies of every adapter's parameters; call after each change of
  /// the store's values (the optimizer step, an upload).
  void refresh();
  /// Activations for batches of up to batch x seq tokens, allocated now.
  void plan(Index batch, Index seq);

  struct Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace wegeft::cuda

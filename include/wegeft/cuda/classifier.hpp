// A sequence classifier on the GPU: the host Transformer's frozen weights uploaded once (BF16 or
// F32), its LoRA and WeGeFT adapters as AdaptedLinear layers over one DeviceStore, and its
// classification head (the trainable weight and bias, in the same store) with a training step
// that never leaves the device. It is the host model's step, op for op. BERT family: word +
// position + token-type-0 embeddings and their LayerNorm; per block q/k/v, bidirectional
// attention over the batch's padding mask, o, the residual and LayerNorm, the intermediate
// linear, GELU (erf), the output linear, the residual and LayerNorm (post-norm); the first
// token's state through the pooler (a linear that may be adapted) and tanh; the head; the mean
// cross-entropy over the batch. ViT family (Hugging Face's ViTForImageClassification): the
// images' patches (uploaded in F32, cut into patches on the device, then the patch projection as one
// product) after the
// class token, plus the positions; pre-norm blocks (LayerNorm, q/k/v, bidirectional attention,
// o, the residual; LayerNorm, the intermediate linear, GELU (erf), the output linear, the
// residual), the final LayerNorm, the class token's state under the head. Llama and GPT-2
// families: CausalLM's blocks and final norm, then each sequence's last token that is not
// padding under the head (no LM head).
//
//   wegeft::Transformer<float> host = ...;    // a BERT (MiniLM, ...), adapters + add_classifier
//   wegeft::cuda::Context ctx;
//   wegeft::cuda::SequenceClassifier gpu(ctx, host, wegeft::DType::BF16);
//   wegeft::cuda::AdamW opt({.lr = 1e-3});
//   double loss = gpu.train_step({.ids = ids, .mask = mask, .labels = labels, .batch = 32, .seq = 64});
//   opt.step(ctx, gpu.store());  gpu.store().zero_grad(ctx);  gpu.refresh();
//   gpu.store().download(ctx, host.store());  // then save_adapter as on the CPU
//
// Activations are planned once for the largest batch x seq seen (plan()); a step of that size
// or smaller allocates nothing. Pooling: the first token (bert, vit) or the last (llama, gpt2),
// or for any family the mean over each sequence's tokens (padding left out; Pooling::mean).
// Refused: a model without a classifier, the last token's pooling in bert or vit and the first's
// in llama or gpt2, trainable norms, adapter dropout, methods other than LoRA and WeGeFT.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "wegeft/core/view.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/cuda/store.hpp"
#include "wegeft/nn/model.hpp"

namespace wegeft::cuda {

/// One batch on the host: ids [batch * seq], mask [batch * seq] (1 = token, 0 = padding; null =
/// no padding), labels [batch] (each in [0, labels)). A vit batch gives images [batch, C, H, W]
/// (the config's channels and image size, row-major, as the CPU model's ModelInput) instead of
/// ids; its seq is the patches + 1 and its mask is not read.
struct ClsBatch {
  const std::int32_t* ids = nullptr;
  const std::uint8_t* mask = nullptr;
  const std::int32_t* labels = nullptr;
  Index batch = 0, seq = 0;
  const float* images = nullptr;
};

class SequenceClassifier {
 public:
  /// Uploads host's frozen weights in `dtype` and mirrors its store (adapters and head) on the
  /// device. host must outlive this object.
  SequenceClassifier(Context& ctx, Transformer<float>& host, DType dtype = DType::BF16);
  ~SequenceClassifier();
  SequenceClassifier(const SequenceClassifier&) = delete;
  SequenceClassifier& operator=(const SequenceClassifier&) = delete;

  DeviceStore& store();
  const ModelConfig& config() const;
  Index labels() const;

  /// Forward and loss: the mean cross-entropy over the batch. With `backward`, also the backward
  /// pass: the trainable parameters' gradients += d(dloss * loss)/d(p), where loss is the sum over
  /// the batch divided by `divisor` (< 0: the batch size). Waits for the loss.
  double step(const ClsBatch& batch, bool backward, double dloss = 1.0, Index divisor = -1);
  double train_step(const ClsBatch& batch) { return step(batch, true); }
  double eval_loss(const ClsBatch& batch) { return step(batch, false); }
  /// The logits of the last forward-only step, [batch, labels] on the host.
  Matrix<float> logits();

  /// Writes the weight-dtype copies of every trainable parameter (adapters, head); call after
  /// each change of the store's values.
  void refresh();
  /// Activations for batches of up to batch x seq tokens, allocated now.
  void plan(Index batch, Index seq);

  struct Impl;

 private:
  std::unique_ptr<Impl> m_impl;
};

}  // namespace wegeft::cuda

// wegeft::cuda::SequenceClassifier: the BERT- and ViT-family classification step on the GPU
// (cuda/classifier.hpp); the Llama and GPT-2 families run CausalLM's trunk (causal_lm.hpp).
//
// Buffers, as in model.cpp: each block keeps what its backward reads, planned for the largest
// batch x seq seen; gradients flow through scratch shared by the blocks; every buffer an adapted
// layer reads as its input or its output gradient has S spare columns (S: the largest padded
// rank), and the input that q, k and v all read (BERT: x; ViT: LayerNorm 1's output hn) has a
// copy for an adapted k and v. Per-sequence buffers (pooled state, logits) are sized for as many
// sequences as tokens. A ViT block is pre-norm and reuses the BERT block's buffers: hn =
// LayerNorm 1 (x), h1 = x + o(attention), x2 = LayerNorm 2 (h1), the output down(act) + h1.
#include "wegeft/cuda/classifier.hpp"

#include <algorithm>
#include <numeric>
#include <optional>
#include <string>

#include "causal_lm.hpp"
#include "check.hpp"
#include "model_parts.hpp"
#include "wegeft/cuda/linear.hpp"
#include "wegeft/cuda/nn.hpp"
#include "wegeft/cuda/ops.hpp"

namespace wegeft::cuda {

namespace {

using detail::Act;
using detail::floats;
using detail::Lin;
using detail::stats;

struct EncoderBlock {
  Lin q, k, v, o, up, down;
  Tensor ln1w, ln1b, ln2w, ln2b;  // [1, d]
  Act x;                          // block input [N, d]: the residual; bert: q's input
  Act hn;                         // vit: LayerNorm 1's output [N, d], q's input
  Act xk, xv;                     // copies of q's input for an adapted k, v
  Act q_out, k_out, v_out;        // [N, d]
  Act attn;                       // [N, d] attention output, o's input
  Act h1;                         // [N, d] o(attn) + x, LayerNorm 1's (vit: 2's) input
  Act x2;                         // [N, d] that LayerNorm's output: up's input (bert: residual)
  Act up_out;                     // [N, F] before GELU
  Act act;                        // [N, F] after GELU, down's input
  Act h2;                         // bert: [N, d] down(act) + x2, LayerNorm 2's input
  Buffer mean1, rstd1, mean2, rstd2, lse;  // vit: LayerNorm 1 over x, 2 over h1
};

constexpr std::pair<LinearRole, Lin EncoderBlock::*> kRoles[] = {
    {LinearRole::q, &EncoderBlock::q},   {LinearRole::k, &EncoderBlock::k},
    {LinearRole::v, &EncoderBlock::v},   {LinearRole::o, &EncoderBlock::o},
    {LinearRole::up, &EncoderBlock::up}, {LinearRole::down, &EncoderBlock::down}};

}  // namespace

struct SequenceClassifier::Impl {
  Context* ctx;
  Transformer<float>* host;
  ModelConfig cfg;
  DType dtype;
  // llama / gpt2: the decoder's blocks and final norm, whose store holds the head too; bert, vit:
  // the encoder below and its own store
  std::unique_ptr<CausalLM::Impl> decoder;
  std::optional<DeviceStore> own_store;
  Index n_labels = 0;
  ParamId cls_weight{};
  std::optional<ParamId> cls_bias;
  bool vit = false;
  bool mean = false;  // pooling the mean of each sequence's tokens (else bert, vit: the first;
                      // llama, gpt2: the last)
  Tensor word, positions, types, emb_lnw, emb_lnb;  // vit: emb_ln* is the final LayerNorm
  Tensor patch_w, patch_b, cls_token;               // vit: [d, C p p], [1, d], [1, d]
  Tensor cls_w, cls_b;  // the head in the weight dtype: [labels, d], [1, labels]
  Lin pooler;
  std::vector<EncoderBlock> blocks;
  Index spare = 0;
  // planned size and the shared buffers
  Index capacity = 0;
  Act emb, x_last, pooled, feat, dfeat, dpooled, logits;  // vit: emb = the final norm's output
  // vit: the batch's images and patches [B P, C p p] (in the weight dtype), the token table
  // [1 + B P, d] (the class token, then the patches' embeddings), and each token row's row of it
  // [N]
  Buffer images;  // vit: the batch's images [B, C, H, W], F32
  Act patches, table;
  DeviceArray token_rows;
  std::vector<std::int32_t> host_token_rows;
  Act d_res, t1, dh, d_attn, dq, dk, dv, dact;
  Buffer emb_mean, emb_rstd, losses, delta;
  DeviceArray ids, labels, mask;
  // decoder: each sequence's pooled row of the final norm's output [B] and, per token row, 1 +
  // its sequence's index where it is that sequence's pooled row, else 0 [N]: the rows of
  // dtable ([1 + B, d]: a zero row, then d pooled) that make d(final norm output)
  Act dtable;
  DeviceArray pool_rows, pool_scatter;
  std::vector<std::int32_t> host_rows, host_scatter;
  Index last_batch = 0;
  bool last_backward = false;

  Impl(Context& c, Transformer<float>& h, DType dt)
      : ctx(&c), host(&h), cfg(h.config()), dtype(dt) {
    if (cfg.family == Family::llama || cfg.family == Family::gpt2)
      decoder = std::make_unique<CausalLM::Impl>(c, h, dt, /*trunk=*/true);
    else
      own_store.emplace(c, h.store());
  }
  DeviceStore& store() { return decoder ? decoder->store : *own_store; }

  Tensor upload(const std::string& name) {
    return Tensor::from_host(*ctx, host->tensor(name), dtype);
  }
  void build();
  void build_decoder();
  /// The head's parameters in the store, and its weight-dtype copies (written by refresh()).
  void bind_head();
  void allocate(Index n);
  /// The llama / gpt2 step: the decoder's trunk, the last token's state, the head.
  void decoder_step(const ClsBatch& in, bool backward, float scale);
  /// The bert and vit step: embeddings, the encoder, the first token (bert: through the
  /// pooler; vit: after the final norm), the head.
  void encoder_step(const ClsBatch& in, bool backward, float scale);
  /// vit: blocks[0].x.v(B (P + 1)) = the class token and the patches' embeddings of the images,
  /// plus the positions.
  void vit_embed(const float* pixels, Index batch);
  void block_forward(EncoderBlock& b, const TensorView& out, Index n, const AttentionShape& s,
                     const DeviceArray* m);
  void block_backward(EncoderBlock& b, bool first, Index n, const AttentionShape& s,
                      const DeviceArray* m);
  /// From d_attn.v(n) = d(attention output): attention's backward, then q, k and v's (their
  /// adapters' gradients +=); unless `first` (the block over the frozen embeddings), dh.v(n) =
  /// d(the input q, k and v read), with t1 as scratch. Returns !first.
  bool attention_backward_qkv(EncoderBlock& b, bool first, Index n, const AttentionShape& s,
                              const DeviceArray* m);
  void vit_block_forward(EncoderBlock& b, const TensorView& out, Index n, const AttentionShape& s);
  void vit_block_backward(EncoderBlock& b, bool first, Index n, const AttentionShape& s);
  /// Rows 0, T, 2T, ... of a [B*T, d] activation: each sequence's first token.
  static TensorView first_tokens(const TensorView& v, Index batch, Index seq) {
    TensorView r = v;
    r.rows = batch;
    r.ld = v.ld * seq;
    return r;
  }
};

void SequenceClassifier::Impl::build() {
  WEGEFT_CHECK(host->has_classifier(),
               "the GPU classifier needs a classification head (add_classifier)");
  if (decoder) return build_decoder();
  vit = cfg.family == Family::vit;
  WEGEFT_CHECK(cfg.family == Family::bert || vit,
               "the GPU classifier runs the bert, vit, llama and gpt2 families; this model is "
                   << to_string(cfg.family));
  WEGEFT_CHECK(host->pooling() != Pooling::last,
               "the GPU " << to_string(cfg.family)
                          << " classifier pools the first token (as Hugging Face's "
                          << (vit ? "ViTForImageClassification" : "BERT pooler")
                          << " does) or the mean; this head pools the last token");
  mean = host->pooling() == Pooling::mean;
  WEGEFT_CHECK(!host->has_trainable_norms(),
               "trainable norms are not implemented on the GPU; keep the norms frozen");
  WEGEFT_CHECK(dtype == DType::BF16 || dtype == DType::F32,
               "the GPU model computes in BF16 or F32, not " << dtype_name(dtype));
  WEGEFT_CHECK(cfg.hidden % cfg.heads == 0 && cfg.kv_heads == cfg.heads,
               "the GPU classifier needs hidden divisible by heads and no grouped keys");
  bind_head();
  const auto sites = host->sites();
  const auto modules = host->modules();
  blocks.resize(static_cast<std::size_t>(cfg.layers));
  bool has_pooler = false;
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const auto& m = modules[i];
    WEGEFT_ASSERT(sites[i].name == m.name);
    if (m.role == LinearRole::pooler) {
      pooler.build(*ctx, store(), m, sites[i].base, dtype);
      spare = std::max(spare, pooler.padded_rank());
      has_pooler = true;
      continue;
    }
    EncoderBlock& b = blocks[static_cast<std::size_t>(m.layer)];
    const auto* it = std::find_if(std::begin(kRoles), std::end(kRoles),
                                  [&](const auto& e) { return e.first == m.role; });
    WEGEFT_CHECK(it != std::end(kRoles),
                 m.name << ": a " << short_name(m.role) << " projection in a bert model");
    Lin& lin = b.*(it->second);
    lin.build(*ctx, store(), m, sites[i].base, dtype);
    spare = std::max(spare, lin.padded_rank());
  }
  WEGEFT_CHECK(has_pooler || vit, "the bert model has no pooler.dense");
  for (Index l = 0; l < cfg.layers; ++l) {
    EncoderBlock& b = blocks[static_cast<std::size_t>(l)];
    b.ln1w = upload(cfg.norm_name(l, 0) + ".weight");
    b.ln1b = upload(cfg.norm_name(l, 0) + ".bias");
    b.ln2w = upload(cfg.norm_name(l, 1) + ".weight");
    b.ln2b = upload(cfg.norm_name(l, 1) + ".bias");
  }
  positions = upload(cfg.position_tensor_name());
  if (vit) {
    const std::string pre = cfg.name_prefix() + "embeddings.";
    patch_w = upload(pre + "patch_embeddings.projection.weight");
    patch_b = upload(pre + "patch_embeddings.projection.bias");
    cls_token = upload(pre + "cls_token");
  } else {
    word = upload(cfg.token_embedding_name() + ".weight");
    types = upload(cfg.name_prefix() + "embeddings.token_type_embeddings.weight");
  }
  emb_lnw = upload(cfg.final_norm_name() + ".weight");
  emb_lnb = upload(cfg.final_norm_name() + ".bias");
}

void SequenceClassifier::Impl::build_decoder() {
  WEGEFT_CHECK(host->pooling() != Pooling::cls,
               "the GPU decoder classifier pools the last token (as Hugging Face's "
               "LlamaForSequenceClassification does) or the mean; this head pools the first "
               "token");
  mean = host->pooling() == Pooling::mean;
  decoder->build();
  bind_head();
}

void SequenceClassifier::Impl::bind_head() {
  const auto head = *host->classifier_params();
  cls_weight = head.first;
  cls_bias = head.second;
  n_labels = store().value(cls_weight).rows;
  cls_w = Tensor(dtype, n_labels, cfg.hidden);
  cls_b = Tensor(dtype, 1, n_labels);
}

void SequenceClassifier::Impl::allocate(Index n) {
  const Index d = cfg.hidden, f = cfg.intermediate, S = spare;
  const DType t = dtype;
  if (decoder) {
    decoder->allocate(n);
    pooled.alloc(t, n, d, 0);
    logits.alloc(t, n, n_labels, 0);
    dtable.alloc(t, n + 1, d, 0);
    fill(*ctx, dtable.t.view(), 0.0f);  // row 0 stays zero
    losses = floats(n);
    labels = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
    pool_rows = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
    pool_scatter = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
    host_rows.resize(static_cast<std::size_t>(n));
    host_scatter.resize(static_cast<std::size_t>(n));
    capacity = n;
    return;
  }
  for (auto& b : blocks) {
    b.x.alloc(t, n, d, S);
    if (vit) b.hn.alloc(t, n, d, S);
    if (b.k.adapted) b.xk.alloc(t, n, d, S);
    if (b.v.adapted) b.xv.alloc(t, n, d, S);
    b.q_out.alloc(t, n, d, S);  // the row strides of dq, dk, dv, as attention_backward needs
    b.k_out.alloc(t, n, d, S);
    b.v_out.alloc(t, n, d, S);
    b.attn.alloc(t, n, d, S);
    b.h1.alloc(t, n, d, 0);
    b.x2.alloc(t, n, d, S);
    b.up_out.alloc(t, n, f, 0);
    b.act.alloc(t, n, f, S);
    if (!vit) b.h2.alloc(t, n, d, 0);
    b.mean1 = floats(n);
    b.rstd1 = floats(n);
    b.mean2 = floats(n);
    b.rstd2 = floats(n);
    b.lse = floats(n * cfg.heads);
  }
  emb.alloc(t, n, d, 0);
  x_last.alloc(t, n, d, 0);
  pooled.alloc(t, n, d, S);
  feat.alloc(t, n, d, 0);
  dfeat.alloc(t, n, d, S);
  dpooled.alloc(t, n, d, 0);
  logits.alloc(t, n, n_labels, 0);
  d_res.alloc(t, n, d, S);
  t1.alloc(t, n, d, 0);
  dh.alloc(t, n, d, S);
  d_attn.alloc(t, n, d, S);  // attn's row stride, as attention_backward needs
  dq.alloc(t, n, d, S);
  dk.alloc(t, n, d, S);
  dv.alloc(t, n, d, S);
  dact.alloc(t, n, f, S);
  emb_mean = floats(n);
  emb_rstd = floats(n);
  losses = floats(n);
  delta = floats(n * cfg.heads);
  ids = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
  labels = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
  mask = DeviceArray(static_cast<std::size_t>(n));
  if (vit) {  // n tokens hold at most n patches
    const Index p = cfg.patch_size;
    patches.alloc(t, n, cfg.channels * p * p, 0);
    images = floats(n * cfg.channels * p * p);  // n tokens: at most n / (P + 1) images
    table.alloc(t, 1 + n, d, 0);
    scale_copy(*ctx, table.t.block(0, 0, 1, d), cls_token.view());  // row 0 stays the class token
    token_rows = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
    host_token_rows.resize(static_cast<std::size_t>(n));
  }
  capacity = n;
}

void SequenceClassifier::Impl::vit_embed(const float* pixels, Index batch) {
  Context& c = *ctx;
  const Index P = cfg.patches(), T = P + 1, p = cfg.patch_size, d = cfg.hidden;
  upload_floats(c, static_cast<float*>(images.data()), pixels,
                static_cast<std::size_t>(batch * cfg.channels * cfg.image_size * cfg.image_size));
  patchify(c, patches.v(batch * P), static_cast<const float*>(images.data()), cfg.channels,
           cfg.image_size, cfg.image_size, p);
  const TensorView bias = patch_b.view();
  gemm(c, table.t.block(1, 0, batch * P, d), patches.v(batch * P), Op::N, patch_w.view(), Op::T,
       1.0f, 0.0f, &bias);
  for (Index b = 0; b < batch; ++b) {  // image b's rows: the class token (row 0), its P patches
    host_token_rows[static_cast<std::size_t>(b * T)] = 0;
    for (Index i = 0; i < P; ++i)
      host_token_rows[static_cast<std::size_t>(b * T + 1 + i)] =
          static_cast<std::int32_t>(1 + b * P + i);
  }
  token_rows.assign(c, host_token_rows.data(), static_cast<std::size_t>(batch * T));
  const TensorView X = blocks[0].x.v(batch * T);
  embedding_forward(c, X, token_rows, table.v(1 + batch * P));
  add_positions(c, X, positions.view(), nullptr, T);
}

void SequenceClassifier::Impl::block_forward(EncoderBlock& b, const TensorView& out, Index n,
                                             const AttentionShape& s, const DeviceArray* m) {
  Context& c = *ctx;
  const float eps = static_cast<float>(cfg.norm_eps);
  const TensorView X = b.x.v(n);
  if (b.k.adapted) scale_copy(c, b.xk.v(n), X);
  if (b.v.adapted) scale_copy(c, b.xv.v(n), X);
  b.q.forward(c, b.q_out.v(n), X);
  b.k.forward(c, b.k_out.v(n), b.k.adapted ? b.xk.v(n) : X);
  b.v.forward(c, b.v_out.v(n), b.v.adapted ? b.xv.v(n) : X);
  attention_forward(c, b.attn.v(n), stats(b.lse, s.batch * s.heads, s.seq), b.q_out.v(n),
                    b.k_out.v(n), b.v_out.v(n), m, s);
  b.o.forward(c, b.h1.v(n), b.attn.v(n));
  add(c, b.h1.v(n), X);
  layernorm_forward(c, b.x2.v(n), stats(b.mean1, n, 1), stats(b.rstd1, n, 1), b.h1.v(n),
                    b.ln1w.view(), b.ln1b.view(), eps);
  b.up.forward(c, b.up_out.v(n), b.x2.v(n));
  gelu_forward(c, b.act.v(n), b.up_out.v(n), cfg.gelu());
  b.down.forward(c, b.h2.v(n), b.act.v(n));
  add(c, b.h2.v(n), b.x2.v(n));
  layernorm_forward(c, out, stats(b.mean2, n, 1), stats(b.rstd2, n, 1), b.h2.v(n), b.ln2w.view(),
                    b.ln2b.view(), eps);
}

// d_res holds d(block output) on entry and d(block input) on exit (not computed for the first
// block, whose input is the frozen embedding).
void SequenceClassifier::Impl::block_backward(EncoderBlock& b, bool first, Index n,
                                              const AttentionShape& s, const DeviceArray* m) {
  Context& c = *ctx;
  const TensorView D = d_res.v(n), T1 = t1.v(n), DH = dh.v(n), DACT = dact.v(n);
  layernorm_backward(c, DH, D, b.h2.v(n), b.ln2w.view(), stats(b.mean2, n, 1),
                     stats(b.rstd2, n, 1));  // d h2
  b.down.backward(c, DACT, DH);              // d act
  gelu_backward(c, DACT, DACT, b.up_out.v(n), cfg.gelu());
  b.up.backward(c, T1, DACT);
  add(c, T1, DH);  // d x2: through up and the residual
  layernorm_backward(c, D, T1, b.h1.v(n), b.ln1w.view(), stats(b.mean1, n, 1),
                     stats(b.rstd1, n, 1));  // d h1
  b.o.backward(c, d_attn.v(n), D);
  if (!attention_backward_qkv(b, first, n, s, m)) return;
  add(c, D, DH);  // d x: the residual's d h1 and the three projections'
}

bool SequenceClassifier::Impl::attention_backward_qkv(EncoderBlock& b, bool first, Index n,
                                                      const AttentionShape& s,
                                                      const DeviceArray* m) {
  Context& c = *ctx;
  const TensorView T1 = t1.v(n), DH = dh.v(n);
  attention_backward(c, dq.v(n), dk.v(n), dv.v(n), stats(delta, s.batch * s.heads, s.seq),
                     d_attn.v(n), b.attn.v(n), stats(b.lse, s.batch * s.heads, s.seq), b.q_out.v(n),
                     b.k_out.v(n), b.v_out.v(n), m, s);
  if (first) {  // the adapters' gradients only
    const TensorView none{};
    b.q.backward(c, none, dq.v(n));
    b.k.backward(c, none, dk.v(n));
    b.v.backward(c, none, dv.v(n));
    return false;
  }
  b.q.backward(c, DH, dq.v(n));
  b.k.backward(c, T1, dk.v(n));
  add(c, DH, T1);
  b.v.backward(c, T1, dv.v(n));
  add(c, DH, T1);
  return true;
}

// ViT (pre-norm): h1 = x + o(attention(q, k, v of hn = LayerNorm 1 (x))), out = h1 +
// down(gelu(up(x2 = LayerNorm 2 (h1)))).
void SequenceClassifier::Impl::vit_block_forward(EncoderBlock& b, const TensorView& out, Index n,
                                                 const AttentionShape& s) {
  Context& c = *ctx;
  const float eps = static_cast<float>(cfg.norm_eps);
  const TensorView X = b.x.v(n), HN = b.hn.v(n);
  layernorm_forward(c, HN, stats(b.mean1, n, 1), stats(b.rstd1, n, 1), X, b.ln1w.view(),
                    b.ln1b.view(), eps);
  if (b.k.adapted) scale_copy(c, b.xk.v(n), HN);
  if (b.v.adapted) scale_copy(c, b.xv.v(n), HN);
  b.q.forward(c, b.q_out.v(n), HN);
  b.k.forward(c, b.k_out.v(n), b.k.adapted ? b.xk.v(n) : HN);
  b.v.forward(c, b.v_out.v(n), b.v.adapted ? b.xv.v(n) : HN);
  attention_forward(c, b.attn.v(n), stats(b.lse, s.batch * s.heads, s.seq), b.q_out.v(n),
                    b.k_out.v(n), b.v_out.v(n), nullptr, s);
  b.o.forward(c, b.h1.v(n), b.attn.v(n));
  add(c, b.h1.v(n), X);
  layernorm_forward(c, b.x2.v(n), stats(b.mean2, n, 1), stats(b.rstd2, n, 1), b.h1.v(n),
                    b.ln2w.view(), b.ln2b.view(), eps);
  b.up.forward(c, b.up_out.v(n), b.x2.v(n));
  gelu_forward(c, b.act.v(n), b.up_out.v(n), cfg.gelu());
  b.down.forward(c, out, b.act.v(n));
  add(c, out, b.h1.v(n));
}

// As block_backward: d_res holds d(block output) on entry and d(block input) on exit.
void SequenceClassifier::Impl::vit_block_backward(EncoderBlock& b, bool first, Index n,
                                                  const AttentionShape& s) {
  Context& c = *ctx;
  const TensorView D = d_res.v(n), T1 = t1.v(n), DH = dh.v(n), DACT = dact.v(n);
  b.down.backward(c, DACT, D);  // d act
  gelu_backward(c, DACT, DACT, b.up_out.v(n), cfg.gelu());
  b.up.backward(c, DH, DACT);  // d x2
  layernorm_backward(c, T1, DH, b.h1.v(n), b.ln2w.view(), stats(b.mean2, n, 1),
                     stats(b.rstd2, n, 1));
  add(c, D, T1);  // d h1: the residual's and the MLP's
  b.o.backward(c, d_attn.v(n), D);
  if (!attention_backward_qkv(b, first, n, s, nullptr)) return;
  // DH = d hn
  layernorm_backward(c, T1, DH, b.x.v(n), b.ln1w.view(), stats(b.mean1, n, 1),
                     stats(b.rstd1, n, 1));
  add(c, D, T1);  // d x
}

SequenceClassifier::SequenceClassifier(Context& ctx, Transformer<float>& host, DType dtype)
    : m_impl(std::make_unique<Impl>(ctx, host, dtype)) {
  m_impl->build();
  refresh();
}
SequenceClassifier::~SequenceClassifier() = default;

DeviceStore& SequenceClassifier::store() {
  return m_impl->store();
}
const ModelConfig& SequenceClassifier::config() const {
  return m_impl->cfg;
}
Index SequenceClassifier::labels() const {
  return m_impl->n_labels;
}

void SequenceClassifier::refresh() {
  Impl& m = *m_impl;
  if (m.decoder) m.decoder->refresh_adapters();
  for (auto& b : m.blocks)
    for (const auto& [role, member] : kRoles)
      if ((b.*member).adapted) (b.*member).adapted->refresh(*m.ctx);
  if (m.pooler.adapted) m.pooler.adapted->refresh(*m.ctx);
  scale_copy(*m.ctx, m.cls_w.view(), m.store().value(m.cls_weight));
  if (m.cls_bias)
    scale_copy(*m.ctx, m.cls_b.view(), m.store().value(*m.cls_bias));
  else
    fill(*m.ctx, m.cls_b.view(), 0.0f);
}

void SequenceClassifier::plan(Index batch, Index seq) {
  WEGEFT_CHECK(batch > 0 && seq > 0, "a GPU batch of " << batch << " x " << seq << " tokens");
  if (batch * seq > m_impl->capacity) m_impl->allocate(batch * seq);
}

double SequenceClassifier::step(const ClsBatch& in, bool backward, double dloss, Index divisor) {
  Impl& m = *m_impl;
  Context& c = *m.ctx;
  const ModelConfig& cfg = m.cfg;
  WEGEFT_CHECK(in.labels != nullptr, "a GPU batch needs labels");
  ClsBatch batch = in;
  if (m.vit) {  // the class token and the patches, no padding
    WEGEFT_CHECK(in.images != nullptr, "a GPU vit batch needs images");
    batch.seq = cfg.patches() + 1;
    batch.mask = nullptr;
  } else {
    WEGEFT_CHECK(in.ids != nullptr, "a GPU " << to_string(cfg.family) << " batch needs token ids");
  }
  WEGEFT_CHECK(batch.seq <= cfg.max_positions, "sequence length "
                                                   << batch.seq << " exceeds the model's "
                                                   << cfg.max_positions << " positions");
  plan(batch.batch, batch.seq);
  const Index B = batch.batch;
  for (Index i = 0; i < B; ++i)
    WEGEFT_CHECK(in.labels[i] >= 0 && in.labels[i] < m.n_labels,
                 "label " << in.labels[i] << " of sequence " << i << " is outside the head's "
                          << m.n_labels << " labels");
  if (divisor < 0) divisor = B;
  const float scale = divisor ? static_cast<float>(dloss / static_cast<double>(divisor)) : 0.0f;
  m.labels.assign(c, in.labels, static_cast<std::size_t>(B));
  if (m.decoder) {
    m.decoder_step(batch, backward, scale);
  } else {
    m.encoder_step(batch, backward, scale);
  }
  m.last_batch = B;
  m.last_backward = backward;
  std::vector<float> per(static_cast<std::size_t>(B));
  download_floats(c, per.data(), static_cast<const float*>(m.losses.data()), per.size());
  const double total = std::accumulate(per.begin(), per.end(), 0.0);
  return B ? total / static_cast<double>(B) : 0.0;
}

void SequenceClassifier::Impl::decoder_step(const ClsBatch& in, bool backward, float scale) {
  Context& c = *ctx;
  const Index B = in.batch, T = in.seq, n = B * T;
  decoder->trunk_forward(in.ids, in.mask, B, T);
  if (mean) {
    mean_pool_forward(c, pooled.v(B), decoder->hf.v(n), decoder->last_mask, T);
  } else {
    // the last token of each sequence (the host's pooled_row), gathered from the final norm's
    // output
    std::fill_n(host_scatter.begin(), n, 0);
    for (Index b = 0; b < B; ++b) {
      const Index row = b * T + wegeft::detail::pooled_row(in.mask, b, T, Pooling::last);
      host_rows[static_cast<std::size_t>(b)] = static_cast<std::int32_t>(row);
      host_scatter[static_cast<std::size_t>(row)] = static_cast<std::int32_t>(b + 1);
    }
    pool_rows.assign(c, host_rows.data(), static_cast<std::size_t>(B));
    embedding_forward(c, pooled.v(B), pool_rows, decoder->hf.v(n));
  }
  const TensorView out = logits.v(B), bias = cls_b.view();
  gemm(c, out, pooled.v(B), Op::N, cls_w.view(), Op::T, 1.0f, 0.0f, &bias);
  cross_entropy(c, backward ? &out : nullptr, stats(losses, B, 1), out, labels, scale);
  if (!backward) return;
  gemm(c, store().grad(cls_weight), out, Op::T, pooled.v(B), Op::N, 1.0f, 1.0f);
  if (cls_bias) add_column_sums(c, store().grad(*cls_bias), out);
  // d(final norm output): each pooled row's gradient, zero elsewhere (dtable's row 0); the mean's
  // spread over its sequence's tokens
  const TensorView dpool = dtable.t.block(1, 0, B, cfg.hidden);
  gemm(c, dpool, out, Op::N, cls_w.view(), Op::N, 1.0f, 0.0f);
  if (mean) {
    mean_pool_backward(c, decoder->t1.v(n), dpool, decoder->last_mask, T);
  } else {
    pool_scatter.assign(c, host_scatter.data(), static_cast<std::size_t>(n));
    embedding_forward(c, decoder->t1.v(n), pool_scatter, dtable.v(B + 1));
  }
  decoder->trunk_backward();
}

void SequenceClassifier::Impl::encoder_step(const ClsBatch& in, bool backward, float scale) {
  Impl& m = *this;
  Context& c = *ctx;
  const Index n = in.batch * in.seq, B = in.batch;
  const DeviceArray* pad = nullptr;
  if (!vit) {
    detail::check_token_ids(in.ids, n, cfg.vocab_size);  // (the decoder's trunk checks its own)
    m.ids.assign(c, in.ids, static_cast<std::size_t>(n));
  }
  if (in.mask) {
    m.mask.assign(c, in.mask, static_cast<std::size_t>(n));
    pad = &m.mask;
  }
  const AttentionShape s{.batch = B,
                         .seq = in.seq,
                         .heads = cfg.heads,
                         .kv_heads = cfg.heads,
                         .head_dim = cfg.head_dim(),
                         .causal = false};
  const float eps = static_cast<float>(cfg.norm_eps);
  if (vit) {
    m.vit_embed(in.images, B);
  } else {
    const TensorView E = m.emb.v(n), type_row = m.types.block(0, 0, 1, cfg.hidden);
    embedding_forward(c, E, m.ids, m.word.view());
    add_positions(c, E, m.positions.view(), &type_row, in.seq);
    layernorm_forward(c, m.blocks[0].x.v(n), stats(m.emb_mean, n, 1), stats(m.emb_rstd, n, 1), E,
                      m.emb_lnw.view(), m.emb_lnb.view(), eps);
  }
  for (std::size_t l = 0; l < m.blocks.size(); ++l) {
    const TensorView out = l + 1 < m.blocks.size() ? m.blocks[l + 1].x.v(n) : m.x_last.v(n);
    if (vit)
      m.vit_block_forward(m.blocks[l], out, n, s);
    else
      m.block_forward(m.blocks[l], out, n, s, pad);
  }
  // the first token of each sequence (or the mean of its tokens): bert's through the pooler with
  // tanh, vit's after the final norm; the head
  if (vit)
    layernorm_forward(c, m.emb.v(n), stats(m.emb_mean, n, 1), stats(m.emb_rstd, n, 1),
                      m.x_last.v(n), m.emb_lnw.view(), m.emb_lnb.view(), eps);
  const TensorView hidden = vit ? m.emb.v(n) : m.x_last.v(n);
  if (m.mean)
    mean_pool_forward(c, m.pooled.v(B), hidden, vit ? nullptr : pad, in.seq);
  else
    scale_copy(c, m.pooled.v(B), Impl::first_tokens(hidden, B, in.seq));
  const TensorView features = vit ? m.pooled.v(B) : m.feat.v(B);
  if (!vit) {
    m.pooler.forward(c, features, m.pooled.v(B));
    tanh_forward(c, features, features);
  }
  const TensorView out = m.logits.v(B), bias = m.cls_b.view();
  gemm(c, out, features, Op::N, m.cls_w.view(), Op::T, 1.0f, 0.0f, &bias);
  cross_entropy(c, backward ? &out : nullptr, stats(m.losses, B, 1), out, m.labels, scale);
  if (!backward) return;
  gemm(c, m.store().grad(m.cls_weight), out, Op::T, features, Op::N, 1.0f, 1.0f);
  if (m.cls_bias) add_column_sums(c, m.store().grad(*m.cls_bias), out);
  if (vit) {
    gemm(c, m.dpooled.v(B), out, Op::N, m.cls_w.view(), Op::N, 1.0f, 0.0f);
  } else {
    gemm(c, m.dfeat.v(B), out, Op::N, m.cls_w.view(), Op::N, 1.0f, 0.0f);
    tanh_backward(c, m.dfeat.v(B), m.dfeat.v(B), m.feat.v(B));
    m.pooler.backward(c, m.dpooled.v(B), m.dfeat.v(B));
  }
  // d(first tokens) = dpooled, zero on every other row (the mean: dpooled / count on each
  // token): of x_last (bert), of the final norm's output (vit), then through that norm
  const TensorView dhidden = vit ? m.t1.v(n) : m.d_res.v(n);
  if (m.mean) {
    mean_pool_backward(c, dhidden, m.dpooled.v(B), vit ? nullptr : pad, in.seq);
  } else {
    fill(c, dhidden, 0.0f);
    scale_copy(c, Impl::first_tokens(dhidden, B, in.seq), m.dpooled.v(B));
  }
  if (vit)
    layernorm_backward(c, m.d_res.v(n), dhidden, m.x_last.v(n), m.emb_lnw.view(),
                       stats(m.emb_mean, n, 1), stats(m.emb_rstd, n, 1));
  for (std::size_t l = m.blocks.size(); l-- > 0;) {
    if (vit)
      m.vit_block_backward(m.blocks[l], l == 0, n, s);
    else
      m.block_backward(m.blocks[l], l == 0, n, s, pad);
  }
}

Matrix<float> SequenceClassifier::logits() {
  Impl& m = *m_impl;
  WEGEFT_CHECK(!m.last_backward,
               "logits: the last step ran the backward pass, which replaced the logits with their "
               "gradient; run eval_loss first");
  return download(*m.ctx, m.logits.v(m.last_batch));
}

}  // namespace wegeft::cuda

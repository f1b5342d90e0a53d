// wegeft::cuda::CausalLM: the Llama- and GPT-2-family training step on the GPU (cuda/model.hpp).
//
// Buffers. Every activation a block's backward needs is kept per block, planned for the largest
// batch x seq seen; the gradients flow through scratch shared by all blocks. An adapted layer
// writes its rank-r intermediate into spare columns after its input and its output gradient
// (AdaptedLinear), so every such buffer has S spare columns (S: the largest padded rank), and an
// input that several adapted layers read (norm1's output for q, k, v; norm2's for gate, up) has
// one copy per adapted reader. GPT-2's fused q/k/v projection writes one [N, 3d] activation whose
// column blocks are attention's q, k and v, and its gradient is gathered the same way.
#include "wegeft/cuda/model.hpp"

#include <algorithm>
#include <iterator>
#include <numeric>
#include <utility>
#include <variant>

#include "causal_lm.hpp"
#include "check.hpp"

namespace wegeft::cuda {

using detail::Act;
using detail::DecoderBlock;
using detail::floats;
using detail::kLinears;
using detail::Lin;
using detail::stats;

void CausalLM::Impl::build() {
  WEGEFT_CHECK(
      cfg.family == Family::llama || cfg.family == Family::gpt2,
      "the GPU model runs the llama and gpt2 families; this model is " << to_string(cfg.family));
  gpt2 = cfg.family == Family::gpt2;
  WEGEFT_CHECK(trunk_only || !host->has_classifier(),
               "this model has a classification head: cuda::SequenceClassifier runs it");
  WEGEFT_CHECK(!host->has_trainable_norms(),
               "trainable norms are not implemented on the GPU; keep the norms frozen");
  WEGEFT_CHECK(dtype == DType::BF16 || dtype == DType::F32,
               "the GPU model computes in BF16 or F32, not " << dtype_name(dtype));
  const auto sites = host->sites();
  const auto modules = host->modules();
  blocks.resize(static_cast<std::size_t>(cfg.layers));
  for (std::size_t i = 0; i < modules.size(); ++i) {
    const auto& m = modules[i];
    WEGEFT_ASSERT(sites[i].name == m.name);
    DecoderBlock& b = blocks[static_cast<std::size_t>(m.layer)];
    const auto* it = std::find_if(std::begin(kLinears), std::end(kLinears),
                                  [&](const auto& e) { return e.first == m.role; });
    WEGEFT_CHECK(it != std::end(kLinears), m.name << ": a " << short_name(m.role)
                                                  << " projection in a " << to_string(cfg.family)
                                                  << " model");
    Lin* lin = &(b.*(it->second));
    lin->build(*ctx, store, m, sites[i].base, dtype);
    spare = std::max(spare, lin->padded_rank());
  }
  for (Index l = 0; l < cfg.layers; ++l) {
    DecoderBlock& b = blocks[static_cast<std::size_t>(l)];
    b.norm1 = upload(cfg.norm_name(l, 0) + ".weight");
    b.norm2 = upload(cfg.norm_name(l, 1) + ".weight");
    if (gpt2) {
      b.norm1b = upload(cfg.norm_name(l, 0) + ".bias");
      b.norm2b = upload(cfg.norm_name(l, 1) + ".bias");
    }
  }
  final_norm = upload(cfg.final_norm_name() + ".weight");
  embed = upload(cfg.token_embedding_name() + ".weight");
  if (gpt2) {
    final_norm_b = upload(cfg.final_norm_name() + ".bias");
    positions = upload(cfg.position_tensor_name());
  } else {
    if (!cfg.tied_lm_head && !trunk_only) head_untied = upload("lm_head.weight");
    rope = std::make_unique<Rope>(
        *ctx, RopeTable<float>(cfg.head_dim(), cfg.max_positions, cfg.rope_theta));
  }
}

void CausalLM::Impl::allocate(Index n) {
  decode_graph.reset();  // it would write to the buffers replaced here
  const Index d = cfg.hidden, f = cfg.intermediate, qw = cfg.heads * cfg.head_dim(),
              kvw = cfg.kv_width(), S = spare;
  const DType t = dtype;
  for (auto& b : blocks) {
    b.x.alloc(t, n, d, S);
    b.hq.alloc(t, n, d, S);
    b.rstd1 = floats(n);
    b.rstd2 = floats(n);
    b.lse = floats(n * cfg.heads);
    if (gpt2) {  // ln_1 -> hq, c_attn -> qkv_out, ln_2 -> hg, c_fc -> up_out, GELU -> act
      b.qkv_out.alloc(t, n, 3 * d, S);
      b.attn.alloc(t, n, d, S);
      b.x2.alloc(t, n, d, S);
      b.hg.alloc(t, n, d, S);
      b.up_out.alloc(t, n, f, 0);
      b.act.alloc(t, n, f, S);
      b.mean1 = floats(n);
      b.mean2 = floats(n);
      continue;
    }
    if (b.k.adapted) b.hk.alloc(t, n, d, S);
    if (b.v.adapted) b.hv.alloc(t, n, d, S);
    b.q_out.alloc(t, n, qw, S);
    b.k_out.alloc(t, n, kvw, S);
    b.v_out.alloc(t, n, kvw, S);
    b.attn.alloc(t, n, d, S);
    b.x2.alloc(t, n, d, S);
    b.hg.alloc(t, n, d, S);
    if (b.up.adapted) b.hu.alloc(t, n, d, S);
    b.gate_out.alloc(t, n, f, 0);
    b.up_out.alloc(t, n, f, 0);
    b.act.alloc(t, n, f, S);
  }
  x_last.alloc(t, n, d, S);
  hf.alloc(t, n, d, 0);
  if (!trunk_only) logits.alloc(t, n, cfg.vocab_size, 0);
  d_res.alloc(t, n, d, S);
  t1.alloc(t, n, d, 0);
  dh.alloc(t, n, d, 0);
  d_attn.alloc(t, n, d, S);
  if (gpt2) {
    dqkv.alloc(t, n, 3 * d, S);  // qkv_out's row stride, as attention_backward needs
    meanf = floats(n);
  } else {
    dq.alloc(t, n, qw, S);
    dk.alloc(t, n, kvw, S);
    dv.alloc(t, n, kvw, S);
    dgate.alloc(t, n, f, S);
  }
  dup.alloc(t, n, f, S);
  rstdf = floats(n);
  losses = floats(n);
  argmax = Buffer(static_cast<std::size_t>(n) * sizeof(std::int32_t));
  ids = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
  targets = DeviceArray(static_cast<std::size_t>(n) * sizeof(std::int32_t));
  mask = DeviceArray(static_cast<std::size_t>(n));
  delta = floats(n * cfg.heads);
  capacity = n;
}

void CausalLM::Impl::attend(DecoderBlock& b, const TensorView& q, const TensorView& k,
                            const TensorView& v, Index n, const AttentionShape& s,
                            const DeviceArray* m, const Decode* dec) {
  if (dec == nullptr) return attention_forward(*ctx, b.attn.v(n), lse(b, s), q, k, v, m, s);
  if (dec->at) {
    copy_rows_at(*ctx, dec->k->view(), k, dec->at);
    copy_rows_at(*ctx, dec->v->view(), v, dec->at);
    if (decode_part.rows() < n * s.heads * kDecodeSplits)
      decode_part = Tensor(DType::F32, n * s.heads * kDecodeSplits, s.head_dim + 2);
    return cached_attention_forward(*ctx, b.attn.v(n), lse(b, s), q, dec->k->view(), dec->v->view(),
                                    dec->at, s, decode_part.view());
  }
  const Index kvw = cfg.kv_width(), first = dec->first, len = first + n;
  scale_copy(*ctx, dec->k->block(first, 0, n, kvw), k);
  scale_copy(*ctx, dec->v->block(first, 0, n, kvw), v);
  cached_attention_forward(*ctx, b.attn.v(n), lse(b, s), q, dec->k->block(0, 0, len, kvw),
                           dec->v->block(0, 0, len, kvw), first, s);
}

void CausalLM::Impl::block_forward(DecoderBlock& b, const TensorView& out, Index n,
                                   const AttentionShape& s, const DeviceArray* m,
                                   const Decode* dec) {
  Context& c = *ctx;
  const float eps = static_cast<float>(cfg.norm_eps);
  const TensorView hq = b.hq.v(n);
  rmsnorm_forward(c, hq, stats(b.rstd1, n, 1), b.x.v(n), b.norm1.view(), eps);
  if (b.k.adapted) scale_copy(c, b.hk.v(n), hq);
  if (b.v.adapted) scale_copy(c, b.hv.v(n), hq);
  b.q.forward(c, b.q_out.v(n), hq);
  b.k.forward(c, b.k_out.v(n), b.k.adapted ? b.hk.v(n) : hq);
  b.v.forward(c, b.v_out.v(n), b.v.adapted ? b.hv.v(n) : hq);
  const std::int32_t* at = dec ? dec->at : nullptr;
  const Index first = dec && !at ? dec->first : 0;
  rope_forward(c, b.q_out.v(n), *rope, s.batch, s.seq, cfg.heads, first, at);
  rope_forward(c, b.k_out.v(n), *rope, s.batch, s.seq, cfg.kv_heads, first, at);
  attend(b, b.q_out.v(n), b.k_out.v(n), b.v_out.v(n), n, s, m, dec);
  b.o.forward(c, b.x2.v(n), b.attn.v(n));
  add(c, b.x2.v(n), b.x.v(n));
  const TensorView hg = b.hg.v(n);
  rmsnorm_forward(c, hg, stats(b.rstd2, n, 1), b.x2.v(n), b.norm2.view(), eps);
  if (b.up.adapted) scale_copy(c, b.hu.v(n), hg);
  b.gate.forward(c, b.gate_out.v(n), hg);
  b.up.forward(c, b.up_out.v(n), b.up.adapted ? b.hu.v(n) : hg);
  swiglu_forward(c, b.act.v(n), b.gate_out.v(n), b.up_out.v(n));
  b.down.forward(c, out, b.act.v(n));
  add(c, out, b.x2.v(n));
}

// d_res holds d(block output) on entry and d(block input) on exit (not computed for the first
// block, whose input is the frozen embedding).
void CausalLM::Impl::block_backward(DecoderBlock& b, bool first, Index n, const AttentionShape& s,
                                    const DeviceArray* m) {
  Context& c = *ctx;
  const TensorView D = d_res.v(n), T1 = t1.v(n), DH = dh.v(n), DUP = dup.v(n);
  b.down.backward(c, DUP, D);  // d act, into dup
  swiglu_backward(c, dgate.v(n), DUP, DUP, b.gate_out.v(n), b.up_out.v(n));
  b.gate.backward(c, DH, dgate.v(n));
  b.up.backward(c, T1, DUP);
  add(c, DH, T1);  // d hg
  rmsnorm_backward(c, T1, DH, b.x2.v(n), b.norm2.view(), stats(b.rstd2, n, 1));
  add(c, D, T1);  // d x2
  b.o.backward(c, d_attn.v(n), D);
  attention_backward(c, dq.v(n), dk.v(n), dv.v(n), stats(delta, s.batch * s.heads, s.seq),
                     d_attn.v(n), b.attn.v(n), lse(b, s), b.q_out.v(n), b.k_out.v(n), b.v_out.v(n),
                     m, s);
  rope_backward(c, dq.v(n), *rope, s.batch, s.seq, cfg.heads);
  rope_backward(c, dk.v(n), *rope, s.batch, s.seq, cfg.kv_heads);
  if (first) {  // the adapters' gradients only
    const TensorView none{};
    b.q.backward(c, none, dq.v(n));
    b.k.backward(c, none, dk.v(n));
    b.v.backward(c, none, dv.v(n));
    return;
  }
  b.q.backward(c, DH, dq.v(n));
  b.k.backward(c, T1, dk.v(n));
  add(c, DH, T1);
  b.v.backward(c, T1, dv.v(n));
  add(c, DH, T1);  // d hq
  rmsnorm_backward(c, T1, DH, b.x.v(n), b.norm1.view(), stats(b.rstd1, n, 1));
  add(c, D, T1);  // d x
}

// GPT-2: x2 = x + c_proj(attn(c_attn(ln_1(x)))), out = x2 + mlp.c_proj(gelu(c_fc(ln_2(x2)))).
void CausalLM::Impl::gpt2_forward(DecoderBlock& b, const TensorView& out, Index n,
                                  const AttentionShape& s, const DeviceArray* m,
                                  const Decode* dec) {
  Context& c = *ctx;
  const float eps = static_cast<float>(cfg.norm_eps);
  const TensorView h1 = b.hq.v(n), h2 = b.hg.v(n);
  layernorm_forward(c, h1, stats(b.mean1, n, 1), stats(b.rstd1, n, 1), b.x.v(n), b.norm1.view(),
                    b.norm1b.view(), eps);
  b.qkv.forward(c, b.qkv_out.v(n), h1);
  attend(b, third(b.qkv_out, n, 0), third(b.qkv_out, n, 1), third(b.qkv_out, n, 2), n, s, m, dec);
  b.o.forward(c, b.x2.v(n), b.attn.v(n));
  add(c, b.x2.v(n), b.x.v(n));
  layernorm_forward(c, h2, stats(b.mean2, n, 1), stats(b.rstd2, n, 1), b.x2.v(n), b.norm2.view(),
                    b.norm2b.view(), eps);
  b.up.forward(c, b.up_out.v(n), h2);
  gelu_forward(c, b.act.v(n), b.up_out.v(n), cfg.gelu());
  b.down.forward(c, out, b.act.v(n));
  add(c, out, b.x2.v(n));
}

// As block_backward: d_res holds d(block output) on entry and d(block input) on exit.
void CausalLM::Impl::gpt2_backward(DecoderBlock& b, bool first, Index n, const AttentionShape& s,
                                   const DeviceArray* m) {
  Context& c = *ctx;
  const TensorView D = d_res.v(n), T1 = t1.v(n), DH = dh.v(n), DACT = dup.v(n);
  b.down.backward(c, DACT, D);  // d act
  gelu_backward(c, DACT, DACT, b.up_out.v(n), cfg.gelu());
  b.up.backward(c, DH, DACT);  // d h2
  layernorm_backward(c, T1, DH, b.x2.v(n), b.norm2.view(), stats(b.mean2, n, 1),
                     stats(b.rstd2, n, 1));
  add(c, D, T1);  // d x2
  b.o.backward(c, d_attn.v(n), D);
  attention_backward(c, third(dqkv, n, 0), third(dqkv, n, 1), third(dqkv, n, 2),
                     stats(delta, s.batch * s.heads, s.seq), d_attn.v(n), b.attn.v(n), lse(b, s),
                     third(b.qkv_out, n, 0), third(b.qkv_out, n, 1), third(b.qkv_out, n, 2), m, s);
  if (first) {  // the adapters' gradients only
    b.qkv.backward(c, TensorView{}, dqkv.v(n));
    return;
  }
  b.qkv.backward(c, DH, dqkv.v(n));  // d h1
  layernorm_backward(c, T1, DH, b.x.v(n), b.norm1.view(), stats(b.mean1, n, 1),
                     stats(b.rstd1, n, 1));
  add(c, D, T1);  // d x
}

void CausalLM::Impl::final_norm_forward(Index n) {
  const float eps = static_cast<float>(cfg.norm_eps);
  if (gpt2)
    layernorm_forward(*ctx, hf.v(n), stats(meanf, n, 1), stats(rstdf, n, 1), x_last.v(n),
                      final_norm.view(), final_norm_b.view(), eps);
  else
    rmsnorm_forward(*ctx, hf.v(n), stats(rstdf, n, 1), x_last.v(n), final_norm.view(), eps);
}

// d_res = d(x_last) from t1 = d(hf).
void CausalLM::Impl::final_norm_backward(Index n) {
  if (gpt2)
    layernorm_backward(*ctx, d_res.v(n), t1.v(n), x_last.v(n), final_norm.view(),
                       stats(meanf, n, 1), stats(rstdf, n, 1));
  else
    rmsnorm_backward(*ctx, d_res.v(n), t1.v(n), x_last.v(n), final_norm.view(), stats(rstdf, n, 1));
}

CausalLM::CausalLM(Context& ctx, Transformer<float>& host, DType dtype)
    : m_impl(std::make_unique<Impl>(ctx, host, dtype)) {
  m_impl->build();
}
CausalLM::~CausalLM() = default;

DeviceStore& CausalLM::store() {
  return m_impl->store;
}
const ModelConfig& CausalLM::config() const {
  return m_impl->cfg;
}
DType CausalLM::dtype() const {
  return m_impl->dtype;
}

void CausalLM::refresh() {
  m_impl->refresh_adapters();
}

void CausalLM::plan(Index batch, Index seq) {
  WEGEFT_CHECK(batch > 0 && seq > 0, "a GPU batch of " << batch << " x " << seq << " tokens");
  if (batch * seq > m_impl->capacity) m_impl->allocate(batch * seq);
}

void CausalLM::Impl::trunk_forward(const std::int32_t* in_ids, const std::uint8_t* in_mask,
                                   Index batch, Index seq) {
  Context& c = *ctx;
  WEGEFT_CHECK(seq <= cfg.max_positions, "sequence length " << seq << " exceeds the model's "
                                                            << cfg.max_positions << " positions");
  if (batch * seq > capacity) allocate(batch * seq);
  const Index n = batch * seq;
  detail::check_token_ids(in_ids, n, cfg.vocab_size);
  ids.assign(c, in_ids, static_cast<std::size_t>(n));
  last_mask = nullptr;
  if (in_mask) {
    mask.assign(c, in_mask, static_cast<std::size_t>(n));
    last_mask = &mask;
  }
  last_shape = {.batch = batch,
                .seq = seq,
                .heads = cfg.heads,
                .kv_heads = cfg.kv_heads,
                .head_dim = cfg.head_dim(),
                .causal = true};
  embedding_forward(c, blocks[0].x.v(n), ids, embed.view());
  if (gpt2) add_positions(c, blocks[0].x.v(n), positions.view(), nullptr, seq);
  for (std::size_t l = 0; l < blocks.size(); ++l) {
    const TensorView out = l + 1 < blocks.size() ? blocks[l + 1].x.v(n) : x_last.v(n);
    if (gpt2)
      gpt2_forward(blocks[l], out, n, last_shape, last_mask);
    else
      block_forward(blocks[l], out, n, last_shape, last_mask);
  }
  final_norm_forward(n);
}

void CausalLM::Impl::trunk_backward() {
  const Index n = last_shape.batch * last_shape.seq;
  final_norm_backward(n);
  for (std::size_t l = blocks.size(); l-- > 0;) {
    if (gpt2)
      gpt2_backward(blocks[l], l == 0, n, last_shape, last_mask);
    else
      block_backward(blocks[l], l == 0, n, last_shape, last_mask);
  }
}

void CausalLM::Impl::refresh_adapters() {
  for (auto& b : blocks)
    for (const auto& [role, member] : kLinears)
      if ((b.*member).adapted) (b.*member).adapted->refresh(*ctx);
}

double CausalLM::step(const LmBatch& in, bool backward, double dloss, Index divisor) {
  Impl& m = *m_impl;
  Context& c = *m.ctx;
  const ModelConfig& cfg = m.cfg;
  WEGEFT_CHECK(in.ids != nullptr && in.targets != nullptr,
               "a GPU batch needs token ids and targets");
  WEGEFT_CHECK(in.batch > 0 && in.seq > 0,
               "a GPU batch of " << in.batch << " x " << in.seq << " tokens");
  const Index n = in.batch * in.seq;
  m.trunk_forward(in.ids, in.mask, in.batch, in.seq);
  const Index counted = wegeft::detail::count_targets(in.targets, n, cfg.vocab_size, kIgnoreIndex);
  if (divisor < 0) divisor = counted;
  m.targets.assign(c, in.targets, static_cast<std::size_t>(n));
  const TensorView logits = m.logits.v(n);
  gemm(c, logits, m.hf.v(n), Op::N, m.head().view(), Op::T, 1.0f, 0.0f);
  const float scale = divisor ? static_cast<float>(dloss / static_cast<double>(divisor)) : 0.0f;
  cross_entropy(c, backward ? &logits : nullptr, stats(m.losses, n, 1), logits, m.targets, scale);
  if (backward) {
    gemm(c, m.t1.v(n), logits, Op::N, m.head().view(), Op::N, 1.0f, 0.0f);  // d hf
    m.trunk_backward();
  }
  m.last_n = n;
  m.last_backward = backward;
  const auto per = position_losses();
  const double total = std::accumulate(per.begin(), per.end(), 0.0);
  return counted ? total / static_cast<double>(counted) : 0.0;
}

TensorView CausalLM::decode(KvCache& cache, const std::int32_t* ids, Index m) {
  Impl& I = *m_impl;
  Context& c = *I.ctx;
  const ModelConfig& cfg = I.cfg;
  WEGEFT_CHECK(ids != nullptr && m > 0, "decode: no tokens to run");
  const Index first = cache.length, len = first + m, kvw = cfg.kv_width();
  WEGEFT_CHECK(len <= cfg.max_positions, "decode: " << first << " cached and " << m
                                                    << " new tokens exceed the model's "
                                                    << cfg.max_positions << " positions");
  detail::check_token_ids(ids, m, cfg.vocab_size);
  const auto layers = static_cast<std::size_t>(cfg.layers);
  if (cache.k.size() != layers || cache.k[0].cols() != kvw || cache.k[0].dtype() != I.dtype) {
    WEGEFT_CHECK(first == 0,
                 "decode: the cache holds " << first << " tokens of a model of another shape");
    cache.k.clear();
    cache.v.clear();
    cache.k.resize(layers);
    cache.v.resize(layers);
  }
  if (cache.k[0].rows() < len) {  // room for len tokens, doubling, at most max_positions
    const Index cap =
        std::min<Index>(cfg.max_positions, std::max<Index>(len, 2 * cache.k[0].rows()));
    for (auto* kv : {&cache.k, &cache.v})
      for (auto& t : *kv) {
        Tensor grown(I.dtype, cap, kvw);
        if (first > 0) scale_copy(c, grown.block(0, 0, first, kvw), t.block(0, 0, first, kvw));
        t = std::move(grown);
      }
  }
  plan(1, m);
  I.ids.assign(c, ids, static_cast<std::size_t>(m));
  // One token after the cache: its position goes to the device, so that a CUDA graph of the
  // step, captured once per cache buffer, replays at every later position. The first step on
  // new buffers runs eagerly (tuning the products' algorithms) and the capture follows it.
  if (m == 1 && first > 0) {
    const auto pos = static_cast<std::int32_t>(first);
    I.position.assign(c, &pos, 1);
    const std::int32_t* at = I.position.data<std::int32_t>();
    const auto same_buffers = [&] {  // the cache's buffers are the graph's (no allocation)
      if (I.decode_key.size() != 2 * layers) return false;
      for (std::size_t l = 0; l < layers; ++l)
        if (I.decode_key[2 * l] != cache.k[l].view().data ||
            I.decode_key[2 * l + 1] != cache.v[l].view().data)
          return false;
      return true;
    };
    if (I.decode_graphs && I.decode_graph && same_buffers()) {
      I.decode_graph->launch(c);
    } else {
      I.decode_forward(cache, m, first, at);
      if (I.decode_graphs) {
        I.decode_graph.reset();
        I.decode_graph = std::make_unique<Graph>(c, [&] { I.decode_forward(cache, m, first, at); });
        I.decode_key.clear();
        for (std::size_t l = 0; l < layers; ++l) {
          I.decode_key.push_back(cache.k[l].view().data);
          I.decode_key.push_back(cache.v[l].view().data);
        }
      }
    }
  } else {
    I.decode_forward(cache, m, first, nullptr);
  }
  cache.length = len;
  I.last_n = 1;
  I.last_backward = false;
  return I.logits.v(1);
}

void CausalLM::use_decode_graphs(bool on) {
  m_impl->decode_graphs = on;
  if (!on) m_impl->decode_graph.reset();
}

void CausalLM::Impl::decode_forward(KvCache& cache, Index m, Index first, const std::int32_t* at) {
  Context& c = *ctx;
  const Index d = cfg.hidden;
  const AttentionShape s{.batch = 1,
                         .seq = m,
                         .heads = cfg.heads,
                         .kv_heads = cfg.kv_heads,
                         .head_dim = cfg.head_dim(),
                         .causal = true};
  embedding_forward(c, blocks[0].x.v(m), ids, embed.view());
  if (gpt2 && at)
    add_positions(c, blocks[0].x.v(m), positions.view(), nullptr, m, at);
  else if (gpt2)
    add_positions(c, blocks[0].x.v(m), positions.block(first, 0, m, d), nullptr, m);
  for (std::size_t l = 0; l < blocks.size(); ++l) {
    const TensorView out = l + 1 < blocks.size() ? blocks[l + 1].x.v(m) : x_last.v(m);
    const Impl::Decode dec{&cache.k[l], &cache.v[l], first, at};
    if (gpt2)
      gpt2_forward(blocks[l], out, m, s, nullptr, &dec);
    else
      block_forward(blocks[l], out, m, s, nullptr, &dec);
  }
  // The final norm and the LM head on the last token only.
  const TensorView last = x_last.t.block(m - 1, 0, 1, d), h = hf.v(1);
  const float eps = static_cast<float>(cfg.norm_eps);
  if (gpt2)
    layernorm_forward(c, h, stats(meanf, 1, 1), stats(rstdf, 1, 1), last, final_norm.view(),
                      final_norm_b.view(), eps);
  else
    rmsnorm_forward(c, h, stats(rstdf, 1, 1), last, final_norm.view(), eps);
  gemm(c, logits.v(1), h, Op::N, head().view(), Op::T, 1.0f, 0.0f);
}

std::vector<float> CausalLM::position_losses() {
  Impl& m = *m_impl;
  std::vector<float> out(static_cast<std::size_t>(m.last_n));
  download_floats(*m.ctx, out.data(), static_cast<const float*>(m.losses.data()), out.size());
  return out;
}

TensorView CausalLM::logits() const {
  return m_impl->logits.v(m_impl->last_n);
}

std::vector<std::int32_t> CausalLM::greedy_tokens() {
  Impl& m = *m_impl;
  WEGEFT_CHECK(!m.last_backward,
               "greedy_tokens: the last step ran the backward pass, which replaced the logits "
               "with their gradient; run eval_loss first");
  const Index n = m.last_n;
  argmax_rows(*m.ctx, {m.argmax.data(), DType::I32, Device::cuda, n, 1, 1}, logits());
  std::vector<std::int32_t> out(static_cast<std::size_t>(n));
  download_bytes(*m.ctx, out.data(), m.argmax.data(), out.size() * sizeof(std::int32_t));
  return out;
}

}  // namespace wegeft::cuda

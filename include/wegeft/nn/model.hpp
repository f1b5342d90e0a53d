// A minimal transformer with a hand-written backward, for the bert, gpt2, llama and vit families
// (see config.hpp), into which LoRA and WeGeFT adapters plug by target pattern.
//
// The frozen base weights live in a name -> tensor map keyed by Hugging Face names
// ("model.layers.0.self_attn.q_proj.weight", ...), 1-D tensors stored as [1, n]. They never get a
// gradient. Trainable parameters (adapters, a new classification head, norms if asked) live in a
// ParameterStore the caller owns (one store per model: every call that adds parameters must pass
// the same one). Adapters of any registered method (adapters/registry.hpp) live in the model's
// AdapterSet. The model orchestrates the free-function ops of nn/; it holds
// no per-call state: forward() fills an Activations object that backward() consumes.
//
//   wegeft::Transformer<float> model(wegeft::ModelConfig::tiny(wegeft::Family::llama));
//   model.init_random(rng);                       // or load a checkpoint into model.tensor(...)
//   wegeft::ParameterStore<float> store;
//   model.attach({.target_modules = {"q", "v"}, .method = wegeft::WeGeFTConfig{.rank = 4, .alpha = 8}}, store);
//   wegeft::Transformer<float>::Activations acts;
//   model.forward(acts, {.ids = ids.data(), .batch = 2, .seq = 8});
//   double loss = model.lm_loss(acts, targets.data());   // fills acts.dlogits
//   model.backward(acts);                                 // gradients into store.grads()
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <variant>
#include <vector>

#include "wegeft/adapters/registry.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/pattern.hpp"
#include "wegeft/core/precompiled.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/attention.hpp"
#include "wegeft/nn/activations.hpp"
#include "wegeft/nn/config.hpp"
#include "wegeft/nn/embedding.hpp"
#include "wegeft/nn/loss.hpp"
#include "wegeft/nn/norms.hpp"
#include "wegeft/nn/pooling.hpp"
#include "wegeft/nn/rope.hpp"

namespace wegeft {

/// One batch of input: token ids [batch, seq] (text) or images [batch, C, H, W] (vit), and an
/// optional padding mask [batch, seq] (1 = token, 0 = padding; null = no padding).
template <class T>
struct ModelInput {
  const std::int32_t* ids = nullptr;
  const std::uint8_t* mask = nullptr;
  const T* images = nullptr;
  Index batch = 0, seq = 0;  // vit: seq is ignored (patches + 1)
};

template <class T>
class Transformer {
 public:
  using LinearCache = AnyCache<T>;

  /// Everything one block's backward needs. With checkpointing only `x` (the block input) is
  /// kept after the forward; the rest is recomputed.
  struct BlockCache {
    Matrix<T> x;                           // [N, d] block input
    Matrix<T> h1, h2;                      // [N, d] norm outputs (pre-norm) / LN inputs (post-norm)
    Matrix<T> mean1, rstd1, mean2, rstd2;  // [N, 1]
    Matrix<T> q, k, v;                     // [N, H d], [N, Hkv d] (after RoPE)
    bool flash = false;                    // attention ran the flash kernels: lse, else probs
    bool bf16_attention = false;           // ... with bf16 products (flash_attention_*_bf16)
    Matrix<T> lse;                         // [B H T, 1] attention rows' log-sum-exp
    Matrix<T> probs;                       // [B H T T] attention probabilities
    Matrix<T> attn;                        // [N, d] attention output before o
    Matrix<T> x2;                          // [N, d] residual after attention (post-norm: after LN1)
    Matrix<T> gate, up, act;               // [N, F]
    std::array<LinearCache, kLinearRoles> lin;
    std::vector<Rng::State> rng_states;  // adapters' dropout streams before this block's forward
    bool released = false;
  };

  struct Activations {
    Index batch = 0, seq = 0, n = 0;
    std::vector<std::uint8_t> mask;  // [batch, seq] or empty
    Matrix<T> patches, patch_emb;    // vit: [B P, C p p], [B P, d]
    std::vector<BlockCache> blocks;
    Matrix<T> emb_sum, emb_mean, emb_rstd;        // bert: embedding sum before its LayerNorm
    Matrix<T> last;                               // [N, d] last block output
    Matrix<T> final_out, final_mean, final_rstd;  // pre-norm families: final norm
    Matrix<T> pooled, pooler_out;                 // classifier: [B, d]
    LinearCache pooler;                           // bert classifier: the pooler's adapter cache
    Matrix<T> logits;                             // lm: [N, V]; classifier: [B, labels]
    Matrix<T> dlogits;                            // set by a loss function or the caller
    bool chunked_head = false;     // forward left the LM head to lm_loss (set_lm_loss_chunk)
    bool dh_ready = false;         // chunked: lm_loss has written d(loss)/d(hidden) into dh
    Matrix<T> spare, dh, dx;       // [N, d] buffers reused by forward / backward
    Matrix<T> dpooled, dfeatures;  // classifier backward: [B, d]
  };

  explicit Transformer(const ModelConfig& config);

  const ModelConfig& config() const { return m_config; }

  /// A frozen tensor by its Hugging Face name (1-D tensors are [1, n]).
  Matrix<T>& tensor(const std::string& name) {
    const auto it = m_tensors.find(name);
    WEGEFT_CHECK(it != m_tensors.end(), "model has no tensor '" << name << "'");
    return it->second;
  }
  const std::map<std::string, Matrix<T>>& tensors() const { return m_tensors; }
  /// Module paths of the adaptable linears (the block linears, then BERT's pooler), in model order.
  std::vector<std::string> linear_names() const {
    std::vector<std::string> out;
    for (const auto& l : m_linears) out.push_back(l.name);
    return out;
  }

  /// Random weights for tests and toy runs: matrices U(-scale, scale), norm weights near 1,
  /// biases small.
  void init_random(Rng& rng, double scale = 0.2);

  /// The store of the model's trainable parameters: the one the model was bound to by the first
  /// call that took a store (attach, add_classifier, train_norms, adapter_set), else one the model
  /// owns, created here and bound from then on.
  ParameterStore<T>& store() {
    if (!m_store) {
      m_own_store = std::make_unique<ParameterStore<T>>();
      m_store = m_own_store.get();
    }
    return *m_store;
  }
  /// attach(), add_classifier() and train_norms() into the model's store().
  Index attach(const AdapterSpec& spec) { return attach(spec, store()); }
  void add_classifier(Index labels, std::optional<Pooling> pooling = {}, std::uint64_t seed = 0) {
    add_classifier(labels, store(), pooling, seed);
  }
  Index train_norms(const std::string& regex) { return train_norms(regex, store()); }

  /// Attaches adapters to every block linear that `spec` targets; trainable parameters go into
  /// `store`, which must outlive the model. Returns the number of adapted modules. Throws, adding
  /// nothing, if the spec matches nothing or a module already has an adapter.
  Index attach(const AdapterSpec& spec, ParameterStore<T>& store);

  /// The model's AdapterSet, bound to `store` (created on first use). Adapters attached through it
  /// to this model's sites() are used from the next forward() on.
  AdapterSet<T>& adapter_set(ParameterStore<T>& store) {
    bind_store(store);
    if (!m_adapters) m_adapters = std::make_unique<AdapterSet<T>>(store);
    return *m_adapters;
  }

  /// Every adaptable linear as an AdapterSite (name, role short name, block, frozen weights), in
  /// model order; BERT's pooler.dense comes last with role "pooler" and layer -1.
  std::vector<AdapterSite<T>> sites();
  /// The model's adapters (null before the first attach).
  AdapterSet<T>* adapters() { return m_adapters.get(); }
  const AdapterSet<T>* adapters() const { return m_adapters.get(); }

  /// One adaptable linear and its adapter (null when not adapted).
  struct ModuleView {
    const std::string& name;
    LinearRole role;
    Index layer;
    AnyAdapter<T>* adapter;
  };
  /// Every adaptable linear in model order (block linears, then BERT's pooler), adapted or not.
  std::vector<ModuleView> modules();
  /// The classifier head's parameters in the store, if one was added.
  std::optional<std::pair<ParamId, std::optional<ParamId>>> classifier_params() const {
    if (m_labels == 0) return std::nullopt;
    return std::pair{m_cls_weight, m_cls_bias.index == static_cast<std::size_t>(-1)
                                       ? std::optional<ParamId>{}
                                       : std::optional<ParamId>{m_cls_bias}};
  }

  /// The adapter of module `name` if it is an A (LoraAdapter<T>, WeGeFTAdapter<T>, ...), else null.
  template <class A>
  A* adapter(const std::string& name) {
    resolve_adapters();
    for (auto& lin : m_linears)
      if (lin.name == name) return lin.adapter ? std::get_if<A>(lin.adapter) : nullptr;
    WEGEFT_CHECK(false, "model has no linear module '" << name << "'");
    return nullptr;
  }

  /// Adds a new trainable classification head of `labels` outputs on the pooled sequence
  /// (bert: through its frozen pooler; gpt2/llama default to the last token, bert/vit to the
  /// first). Its weight is N(0, 0.02^2)-initialised from `seed`, its bias zero.
  void add_classifier(Index labels, ParameterStore<T>& store, std::optional<Pooling> pooling = {},
                      std::uint64_t seed = 0);
  bool has_classifier() const { return m_labels > 0; }
  /// How the classifier pools the sequence (set by add_classifier).
  Pooling pooling() const { return m_pooling; }
  /// Whether train_norms() made any norm tensor trainable.
  bool has_trainable_norms() const { return !m_trainable.empty(); }

  /// Makes every norm tensor whose name matches `regex` (a Pattern, full match) trainable: its
  /// value is copied into `store`, and its gradient is computed from then on.
  Index train_norms(const std::string& regex, ParameterStore<T>& store);

  /// The products with frozen weights in bf16 (on) or in T (off, the default): every block
  /// linear's and BERT's pooler's x W^T and dy W, and the LM head's, through gemm_bf16 (inputs
  /// rounded to bf16, sums in fp32; kernels/cpu/gemm_bf16.hpp), and attention's products unless
  /// the probabilities kernel is chosen (bf16_attention()); everything else (adapters, norms,
  /// softmax, loss, AdamW) stays in T. Packs the weights as they are now, so call it
  /// after loading them, and again after changing them; merged adapters compute in T. Needs T =
  /// float and a CPU with AVX512-BF16 (bf16_gemm_available(); AMX tiles where the CPU has them,
  /// bf16_kernel()); throws, saying which, otherwise.
  void set_bf16_products(bool on) {
    if (on) {
      WEGEFT_CHECK((std::is_same_v<T, float>), "bf16 products need a float model");
      WEGEFT_CHECK(bf16_gemm_available(),
                   "bf16 products need a CPU with AVX512-BF16; this one has none (use fp32)");
    }
    if constexpr (std::is_same_v<T, float>) {
      for (auto& lin : m_linears) {
        if (on)
          lin.bf16->pack(lin.weight->data(), lin.weight->rows(), lin.weight->cols());
        else
          lin.bf16->clear();
      }
      const bool head = on && m_fixed.lm_head != nullptr &&
                        (m_config.family == Family::gpt2 || m_config.family == Family::llama);
      if (head)
        m_head_bf16.pack(m_fixed.lm_head->data(), m_fixed.lm_head->rows(), m_fixed.lm_head->cols());
      else
        m_head_bf16.clear();
    }
  }
  bool bf16_products() const { return m_linears.front().bf16->packed(); }
  /// Bytes of the bf16 packings held (0 when off).
  std::size_t bf16_bytes() const {
    std::size_t n = m_head_bf16.bytes();
    for (const auto& lin : m_linears) n += lin.bf16->bytes();
    return n;
  }

  /// Per-block recomputation: forward keeps only each block's input; backward recomputes the
  /// block before differentiating it. Same gradients, less memory.
  void set_checkpointing(bool on) { m_checkpointing = on; }
  /// Attention's kernels (kernels/cpu/attention.hpp): flash keeps a log-sum-exp per query row and
  /// recomputes the probabilities in backward; probabilities keeps P [B, H, T, T] from the forward
  /// for the backward; automatic (the default) runs flash for causal attention and probabilities
  /// for bidirectional (docs/performance.md has the measurements behind it). Same results to
  /// rounding.
  /// With bf16 products on, automatic and flash run the flash kernels with bf16 products
  /// (flash_attention_forward_bf16: operands rounded to bf16, sums and softmax in fp32);
  /// probabilities keeps attention in T.
  void set_attention_kernel(AttentionKernel k) { m_attention_kernel = k; }
  AttentionKernel attention_kernel() const { return m_attention_kernel; }
  /// Whether attention's products run in bf16: bf16 products on and a kernel other than
  /// probabilities.
  bool bf16_attention() const {
    return bf16_products() && m_attention_kernel != AttentionKernel::probabilities;
  }
  /// Fused LM head and loss, `rows` query rows at a time (0, the default, turns it off). While on,
  /// forward stops at the final hidden states (acts.logits stays [0, vocab]) and lm_loss forms
  /// the logits of `rows` rows at a time, takes their cross-entropy and writes d(loss)/d(hidden)
  /// into acts.dh, so a step keeps one [rows, vocab] buffer instead of the [N, vocab] logits and
  /// their gradient. Same loss and gradients to rounding; a caller that needs the logits
  /// themselves (scoring, generation) turns it off.
  void set_lm_loss_chunk(Index rows) {
    WEGEFT_CHECK(rows >= 0, "set_lm_loss_chunk: rows must be >= 0, got " << rows);
    m_loss_chunk = rows;
  }
  Index lm_loss_chunk() const { return m_loss_chunk; }
  /// Divides the loss gradient a loss function left in acts (dlogits, or dh with a chunked LM
  /// loss) by `divisor`, e.g. the number of accumulated micro-batches.
  void divide_loss_gradient(Activations& acts, T divisor) const {
    if (acts.chunked_head)
      acts.dh /= divisor;
    else
      acts.dlogits /= divisor;
  }
  /// Training mode turns adapter dropout on (the default).
  void set_training(bool on) {
    if (m_adapters) m_adapters->set_training(on);
  }

  /// Runs the model; fills acts.logits ([N, vocab] with an LM head, [batch, labels] with a
  /// classifier, else acts.last / acts.final_out hold the hidden states).
  void forward(Activations& acts, const ModelInput<T>& in);

  /// One sequence's keys and values so far, per block (keys after RoPE), for decode(): rows
  /// 0 .. length - 1 of each [capacity, kv_width] matrix. clear() starts a new sequence.
  struct KvCache {
    Index length = 0;
    std::vector<Matrix<T>> k, v;
    void clear() { length = 0; }
  };

  /// Incremental decoding of a causal LM (gpt2, llama): runs tokens ids [m] of one sequence at
  /// positions cache.length .. cache.length + m - 1, attending to the cached tokens before them,
  /// appends their keys and values to `cache` and sets logits [1, vocab] (=) to the next-token
  /// logits after the last of them: forward()'s logits at that position of the whole sequence,
  /// without recomputing the earlier tokens. Adapters run as in forward() (set_training(false)
  /// for adapters with dropout); nothing is kept for backward. The cache grows by doubling.
  void decode(KvCache& cache, const std::int32_t* ids, Index m, Matrix<T>& logits);

  /// Cross-entropy of the LM logits against targets [N] (kIgnoreIndex skips a row); sets
  /// acts.dlogits to d(mean loss)/d(logits) (with set_lm_loss_chunk: acts.dh to d(mean
  /// loss)/d(final hidden states)).
  double lm_loss(Activations& acts, const std::int32_t* targets);
  /// Cross-entropy of the classifier logits against labels [batch]; sets acts.dlogits.
  double classification_loss(Activations& acts, const std::int32_t* labels);

  /// Back-propagates acts.dlogits; parameter gradients accumulate into the store(s).
  void backward(Activations& acts);

  /// Frozen parameters (the base model) and trainable ones in `store`.
  Index frozen_parameter_count() const;

 private:
  struct Linear {
    std::string name;
    LinearRole role;
    Index layer;
    AnyAdapter<T>* adapter;  // owned by m_adapters
    Matrix<T>* weight;       // in m_tensors
    Matrix<T>* bias;         // in m_tensors, or null
    // The weight packed in bf16 while set_bf16_products(true) is on (else empty); adapters'
    // FrozenLinear views point at it, so it keeps its address.
    std::unique_ptr<Bf16Weight> bf16 = std::make_unique<Bf16Weight>();
  };
  /// The non-block tensors a step uses (null where the family has none).
  struct FixedTensors {
    Matrix<T>*token, *position, *token_type, *patch_weight, *patch_bias, *cls_token, *lm_head;
  };
  struct ParamView {
    T* value;
    T* grad;  // null when frozen
  };

  void add_tensor(const std::string& name, Index rows, Index cols) {
    m_tensors.emplace(name, Matrix<T>::Zero(rows, cols));
  }
  void add_norm(const std::string& name) {
    add_tensor(name + ".weight", 1, m_config.hidden);
    m_norm_tensors.insert(name + ".weight");
    m_tensors.at(name + ".weight").setOnes();
    if (!m_config.rms_norm()) {
      add_tensor(name + ".bias", 1, m_config.hidden);
      m_norm_tensors.insert(name + ".bias");
    }
  }
  ParamView param(const std::string& name) {
    const auto it = m_trainable.find(name);
    if (it != m_trainable.end())
      return {m_store->value(it->second).data(), m_store->grad(it->second).data()};
    return {m_tensors.at(name).data(), nullptr};
  }
  FrozenLinear<T> frozen(const Linear& lin) {
    return FrozenLinear<T>(lin.weight->data(), lin.weight->rows(), lin.weight->cols(),
                           lin.bias ? lin.bias->data() : nullptr,
                           std::is_same_v<T, float> ? lin.bf16.get() : nullptr);
  }
  Linear& linear(Index layer, LinearRole role) {
    const auto pos = std::find(m_roles.begin(), m_roles.end(), role) - m_roles.begin();
    return m_linears[static_cast<std::size_t>(layer * static_cast<Index>(m_roles.size()) + pos)];
  }
  /// Points each block linear at its adapter in the set, if the set changed since the last time.
  // Finds each linear's adapter after the adapter set changed. Concurrent eval-mode forwards may
  // all arrive here after an attach: one of them resolves under a lock, the others wait for it.
  void resolve_adapters() {
    if (!m_adapters) return;
    const Index version = static_cast<Index>(m_adapters->version());
    std::atomic_ref<Index> resolved(m_resolved);
    if (resolved.load(std::memory_order_acquire) == version) return;
    static std::mutex lock;
    const std::lock_guard<std::mutex> guard(lock);
    if (resolved.load(std::memory_order_relaxed) == version) return;
    for (auto& lin : m_linears) lin.adapter = m_adapters->find(lin.name);
    resolved.store(version, std::memory_order_release);
  }
  /// An adapter views its layer's frozen weight and bias through pointers taken when it was
  /// attached. A tensor given new storage since (a temporary Matrix moved into tensor(name), or
  /// one of another size) would leave the adapter reading freed memory, so the forward refuses it,
  /// naming the layer. Assigning an lvalue or an expression of the same shape keeps the storage.
  void check_adapter_views() const {
    for (const auto& lin : m_linears) {
      if (!lin.adapter) continue;
      const auto& base = std::visit(
          [](const auto& a) -> const FrozenLinear<T>& { return a.base(); }, *lin.adapter);
      WEGEFT_CHECK(base.weight().data() == lin.weight->data() &&
                       base.bias() == (lin.bias ? lin.bias->data() : nullptr),
                   lin.name << ": its frozen weight or bias was given new storage after its "
                               "adapter was attached, which still views the old one; assign "
                               "into the tensor in place (an lvalue or an expression of the "
                               "same shape) or attach the adapter after replacing it");
    }
  }
  /// Every call that adds trainable parameters must use the same store.
  void bind_store(ParameterStore<T>& store) {
    WEGEFT_CHECK(m_store == nullptr || m_store == &store,
                 "this model's trainable parameters live in another ParameterStore; pass the same "
                 "store to attach, "
                 "add_classifier and train_norms");
    m_store = &store;
  }
  /// The LM head as a frozen linear [vocab, d] (bf16 while its packing is held).
  FrozenLinear<T> lm_head() {
    Matrix<T>& w = *m_fixed.lm_head;
    return FrozenLinear<T>(w.data(), w.rows(), w.cols(), nullptr,
                           std::is_same_v<T, float> ? &m_head_bf16 : nullptr);
  }
  bool embedding_norm_trainable() const {
    return m_config.family == Family::bert &&
           m_trainable.count(m_final_norm.weight) + m_trainable.count(m_final_norm.bias) > 0;
  }

  // ---- linears, norms -------------------------------------------------------------------

  void run_linear(Index layer, LinearRole role, LinearCache& cache, Matrix<T>& y,
                  const Matrix<T>& x) {
    run_linear(linear(layer, role), cache, y, x);
  }
  void run_linear(Linear& lin, LinearCache& cache, Matrix<T>& y, const Matrix<T>& x) {
    y.resize(x.rows(), m_config.linear_shape(lin.role).first);
    if (!lin.adapter) {
      cache.template emplace<std::monostate>();
      frozen(lin).forward(y, x);
      return;
    }
    std::visit(
        [&](auto& a) {
          using A = std::decay_t<decltype(a)>;
          // The cache of the last step's call is reused (its buffers keep their size).
          auto* held = std::get_if<typename A::Cache>(&cache);
          a.forward(y, held != nullptr ? *held : cache.template emplace<typename A::Cache>(), x);
        },
        *lin.adapter);
  }
  /// dx (overwritten; may be null) and adapter gradients (+=) of one block linear.
  void run_linear_backward(Index layer, LinearRole role, LinearCache& cache, Matrix<T>* dx,
                           const Matrix<T>& x, const Matrix<T>& dy) {
    run_linear_backward(linear(layer, role), cache, dx, x, dy);
  }
  void run_linear_backward(Linear& lin, LinearCache& cache, Matrix<T>* dx, const Matrix<T>& x,
                           const Matrix<T>& dy) {
    if (dx) dx->resize(x.rows(), x.cols());
    if (!lin.adapter) {
      if (dx) frozen(lin).backward_input(*dx, dy);
      return;
    }
    std::visit(
        [&](auto& a) {
          using A = std::decay_t<decltype(a)>;
          const auto& c = std::get<typename A::Cache>(cache);
          if (dx)
            a.backward(*dx, c, x, dy);
          else
            a.backward(c, x, dy);
        },
        *lin.adapter);
  }

  /// The full tensor names of one norm's parameters.
  struct NormNames {
    std::string weight, bias;
  };
  const NormNames& norm_of(Index l, int which) const {
    return m_norm_names[static_cast<std::size_t>(2 * l + which)];
  }

  void norm_forward(Matrix<T>& out, Matrix<T>& mean, Matrix<T>& rstd, const Matrix<T>& x,
                    const NormNames& name) {
    const Index n = x.rows(), c = x.cols();
    out.resize(n, c);
    rstd.resize(n, 1);
    const ParamView w = param(name.weight);
    if (m_config.rms_norm()) {
      rmsnorm_forward(out.data(), rstd.data(), x.data(), w.value, n, c, m_config.norm_eps);
    } else {
      mean.resize(n, 1);
      layernorm_forward(out.data(), mean.data(), rstd.data(), x.data(), w.value,
                        param(name.bias).value, n, c, m_config.norm_eps);
    }
  }
  /// dx (overwritten, may be null) from dout; trainable norm parameters accumulate.
  void norm_backward(Matrix<T>* dx, const Matrix<T>& dout, const Matrix<T>& x,
                     const Matrix<T>& mean, const Matrix<T>& rstd, const NormNames& name) {
    const Index n = x.rows(), c = x.cols();
    if (dx) dx->resize(n, c);
    T* dxp = dx ? dx->data() : nullptr;
    const ParamView w = param(name.weight);
    if (m_config.rms_norm()) {
      rmsnorm_backward(dxp, w.grad, dout.data(), x.data(), w.value, rstd.data(), n, c);
    } else {
      layernorm_backward(dxp, w.grad, param(name.bias).grad, dout.data(), x.data(), w.value,
                         mean.data(), rstd.data(), n, c);
    }
  }

  // ---- embeddings and heads ----------------------------------------------------------------

  void embed(Matrix<T>& x, Activations& acts, const ModelInput<T>& in) {
    const Index d = m_config.hidden, n = acts.n;
    if (m_config.family == Family::vit) {
      WEGEFT_CHECK(in.images != nullptr, "vit model input needs images");
      const Index p = m_config.patch_size, P = m_config.patches();
      acts.patches.resize(in.batch * P, m_config.channels * p * p);
      patchify(acts.patches.data(), in.images, in.batch, m_config.channels, m_config.image_size,
               m_config.image_size, p);
      Matrix<T>& patch_emb = acts.patch_emb;
      patch_emb.resize(in.batch * P, d);
      wegeft::linear_forward<T>(patch_emb, acts.patches, *m_fixed.patch_weight,
                                m_fixed.patch_bias->data());
      class_token_forward(x.data(), patch_emb.data(), m_fixed.cls_token->data(), in.batch, P, d);
      position_embedding_forward(x.data(), m_fixed.position->data(), in.batch, acts.seq, d,
                                 m_config.max_positions);
      return;
    }
    WEGEFT_CHECK(in.ids != nullptr, to_string(m_config.family) << " model input needs token ids");
    embedding_forward(x.data(), in.ids, m_fixed.token->data(), n, m_config.vocab_size, d);
    if (m_config.family != Family::llama)
      position_embedding_forward(x.data(), m_fixed.position->data(), in.batch, acts.seq, d,
                                 m_config.max_positions);
    if (m_config.family == Family::bert) {
      x.rowwise() += m_fixed.token_type->row(0);
      acts.emb_sum = x;
      norm_forward(x, acts.emb_mean, acts.emb_rstd, acts.emb_sum, m_final_norm);
    }
  }

  void classifier_forward(Activations& acts, const Matrix<T>& h) {
    const Index d = m_config.hidden;
    const std::uint8_t* mask = key_mask(acts);
    acts.pooled.resize(acts.batch, d);
    pool_forward(acts.pooled.data(), h.data(), mask, acts.batch, acts.seq, d, m_pooling);
    const Matrix<T>* features = &acts.pooled;
    if (m_config.family == Family::bert) {
      run_linear(m_linears.back(), acts.pooler, acts.pooler_out, acts.pooled);
      tanh_forward(acts.pooler_out.data(), acts.pooler_out.data(), acts.pooler_out.size());
      features = &acts.pooler_out;
    }
    acts.logits.noalias() = *features * m_store->value(m_cls_weight).transpose();
    if (m_cls_bias.index != static_cast<std::size_t>(-1))
      acts.logits.rowwise() += m_store->value(m_cls_bias).row(0);
  }

  void classifier_backward(Matrix<T>& dh, Activations& acts) {
    const Index d = m_config.hidden;
    const Matrix<T>& features = m_config.family == Family::bert ? acts.pooler_out : acts.pooled;
    m_store->grad(m_cls_weight).noalias() += acts.dlogits.transpose() * features;
    if (m_cls_bias.index != static_cast<std::size_t>(-1))
      m_store->grad(m_cls_bias).row(0) += acts.dlogits.colwise().sum();
    Matrix<T>& dpooled = acts.dpooled;
    dpooled.noalias() = acts.dlogits * m_store->value(m_cls_weight);
    if (m_config.family == Family::bert) {
      tanh_backward(dpooled.data(), dpooled.data(), acts.pooler_out.data(), dpooled.size());
      run_linear_backward(m_linears.back(), acts.pooler, &acts.dfeatures, acts.pooled, dpooled);
      dpooled.swap(acts.dfeatures);
    }
    const std::uint8_t* mask = key_mask(acts);
    pool_backward(dh.data(), dpooled.data(), mask, acts.batch, acts.seq, d, m_pooling);
  }

  // ---- blocks ---------------------------------------------------------------------------

  /// The batch's key mask [B, T] (1 = attend), or null when every token is attended.
  static const std::uint8_t* key_mask(const Activations& acts) {
    return acts.mask.empty() ? nullptr : acts.mask.data();
  }
  AttentionShape attention_shape(const Activations& acts) const {
    return {.batch = acts.batch,
            .seq = acts.seq,
            .heads = m_config.heads,
            .kv_heads = m_config.kv_heads,
            .head_dim = m_config.head_dim(),
            .causal = m_config.causal()};
  }

  void attention_block_forward(Index l, BlockCache& c, const Activations& acts,
                               const Matrix<T>& in) {
    const Index d = m_config.hidden, kvw = m_config.kv_width();
    auto& lin = c.lin;
    if (m_config.fused_qkv()) {
      thread_local Matrix<T>
          qkv;  // per-thread scratch, reused across calls (no per-step allocation)
      run_linear(l, LinearRole::qkv, lin[int(LinearRole::qkv)], qkv, in);
      c.q = qkv.leftCols(d);
      c.k = qkv.middleCols(d, d);
      c.v = qkv.rightCols(d);
    } else {
      run_linear(l, LinearRole::q, lin[int(LinearRole::q)], c.q, in);
      run_linear(l, LinearRole::k, lin[int(LinearRole::k)], c.k, in);
      run_linear(l, LinearRole::v, lin[int(LinearRole::v)], c.v, in);
    }
    if (m_config.rope()) {
      rope_forward(c.q.data(), *m_rope, acts.batch, acts.seq, m_config.heads);
      rope_forward(c.k.data(), *m_rope, acts.batch, acts.seq, m_config.kv_heads);
    }
    const AttentionShape s = attention_shape(acts);
    c.attn.resize(acts.n, d);
    WEGEFT_ASSERT(c.k.cols() == kvw);
    const std::uint8_t* mask = key_mask(acts);
    // With bf16 products, automatic takes the bf16 flash kernels for every attention.
    c.bf16_attention = bf16_attention();
    c.flash = c.bf16_attention || m_attention_kernel == AttentionKernel::flash ||
              (m_attention_kernel == AttentionKernel::automatic && s.causal);
    if (c.flash) {
      c.probs.resize(0, 1);
      c.lse.resize(s.lse_size(), 1);
      if (c.bf16_attention) {  // only ever set for float
        if constexpr (std::is_same_v<T, float>)
          flash_attention_forward_bf16(c.attn.data(), c.lse.data(), c.q.data(), c.k.data(),
                                       c.v.data(), mask, s);
      } else {
        flash_attention_forward(c.attn.data(), c.lse.data(), c.q.data(), c.k.data(), c.v.data(),
                                mask, s);
      }
    } else {
      c.lse.resize(0, 1);
      c.probs.resize(s.probs_size(), 1);
      attention_forward(c.attn.data(), c.probs.data(), c.q.data(), c.k.data(), c.v.data(), mask, s);
    }
  }

  /// d_in (overwritten, may be null) from d_attn_out, the gradient of the o projection's output.
  void attention_block_backward(Index l, BlockCache& c, const Activations& acts,
                                const Matrix<T>& in, const Matrix<T>& d_o, Matrix<T>* d_in) {
    const Index d = m_config.hidden;
    auto& lin = c.lin;
    thread_local Matrix<T> d_attn;
    run_linear_backward(l, LinearRole::o, lin[int(LinearRole::o)], &d_attn, c.attn, d_o);
    thread_local Matrix<T> dq, dk, dv;
    dq.resize(acts.n, d);
    dk.resize(acts.n, m_config.kv_width());
    dv.resize(acts.n, m_config.kv_width());
    if (c.bf16_attention) {  // only ever set for float
      if constexpr (std::is_same_v<T, float>)
        flash_attention_backward_bf16(dq.data(), dk.data(), dv.data(), d_attn.data(), c.attn.data(),
                                      c.lse.data(), c.q.data(), c.k.data(), c.v.data(),
                                      key_mask(acts), attention_shape(acts));
    } else if (c.flash)
      flash_attention_backward(dq.data(), dk.data(), dv.data(), d_attn.data(), c.attn.data(),
                               c.lse.data(), c.q.data(), c.k.data(), c.v.data(), key_mask(acts),
                               attention_shape(acts));
    else
      attention_backward(dq.data(), dk.data(), dv.data(), d_attn.data(), c.probs.data(), c.q.data(),
                         c.k.data(), c.v.data(), attention_shape(acts));
    if (m_config.rope()) {
      rope_backward(dq.data(), *m_rope, acts.batch, acts.seq, m_config.heads);
      rope_backward(dk.data(), *m_rope, acts.batch, acts.seq, m_config.kv_heads);
    }
    if (m_config.fused_qkv()) {
      thread_local Matrix<T> dqkv;
      dqkv.resize(acts.n, 3 * d);
      dqkv << dq, dk, dv;
      run_linear_backward(l, LinearRole::qkv, lin[int(LinearRole::qkv)], d_in, in, dqkv);
      return;
    }
    thread_local Matrix<T> tmp;
    Matrix<T>* t = d_in ? &tmp : nullptr;
    run_linear_backward(l, LinearRole::q, lin[int(LinearRole::q)], d_in, in, dq);
    run_linear_backward(l, LinearRole::k, lin[int(LinearRole::k)], t, in, dk);
    if (d_in) *d_in += tmp;
    run_linear_backward(l, LinearRole::v, lin[int(LinearRole::v)], t, in, dv);
    if (d_in) *d_in += tmp;
  }

  void mlp_forward(Index l, BlockCache& c, const Matrix<T>& in, Matrix<T>& out) {
    auto& lin = c.lin;
    run_linear(l, LinearRole::up, lin[int(LinearRole::up)], c.up, in);
    c.act.resize(c.up.rows(), c.up.cols());
    if (m_config.swiglu()) {
      run_linear(l, LinearRole::gate, lin[int(LinearRole::gate)], c.gate, in);
      swiglu_forward(c.act.data(), c.gate.data(), c.up.data(), c.act.size());
    } else {
      gelu_forward(c.act.data(), c.up.data(), c.act.size(), m_config.gelu());
    }
    run_linear(l, LinearRole::down, lin[int(LinearRole::down)], out, c.act);
  }

  /// d_in (overwritten) from d_out of the MLP.
  void mlp_backward(Index l, BlockCache& c, const Matrix<T>& in, const Matrix<T>& d_out,
                    Matrix<T>& d_in) {
    auto& lin = c.lin;
    thread_local Matrix<T> d_act;
    run_linear_backward(l, LinearRole::down, lin[int(LinearRole::down)], &d_act, c.act, d_out);
    if (m_config.swiglu()) {
      thread_local Matrix<T> d_gate, d_up, tmp;
      d_gate.resize(d_act.rows(), d_act.cols());
      d_up.resize(d_act.rows(), d_act.cols());
      swiglu_backward(d_gate.data(), d_up.data(), d_act.data(), c.gate.data(), c.up.data(),
                      d_act.size());
      run_linear_backward(l, LinearRole::gate, lin[int(LinearRole::gate)], &d_in, in, d_gate);
      run_linear_backward(l, LinearRole::up, lin[int(LinearRole::up)], &tmp, in, d_up);
      d_in += tmp;
    } else {
      gelu_backward(d_act.data(), d_act.data(), c.up.data(), d_act.size(), m_config.gelu());
      run_linear_backward(l, LinearRole::up, lin[int(LinearRole::up)], &d_in, in, d_act);
    }
  }

  /// out [N, d] from c.x.
  void block_forward(Index l, BlockCache& c, const Activations& acts, Matrix<T>& out) {
    c.released = false;
    thread_local Matrix<T> o, m;
    if (m_config.pre_norm()) {
      norm_forward(c.h1, c.mean1, c.rstd1, c.x, norm_of(l, 0));
      attention_block_forward(l, c, acts, c.h1);
      run_linear(l, LinearRole::o, c.lin[int(LinearRole::o)], o, c.attn);
      c.x2 = c.x + o;
      norm_forward(c.h2, c.mean2, c.rstd2, c.x2, norm_of(l, 1));
      mlp_forward(l, c, c.h2, m);
      out = c.x2 + m;
    } else {
      attention_block_forward(l, c, acts, c.x);
      run_linear(l, LinearRole::o, c.lin[int(LinearRole::o)], o, c.attn);
      c.h1 = c.x + o;  // LN1 input
      norm_forward(c.x2, c.mean1, c.rstd1, c.h1, norm_of(l, 0));
      mlp_forward(l, c, c.x2, m);
      c.h2 = c.x2 + m;  // LN2 input
      norm_forward(out, c.mean2, c.rstd2, c.h2, norm_of(l, 1));
    }
  }

  /// dx (overwritten; may be null) from dout, the gradient of the block output.
  void block_backward(Index l, BlockCache& c, const Activations& acts, const Matrix<T>& dout,
                      Matrix<T>* dx) {
    thread_local Matrix<T> d_mid, tmp;
    if (m_config.pre_norm()) {
      // out = x2 + mlp(norm2(x2)),  x2 = x + o(attn(norm1(x)))
      mlp_backward(l, c, c.h2, dout, tmp);
      norm_backward(&d_mid, tmp, c.x2, c.mean2, c.rstd2, norm_of(l, 1));
      d_mid += dout;
      thread_local Matrix<T> dh1;
      const bool need_dh1 = dx != nullptr || has_trainable_norm(l, 0);
      attention_block_backward(l, c, acts, c.h1, d_mid, need_dh1 ? &dh1 : nullptr);
      if (dx) {
        norm_backward(dx, dh1, c.x, c.mean1, c.rstd1, norm_of(l, 0));
        *dx += d_mid;
      } else if (has_trainable_norm(l, 0)) {
        norm_backward(nullptr, dh1, c.x, c.mean1, c.rstd1, norm_of(l, 0));
      }
    } else {
      // out = LN2(x2 + mlp(x2)),  x2 = LN1(x + o(attn(x)))
      thread_local Matrix<T> d_h2;
      norm_backward(&d_h2, dout, c.h2, c.mean2, c.rstd2, norm_of(l, 1));
      mlp_backward(l, c, c.x2, d_h2, tmp);
      tmp += d_h2;
      norm_backward(&d_mid, tmp, c.h1, c.mean1, c.rstd1, norm_of(l, 0));
      attention_block_backward(l, c, acts, c.x, d_mid, dx);
      if (dx) *dx += d_mid;
    }
  }

  bool has_trainable_norm(Index l, int which) const {
    const NormNames& name = norm_of(l, which);
    return m_trainable.count(name.weight) + m_trainable.count(name.bias) > 0;
  }

  // ---- checkpointing --------------------------------------------------------------------

  /// The dropout streams of block l's adapters, into `out` (its capacity reused).
  void dropout_states(Index l, std::vector<Rng::State>& out) {
    out.clear();
    for (LinearRole r : m_roles) {
      Linear& lin = linear(l, r);
      if (lin.adapter)
        out.push_back(std::visit([](auto& a) { return a.dropout_rng().state(); }, *lin.adapter));
    }
  }
  void set_dropout_states(Index l, const std::vector<Rng::State>& states) {
    std::size_t i = 0;
    for (LinearRole r : m_roles) {
      Linear& lin = linear(l, r);
      if (lin.adapter)
        std::visit([&](auto& a) { a.dropout_rng().set_state(states[i++]); }, *lin.adapter);
    }
  }
  static void release(BlockCache& c) {
    Matrix<T> keep = std::move(c.x);
    auto states = std::move(c.rng_states);
    c = BlockCache{};
    c.x = std::move(keep);
    c.rng_states = std::move(states);
    c.released = true;
  }
  void recompute(Index l, BlockCache& c, const Activations& acts) {
    dropout_states(l, m_recompute_states);
    set_dropout_states(l, c.rng_states);  // replay the forward's dropout masks
    Matrix<T> out;
    block_forward(l, c, acts, out);
    set_dropout_states(l, m_recompute_states);
  }

  ModelConfig m_config;
  std::map<std::string, Matrix<T>> m_tensors;
  std::set<std::string> m_norm_tensors;
  std::vector<Linear> m_linears;
  std::vector<LinearRole> m_roles;
  std::vector<NormNames> m_norm_names;  // [layer * 2 + which]
  NormNames m_final_norm;
  std::vector<Rng::State> m_recompute_states;
  FixedTensors m_fixed{};
  Bf16Weight m_head_bf16;  // the LM head packed in bf16 while bf16_products()
  std::unique_ptr<ParameterStore<T>> m_own_store;
  std::unique_ptr<AdapterSet<T>> m_adapters;
  alignas(std::atomic_ref<Index>::required_alignment) Index m_resolved = 0;
  std::unique_ptr<RopeTable<T>> m_rope;
  std::map<std::string, ParamId> m_trainable;
  ParameterStore<T>* m_store = nullptr;
  ParamId m_cls_weight, m_cls_bias;
  Index m_labels = 0;
  Pooling m_pooling = Pooling::cls;
  bool m_checkpointing = false;
  AttentionKernel m_attention_kernel = AttentionKernel::automatic;
  Index m_loss_chunk = 0;
};

template <class T>
Transformer<T>::Transformer(const ModelConfig& config) : m_config(config) {
  config.validate();
  const Index d = config.hidden;
  if (config.family == Family::vit) {
    add_tensor(config.name_prefix() + "embeddings.patch_embeddings.projection.weight", d,
               config.channels * config.patch_size * config.patch_size);
    add_tensor(config.name_prefix() + "embeddings.patch_embeddings.projection.bias", 1, d);
    add_tensor(config.name_prefix() + "embeddings.cls_token", 1, d);
  } else {
    add_tensor(config.token_embedding_name() + ".weight", config.vocab_size, d);
  }
  if (config.family != Family::llama)
    add_tensor(config.position_tensor_name(), config.max_positions, d);
  if (config.family == Family::bert)
    add_tensor(config.name_prefix() + "embeddings.token_type_embeddings.weight",
               config.type_vocab_size, d);
  for (Index l = 0; l < config.layers; ++l) {
    for (LinearRole r : config.roles()) {
      const auto [d_out, d_in] = config.linear_shape(r);
      const std::string name = config.linear_name(l, r);
      add_tensor(name + ".weight", d_out, d_in);
      if (config.linear_bias()) add_tensor(name + ".bias", 1, d_out);
      m_linears.push_back(Linear{name, r, l, nullptr, nullptr, nullptr});
    }
    for (int which = 0; which < 2; ++which) {
      add_norm(config.norm_name(l, which));
      m_norm_names.push_back(
          {config.norm_name(l, which) + ".weight", config.norm_name(l, which) + ".bias"});
    }
  }
  add_norm(config.final_norm_name());
  m_final_norm = {config.final_norm_name() + ".weight", config.final_norm_name() + ".bias"};
  m_roles = config.roles();
  if (config.family == Family::llama && !config.tied_lm_head)
    add_tensor("lm_head.weight", config.vocab_size, d);
  if (config.family == Family::bert) {
    add_tensor(config.name_prefix() + "pooler.dense.weight", d, d);
    add_tensor(config.name_prefix() + "pooler.dense.bias", 1, d);
    // After every block linear, so linear(layer, role) indexing is unchanged; layer -1.
    m_linears.push_back(Linear{config.name_prefix() + "pooler.dense", LinearRole::pooler, -1,
                               nullptr, nullptr, nullptr});
  }
  if (config.rope())
    m_rope =
        std::make_unique<RopeTable<T>>(config.head_dim(), config.max_positions, config.rope_theta);
  // Every tensor a step uses, found once (map nodes keep their addresses).
  const auto find = [&](const std::string& name) {
    return m_tensors.count(name) ? &m_tensors.at(name) : nullptr;
  };
  const std::string pre = config.name_prefix();
  for (auto& lin : m_linears) {
    lin.weight = find(lin.name + ".weight");
    lin.bias = config.linear_bias() ? find(lin.name + ".bias")
                                    : nullptr;  // bert (the pooler's family) has biases
  }
  m_fixed = {
      .token = find(config.token_embedding_name() + ".weight"),
      .position = config.family == Family::llama ? nullptr : find(config.position_tensor_name()),
      .token_type = find(pre + "embeddings.token_type_embeddings.weight"),
      .patch_weight = find(pre + "embeddings.patch_embeddings.projection.weight"),
      .patch_bias = find(pre + "embeddings.patch_embeddings.projection.bias"),
      .cls_token = find(pre + "embeddings.cls_token"),
      .lm_head = config.family == Family::gpt2 || config.tied_lm_head
                     ? find(config.token_embedding_name() + ".weight")
                     : find("lm_head.weight")};
}

template <class T>
void Transformer<T>::init_random(Rng& rng, double scale) {
  for (auto& [name, t] : m_tensors) {
    const bool norm_weight = m_norm_tensors.count(name) && name.ends_with(".weight");
    if (norm_weight) {
      fill_uniform(t, rng, T(0.9), T(1.1));
    } else if (name.ends_with(".bias")) {
      fill_uniform(t, rng, T(-0.05), T(0.05));
    } else {
      fill_uniform(t, rng, static_cast<T>(-scale), static_cast<T>(scale));
    }
  }
}

template <class T>
Index Transformer<T>::attach(const AdapterSpec& spec, ParameterStore<T>& store) {
  const Index count = adapter_set(store).attach(spec, sites());
  resolve_adapters();
  return count;
}

template <class T>
std::vector<AdapterSite<T>> Transformer<T>::sites() {
  std::vector<AdapterSite<T>> out;
  out.reserve(m_linears.size());
  for (const auto& lin : m_linears)
    out.push_back({lin.name, short_name(lin.role), lin.layer, frozen(lin)});
  return out;
}

template <class T>
std::vector<typename Transformer<T>::ModuleView> Transformer<T>::modules() {
  resolve_adapters();
  std::vector<ModuleView> out;
  for (auto& lin : m_linears) out.push_back(ModuleView{lin.name, lin.role, lin.layer, lin.adapter});
  return out;
}

template <class T>
void Transformer<T>::add_classifier(Index labels, ParameterStore<T>& store,
                                    std::optional<Pooling> pooling, std::uint64_t seed) {
  WEGEFT_CHECK(labels > 0, "classifier needs at least one label, got " << labels);
  const bool decoder = m_config.causal();
  m_pooling = pooling.value_or(decoder ? Pooling::last : Pooling::cls);
  const std::string head = decoder ? "score" : "classifier";
  bind_store(store);
  m_cls_weight = store.add(head + ".weight", labels, m_config.hidden);
  Rng rng(seed, 2);
  auto w = store.value(m_cls_weight);
  fill_normal(w, rng, T(0.02));
  bind_store(store);
  if (!decoder) m_cls_bias = store.add(head + ".bias", 1, labels);
  m_labels = labels;
}

template <class T>
Index Transformer<T>::train_norms(const std::string& regex, ParameterStore<T>& store) {
  bind_store(store);
  const Pattern re(regex);
  Index count = 0;
  for (const auto& name : m_norm_tensors) {
    if (!re.full_match(name) || m_trainable.count(name)) continue;
    const Matrix<T>& t = m_tensors.at(name);
    const ParamId id = store.add(name, t.rows(), t.cols());
    store.value(id) = t;
    m_trainable.emplace(name, id);
    ++count;
  }
  WEGEFT_CHECK(count > 0, "norm pattern '" << regex << "' matches no norm tensor");
  return count;
}

template <class T>
void Transformer<T>::forward(Activations& acts, const ModelInput<T>& in) {
  resolve_adapters();
  check_adapter_views();
  const Index d = m_config.hidden;
  WEGEFT_CHECK(in.batch > 0, "model input needs batch > 0, got " << in.batch);
  acts.batch = in.batch;
  acts.seq = m_config.family == Family::vit ? m_config.patches() + 1 : in.seq;
  acts.n = acts.batch * acts.seq;
  WEGEFT_CHECK(acts.seq > 0, "model input needs seq > 0, got " << in.seq);
  WEGEFT_CHECK(acts.seq <= m_config.max_positions, "sequence length "
                                                       << acts.seq << " exceeds the model's "
                                                       << m_config.max_positions << " positions");
  acts.mask.assign(in.mask ? in.mask : nullptr, in.mask ? in.mask + acts.n : nullptr);
  if (m_config.family == Family::vit) acts.mask.clear();
  Matrix<T> x;
  x.swap(acts.spare);  // the buffer the last forward left over, if any
  x.resize(acts.n, d);
  embed(x, acts, in);
  acts.blocks.resize(static_cast<std::size_t>(m_config.layers));
  for (Index l = 0; l < m_config.layers; ++l) {
    BlockCache& c = acts.blocks[static_cast<std::size_t>(l)];
    dropout_states(l, c.rng_states);
    c.x.swap(x);  // reuses the buffer this block held in the previous step, if any
    x.resize(acts.n, d);
    block_forward(l, c, acts, x);
    if (m_checkpointing) release(c);
  }
  acts.last.swap(x);
  acts.spare.swap(x);  // kept for the next forward
  const Matrix<T>* h = &acts.last;
  if (m_config.pre_norm()) {
    acts.final_out.resize(acts.n, d);
    norm_forward(acts.final_out, acts.final_mean, acts.final_rstd, acts.last, m_final_norm);
    h = &acts.final_out;
  }
  acts.chunked_head = acts.dh_ready = false;
  if (m_labels > 0) {
    classifier_forward(acts, *h);
  } else if (m_config.family == Family::gpt2 || m_config.family == Family::llama) {
    acts.chunked_head = m_loss_chunk > 0;
    if (acts.chunked_head) {
      acts.logits.resize(0, m_fixed.lm_head->rows());  // frees a previous [N, V]
    } else {
      acts.logits.resize(h->rows(), m_fixed.lm_head->rows());
      lm_head().forward(acts.logits, *h);
    }
  }
}

template <class T>
void Transformer<T>::decode(KvCache& cache, const std::int32_t* ids, Index m, Matrix<T>& logits) {
  resolve_adapters();
  check_adapter_views();
  const ModelConfig& c = m_config;
  WEGEFT_CHECK(c.causal() && m_labels == 0 && m_fixed.lm_head != nullptr,
               "decode: needs a causal language model (gpt2 or llama family, no classification "
               "head); this is a "
                   << to_string(c.family) << (m_labels > 0 ? " classifier" : " model"));
  WEGEFT_CHECK(ids != nullptr && m > 0, "decode: no tokens to run");
  const Index first = cache.length, len = first + m, d = c.hidden, kvw = c.kv_width();
  WEGEFT_CHECK(len <= c.max_positions, "decode: " << first << " cached and " << m
                                                  << " new tokens exceed the model's "
                                                  << c.max_positions << " positions");
  const auto layers = static_cast<std::size_t>(c.layers);
  if (cache.k.size() != layers || (layers > 0 && cache.k[0].cols() != kvw)) {
    WEGEFT_CHECK(first == 0,
                 "decode: the cache holds " << first << " tokens of a model of another shape");
    cache.k.assign(layers, Matrix<T>());
    cache.v.assign(layers, Matrix<T>());
  }
  if (cache.k[0].rows() < len) {  // room for len tokens, doubling, at most max_positions
    const Index cap = std::min<Index>(c.max_positions, std::max<Index>(len, 2 * cache.k[0].rows()));
    for (std::size_t l = 0; l < layers; ++l) {
      cache.k[l].conservativeResize(cap, kvw);
      cache.v[l].conservativeResize(cap, kvw);
    }
  }
  thread_local Matrix<T> x, x2, h, mean, rstd, q, k, v, qkv, attn, o, mlp;
  thread_local BlockCache bc;  // the linears' adapter caches and the MLP's buffers
  x.resize(m, d);
  embedding_forward(x.data(), ids, m_fixed.token->data(), m, c.vocab_size, d);
  if (c.family == Family::gpt2)  // the position rows first .. first + m - 1
    position_embedding_forward(x.data(), m_fixed.position->data() + first * d, 1, m, d,
                               c.max_positions - first);
  const AttentionShape s{
      .heads = c.heads, .kv_heads = c.kv_heads, .head_dim = c.head_dim(), .causal = true};
  auto& lin = bc.lin;
  for (Index l = 0; l < c.layers; ++l) {
    norm_forward(h, mean, rstd, x, norm_of(l, 0));
    if (c.fused_qkv()) {
      run_linear(l, LinearRole::qkv, lin[int(LinearRole::qkv)], qkv, h);
      q = qkv.leftCols(d);
      k = qkv.middleCols(d, d);
      v = qkv.rightCols(d);
    } else {
      run_linear(l, LinearRole::q, lin[int(LinearRole::q)], q, h);
      run_linear(l, LinearRole::k, lin[int(LinearRole::k)], k, h);
      run_linear(l, LinearRole::v, lin[int(LinearRole::v)], v, h);
    }
    if (c.rope()) {
      rope_forward(q.data(), *m_rope, 1, m, c.heads, first);
      rope_forward(k.data(), *m_rope, 1, m, c.kv_heads, first);
    }
    Matrix<T>& kc = cache.k[static_cast<std::size_t>(l)];
    Matrix<T>& vc = cache.v[static_cast<std::size_t>(l)];
    kc.middleRows(first, m) = k;
    vc.middleRows(first, m) = v;
    attn.resize(m, d);
    cached_attention_forward(attn.data(), q.data(), kc.data(), vc.data(), m, first, s);
    run_linear(l, LinearRole::o, lin[int(LinearRole::o)], o, attn);
    x2 = x + o;
    norm_forward(h, mean, rstd, x2, norm_of(l, 1));
    mlp_forward(l, bc, h, mlp);
    x = x2 + mlp;
  }
  x2 = x.bottomRows(1);
  norm_forward(h, mean, rstd, x2, m_final_norm);
  logits.resize(1, m_fixed.lm_head->rows());
  lm_head().forward(logits, h);
  cache.length = len;
}

template <class T>
double Transformer<T>::lm_loss(Activations& acts, const std::int32_t* targets) {
  if (acts.chunked_head) {  // set by forward for an LM head only
    const Matrix<T>& h = m_config.pre_norm() ? acts.final_out : acts.last;
    const Index n = acts.n, vocab = acts.logits.cols();
    const Index count = detail::count_targets(targets, n, vocab, kIgnoreIndex);
    acts.dh.resize(n, m_config.hidden);
    acts.dlogits.resize(std::min(m_loss_chunk, n), vocab);
    double total = 0;
    for (Index r0 = 0; r0 < n; r0 += m_loss_chunk) {
      const Index rows = std::min(m_loss_chunk, n - r0);
      auto z = acts.dlogits.topRows(rows);
      lm_head().forward(z, h.middleRows(r0, rows));
      Index counted = 0;  // the gradient is written over the logits, scaled by 1 / count
      total += detail::cross_entropy_rows<T>(z.data(), nullptr, z.data(), targets + r0, rows, vocab,
                                             1.0, count, kIgnoreIndex, &counted) *
               static_cast<double>(counted);
      auto dh = acts.dh.middleRows(r0, rows);
      lm_head().backward_input(dh, z);
    }
    acts.dh_ready = true;
    return count ? total / static_cast<double>(count) : 0.0;
  }
  WEGEFT_CHECK(acts.logits.rows() == acts.n && m_labels == 0,
               "lm_loss needs a forward through the LM head");
  acts.dlogits.resize(acts.logits.rows(), acts.logits.cols());
  return cross_entropy_forward_backward<T>(acts.dlogits.data(), nullptr, acts.logits.data(),
                                           targets, acts.n, acts.logits.cols());
}

template <class T>
double Transformer<T>::classification_loss(Activations& acts, const std::int32_t* labels) {
  WEGEFT_CHECK(m_labels > 0 && acts.logits.rows() == acts.batch,
               "classification_loss needs a classifier head");
  acts.dlogits.resize(acts.logits.rows(), acts.logits.cols());
  return cross_entropy_forward_backward<T>(acts.dlogits.data(), nullptr, acts.logits.data(), labels,
                                           acts.batch, m_labels);
}

template <class T>
void Transformer<T>::backward(Activations& acts) {
  const bool chunked = acts.chunked_head;  // an LM head whose gradient lm_loss wrote into dh
  WEGEFT_CHECK(acts.n > 0 && acts.blocks.size() == static_cast<std::size_t>(m_config.layers) &&
                   (acts.logits.rows() > 0 || chunked),
               "backward needs the activations of a forward through this model (these hold "
                   << acts.blocks.size() << " blocks of " << m_config.layers << ")");
  if (chunked) {
    WEGEFT_CHECK(acts.dh_ready,
                 "backward with a chunked LM loss (set_lm_loss_chunk) needs "
                 "lm_loss after the forward");
  } else {
    WEGEFT_CHECK(
        acts.dlogits.rows() == acts.logits.rows() && acts.dlogits.cols() == acts.logits.cols(),
        "backward needs acts.dlogits of shape " << shape_of(acts.logits) << ", got "
                                                << shape_of(acts.dlogits));
  }
  acts.dh_ready = false;  // dh is a working buffer from here on
  const Index d = m_config.hidden;
  Matrix<T>& dh = acts.dh;
  dh.resize(acts.n, d);
  if (m_labels > 0) {
    classifier_backward(dh, acts);
  } else if (!chunked) {
    lm_head().backward_input(dh, acts.dlogits);
  }
  Matrix<T>& dx = acts.dx;
  dx.resize(acts.n, d);
  if (m_config.pre_norm()) {
    norm_backward(&dx, dh, acts.last, acts.final_mean, acts.final_rstd, m_final_norm);
    std::swap(dx, dh);
  }
  for (Index l = m_config.layers - 1; l >= 0; --l) {
    BlockCache& c = acts.blocks[static_cast<std::size_t>(l)];
    if (c.released) recompute(l, c, acts);
    // The input gradient of the first block is needed only for a trainable embedding norm.
    const bool need_dx = l > 0 || embedding_norm_trainable();
    block_backward(l, c, acts, dh, need_dx ? &dx : nullptr);
    if (m_checkpointing) release(c);
    if (need_dx) std::swap(dx, dh);
  }
  if (embedding_norm_trainable())
    norm_backward(nullptr, dh, acts.emb_sum, acts.emb_mean, acts.emb_rstd, m_final_norm);
}

template <class T>
Index Transformer<T>::frozen_parameter_count() const {
  Index n = 0;
  for (const auto& [name, t] : m_tensors) n += t.size();
  return n;
}

#define WEGEFT_MODEL_TEMPLATES(EXTERN, T) EXTERN template class Transformer<T>;
WEGEFT_EXTERN_TEMPLATES(WEGEFT_MODEL_TEMPLATES)

}  // namespace wegeft

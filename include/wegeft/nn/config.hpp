// Transformer configurations for the four supported families and their Hugging Face module names.
//
//   bert   BERT / MiniLM: post-norm LayerNorm, GELU (erf), learned positions, token types,
//          bidirectional; names `bert.encoder.layer.N.attention.self.query`, ...
//   gpt2   GPT-2: pre-norm LayerNorm, GELU (tanh), learned positions, fused `c_attn`, causal,
//          LM head tied to the token embedding; names `transformer.h.N.attn.c_attn`, ...
//   llama  Llama / SmolLM2: pre-norm RMSNorm, SwiGLU, RoPE, grouped-query attention, causal;
//          names `model.layers.N.self_attn.q_proj`, ...
//   vit    ViT: patch embedding + class token, pre-norm LayerNorm, GELU (erf), learned
//          positions, bidirectional; names `vit.encoder.layer.N.attention.attention.query`, ...
#pragma once

#include <string>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/nn/activations.hpp"

namespace wegeft {

enum class Family { bert, gpt2, llama, vit };

inline const char* to_string(Family f) {
  switch (f) {
    case Family::bert:
      return "bert";
    case Family::gpt2:
      return "gpt2";
    case Family::llama:
      return "llama";
    default:
      return "vit";
  }
}

/// The linear layers of a block, by role. GPT-2 has one fused qkv projection instead of q, k, v;
/// only Llama has gate. `pooler` is BERT's pooler.dense, the one adaptable linear outside the
/// blocks (used by its classification head).
enum class LinearRole { q, k, v, qkv, o, gate, up, down, pooler };
inline constexpr int kLinearRoles = 8;  // roles inside a block

/// The short target name of a role: q k v qkv o gate up down pooler.
inline const char* short_name(LinearRole r) {
  static const char* names[] = {"q", "k", "v", "qkv", "o", "gate", "up", "down", "pooler"};
  return names[static_cast<int>(r)];
}

struct ModelConfig {
  Family family = Family::llama;
  Index vocab_size = 0;  // unused by vit
  Index hidden = 0;
  Index layers = 0;
  Index heads = 0;
  Index kv_heads = 0;  // = heads unless grouped-query attention
  Index intermediate = 0;
  Index max_positions = 0;  // learned-position table size, or RoPE table size
  double norm_eps = 1e-5;
  double rope_theta = 10000.0;
  Index type_vocab_size = 2;                           // bert token types (segment 0 is used)
  bool tied_lm_head = false;                           // llama: tie_word_embeddings
  Index image_size = 0, patch_size = 0, channels = 3;  // vit
  std::string prefix;  // overrides the family's name prefix (e.g. "" for a bare BertModel)
  bool prefix_set = false;

  Index head_dim() const { return hidden / heads; }
  bool causal() const { return family == Family::gpt2 || family == Family::llama; }
  bool pre_norm() const { return family != Family::bert; }
  bool rms_norm() const { return family == Family::llama; }
  bool rope() const { return family == Family::llama; }
  bool fused_qkv() const { return family == Family::gpt2; }
  bool swiglu() const { return family == Family::llama; }
  bool linear_bias() const { return family != Family::llama; }
  GeluKind gelu() const { return family == Family::gpt2 ? GeluKind::tanh : GeluKind::erf; }
  Index patches() const {
    return family == Family::vit ? (image_size / patch_size) * (image_size / patch_size) : 0;
  }
  Index kv_width() const { return kv_heads * head_dim(); }

  // Upper bounds on every size, far above any released model of the four families, so that a
  // hostile config cannot make the constructor allocate terabytes before any tensor is read.
  static constexpr Index kMaxWidth = Index(1) << 16, kMaxIntermediate = Index(1) << 18,
                         kMaxLayers = 1024, kMaxVocab = Index(1) << 22,
                         kMaxPositions = Index(1) << 18, kMaxImage = Index(1) << 14;

  void validate() const {
    const auto within = [](Index v, Index hi) { return v <= hi; };
    WEGEFT_CHECK(
        within(hidden, kMaxWidth) && within(intermediate, kMaxIntermediate) &&
            within(layers, kMaxLayers) && within(heads, kMaxWidth) && within(kv_heads, kMaxWidth) &&
            within(vocab_size, kMaxVocab) && within(max_positions, kMaxPositions) &&
            within(type_vocab_size, kMaxWidth) && within(image_size, kMaxImage) &&
            within(patch_size, kMaxImage) && within(channels, 64),
        to_string(family) << " config has a size beyond wegeft's limits (hidden " << hidden
                          << " <= " << kMaxWidth << ", intermediate " << intermediate
                          << " <= " << kMaxIntermediate << ", layers " << layers
                          << " <= " << kMaxLayers << ", vocab " << vocab_size << " <= " << kMaxVocab
                          << ", positions " << max_positions << " <= " << kMaxPositions
                          << ", type vocab " << type_vocab_size << ", image " << image_size
                          << ", patch " << patch_size << ", channels " << channels << " <= 64)");
    WEGEFT_CHECK(hidden > 0 && layers > 0 && heads > 0 && intermediate > 0,
                 to_string(family)
                     << " config needs hidden, layers, heads and intermediate > 0; got hidden "
                     << hidden << ", layers " << layers << ", heads " << heads << ", intermediate "
                     << intermediate);
    WEGEFT_CHECK(hidden % heads == 0, to_string(family)
                                          << " config: " << heads
                                          << " heads do not divide the hidden width " << hidden);
    WEGEFT_CHECK(kv_heads > 0 && heads % kv_heads == 0,
                 to_string(family) << " config: " << kv_heads << " key/value heads do not divide "
                                   << heads << " query heads");
    WEGEFT_CHECK(family == Family::llama || kv_heads == heads,
                 to_string(family) << " config: grouped-query attention is a llama feature");
    WEGEFT_CHECK(!rope() || head_dim() % 2 == 0,
                 "RoPE needs an even head dimension, got " << head_dim());
    WEGEFT_CHECK(max_positions > 0, to_string(family) << " config needs max_positions > 0");
    if (family == Family::vit) {
      WEGEFT_CHECK(patch_size > 0 && image_size > 0 && image_size % patch_size == 0,
                   "vit config: image size " << image_size << " is not a multiple of patch size "
                                             << patch_size);
      WEGEFT_CHECK(max_positions == patches() + 1,
                   "vit config: max_positions must be patches + 1 = " << patches() + 1 << ", got "
                                                                      << max_positions);
    } else {
      WEGEFT_CHECK(vocab_size > 0, to_string(family) << " config needs vocab_size > 0");
    }
  }

  /// A lower bound on the number of frozen values the model holds (token embedding and block
  /// linears), in double so that it cannot overflow. Loaders compare it with the values the
  /// checkpoint holds before they allocate anything.
  double min_values() const {
    double n =
        family == Family::vit ? 0.0 : static_cast<double>(vocab_size) * static_cast<double>(hidden);
    for (LinearRole r : roles()) {
      const auto [d_out, d_in] = linear_shape(r);
      n += static_cast<double>(layers) * static_cast<double>(d_out) * static_cast<double>(d_in);
    }
    return n;
  }

  /// The Hugging Face prefix of every block, e.g. "model.layers.".
  std::string name_prefix() const {
    if (prefix_set) return prefix;
    switch (family) {
      case Family::bert:
        return "bert.";
      case Family::gpt2:
        return "transformer.";
      case Family::llama:
        return "model.";
      default:
        return "vit.";
    }
  }
  std::string block_prefix(Index layer) const {
    const char* mid = family == Family::gpt2    ? "h."
                      : family == Family::llama ? "layers."
                                                : "encoder.layer.";
    return name_prefix() + mid + std::to_string(layer) + ".";
  }
  /// Roles present in a block, in model order.
  std::vector<LinearRole> roles() const {
    if (fused_qkv()) return {LinearRole::qkv, LinearRole::o, LinearRole::up, LinearRole::down};
    if (swiglu())
      return {LinearRole::q,    LinearRole::k,  LinearRole::v,   LinearRole::o,
              LinearRole::gate, LinearRole::up, LinearRole::down};
    return {LinearRole::q, LinearRole::k,  LinearRole::v,
            LinearRole::o, LinearRole::up, LinearRole::down};
  }
  /// The module path of a block linear, e.g. "model.layers.3.self_attn.q_proj".
  std::string linear_name(Index layer, LinearRole r) const {
    static const char* llama[] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "",
        "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
    static const char* gpt2[] = {"", "",         "",          "attn.c_attn", "attn.c_proj",
                                 "", "mlp.c_fc", "mlp.c_proj"};
    static const char* bert[] = {"attention.self.query",   "attention.self.key",
                                 "attention.self.value",   "",
                                 "attention.output.dense", "",
                                 "intermediate.dense",     "output.dense"};
    static const char* vit[] = {"attention.attention.query", "attention.attention.key",
                                "attention.attention.value", "",
                                "attention.output.dense",    "",
                                "intermediate.dense",        "output.dense"};
    const char* const* table = family == Family::llama  ? llama
                               : family == Family::gpt2 ? gpt2
                               : family == Family::bert ? bert
                                                        : vit;
    return block_prefix(layer) + table[static_cast<int>(r)];
  }
  /// [d_out, d_in] of a block linear.
  std::pair<Index, Index> linear_shape(LinearRole r) const {
    switch (r) {
      case LinearRole::q:
      case LinearRole::pooler:
        return {hidden, hidden};
      case LinearRole::k:
      case LinearRole::v:
        return {kv_width(), hidden};
      case LinearRole::qkv:
        return {3 * hidden, hidden};
      case LinearRole::o:
        return {hidden, hidden};
      case LinearRole::gate:
      case LinearRole::up:
        return {intermediate, hidden};
      default:
        return {hidden, intermediate};
    }
  }
  std::string norm_name(Index layer, int which) const {
    static const char* names[4][2] = {{"attention.output.LayerNorm", "output.LayerNorm"},
                                      {"ln_1", "ln_2"},
                                      {"input_layernorm", "post_attention_layernorm"},
                                      {"layernorm_before", "layernorm_after"}};
    return block_prefix(layer) + names[static_cast<int>(family)][which];
  }
  /// Final norm (pre-norm families) or embedding norm (bert).
  std::string final_norm_name() const {
    switch (family) {
      case Family::bert:
        return name_prefix() + "embeddings.LayerNorm";
      case Family::gpt2:
        return name_prefix() + "ln_f";
      case Family::llama:
        return name_prefix() + "norm";
      default:
        return name_prefix() + "layernorm";
    }
  }
  std::string token_embedding_name() const {
    switch (family) {
      case Family::bert:
        return name_prefix() + "embeddings.word_embeddings";
      case Family::gpt2:
        return name_prefix() + "wte";
      default:
        return name_prefix() + "embed_tokens";
    }
  }
  /// The learned position table's tensor name (vit's is a bare parameter without ".weight").
  std::string position_tensor_name() const {
    switch (family) {
      case Family::gpt2:
        return name_prefix() + "wpe.weight";
      case Family::vit:
        return name_prefix() + "embeddings.position_embeddings";
      default:
        return name_prefix() + "embeddings.position_embeddings.weight";
    }
  }

  // Tiny presets used by tests and examples; real sizes come from checkpoints.
  static ModelConfig tiny(Family f) {
    ModelConfig c;
    c.family = f;
    c.hidden = f == Family::llama ? 16 : 12;
    c.layers = 2;
    c.heads = f == Family::llama ? 4 : 3;
    c.kv_heads = f == Family::llama ? 2 : c.heads;
    c.intermediate = 20;
    c.vocab_size = f == Family::vit ? 0 : 11;
    c.max_positions = 16;
    c.norm_eps = f == Family::llama ? 1e-6 : 1e-5;
    if (f == Family::bert || f == Family::vit) c.norm_eps = 1e-12;
    if (f == Family::vit) {
      c.image_size = 8;
      c.patch_size = 4;
      c.channels = 3;
      c.max_positions = c.patches() + 1;
    }
    return c;
  }
};

}  // namespace wegeft

// A Llama-family GGUF model into the transformer: config from the llama.* metadata, tensors
// dequantized (F32, F16, BF16, Q8_0, Q4_0, Q4_1) and renamed to Hugging Face names, q/k rows
// un-permuted. The tokenizer arrays stay available through GgufReader::metadata()
// ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", ...).
#pragma once

#include <memory>
#include <string>

#include "wegeft/core/precompiled.hpp"
#include "wegeft/io/gguf.hpp"
#include "wegeft/io/hf_model.hpp"
#include "wegeft/nn/model.hpp"

namespace wegeft {

inline ModelConfig config_from_gguf(const GgufReader& f) {
  const auto& m = f.metadata();
  const std::string arch = detail::json_string(m, "general.architecture", "", f.path());
  WEGEFT_CHECK(arch == "llama",
               f.path() << ": general.architecture \"" << arch << "\" is not supported (llama)");
  const auto get = [&](const std::string& key) -> Index {
    WEGEFT_CHECK(m.contains(key) && m[key].is_number_integer(),
                 f.path() << ": metadata '" << key << "' is missing or not an integer");
    return m[key].get<Index>();
  };
  ModelConfig c;
  c.family = Family::llama;
  c.hidden = get("llama.embedding_length");
  c.layers = get("llama.block_count");
  c.heads = get("llama.attention.head_count");
  c.kv_heads =
      m.contains("llama.attention.head_count_kv") ? get("llama.attention.head_count_kv") : c.heads;
  c.intermediate = get("llama.feed_forward_length");
  c.max_positions = get("llama.context_length");
  c.norm_eps = detail::json_number(m, "llama.attention.layer_norm_rms_epsilon", 1e-5, f.path());
  c.rope_theta = detail::json_number(m, "llama.rope.freq_base", 10000.0, f.path());
  const auto& emb = f.info("token_embd.weight");
  WEGEFT_CHECK(emb.ne.size() == 2, f.path() << ": token_embd.weight is not 2-D");
  c.vocab_size = static_cast<Index>(emb.ne[1]);
  c.tied_lm_head = !f.contains("output.weight");
  return c;
}

/// Loads a llama GGUF file; `ignored` lists its tensors the transformer does not use.
template <class T>
LoadedModel<T> load_gguf_model(const std::string& path) {
  const GgufReader f(path);
  ModelConfig c = config_from_gguf(f);
  c.validate();
  double held = 0;
  for (const auto& t : f.tensors())  // a tensor of an unknown type holds nothing the model can use
    if (ggml_block(t.type).first > 0) held += static_cast<double>(t.numel);
  WEGEFT_CHECK(c.min_values() <= held, path << ": the metadata describes a model of at least "
                                            << c.min_values()
                                            << " values, but the file's tensors hold " << held);
  auto model = std::make_unique<Transformer<T>>(c);
  std::set<std::string> used;
  for (const auto& [name, dst] : model->tensors()) {
    const std::string module = name.substr(0, name.rfind('.'));
    const std::string gg = gguf_llama_name(module) + ".weight";
    WEGEFT_CHECK(gg != ".weight", path << ": no GGUF name for '" << name << "'");
    WEGEFT_CHECK(f.contains(gg), path << ": missing tensor '" << gg << "' (for " << name << ")");
    Matrix<T> v = f.matrix<T>(gg);
    if (module.ends_with("self_attn.q_proj")) v = llama_permute_rows(v, c.heads, false);
    if (module.ends_with("self_attn.k_proj")) v = llama_permute_rows(v, c.kv_heads, false);
    WEGEFT_CHECK(v.rows() == dst.rows() && v.cols() == dst.cols(),
                 path << ": tensor '" << gg << "' has shape " << shape_of(v)
                      << ", the metadata implies " << shape_of(dst));
    model->tensor(name) = v;
    used.insert(gg);
  }
  LoadedModel<T> out;
  for (const auto& t : f.tensors())
    if (!used.count(t.name)) out.ignored.push_back(t.name);
  out.model = std::move(model);
  return out;
}

#define WEGEFT_GGUF_MODEL_TEMPLATES(EXTERN, T) \
  EXTERN template LoadedModel<T> load_gguf_model<T>(const std::string&);
WEGEFT_EXTERN_TEMPLATES(WEGEFT_GGUF_MODEL_TEMPLATES)

}  // namespace wegeft

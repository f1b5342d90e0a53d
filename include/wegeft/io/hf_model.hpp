// Hugging Face checkpoints into the transformer and out of it: config.json + model.safetensors
// (or, to load, a sharded model.safetensors.index.json) of the bert, gpt2, llama and vit model
// types.
//
//   auto loaded = wegeft::load_hf_model<float>("path/to/checkpoint");
//   wegeft::Transformer<float>& model = *loaded.model;
//   wegeft::save_hf_model(model, "path/to/copy");   // the frozen tensors, as HF lays them out
//
// Name maps: a checkpoint saved from the bare model (BertModel, GPT2Model, ViTModel, as
// sentence-transformers does) lacks the "bert." / "transformer." / "vit." prefix; both forms load.
// GPT-2's Conv1D weights ([in, out]) are transposed to [out, in]; ViT's patch convolution
// [d, C, p, p] and class/position parameters are flattened; tied embeddings need no lm_head.
#pragma once

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/core/error.hpp"
#include "wegeft/core/precompiled.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/io/safetensors.hpp"
#include "wegeft/nn/config.hpp"
#include "wegeft/nn/model.hpp"

namespace wegeft {

namespace detail {
inline Index json_index(const nlohmann::json& j, const char* key, const std::string& where) {
  WEGEFT_CHECK(j.contains(key) && j[key].is_number_integer() && j[key].get<std::int64_t>() > 0,
               where << ": \"" << key << "\" must be a positive integer");
  return j[key].get<Index>();
}
inline void expect_string(const nlohmann::json& j, const char* key,
                          std::initializer_list<const char*> allowed, const char* fallback,
                          const std::string& where) {
  const std::string v = json_string(j, key, fallback, where);
  for (const char* a : allowed)
    if (v == a) return;
  WEGEFT_CHECK(false, where << ": \"" << key << "\" = \"" << v << "\" is not supported");
}
}  // namespace detail

/// A ModelConfig from a Hugging Face config.json object (prefix not yet decided).
inline ModelConfig config_from_hf(const nlohmann::json& j, const std::string& where) {
  WEGEFT_CHECK(j.is_object() && j.contains("model_type"), where << ": no \"model_type\"");
  const std::string type = detail::json_string(j, "model_type", "", where);
  ModelConfig c;
  // bert, llama and vit share these names (gpt2 has its own)
  const auto sizes = [&] {
    c.hidden = detail::json_index(j, "hidden_size", where);
    c.layers = detail::json_index(j, "num_hidden_layers", where);
    c.heads = detail::json_index(j, "num_attention_heads", where);
    c.intermediate = detail::json_index(j, "intermediate_size", where);
  };
  if (type == "bert") {
    c.family = Family::bert;
    sizes();
    c.vocab_size = detail::json_index(j, "vocab_size", where);
    c.max_positions = detail::json_index(j, "max_position_embeddings", where);
    c.type_vocab_size = detail::json_index(j, "type_vocab_size", where);
    c.norm_eps = detail::json_number(j, "layer_norm_eps", 1e-12, where);
    detail::expect_string(j, "hidden_act", {"gelu"}, "gelu", where);
    detail::expect_string(j, "position_embedding_type", {"absolute"}, "absolute", where);
  } else if (type == "gpt2") {
    c.family = Family::gpt2;
    c.vocab_size = detail::json_index(j, "vocab_size", where);
    c.hidden = detail::json_index(j, "n_embd", where);
    c.layers = detail::json_index(j, "n_layer", where);
    c.heads = detail::json_index(j, "n_head", where);
    c.intermediate = j.contains("n_inner") && !j["n_inner"].is_null()
                         ? detail::json_index(j, "n_inner", where)
                         : 4 * c.hidden;
    c.max_positions = detail::json_index(j, "n_positions", where);
    c.norm_eps = detail::json_number(j, "layer_norm_epsilon", 1e-5, where);
    detail::expect_string(j, "activation_function", {"gelu_new", "gelu_pytorch_tanh"}, "gelu_new",
                          where);
  } else if (type == "llama") {
    c.family = Family::llama;
    sizes();
    c.vocab_size = detail::json_index(j, "vocab_size", where);
    c.max_positions = detail::json_index(j, "max_position_embeddings", where);
    c.norm_eps = detail::json_number(j, "rms_norm_eps", 1e-6, where);
    c.rope_theta = detail::json_number(j, "rope_theta", 10000.0, where);
    c.tied_lm_head = detail::json_bool(j, "tie_word_embeddings", false, where);
    detail::expect_string(j, "hidden_act", {"silu"}, "silu", where);
    WEGEFT_CHECK(!j.contains("rope_scaling") || j["rope_scaling"].is_null(),
                 where << ": rope_scaling is not supported");
    WEGEFT_CHECK(!detail::json_bool(j, "attention_bias", false, where) &&
                     !detail::json_bool(j, "mlp_bias", false, where),
                 where << ": llama biases are not supported");
    if (j.contains("head_dim") && !j["head_dim"].is_null())
      WEGEFT_CHECK(detail::json_index(j, "head_dim", where) * c.heads == c.hidden,
                   where << ": head_dim * heads != hidden_size");
  } else if (type == "vit") {
    c.family = Family::vit;
    sizes();
    c.image_size = detail::json_index(j, "image_size", where);
    c.patch_size = detail::json_index(j, "patch_size", where);
    c.channels = j.contains("num_channels") ? detail::json_index(j, "num_channels", where) : 3;
    c.norm_eps = detail::json_number(j, "layer_norm_eps", 1e-12, where);
    c.max_positions = c.patches() + 1;
    detail::expect_string(j, "hidden_act", {"gelu"}, "gelu", where);
    WEGEFT_CHECK(detail::json_bool(j, "qkv_bias", true, where),
                 where << ": vit without qkv_bias is not supported");
  } else {
    WEGEFT_CHECK(false, where << ": model_type \"" << type
                              << "\" is not supported (bert, gpt2, llama, vit)");
  }
  c.kv_heads =
      type == "llama" && j.contains("num_key_value_heads") && !j["num_key_value_heads"].is_null()
          ? detail::json_index(j, "num_key_value_heads", where)
          : c.heads;
  return c;
}

/// The safetensors files of a checkpoint: a directory (model.safetensors or a sharded index) or
/// one .safetensors file.
inline std::vector<std::string> checkpoint_files(const std::string& base) {
  namespace fs = std::filesystem;
  if (!fs::is_directory(base)) return {base};
  const fs::path index = fs::path(base) / "model.safetensors.index.json";
  if (!fs::exists(index)) return {(fs::path(base) / "model.safetensors").string()};
  const auto j = detail::parse_json_strict(read_text_file(index.string()), index.string());
  WEGEFT_CHECK(j.contains("weight_map") && j["weight_map"].is_object(),
               index.string() << ": no \"weight_map\"");
  std::set<std::string> shards;
  for (const auto& item : j["weight_map"].items()) {
    WEGEFT_CHECK(item.value().is_string(),
                 index.string() << ": weight_map entry '" << item.key() << "' is not a file name");
    const std::string s = item.value().get<std::string>();
    WEGEFT_CHECK(s.find('/') == std::string::npos && s.find("..") == std::string::npos,
                 index.string() << ": shard '" << s << "' is not a plain file name");
    shards.insert(s);
  }
  std::vector<std::string> out;
  for (const auto& s : shards) out.push_back((fs::path(base) / s).string());
  return out;
}

template <class T>
struct LoadedModel {
  std::unique_ptr<Transformer<T>> model;
  std::vector<std::string> ignored;  ///< checkpoint tensors the transformer has no use for
};

/// Loads a Hugging Face checkpoint directory. Every tensor the transformer needs must be present
/// with the right shape and finite values; tensors it does not use (an MLM head, a fine-tuned
/// classifier, buffers) are listed in `ignored`.
template <class T>
LoadedModel<T> load_hf_model(const std::string& dir) {
  namespace fs = std::filesystem;
  const std::string cfg_path = (fs::path(dir) / "config.json").string();
  ModelConfig c =
      config_from_hf(detail::parse_json_strict(read_text_file(cfg_path), cfg_path), cfg_path);

  std::vector<std::unique_ptr<SafetensorsReader>> files;
  std::map<std::string, const SafetensorsReader*> where;  // tensor name -> file
  for (const auto& p : checkpoint_files(dir)) {
    WEGEFT_CHECK(fs::exists(p), dir << ": no " << fs::path(p).filename().string()
                                    << " (only safetensors checkpoints are supported)");
    files.push_back(std::make_unique<SafetensorsReader>(p));
    for (const auto& t : files.back()->tensors()) {
      WEGEFT_CHECK(!where.count(t.name),
                   dir << ": tensor '" << t.name << "' appears in two shards");
      where[t.name] = files.back().get();
    }
  }

  // Bare-model checkpoints have no family prefix.
  const std::string probe =
      c.family == Family::vit ? "embeddings.cls_token"
                              : c.token_embedding_name().substr(c.name_prefix().size()) + ".weight";
  if (!where.count(c.name_prefix() + probe) && where.count(probe)) {
    c.prefix = "";
    c.prefix_set = true;
  }
  c.validate();
  double held = 0;
  for (const auto& f : files)
    for (const auto& t : f->tensors()) held += static_cast<double>(t.numel);
  WEGEFT_CHECK(c.min_values() <= held,
               cfg_path << ": describes a model of at least " << c.min_values()
                        << " values, but the checkpoint's tensors hold " << held);
  auto model = std::make_unique<Transformer<T>>(c);
  std::set<std::string> used;
  for (const auto& [name, dst] : model->tensors()) {
    const auto it = where.find(name);
    WEGEFT_CHECK(it != where.end(), dir << ": checkpoint has no tensor '" << name << "'");
    const SafetensorsReader& f = *it->second;
    Matrix<T> v = f.matrix<T>(name);
    const bool conv1d =
        c.family == Family::gpt2 && name.ends_with(".weight") && f.info(name).shape.size() == 2 &&
        (name.find(".attn.c_") != std::string::npos || name.find(".mlp.c_") != std::string::npos);
    if (conv1d) v.transposeInPlace();
    if (c.family == Family::vit &&
        (name.ends_with("cls_token") || name.ends_with("position_embeddings"))) {
      Matrix<T> rows = Eigen::Map<Matrix<T>>(v.data(), v.size() / c.hidden, c.hidden);
      v = std::move(rows);
    }
    WEGEFT_CHECK(v.rows() == dst.rows() && v.cols() == dst.cols(),
                 f.path() << ": tensor '" << name << "' has shape " << shape_of(v)
                          << ", the config needs " << shape_of(dst));
    model->tensor(name) = v;
    used.insert(name);
  }
  LoadedModel<T> out;
  for (const auto& [name, f] : where)
    if (!used.count(name)) out.ignored.push_back(name);
  out.model = std::move(model);
  return out;
}

/// The Hugging Face config.json object of `c` (what config_from_hf reads back as `c`).
inline nlohmann::ordered_json config_to_hf(const ModelConfig& c) {
  nlohmann::ordered_json j;
  j["model_type"] = to_string(c.family);
  if (c.family == Family::gpt2) {
    j["vocab_size"] = c.vocab_size;
    j["n_embd"] = c.hidden;
    j["n_layer"] = c.layers;
    j["n_head"] = c.heads;
    j["n_inner"] = c.intermediate;
    j["n_positions"] = c.max_positions;
    j["layer_norm_epsilon"] = c.norm_eps;
    j["activation_function"] = "gelu_new";
    return j;
  }
  j["hidden_size"] = c.hidden;
  j["num_hidden_layers"] = c.layers;
  j["num_attention_heads"] = c.heads;
  j["intermediate_size"] = c.intermediate;
  switch (c.family) {
    case Family::bert:
      j["vocab_size"] = c.vocab_size;
      j["max_position_embeddings"] = c.max_positions;
      j["type_vocab_size"] = c.type_vocab_size;
      j["layer_norm_eps"] = c.norm_eps;
      j["hidden_act"] = "gelu";
      j["position_embedding_type"] = "absolute";
      break;
    case Family::llama:
      j["num_key_value_heads"] = c.kv_heads;
      j["vocab_size"] = c.vocab_size;
      j["max_position_embeddings"] = c.max_positions;
      j["rms_norm_eps"] = c.norm_eps;
      j["rope_theta"] = c.rope_theta;
      j["tie_word_embeddings"] = c.tied_lm_head;
      j["hidden_act"] = "silu";
      break;
    case Family::vit:
      j["image_size"] = c.image_size;
      j["patch_size"] = c.patch_size;
      j["num_channels"] = c.channels;
      j["layer_norm_eps"] = c.norm_eps;
      j["hidden_act"] = "gelu";
      j["qkv_bias"] = true;
      break;
    case Family::gpt2:
      break;
  }
  return j;
}

/// Writes `model`'s frozen tensors (its base model: no adapters, trainable norms or heads) to
/// `dir` as a Hugging Face checkpoint, config.json and model.safetensors in `dtype`, laid out as
/// transformers saves them and load_hf_model reads them back: biases and norm weights 1-D,
/// GPT-2's Conv1D weights [in, out], ViT's patch convolution [d, C, p, p], class token [1, 1, d]
/// and positions [1, P + 1, d]. The directory's two files are replaced as a whole. Merge adapters
/// first (or train_norms' values back into tensor()) to save a fine-tuned base.
template <class T>
void save_hf_model(const Transformer<T>& model, const std::string& dir, DType dtype = DType::F32) {
  const ModelConfig& c = model.config();
  SafetensorsBuilder b;
  for (const auto& [name, m] : model.tensors()) {
    for (Index i = 0; i < m.size(); ++i)
      WEGEFT_CHECK(std::isfinite(static_cast<double>(m.data()[i])),
                   "save_hf_model: tensor '" << name << "' holds a value that is not finite");
    const bool norm = name.find("norm") != std::string::npos ||
                      name.find("LayerNorm") != std::string::npos ||
                      name.find("ln_") != std::string::npos;
    const bool conv1d =
        c.family == Family::gpt2 && name.ends_with(".weight") &&
        (name.find(".attn.c_") != std::string::npos || name.find(".mlp.c_") != std::string::npos);
    if (conv1d) {
      const Matrix<T> t = m.transpose();
      b.add(name, dtype, t);
    } else if (c.family == Family::vit && name.ends_with("cls_token")) {
      b.add(name, dtype, m, {1, 1, m.cols()});
    } else if (c.family == Family::vit && name.ends_with("position_embeddings")) {
      b.add(name, dtype, m, {1, m.rows(), m.cols()});
    } else if (c.family == Family::vit && name.ends_with("patch_embeddings.projection.weight")) {
      b.add(name, dtype, m, {c.hidden, c.channels, c.patch_size, c.patch_size});
    } else if (m.rows() == 1 && (name.ends_with(".bias") || (norm && name.ends_with(".weight")))) {
      b.add(name, dtype, m, {m.cols()});
    } else {
      b.add(name, dtype, m);
    }
  }
  DirectoryWriter writer(dir);
  b.write(writer.path("model.safetensors"), {{"format", "pt"}});
  write_file_atomic(writer.path("config.json"), config_to_hf(c).dump(2) + "\n");
  writer.commit();
}

#define WEGEFT_HF_MODEL_TEMPLATES(EXTERN, T)                           \
  EXTERN template LoadedModel<T> load_hf_model<T>(const std::string&); \
  EXTERN template void save_hf_model<T>(const Transformer<T>&, const std::string&, DType);
WEGEFT_EXTERN_TEMPLATES(WEGEFT_HF_MODEL_TEMPLATES)

}  // namespace wegeft

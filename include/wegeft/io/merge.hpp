// File-level operations behind the `wegeft` tool: merging an adapter directory into a Hugging Face
// checkpoint, and converting a PEFT LoRA directory into a llama.cpp GGUF LoRA adapter.
#pragma once

#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "wegeft/adapters/registry.hpp"
#include "wegeft/io/gguf.hpp"
#include "wegeft/io/hf_model.hpp"
#include "wegeft/io/peft.hpp"
#include "wegeft/io/safetensors.hpp"

namespace wegeft {

namespace detail {
/// The block index of a module path: its first purely numeric component (at most 9 digits), or -1.
inline Index layer_of(const std::string& name) {
  std::size_t start = 0;
  while (start <= name.size()) {
    const std::size_t end = std::min(name.find('.', start), name.size());
    const std::string_view part(name.data() + start, end - start);
    if (!part.empty() && part.size() <= 9 &&
        part.find_first_not_of("0123456789") == std::string_view::npos)
      return std::stoll(std::string(part));
    start = end + 1;
  }
  return -1;
}
/// Whether `module` is one of GPT-2's Conv1D modules, which store W as [in, out].
inline bool is_gpt2_conv1d(const std::string& module) {
  for (const char* s : {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"})
    if (name_has_suffix(module, s)) return true;
  return false;
}
}  // namespace detail

namespace detail {
/// Largest finite magnitude of a floating dtype (merged values beyond it would become infinite).
inline double dtype_max(DType t) {
  switch (t) {
    case DType::F16:
      return 65504.0;
    case DType::F64:
      return std::numeric_limits<double>::max();
    default:
      return static_cast<double>(std::numeric_limits<float>::max());
  }
}
}  // namespace detail

/// Writes `out` = the checkpoint `base` with the adapter in `adapter_dir` merged in, for every
/// registered method: the targeted modules' weights are read in double, the adapter is attached to
/// them and loaded through the same checks as load_adapter (every tensor's shape against the config
/// and the weight, every tensor used), each adapter's merge() is applied, and the result is stored
/// back in each weight's own dtype. modules_to_save tensors replace (or join) the base's; every
/// other tensor is copied byte for byte. GPT-2's Conv1D weights ([in, out]) are recognised by name
/// or by fan_in_fan_out. Refuses integer target weights and results that are not finite or do not
/// fit the weight's dtype. Returns the number of merged modules. The output is written atomically.
inline Index merge_adapter(const std::string& base, const std::string& adapter_dir,
                           const std::string& out) {
  const AdapterConfig cfg = read_adapter_config(adapter_dir);
  const std::string apath = (std::filesystem::path(adapter_dir) / kAdapterWeightsFile).string();
  WEGEFT_CHECK(std::filesystem::exists(apath), adapter_dir << ": no " << kAdapterWeightsFile);
  std::vector<std::unique_ptr<SafetensorsReader>> files;
  std::map<std::string, const SafetensorsReader*> where;
  for (const auto& p : checkpoint_files(base)) {
    files.push_back(std::make_unique<SafetensorsReader>(p));
    for (const auto& t : files.back()->tensors()) {
      WEGEFT_CHECK(!where.count(t.name), base << ": tensor '" << t.name << "' appears twice");
      where[t.name] = files.back().get();
    }
  }
  std::map<std::string, Matrix<double>> weights;  // module -> W [d_out, d_in]; stable addresses
  std::map<std::string, bool> transposed;
  std::vector<AdapterSite<double>> sites;
  for (const auto& [name, f] : where) {
    if (!name.ends_with(".weight") || f->info(name).shape.size() != 2) continue;
    const std::string module = name.substr(0, name.size() - 7);
    if (!targets_module(cfg.spec, module, "", detail::layer_of(module))) continue;
    const TensorInfo& t = f->info(name);
    WEGEFT_CHECK(dtype_is_float(t.dtype),
                 base << ": '" << name << "' is " << dtype_name(t.dtype)
                      << "; an adapter merges only into floating-point weights");
    Matrix<double> w = f->matrix<double>(name, false);
    transposed[module] = cfg.fan_in_fan_out || detail::is_gpt2_conv1d(module);
    if (transposed[module]) w.transposeInPlace();
    WEGEFT_CHECK(w.size() > 0, base << ": '" << name << "' is empty");
    Matrix<double>& held = weights[module] = std::move(w);
    sites.push_back({module, "", detail::layer_of(module),
                     FrozenLinear<double>(held.data(), held.rows(), held.cols())});
  }
  WEGEFT_CHECK(!sites.empty(),
               adapter_dir << ": the adapter's targets match no 2-D weight of " << base);
  std::set<std::string> saved_keys;
  for (const auto& m : cfg.modules_to_save)
    for (const char* part : {".weight", ".bias"}) saved_keys.insert(kPeftPrefix + m + part);
  ParameterStore<double> store;
  AdapterSet<double> adapters(store);
  const Index count =
      load_adapter(adapters, std::span<const AdapterSite<double>>(sites), adapter_dir, saved_keys)
          .second;
  for (const auto& e : adapters.entries()) std::visit([](auto& a) { a.merge(); }, *e.adapter);
  std::map<std::string, Matrix<double>> merged;  // tensor name -> new value, in the file's layout
  for (auto& [module, w] : weights) {
    const std::string name = module + ".weight";
    const TensorInfo& t = where[name]->info(name);
    WEGEFT_CHECK(w.allFinite() && w.cwiseAbs().maxCoeff() <= detail::dtype_max(t.dtype),
                 adapter_dir << ": merging into '" << name
                             << "' gives values that are not finite or do not fit "
                             << dtype_name(t.dtype) << " (largest magnitude "
                             << w.cwiseAbs().maxCoeff() << ")");
    if (transposed[module]) w.transposeInPlace();
    merged[name] = std::move(w);
  }
  const SafetensorsReader adapter(apath);
  std::map<std::string, Matrix<double>> saved;
  for (const auto& m : cfg.modules_to_save)
    for (const char* part : {".weight", ".bias"})
      if (adapter.contains(kPeftPrefix + m + part))
        saved[m + part] = adapter.matrix<double>(kPeftPrefix + m + part);
  SafetensorsBuilder b;
  for (const auto& [name, f] : where) {
    const TensorInfo& t = f->info(name);
    if (merged.count(name)) {
      b.add(name, t.dtype, t.shape, merged[name].data(),
            static_cast<std::size_t>(merged[name].size()));
    } else if (saved.count(name)) {
      WEGEFT_CHECK(static_cast<std::size_t>(saved[name].size()) == t.numel,
                   apath << ": modules_to_save tensor '" << name << "' has " << saved[name].size()
                         << " values, the base's " << t.numel);
      b.add(name, t.dtype, t.shape, saved[name].data(),
            static_cast<std::size_t>(saved[name].size()));
      saved.erase(name);
    } else {
      b.add_raw(name, t.dtype, t.shape, f->data(t), t.nbytes);
    }
  }
  for (const auto& [name, v] : saved) {
    const TensorInfo& t = adapter.info(kPeftPrefix + name);
    b.add(name, t.dtype, t.shape, v.data(), static_cast<std::size_t>(v.size()));
  }
  b.write(out, files.front()->metadata());
  return count;
}

/// Converts a PEFT LoRA directory for a Llama model into a GGUF LoRA adapter that llama.cpp
/// loads (general.type = adapter, adapter.type = lora, adapter.lora.alpha, tensors
/// blk.N.attn_q.weight.lora_a / .lora_b). llama.cpp scales by alpha / r with r read from each
/// tensor, so per-module alpha, rank patterns and rsLoRA are folded into lora_b; q and k rows
/// get llama.cpp's head permutation. `base_config` is the base model's config.json.
inline Index convert_lora_to_gguf(const std::string& adapter_dir, const std::string& base_config,
                                  const std::string& out) {
  const AdapterConfig cfg = read_adapter_config(adapter_dir);
  const auto* lora = std::get_if<LoraConfig>(&cfg.spec.method);
  WEGEFT_CHECK(lora != nullptr, adapter_dir << ": only LoRA adapters convert to GGUF (this one is "
                                            << method_name(cfg.spec.method) << ")");
  WEGEFT_CHECK(cfg.modules_to_save.empty(),
               adapter_dir << ": modules_to_save cannot be expressed in a GGUF LoRA adapter");
  const ModelConfig model = config_from_hf(
      detail::parse_json_strict(read_text_file(base_config), base_config), base_config);
  WEGEFT_CHECK(model.family == Family::llama,
               base_config << ": only llama models convert to GGUF adapters");
  model.validate();
  const std::string apath = (std::filesystem::path(adapter_dir) / kAdapterWeightsFile).string();
  const SafetensorsReader adapter(apath);
  const double alpha = lora->alpha;
  WEGEFT_CHECK(
      std::isfinite(alpha) && alpha != 0.0,
      adapter_dir << ": lora_alpha " << alpha
                  << " cannot be expressed in a GGUF adapter (llama.cpp scales by alpha / r)");
  WEGEFT_CHECK(std::fabs(alpha) <= std::numeric_limits<float>::max(),
               adapter_dir << ": lora_alpha " << alpha << " does not fit F32");
  // Every targeted linear of the base, with its [d_out, d_in]: each adapter tensor is checked
  // against the config's rank and the base's shape before any arithmetic.
  std::map<std::string, LinearRole> targeted;
  for (Index l = 0; l < model.layers; ++l)
    for (LinearRole role : model.roles()) {
      const std::string module = model.linear_name(l, role);
      if (targets_module(cfg.spec, module, short_name(role), l)) targeted[module] = role;
    }
  WEGEFT_CHECK(!targeted.empty(),
               adapter_dir << ": the adapter's targets match no linear of " << base_config);
  std::set<std::string> used;
  GgufWriter w;
  w.set("general.architecture", "llama");
  w.set("general.type", "adapter");
  w.set("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", static_cast<float>(alpha));
  Index count = 0;
  for (const auto& [module, role] : targeted) {
    const std::string gg = gguf_llama_name(module);
    WEGEFT_CHECK(!gg.empty(), apath << ": module '" << module << "' has no llama.cpp name");
    const auto shape = model.linear_shape(role);
    const Index rank = rank_for(cfg.spec, module, short_name(role), lora->rank);
    const std::string ka = std::string(kPeftPrefix) + module + ".lora_A.weight",
                      kb = std::string(kPeftPrefix) + module + ".lora_B.weight";
    const Matrix<double> a = detail::read_param<double>(adapter, ka, rank, shape.second, false);
    Matrix<double> b = detail::read_param<double>(adapter, kb, shape.first, rank, false);
    used.insert(ka);
    used.insert(kb);
    const double r = static_cast<double>(rank),
                 module_alpha = alpha_for(cfg.spec, module, short_name(role), alpha);
    const double s = lora->use_rslora ? module_alpha / std::sqrt(r) : module_alpha / r;
    b *= s / (alpha / r);
    WEGEFT_CHECK(
        b.allFinite() && b.cwiseAbs().maxCoeff() <= std::numeric_limits<float>::max() &&
            a.cwiseAbs().maxCoeff() <= std::numeric_limits<float>::max(),
        apath << ": '" << module
              << "' gives lora_a or scaled lora_b values that are not finite or do not fit F32");
    if (module.ends_with("self_attn.q_proj")) b = llama_permute_rows(b, model.heads, true);
    if (module.ends_with("self_attn.k_proj")) b = llama_permute_rows(b, model.kv_heads, true);
    w.add(gg + ".weight.lora_a", a);
    w.add(gg + ".weight.lora_b", b);
    ++count;
  }
  for (const auto& t : adapter.tensors())
    WEGEFT_CHECK(used.count(t.name), apath << ": tensor '" << t.name
                                           << "' belongs to no targeted linear of " << base_config);
  w.write(out);
  return count;
}

}  // namespace wegeft

// File-level operations behind the `wegeft` tool: merging an adapter directory into a Hugging Face
// checkpoint, and converting a PEFT LoRA directory into a llama.cpp GGUF LoRA adapter.
#pragma once

#include <cmath>
#include <filesystem>
#include <map>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "wegeft/adapters/targets.hpp"
#include "wegeft/io/gguf.hpp"
#include "wegeft/io/hf_model.hpp"
#include "wegeft/io/peft.hpp"
#include "wegeft/io/safetensors.hpp"

namespace wegeft {

namespace detail {
/// The block index of a module path: its first purely numeric component, or -1.
inline Index layer_of(const std::string& name) {
  static const std::regex number(R"((^|\.)(\d+)(\.|$))");
  std::smatch m;
  return std::regex_search(name, m, number) ? std::stoll(m[2].str()) : -1;
}
}  // namespace detail

/// Writes `out` = the checkpoint `base` with the adapter in `adapter_dir` merged in: LoRA
/// W += s B A, WeGeFT W += s (W Phi^T) Psi, computed in double and stored back in each weight's
/// own dtype; modules_to_save tensors replace (or join) the base's; every other tensor is copied
/// byte for byte. GPT-2's Conv1D weights ([in, out]) are recognised by name or by
/// fan_in_fan_out. Returns the number of merged modules. The output is written atomically.
inline Index merge_adapter(const std::string& base, const std::string& adapter_dir, const std::string& out) {
  const AdapterConfig cfg = read_adapter_config(adapter_dir);
  const std::string apath = (std::filesystem::path(adapter_dir) / kAdapterWeightsFile).string();
  const SafetensorsReader adapter(apath);
  std::vector<std::unique_ptr<SafetensorsReader>> files;
  std::map<std::string, const SafetensorsReader*> where;
  for (const auto& p : checkpoint_files(base)) {
    files.push_back(std::make_unique<SafetensorsReader>(p));
    for (const auto& t : files.back()->tensors()) {
      WEGEFT_CHECK(!where.count(t.name), base << ": tensor '" << t.name << "' appears twice");
      where[t.name] = files.back().get();
    }
  }
  const std::string prefix = kPeftPrefix;
  std::map<std::string, Matrix<double>> merged;  // tensor name -> new value
  // GPT-2's Conv1D modules store W as [in, out] (PEFT's fan_in_fan_out).
  static const std::regex conv1d(R"((^|.*\.)(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)$)");
  const bool fan_in_fan_out = detail::json_bool(cfg.json, "fan_in_fan_out", false, adapter_dir);
  const auto weight_of = [&](const std::string& module, Index d_out, Index d_in, bool& transposed) {
    const std::string key = module + ".weight";
    WEGEFT_CHECK(where.count(key), base << ": no tensor '" << key << "' for the adapter's module '" << module << "'");
    Matrix<double> w = merged.count(key) ? merged[key] : where[key]->matrix<double>(key, false);
    transposed = fan_in_fan_out || std::regex_match(module, conv1d);
    if (transposed) w.transposeInPlace();
    WEGEFT_CHECK(w.rows() == d_out && w.cols() == d_in, base << ": '" << key << "' has shape " << shape_of(w)
                 << ", the adapter needs [" << d_out << ", " << d_in << "]");
    return w;
  };
  const auto store = [&](const std::string& module, Matrix<double> w, bool transposed) {
    if (transposed) w.transposeInPlace();
    merged[module + ".weight"] = std::move(w);
  };
  Index count = 0;
  const AdapterSpec& spec = cfg.spec;
  if (spec.kind == AdapterKind::lora) {
    for (const auto& t : adapter.tensors()) {
      const std::string suffix = ".lora_A.weight";
      if (!t.name.ends_with(suffix)) continue;
      WEGEFT_CHECK(t.name.rfind(prefix, 0) == 0, apath << ": tensor '" << t.name << "' lacks the " << prefix << " prefix");
      const std::string module = t.name.substr(prefix.size(), t.name.size() - prefix.size() - suffix.size());
      const Matrix<double> a = adapter.matrix<double>(t.name);
      const Matrix<double> b = adapter.matrix<double>(prefix + module + ".lora_B.weight");
      WEGEFT_CHECK(b.cols() == a.rows(), apath << ": lora_B of '" << module << "' has " << b.cols() << " columns, lora_A " << a.rows() << " rows");
      const double r = static_cast<double>(a.rows()), alpha = alpha_for(spec, module, "");
      const double s = spec.lora.use_rslora ? alpha / std::sqrt(r) : alpha / r;
      bool transposed = false;
      Matrix<double> w = weight_of(module, b.rows(), a.cols(), transposed);
      w.noalias() += s * (b * a);
      store(module, std::move(w), transposed);
      ++count;
    }
  } else {
    // Targeted modules: every 2-D weight whose module the spec targets.
    std::map<std::string, std::vector<std::string>> groups;  // group key -> members in name order
    for (const auto& [name, f] : where) {
      if (!name.ends_with(".weight") || f->info(name).shape.size() != 2) continue;
      const std::string module = name.substr(0, name.size() - 7);
      if (!targets_module(spec, module, "", detail::layer_of(module))) continue;
      const int g = tied_group_of(spec, module);
      groups[g < 0 ? module : "#" + std::to_string(g)].push_back(module);
    }
    for (const auto& [key, members] : groups) {
      const auto holder = std::find_if(members.begin(), members.end(), [&](const std::string& m) {
        return adapter.contains(prefix + m + ".wegeft_phi.weight");
      });
      WEGEFT_CHECK(holder != members.end(), apath << ": no generator for the group of '" << members.front() << "'");
      const Matrix<double> phi = adapter.matrix<double>(prefix + *holder + ".wegeft_phi.weight");
      const Matrix<double> psi = adapter.matrix<double>(prefix + *holder + ".wegeft_psi.weight");
      const double s = alpha_for(spec, *holder, "") / static_cast<double>(phi.rows());
      for (const auto& module : members) {
        const auto& info = where[module + ".weight"]->info(module + ".weight");
        const auto rows = static_cast<Index>(info.shape[0]), cols = static_cast<Index>(info.shape[1]);
        const bool conv = fan_in_fan_out || std::regex_match(module, conv1d);
        bool transposed = false;
        Matrix<double> w = weight_of(module, conv ? cols : rows, phi.cols(), transposed);
        const Matrix<double> c = w * phi.transpose();
        w.noalias() += s * (c * psi);
        store(module, std::move(w), transposed);
        ++count;
      }
    }
  }
  WEGEFT_CHECK(count > 0, adapter_dir << ": the adapter changes no tensor of " << base);
  std::map<std::string, Matrix<double>> saved;
  for (const auto& m : cfg.modules_to_save)
    for (const char* part : {".weight", ".bias"})
      if (adapter.contains(prefix + m + part)) saved[m + part] = adapter.matrix<double>(prefix + m + part);
  SafetensorsBuilder b;
  for (const auto& [name, f] : where) {
    const TensorInfo& t = f->info(name);
    if (merged.count(name)) {
      b.add(name, t.dtype, t.shape, merged[name].data(), static_cast<std::size_t>(merged[name].size()));
    } else if (saved.count(name)) {
      b.add(name, t.dtype, t.shape, saved[name].data(), static_cast<std::size_t>(saved[name].size()));
      saved.erase(name);
    } else {
      b.add_raw(name, t.dtype, t.shape, f->data(t), t.nbytes);
    }
  }
  for (const auto& [name, v] : saved) {
    const TensorInfo& t = adapter.info(prefix + name);
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
inline Index convert_lora_to_gguf(const std::string& adapter_dir, const std::string& base_config, const std::string& out) {
  const AdapterConfig cfg = read_adapter_config(adapter_dir);
  WEGEFT_CHECK(cfg.spec.kind == AdapterKind::lora, adapter_dir << ": only LoRA adapters convert to GGUF");
  WEGEFT_CHECK(cfg.modules_to_save.empty(), adapter_dir << ": modules_to_save cannot be expressed in a GGUF LoRA adapter");
  const ModelConfig model = config_from_hf(detail::parse_json_strict(read_text_file(base_config), base_config), base_config);
  WEGEFT_CHECK(model.family == Family::llama, base_config << ": only llama models convert to GGUF adapters");
  const std::string apath = (std::filesystem::path(adapter_dir) / kAdapterWeightsFile).string();
  const SafetensorsReader adapter(apath);
  const double alpha = cfg.spec.lora.alpha;
  GgufWriter w;
  w.set("general.architecture", "llama");
  w.set("general.type", "adapter");
  w.set("adapter.type", "lora");
  w.set_f32("adapter.lora.alpha", static_cast<float>(alpha));
  Index count = 0;
  for (const auto& t : adapter.tensors()) {
    const std::string suffix = ".lora_A.weight";
    if (!t.name.ends_with(suffix)) continue;
    const std::string module = t.name.substr(std::string(kPeftPrefix).size(), t.name.size() - std::string(kPeftPrefix).size() - suffix.size());
    const std::string gg = gguf_llama_name(module);
    WEGEFT_CHECK(!gg.empty(), apath << ": module '" << module << "' has no llama.cpp name");
    const Matrix<double> a = adapter.matrix<double>(t.name);
    Matrix<double> b = adapter.matrix<double>(std::string(kPeftPrefix) + module + ".lora_B.weight");
    const double r = static_cast<double>(a.rows()), module_alpha = alpha_for(cfg.spec, module, "");
    const double s = cfg.spec.lora.use_rslora ? module_alpha / std::sqrt(r) : module_alpha / r;
    b *= s / (alpha / r);
    if (module.ends_with("self_attn.q_proj")) b = llama_permute_rows(b, model.heads, true);
    if (module.ends_with("self_attn.k_proj")) b = llama_permute_rows(b, model.kv_heads, true);
    w.add(gg + ".weight.lora_a", a);
    w.add(gg + ".weight.lora_b", b);
    ++count;
  }
  WEGEFT_CHECK(count > 0, apath << ": no LoRA tensors");
  w.write(out);
  return count;
}

}  // namespace wegeft

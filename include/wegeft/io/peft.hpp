// Adapter directories: Hugging Face PEFT's LoRA format and the WeGeFT format (docs/formats.md).
//
//   dir/adapter_config.json         {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...], ...}
//   dir/adapter_model.safetensors   base_model.model.<module>.lora_A.weight [r, d_in], ...lora_B.weight [d_out, r]
//
// WeGeFT: "peft_type": "WEGEFT", "r", "wegeft_alpha", "wegeft_dropout", "target_modules",
// "tied_modules" (groups of regexes matched from the start of a module name); each generator is
// stored once, under the first module of its group in model order:
// base_model.model.<owner>.wegeft_phi.weight and ...wegeft_psi.weight, both [r, d_in].
//
//   wegeft::load_adapter(model, store, "my-adapter");   // attaches and fills the adapters
//   wegeft::save_adapter(model, store, "out-adapter");  // loads in PEFT (LoRA) and here
#pragma once

#include <filesystem>
#include <map>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/adapters/targets.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/io/safetensors.hpp"
#include "wegeft/nn/model.hpp"

namespace wegeft {

inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kAdapterWeightsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftPrefix = "base_model.model.";

/// What an adapter_config.json says, as an AdapterSpec plus the fields wegeft does not model.
struct AdapterConfig {
  AdapterSpec spec;
  std::vector<std::string> modules_to_save;
  std::string base_model;
  nlohmann::json json;
};

/// Parses dir/adapter_config.json. Throws, naming the file and the field, on anything wegeft
/// cannot honour exactly (DoRA, trainable biases, layer replication, an unknown peft_type).
inline AdapterConfig read_adapter_config(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kAdapterConfigFile).string();
  AdapterConfig out;
  out.json = detail::parse_json_strict(read_text_file(path), path);
  const nlohmann::json& j = out.json;
  WEGEFT_CHECK(j.is_object(), path << ": not a JSON object");
  const std::string type = detail::json_string(j, "peft_type", "", path);
  WEGEFT_CHECK(type == "LORA" || type == "WEGEFT", path << ": unsupported peft_type \"" << type << "\" (LORA or WEGEFT)");
  AdapterSpec& spec = out.spec;
  spec.kind = type == "LORA" ? AdapterKind::lora : AdapterKind::wegeft;
  WEGEFT_CHECK(j.contains("r") && j["r"].is_number_integer() && j["r"].get<std::int64_t>() > 0,
               path << ": \"r\" must be a positive integer");
  const Index r = j["r"].get<Index>();
  const auto& targets = j.contains("target_modules") ? j["target_modules"] : nlohmann::json();
  WEGEFT_CHECK(targets.is_string() || targets.is_array(), path << ": \"target_modules\" must be a regex string or a list");
  if (targets.is_string()) spec.target_regex = targets.get<std::string>();
  else spec.target_modules = detail::json_string_list(targets, path + ": \"target_modules\"");
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const auto& l = j["layers_to_transform"];
    WEGEFT_CHECK(l.is_number_integer() || l.is_array(), path << ": \"layers_to_transform\" must be an integer or a list");
    if (l.is_number_integer()) spec.layers = {l.get<Index>()};
    else
      for (const auto& v : l) {
        WEGEFT_CHECK(v.is_number_integer(), path << ": \"layers_to_transform\" entry " << v.dump() << " is not an integer");
        spec.layers.push_back(v.get<Index>());
      }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    WEGEFT_CHECK(j[key].is_object(), path << ": \"" << key << "\" must be an object");
    for (const auto& [k, v] : j[key].items()) {
      WEGEFT_CHECK(std::string(key) == "rank_pattern" ? v.is_number_integer() && v.get<std::int64_t>() > 0 : v.is_number(),
                   path << ": " << key << " entry \"" << k << "\" is not a " << (std::string(key) == "rank_pattern" ? "positive integer" : "number"));
      if (std::string(key) == "rank_pattern") spec.rank_pattern.emplace_back(k, v.get<Index>());
      else spec.alpha_pattern.emplace_back(k, v.get<double>());
    }
  }
  out.modules_to_save = detail::json_string_list(j.contains("modules_to_save") ? j["modules_to_save"] : nlohmann::json(),
                                                 path + ": \"modules_to_save\"");
  out.base_model = detail::json_string(j, "base_model_name_or_path", "", path);
  if (spec.kind == AdapterKind::lora) {
    spec.lora.rank = r;
    spec.lora.alpha = detail::json_number(j, "lora_alpha", 8.0, path);
    spec.lora.dropout = detail::json_number(j, "lora_dropout", 0.0, path);
    spec.lora.use_rslora = detail::json_bool(j, "use_rslora", false, path);
    const std::string bias = detail::json_string(j, "bias", "none", path);
    WEGEFT_CHECK(bias == "none", path << ": bias \"" << bias << "\" is not supported (only \"none\")");
    WEGEFT_CHECK(!detail::json_bool(j, "use_dora", false, path), path << ": DoRA adapters are not supported");
    WEGEFT_CHECK(!j.contains("layer_replication") || j["layer_replication"].is_null(),
                 path << ": layer_replication is not supported");
  } else {
    spec.wegeft.rank = r;
    spec.wegeft.alpha = detail::json_number(j, "wegeft_alpha", 2.0 * static_cast<double>(r), path);
    spec.wegeft.dropout = detail::json_number(j, "wegeft_dropout", 0.0, path);
    spec.sharing = WeGeFTSharing::tied;
    if (j.contains("tied_modules") && !j["tied_modules"].is_null()) {
      WEGEFT_CHECK(j["tied_modules"].is_array(), path << ": \"tied_modules\" must be a list of groups");
      for (const auto& group : j["tied_modules"])
        spec.tied_modules.push_back(detail::json_string_list(group, path + ": a \"tied_modules\" group"));
    }
  }
  // Every pattern must compile: a malformed one is reported here, naming the file.
  try {
    if (!spec.target_regex.empty()) detail::compile_regex(spec.target_regex);
    for (const auto& [k, v] : spec.rank_pattern) detail::compile_regex("(.*\\.)?(" + k + ")");
    for (const auto& [k, v] : spec.alpha_pattern) detail::compile_regex("(.*\\.)?(" + k + ")");
    for (const auto& group : spec.tied_modules)
      for (const auto& p : group) detail::compile_regex(p);
  } catch (const Error& e) {
    WEGEFT_CHECK(false, path << ": " << e.what());
  }
  return out;
}

namespace detail {

/// Names of the head tensors a PEFT file keeps under modules_to_save ("classifier" / "score").
inline std::string head_module(const ModelConfig& c) { return c.causal() ? "score" : "classifier"; }

inline bool peft_list_matches(const std::vector<std::string>& targets, const std::string& name) {
  for (const auto& t : targets)
    if (name_has_suffix(name, t)) return true;
  return false;
}

/// A target_modules list that selects exactly `adapted` among `all` under PEFT's suffix rule:
/// a role's module path after the block prefix when every layer of it is adapted and the suffix
/// selects nothing else, else full module names.
template <class T>
std::vector<std::string> target_list(Transformer<T>& model, const std::set<std::string>& adapted) {
  const ModelConfig& c = model.config();
  std::vector<std::string> out, all;
  std::map<int, std::pair<Index, std::string>> per_role;  // role -> (adapted count, suffix)
  for (const auto& m : model.modules()) {
    all.push_back(m.name);
    if (!adapted.count(m.name)) continue;
    auto& [count, suffix] = per_role[static_cast<int>(m.role)];
    ++count;
    suffix = m.name.substr(c.block_prefix(m.layer).size());
  }
  for (const auto& [role, entry] : per_role) {
    const auto& [count, suffix] = entry;
    bool clean = count == c.layers;
    for (const auto& name : all)
      if (!adapted.count(name) && name_has_suffix(name, suffix)) clean = false;
    if (clean) {
      out.push_back(suffix);
    } else {
      for (const auto& m : model.modules())
        if (static_cast<int>(m.role) == role && adapted.count(m.name)) out.push_back(m.name);
    }
  }
  for (const auto& name : all) WEGEFT_ASSERT(peft_list_matches(out, name) == (adapted.count(name) > 0));
  return out;
}

inline std::string regex_escape(const std::string& s) {
  static const std::regex special(R"([.^$|()\[\]{}*+?\\])");
  return std::regex_replace(s, special, R"(\$&)");
}

}  // namespace detail

/// Attaches the adapter stored in `dir` to `model` (which must have no adapters yet) and loads
/// its tensors, converting them to T. Every tensor in the file must be used and every adapter
/// parameter must be in the file. A classifier or score head under modules_to_save is added as
/// the model's trainable classification head. Returns the number of adapted modules.
template <class T>
Index load_adapter(Transformer<T>& model, ParameterStore<T>& store, const std::string& dir) {
  const AdapterConfig cfg = read_adapter_config(dir);
  const std::string wpath = (std::filesystem::path(dir) / kAdapterWeightsFile).string();
  WEGEFT_CHECK(std::filesystem::exists(wpath), dir << ": no " << kAdapterWeightsFile
               << " (adapter_model.bin is not supported; convert it to safetensors)");
  for (const auto& m : model.modules())
    WEGEFT_CHECK(!m.lora && !m.wegeft, dir << ": the model already has an adapter on " << m.name);
  const SafetensorsReader file(wpath);
  std::set<std::string> used;
  const auto take = [&](const std::string& key, auto&& dst) {
    WEGEFT_CHECK(file.contains(key), wpath << ": missing tensor '" << key << "'");
    const Matrix<T> v = file.matrix<T>(key);
    WEGEFT_CHECK(v.rows() == dst.rows() && v.cols() == dst.cols(), wpath << ": tensor '" << key << "' has shape "
                 << shape_of(v) << ", the model needs " << shape_of(dst));
    dst = v;
    used.insert(key);
  };
  const Index count = model.attach(cfg.spec, store);
  std::map<WeGeFTGenerator<T>*, std::vector<std::string>> members;
  for (const auto& m : model.modules()) {
    if (m.lora) {
      take(kPeftPrefix + m.name + ".lora_A.weight", m.lora->lora_A());
      take(kPeftPrefix + m.name + ".lora_B.weight", m.lora->lora_B());
    }
    if (m.wegeft) members[&m.wegeft->generator()].push_back(m.name);
  }
  for (auto& [g, names] : members) {
    const auto holder = std::find_if(names.begin(), names.end(), [&](const std::string& n) {
      return file.contains(kPeftPrefix + n + ".wegeft_phi.weight");
    });
    WEGEFT_CHECK(holder != names.end(), wpath << ": no member of the group of '" << names.front()
                 << "' holds its generator (" << kPeftPrefix << names.front() << ".wegeft_phi.weight)");
    take(kPeftPrefix + *holder + ".wegeft_phi.weight", g->phi());
    take(kPeftPrefix + *holder + ".wegeft_psi.weight", g->psi());
  }
  for (const auto& module : cfg.modules_to_save) {
    const std::string head = detail::head_module(model.config());
    WEGEFT_CHECK(module == head || module == "classifier" || module == "score",
                 dir << ": modules_to_save entry '" << module << "' is not supported (only the '" << head << "' head)");
    const std::string wkey = kPeftPrefix + module + ".weight";
    WEGEFT_CHECK(file.contains(wkey), wpath << ": missing tensor '" << wkey << "'");
    model.add_classifier(static_cast<Index>(file.info(wkey).shape.at(0)), store);
    const auto [w, b] = *model.classifier_params();
    take(wkey, store.value(w));
    if (b) take(kPeftPrefix + module + ".bias", store.value(*b));
  }
  for (const auto& t : file.tensors())
    WEGEFT_CHECK(used.count(t.name), wpath << ": tensor '" << t.name << "' belongs to no adapter parameter of this model");
  return count;
}

/// Writes the adapters attached to `model` (all LoRA or all WeGeFT) to `dir` (created if
/// needed) in the PEFT layout, with tensors stored as `dtype`. Files are replaced atomically.
template <class T>
void save_adapter(Transformer<T>& model, ParameterStore<T>& store, const std::string& dir,
                  const std::string& base_model = "", DType dtype = DType::F32) {
  std::set<std::string> adapted;
  std::map<std::string, Index> ranks;
  std::map<std::string, double> alphas;
  bool any_lora = false, any_wegeft = false;
  std::set<bool> rslora;
  std::set<double> dropouts;
  for (const auto& m : model.modules()) {
    if (m.lora) {
      any_lora = true;
      ranks[m.name] = m.lora->rank();
      alphas[m.name] = m.lora->config().alpha;
      rslora.insert(m.lora->config().use_rslora);
      dropouts.insert(m.lora->config().dropout);
    } else if (m.wegeft) {
      any_wegeft = true;
      ranks[m.name] = m.wegeft->generator().rank();
      alphas[m.name] = m.wegeft->generator().config().alpha;
      dropouts.insert(m.wegeft->generator().config().dropout);
    } else {
      continue;
    }
    adapted.insert(m.name);
  }
  WEGEFT_CHECK(!adapted.empty(), dir << ": the model has no adapter to save");
  WEGEFT_CHECK(!(any_lora && any_wegeft), dir << ": the model mixes LoRA and WeGeFT adapters; one file format holds one kind");
  WEGEFT_CHECK(rslora.size() <= 1 && dropouts.size() == 1, dir << ": adapters differ in rsLoRA or dropout, which one config cannot express");
  const auto most_common = [](const auto& m) {
    std::map<typename std::decay_t<decltype(m)>::mapped_type, int> votes;
    for (const auto& [k, v] : m) ++votes[v];
    return std::max_element(votes.begin(), votes.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;
  };
  const Index r = most_common(ranks);
  const double alpha = most_common(alphas);
  nlohmann::ordered_json j;
  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object(), alpha_pattern = nlohmann::ordered_json::object();
  for (const auto& [name, v] : ranks) if (v != r) rank_pattern[name] = v;
  for (const auto& [name, v] : alphas) if (v != alpha) alpha_pattern[name] = v;
  const ModelConfig& c = model.config();
  SafetensorsBuilder out;
  j["peft_type"] = any_lora ? "LORA" : "WEGEFT";
  j["base_model_name_or_path"] = base_model;
  j["r"] = r;
  j["target_modules"] = detail::target_list(model, adapted);
  j["rank_pattern"] = rank_pattern;
  j["alpha_pattern"] = alpha_pattern;
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["bias"] = "none";
  j["inference_mode"] = true;
  j["task_type"] = nullptr;
  j["revision"] = nullptr;
  if (any_lora) {
    j["lora_alpha"] = alpha;
    j["lora_dropout"] = *dropouts.begin();
    j["use_rslora"] = *rslora.begin();
    j["fan_in_fan_out"] = c.family == Family::gpt2;
    j["init_lora_weights"] = true;
    j["use_dora"] = false;
    for (const auto& m : model.modules()) {
      if (!m.lora) continue;
      out.add(kPeftPrefix + m.name + ".lora_A.weight", dtype, Matrix<T>(m.lora->lora_A()));
      out.add(kPeftPrefix + m.name + ".lora_B.weight", dtype, Matrix<T>(m.lora->lora_B()));
    }
  } else {
    j["wegeft_alpha"] = alpha;
    j["wegeft_dropout"] = *dropouts.begin();
    std::map<WeGeFTGenerator<T>*, std::vector<std::string>> groups;
    std::vector<WeGeFTGenerator<T>*> order;
    for (const auto& m : model.modules()) {
      if (!m.wegeft) continue;
      auto* g = &m.wegeft->generator();
      if (!groups.count(g)) order.push_back(g);
      groups[g].push_back(m.name);
    }
    nlohmann::ordered_json tied = nlohmann::ordered_json::array();
    for (auto* g : order) {
      const auto& names = groups[g];
      if (names.size() < 2) continue;
      // One pattern for the whole group when its members are one role's modules at every depth.
      std::set<std::string> shapes;
      for (const auto& n : names) shapes.insert(std::regex_replace(detail::regex_escape(n), std::regex(R"(\\\.\d+\\\.)"), R"(\.\d+\.)"));
      std::vector<std::string> patterns;
      if (shapes.size() == 1) {
        const std::string p = *shapes.begin() + "$";
        std::size_t hits = 0;
        for (const auto& m : model.modules()) hits += std::regex_search(m.name, std::regex(p), std::regex_constants::match_continuous);
        if (hits == names.size()) patterns.push_back(p);
      }
      if (patterns.empty())
        for (const auto& n : names) patterns.push_back(detail::regex_escape(n) + "$");
      tied.push_back(patterns);
    }
    j["tied_modules"] = tied;
    for (auto* g : order) {
      const std::string owner = groups[g].front();
      out.add(kPeftPrefix + owner + ".wegeft_phi.weight", dtype, Matrix<T>(g->phi()));
      out.add(kPeftPrefix + owner + ".wegeft_psi.weight", dtype, Matrix<T>(g->psi()));
    }
  }
  if (const auto head = model.classifier_params()) {
    const std::string name = detail::head_module(c);
    j["modules_to_save"] = std::vector<std::string>{name};
    out.add(kPeftPrefix + name + ".weight", dtype, Matrix<T>(store.value(head->first)));
    if (head->second) {
      const Matrix<T> bias = store.value(*head->second);
      out.add(kPeftPrefix + name + ".bias", dtype, bias, {bias.cols()});
    }
  } else {
    j["modules_to_save"] = nullptr;
  }
  std::filesystem::create_directories(dir);
  out.write((std::filesystem::path(dir) / kAdapterWeightsFile).string(), {{"format", "pt"}});
  write_file_atomic((std::filesystem::path(dir) / kAdapterConfigFile).string(), j.dump(2) + "\n");
}

}  // namespace wegeft

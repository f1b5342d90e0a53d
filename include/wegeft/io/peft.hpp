// Adapter directories in Hugging Face PEFT's layout, for every registered method (docs/formats.md).
//
//   dir/adapter_config.json         {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": [...], ...}
//   dir/adapter_model.safetensors   base_model.model.<module>.<parameter suffix>, e.g. lora_A.weight [r, d_in]
//
// Each method writes its own fields of adapter_config.json (adapters/<method>.hpp): LoRA and DoRA
// PEFT's ("use_dora": true for DoRA, whose magnitude is <module>.lora_magnitude_vector [d_out]),
// WeGeFT "peft_type": "WEGEFT", "wegeft_alpha", "wegeft_dropout". A tensor shared by a group of
// modules (a WeGeFT generator) is stored once, under the first module of its group, and the groups
// are written as "tied_modules" (lists of regexes matched from the start of a module name).
// A set that mixes methods is written as one such directory per method, dir/<method>/.
//
// Adapters on any layers (an AdapterSet over the caller's own AdapterSites):
//   wegeft::save_adapter(adapters, "out-adapter");
//   wegeft::load_adapter(adapters, sites, "my-adapter");
// On a Transformer (its block linears, and its classification head under modules_to_save):
//   wegeft::load_adapter(model, store, "my-adapter");
//   wegeft::save_adapter(model, store, "out-adapter");
#pragma once

#include <algorithm>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/adapters/registry.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/json.hpp"
#include "wegeft/core/precompiled.hpp"
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
  bool fan_in_fan_out = false;
  nlohmann::json json;
};

/// Parses dir/adapter_config.json. Throws, naming the file and the field, on anything wegeft
/// cannot honour exactly (trainable biases, layer replication, a peft_type no method reads).
inline AdapterConfig read_adapter_config(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / kAdapterConfigFile).string();
  WEGEFT_CHECK(std::filesystem::exists(path),
               dir << ": no " << kAdapterConfigFile << " (not an adapter directory)");
  AdapterConfig out;
  out.json = detail::parse_json_strict(read_text_file(path), path);
  const nlohmann::json& j = out.json;
  WEGEFT_CHECK(j.is_object(), path << ": not a JSON object");
  WEGEFT_CHECK(!detail::json_string(j, "peft_type", "", path).empty(),
               path << ": no \"peft_type\"");
  AdapterSpec& spec = out.spec;
  WEGEFT_CHECK(j.contains("r") && j["r"].is_number_integer() && j["r"].get<std::int64_t>() > 0,
               path << ": \"r\" must be a positive integer");
  const Index r = j["r"].get<Index>();
  const auto& targets = j.contains("target_modules") ? j["target_modules"] : nlohmann::json();
  WEGEFT_CHECK(targets.is_string() || targets.is_array(),
               path << ": \"target_modules\" must be a regex string or a list");
  if (targets.is_string())
    spec.target_regex = targets.get<std::string>();
  else
    spec.target_modules = detail::json_string_list(targets, path + ": \"target_modules\"");
  if (j.contains("layers_to_transform") && !j["layers_to_transform"].is_null()) {
    const auto& l = j["layers_to_transform"];
    WEGEFT_CHECK(l.is_number_integer() || l.is_array(),
                 path << ": \"layers_to_transform\" must be an integer or a list");
    if (l.is_number_integer())
      spec.layers = {l.get<Index>()};
    else
      for (const auto& v : l) {
        WEGEFT_CHECK(v.is_number_integer(), path << ": \"layers_to_transform\" entry " << v.dump()
                                                 << " is not an integer");
        spec.layers.push_back(v.get<Index>());
      }
  }
  for (const char* key : {"rank_pattern", "alpha_pattern"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    WEGEFT_CHECK(j[key].is_object(), path << ": \"" << key << "\" must be an object");
    const bool ranks = std::string(key) == "rank_pattern";
    for (const auto& [k, v] : j[key].items()) {
      WEGEFT_CHECK(ranks ? v.is_number_integer() && v.get<std::int64_t>() > 0 : v.is_number(),
                   path << ": " << key << " entry \"" << k << "\" is not a "
                        << (ranks ? "positive integer" : "number"));
      if (ranks)
        spec.rank_pattern.emplace_back(k, v.get<Index>());
      else
        spec.alpha_pattern.emplace_back(k, v.get<double>());
    }
  }
  out.modules_to_save = detail::json_string_list(
      j.contains("modules_to_save") ? j["modules_to_save"] : nlohmann::json(),
      path + ": \"modules_to_save\"");
  for (const auto& m : out.modules_to_save)
    WEGEFT_CHECK(
        !m.empty() && m.find("..") == std::string::npos && m.find('/') == std::string::npos,
        path << ": modules_to_save entry '" << m << "' is not a module name");
  out.base_model = detail::json_string(j, "base_model_name_or_path", "", path);
  out.fan_in_fan_out = detail::json_bool(j, "fan_in_fan_out", false, path);
  spec.method = method_config_from_json(j, r, path);
  // Every pattern must compile: a malformed one is reported here, naming the file.
  try {
    if (!spec.target_regex.empty()) (void)Pattern(spec.target_regex);
    for (const auto& [k, v] : spec.rank_pattern) (void)Pattern("(.*\\.)?(?:" + k + ")");
    for (const auto& [k, v] : spec.alpha_pattern) (void)Pattern("(.*\\.)?(?:" + k + ")");
  } catch (const Error& e) {
    WEGEFT_CHECK(false, path << ": " << e.message());
  }
  return out;
}

namespace detail {

inline std::string peft_key(const std::string& module, const AdapterParam& p) {
  return kPeftPrefix + module + "." + p.suffix;
}

/// The tensor `key` of `file` as the [rows, cols] parameter (a 1-D [cols] tensor for a vector
/// parameter); checks presence, dtype, rank and shape before reading.
template <class T>
Matrix<T> read_param(const SafetensorsReader& file, const std::string& key, Index rows, Index cols,
                     bool vector) {
  WEGEFT_CHECK(file.contains(key), file.path() << ": missing tensor '" << key << "'");
  const TensorInfo& t = file.info(key);
  WEGEFT_CHECK(dtype_is_float(t.dtype), file.path()
                                            << ": tensor '" << key << "' is " << dtype_name(t.dtype)
                                            << "; adapter parameters must be floating point");
  const std::vector<std::int64_t> want =
      vector ? std::vector<std::int64_t>{cols} : std::vector<std::int64_t>{rows, cols};
  const bool ok = t.shape == want || (vector && t.shape == std::vector<std::int64_t>{1, cols});
  std::string got = "[", need = "[";
  for (const auto d : t.shape) got += (got.size() > 1 ? ", " : "") + std::to_string(d);
  for (const auto d : want) need += (need.size() > 1 ? ", " : "") + std::to_string(d);
  WEGEFT_CHECK(ok, file.path() << ": tensor '" << key << "' has shape " << got
                               << "], the adapter needs " << need << "]");
  return file.matrix<T>(key);
}

/// Fills every parameter of `adapters` from `file`; a shared tensor from the first member of its
/// group that holds it. Records the keys read in `used`.
template <class T>
void read_adapter_tensors(AdapterSet<T>& adapters, const SafetensorsReader& file,
                          std::set<std::string>& used) {
  ParameterStore<T>& store = adapters.store();
  std::map<std::pair<const void*, std::string>, std::vector<std::string>>
      members;  // (group, suffix) -> modules
  std::map<std::pair<const void*, std::string>, AdapterParam> shared;
  for (const auto& e : adapters.entries()) {
    const auto params = std::visit([](const auto& a) { return a.parameters(); }, *e.adapter);
    for (const auto& p : params) {
      if (p.group != nullptr) {
        members[{p.group, p.suffix}].push_back(e.name);
        shared.emplace(std::pair{p.group, std::string(p.suffix)}, p);
        continue;
      }
      auto dst = store.value(p.id);
      const std::string key = peft_key(e.name, p);
      dst = read_param<T>(file, key, dst.rows(), dst.cols(), p.vector);
      used.insert(key);
    }
  }
  for (const auto& [group, names] : members) {
    const AdapterParam& p = shared.at(group);
    const auto holder = std::find_if(names.begin(), names.end(), [&](const std::string& n) {
      return file.contains(peft_key(n, p));
    });
    WEGEFT_CHECK(holder != names.end(), file.path() << ": no module of the group of '"
                                                    << names.front() << "' holds its " << p.suffix
                                                    << " (" << peft_key(names.front(), p) << ")");
    auto dst = store.value(p.id);
    dst = read_param<T>(file, peft_key(*holder, p), dst.rows(), dst.cols(), p.vector);
    used.insert(peft_key(*holder, p));
  }
}

/// Subdirectories of `dir` that hold adapter_config.json (the per-method layout), sorted.
inline std::vector<std::string> method_subdirectories(const std::string& dir) {
  std::vector<std::string> out;
  if (std::filesystem::exists(std::filesystem::path(dir) / kAdapterConfigFile) ||
      !std::filesystem::is_directory(dir))
    return out;
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_directory() && std::filesystem::exists(e.path() / kAdapterConfigFile))
      out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace detail

/// Attaches the adapter stored in `dir` to `sites` through `adapters`, and loads its tensors
/// (converted to T), all or nothing: the file is read and checked in full first (every adapter
/// parameter present with its shape, every tensor of the file used, except those named in
/// `extra_keys`, which the caller reads), and only then is anything attached. Returns the
/// directory's config and the number of adapted modules.
template <class T>
std::pair<AdapterConfig, Index> load_adapter(AdapterSet<T>& adapters,
                                             std::span<const AdapterSite<T>> sites,
                                             const std::string& dir,
                                             const std::set<std::string>& extra_keys = {}) {
  AdapterConfig cfg = read_adapter_config(dir);
  const std::string wpath = (std::filesystem::path(dir) / kAdapterWeightsFile).string();
  WEGEFT_CHECK(std::filesystem::exists(wpath),
               dir << ": no " << kAdapterWeightsFile
                   << " (adapter_model.bin is not supported; convert it to safetensors)");
  const SafetensorsReader file(wpath);
  ParameterStore<T> scratch_store;
  AdapterSet<T> scratch(scratch_store);
  scratch.attach(cfg.spec, sites);
  std::set<std::string> used = extra_keys;
  detail::read_adapter_tensors(scratch, file, used);
  for (const auto& t : file.tensors())
    WEGEFT_CHECK(used.count(t.name), wpath << ": tensor '" << t.name
                                           << "' belongs to no adapter parameter of these modules");
  const std::size_t first = adapters.entries().size();
  const Index count = adapters.attach(cfg.spec, sites);
  for (std::size_t i = 0; i < scratch.entries().size(); ++i) {
    const auto from =
        std::visit([](const auto& a) { return a.parameters(); }, *scratch.entries()[i].adapter);
    const auto to = std::visit([](const auto& a) { return a.parameters(); },
                               *adapters.entries()[first + i].adapter);
    for (std::size_t k = 0; k < from.size(); ++k)
      adapters.store().value(to[k].id) = scratch_store.value(from[k].id);
  }
  return {std::move(cfg), count};
}

/// What save_adapter writes besides the adapters.
template <class T>
struct AdapterSaveOptions {
  std::string base_model;       ///< base_model_name_or_path
  DType dtype = DType::F32;     ///< how tensors are stored
  bool fan_in_fan_out = false;  ///< the host stores W as [d_in, d_out] (GPT-2's Conv1D)
  /// Every module the adapters could have targeted, for a short target_modules list (PEFT's
  /// suffix rule); empty: the adapted modules' full names.
  std::vector<std::string> all_modules;
  /// Whole modules saved as trainable (modules_to_save): name, weight, optional bias [1, n].
  struct Module {
    std::string name;
    Matrix<T> weight;
    std::optional<Matrix<T>> bias;
  };
  std::vector<Module> modules_to_save;
};

namespace detail {

/// The module path after its last numeric component followed by a dot ("self_attn.q_proj" for
/// "model.layers.3.self_attn.q_proj"); the whole name when there is none.
inline std::string after_last_block(const std::string& name) {
  std::size_t cut = 0, start = 0;
  while (true) {
    const std::size_t end = name.find('.', start);
    if (end == std::string::npos) break;
    if (end > start && name.find_first_not_of("0123456789", start) >= end) cut = end + 1;
    start = end + 1;
  }
  return name.substr(cut);
}

/// A target_modules list that selects exactly `adapted` among `all` under PEFT's suffix rule: for
/// each module path after its last numeric component ("self_attn.q_proj"), that suffix when it
/// selects nothing else, else the full names.
inline std::vector<std::string> target_list(const std::vector<std::string>& all,
                                            const std::vector<std::string>& adapted) {
  const std::set<std::string> is_adapted(adapted.begin(), adapted.end());
  std::vector<std::string> suffixes;
  std::map<std::string, std::vector<std::string>> by_suffix;
  for (const auto& name : adapted) {
    const std::string suffix = after_last_block(name);
    if (!by_suffix.count(suffix)) suffixes.push_back(suffix);
    by_suffix[suffix].push_back(name);
  }
  std::vector<std::string> out;
  for (const auto& suffix : suffixes) {
    bool clean = true;
    for (const auto& name : all)
      if (!is_adapted.count(name) && name_has_suffix(name, suffix)) clean = false;
    for (const auto& name : adapted)
      if (name_has_suffix(name, suffix) &&
          std::find(by_suffix[suffix].begin(), by_suffix[suffix].end(), name) ==
              by_suffix[suffix].end())
        clean = false;
    if (clean)
      out.push_back(suffix);
    else
      out.insert(out.end(), by_suffix[suffix].begin(), by_suffix[suffix].end());
  }
  return out;
}

/// `s` with every regular-expression metacharacter escaped.
inline std::string regex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::string_view(".^$|()[]{}*+?\\").find(c) != std::string_view::npos) out += '\\';
    out += c;
  }
  return out;
}

/// A pattern for `name` in which every inner numeric component matches any block index.
inline std::string block_pattern(const std::string& name) {
  std::string out;
  std::size_t start = 0;
  while (true) {
    const std::size_t end = std::min(name.find('.', start), name.size());
    const std::string part = name.substr(start, end - start);
    const bool inner = start > 0 && end < name.size();
    out += inner && !part.empty() && part.find_first_not_of("0123456789") == std::string::npos
               ? "\\d+"
               : regex_escape(part);
    if (end == name.size()) break;
    out += "\\.";
    start = end + 1;
  }
  return out;
}

/// tied_modules for the groups of shared tensors: one pattern per group when its members are one
/// module path at every depth and the pattern selects nothing else, else one pattern per member.
inline nlohmann::ordered_json tied_list(const std::vector<std::vector<std::string>>& groups,
                                        const std::vector<std::string>& all) {
  nlohmann::ordered_json tied = nlohmann::ordered_json::array();
  for (const auto& names : groups) {
    if (names.size() < 2) continue;
    std::set<std::string> shapes;
    for (const auto& n : names) shapes.insert(block_pattern(n));
    std::vector<std::string> patterns;
    if (shapes.size() == 1) {
      const std::string p = *shapes.begin() + "$";
      std::size_t hits = 0;
      const Pattern pattern(p);
      for (const auto& m : all) hits += pattern.prefix_match(m);
      if (hits == names.size()) patterns.push_back(p);
    }
    if (patterns.empty())
      for (const auto& n : names) patterns.push_back(regex_escape(n) + "$");
    tied.push_back(patterns);
  }
  return tied;
}

/// One method's adapters (entries of one method, in set order) into `dir`.
template <class T>
void save_method(const AdapterSet<T>& adapters,
                 const std::vector<const typename AdapterSet<T>::Entry*>& entries,
                 const std::string& dir, const AdapterSaveOptions<T>& opt, bool with_modules) {
  std::vector<std::string> names;
  std::map<std::string, Index> ranks;
  std::map<std::string, double> alphas;
  std::set<std::string> rest;  // the method's settings besides rank and alpha, as JSON
  for (const auto* e : entries) {
    names.push_back(e->name);
    std::visit(
        [&](const auto& a) {
          auto c = a.config();
          ranks[e->name] = c.rank;
          alphas[e->name] = c.alpha;
          c.rank = 1;
          c.alpha = 1;
          nlohmann::ordered_json j;
          method_of<std::decay_t<decltype(a)>>::config_to_json(j, c);
          rest.insert(j.dump());
        },
        *e->adapter);
  }
  WEGEFT_CHECK(rest.size() == 1, dir << ": the " << method_name(*entries.front()->adapter)
                                     << " adapters differ in settings other than rank and alpha "
                                        "(dropout, rsLoRA, ...), which one config cannot express");
  const auto most_common = [](const auto& m) {
    std::map<typename std::decay_t<decltype(m)>::mapped_type, int> votes;
    for (const auto& [k, v] : m) ++votes[v];
    return std::max_element(votes.begin(), votes.end(),
                            [](auto& a, auto& b) { return a.second < b.second; })
        ->first;
  };
  const Index r = most_common(ranks);
  const double alpha = most_common(alphas);
  nlohmann::ordered_json rank_pattern = nlohmann::ordered_json::object(),
                         alpha_pattern = nlohmann::ordered_json::object();
  for (const auto& n : names) {
    if (ranks[n] != r) rank_pattern[n] = ranks[n];
    if (alphas[n] != alpha) alpha_pattern[n] = alphas[n];
  }
  nlohmann::ordered_json j;
  std::visit(
      [&](const auto& a) {
        auto c = a.config();
        c.rank = r;
        c.alpha = alpha;
        method_of<std::decay_t<decltype(a)>>::config_to_json(j, c);
      },
      *entries.front()->adapter);
  j["base_model_name_or_path"] = opt.base_model;
  j["r"] = r;
  j["target_modules"] = target_list(opt.all_modules.empty() ? names : opt.all_modules, names);
  j["rank_pattern"] = rank_pattern;
  j["alpha_pattern"] = alpha_pattern;
  j["layers_to_transform"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["bias"] = "none";
  j["fan_in_fan_out"] = opt.fan_in_fan_out;
  j["inference_mode"] = true;
  j["task_type"] = nullptr;
  j["revision"] = nullptr;
  SafetensorsBuilder out;
  ParameterStore<T>& store = adapters.store();
  std::map<const void*, std::size_t> group_index;
  std::vector<std::vector<std::string>> groups;
  std::set<std::string> written;
  for (const auto* e : entries) {
    const auto params = std::visit([](const auto& a) { return a.parameters(); }, *e->adapter);
    for (const auto& p : params) {
      if (p.group != nullptr) {
        const auto [it, fresh] = group_index.emplace(p.group, groups.size());
        if (fresh) groups.emplace_back();
        if (groups[it->second].empty() || groups[it->second].back() != e->name)
          groups[it->second].push_back(e->name);
        if (!fresh && written.count(std::to_string(it->second) + p.suffix)) continue;
        written.insert(std::to_string(it->second) + p.suffix);
      }
      const Matrix<T> v = store.value(p.id);
      if (p.vector)
        out.add(peft_key(e->name, p), opt.dtype, v, {v.cols()});
      else
        out.add(peft_key(e->name, p), opt.dtype, v);
    }
  }
  if (!groups.empty())
    j["tied_modules"] = tied_list(groups, opt.all_modules.empty() ? names : opt.all_modules);
  if (with_modules && !opt.modules_to_save.empty()) {
    std::vector<std::string> saved;
    for (const auto& m : opt.modules_to_save) {
      saved.push_back(m.name);
      out.add(kPeftPrefix + m.name + ".weight", opt.dtype, m.weight);
      if (m.bias) out.add(kPeftPrefix + m.name + ".bias", opt.dtype, *m.bias, {m.bias->cols()});
    }
    j["modules_to_save"] = saved;
  } else {
    j["modules_to_save"] = nullptr;
  }
  DirectoryWriter writer(dir);
  out.write(writer.path(kAdapterWeightsFile), {{"format", "pt"}});
  write_file_atomic(writer.path(kAdapterConfigFile), j.dump(2) + "\n");
  writer.commit();
}

}  // namespace detail

/// Writes `adapters` to `dir` in PEFT's layout, replacing the directory's adapter files as a
/// whole. A set of one method is one directory; a set that mixes methods is written as
/// dir/<method>/ per method (modules_to_save in the first, by name), which load_adapter reads back.
template <class T>
void save_adapter(const AdapterSet<T>& adapters, const std::string& dir,
                  const AdapterSaveOptions<T>& opt = {}) {
  WEGEFT_CHECK(!adapters.empty(), dir << ": there is no adapter to save");
  std::map<std::string, std::vector<const typename AdapterSet<T>::Entry*>> by_method;
  for (const auto& e : adapters.entries()) by_method[method_name(*e.adapter)].push_back(&e);
  if (by_method.size() == 1) {
    detail::save_method(adapters, by_method.begin()->second, dir, opt, true);
    return;
  }
  bool first = true;
  for (const auto& [method, entries] : by_method) {
    detail::save_method(adapters, entries, (std::filesystem::path(dir) / method).string(), opt,
                        first);
    first = false;
  }
}

namespace detail {
/// Names of the head tensors a PEFT file keeps under modules_to_save ("classifier" / "score").
inline std::string head_module(const ModelConfig& c) {
  return c.causal() ? "score" : "classifier";
}

/// A classification head read from `file`: `prefix`.weight [labels, hidden] and, for an encoder,
/// `prefix`.bias [labels], checked against `c`; the keys read are added to `keys`.
template <class T>
std::pair<Matrix<T>, std::optional<Matrix<T>>> read_head(const SafetensorsReader& file,
                                                         const std::string& prefix,
                                                         const ModelConfig& c,
                                                         std::set<std::string>& keys) {
  const std::string wkey = prefix + ".weight", bkey = prefix + ".bias";
  WEGEFT_CHECK(file.contains(wkey), file.path() << ": no '" << wkey << "'");
  const TensorInfo& t = file.info(wkey);
  WEGEFT_CHECK(t.shape.size() == 2 && t.shape[0] > 0 && t.shape[1] == c.hidden,
               file.path() << ": '" << wkey << "' must be [labels, " << c.hidden << "]");
  const Index labels = static_cast<Index>(t.shape[0]);
  std::pair<Matrix<T>, std::optional<Matrix<T>>> head{
      read_param<T>(file, wkey, labels, c.hidden, false), std::nullopt};
  keys.insert(wkey);
  if (!c.causal()) {
    head.second = read_param<T>(file, bkey, 1, labels, true);
    keys.insert(bkey);
  }
  return head;
}

/// Gives `model` a new classification head (parameters in `store`) holding `head`'s values.
template <class T>
void install_head(Transformer<T>& model, ParameterStore<T>& store,
                  const std::pair<Matrix<T>, std::optional<Matrix<T>>>& head) {
  model.add_classifier(head.first.rows(), store);
  const auto [w, b] = *model.classifier_params();
  store.value(w) = head.first;
  if (b) store.value(*b) = *head.second;
}
}  // namespace detail

/// Attaches the adapter stored in `dir` (or each dir/<method>/ of a mixed set) to `model`'s block
/// linears and loads its tensors, all or nothing per directory. The classifier or score head under
/// modules_to_save becomes the model's trainable classification head; a listed module the file
/// does not hold is skipped, as PEFT does. Returns the number of adapted modules.
template <class T>
Index load_adapter(Transformer<T>& model, ParameterStore<T>& store, const std::string& dir) {
  const auto subdirs = detail::method_subdirectories(dir);
  if (!subdirs.empty()) {
    Index n = 0;
    for (const auto& d : subdirs) n += load_adapter(model, store, d);
    return n;
  }
  const AdapterConfig cfg = read_adapter_config(dir);
  const std::string wpath = (std::filesystem::path(dir) / kAdapterWeightsFile).string();
  WEGEFT_CHECK(std::filesystem::exists(wpath),
               dir << ": no " << kAdapterWeightsFile
                   << " (adapter_model.bin is not supported; convert it to safetensors)");
  // The head first, checked in full before anything is attached.
  std::optional<std::pair<Matrix<T>, std::optional<Matrix<T>>>> head;
  std::set<std::string> head_keys;
  {
    const SafetensorsReader file(wpath);
    for (const auto& module : cfg.modules_to_save) {
      if (!file.contains(kPeftPrefix + module + ".weight")) continue;
      WEGEFT_CHECK(module == "classifier" || module == "score",
                   dir << ": modules_to_save entry '" << module << "' is not supported (only the '"
                       << detail::head_module(model.config()) << "' head)");
      WEGEFT_CHECK(!head, dir << ": modules_to_save holds two classification heads");
      WEGEFT_CHECK(!model.has_classifier(), dir << ": the model already has a classification head");
      head = detail::read_head<T>(file, kPeftPrefix + module, model.config(), head_keys);
    }
  }
  const auto sites = model.sites();
  const Index count =
      load_adapter(model.adapter_set(store), std::span<const AdapterSite<T>>(sites), dir, head_keys)
          .second;
  if (head) detail::install_head(model, store, *head);
  return count;
}

/// Writes the adapters attached to `model` to `dir` (PEFT layout, tensors stored as `dtype`), with
/// its classification head under modules_to_save.
template <class T>
void save_adapter(Transformer<T>& model, ParameterStore<T>& store, const std::string& dir,
                  const std::string& base_model = "", DType dtype = DType::F32) {
  WEGEFT_CHECK(model.adapters() != nullptr && !model.adapters()->empty(),
               dir << ": the model has no adapter to save");
  WEGEFT_CHECK(&model.adapters()->store() == &store,
               dir << ": the model's adapters live in another ParameterStore");
  AdapterSaveOptions<T> opt{.base_model = base_model,
                            .dtype = dtype,
                            .fan_in_fan_out = model.config().family == Family::gpt2,
                            .all_modules = model.linear_names()};
  if (const auto head = model.classifier_params()) {
    typename AdapterSaveOptions<T>::Module m{detail::head_module(model.config()),
                                             Matrix<T>(store.value(head->first)), std::nullopt};
    if (head->second) m.bias = Matrix<T>(store.value(*head->second));
    opt.modules_to_save.push_back(std::move(m));
  }
  save_adapter(*model.adapters(), dir, opt);
}

#define WEGEFT_PEFT_TEMPLATES(EXTERN, T)                                                          \
  EXTERN template std::pair<AdapterConfig, Index> load_adapter<T>(                                \
      AdapterSet<T>&, std::span<const AdapterSite<T>>, const std::string&,                        \
      const std::set<std::string>&);                                                              \
  EXTERN template void save_adapter<T>(const AdapterSet<T>&, const std::string&,                  \
                                       const AdapterSaveOptions<T>&);                             \
  EXTERN template Index load_adapter<T>(Transformer<T>&, ParameterStore<T>&, const std::string&); \
  EXTERN template void save_adapter<T>(Transformer<T>&, ParameterStore<T>&, const std::string&,   \
                                       const std::string&, DType);
WEGEFT_EXTERN_TEMPLATES(WEGEFT_PEFT_TEMPLATES)

}  // namespace wegeft

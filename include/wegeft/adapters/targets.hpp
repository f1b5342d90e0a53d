// Which linear modules of a model get an adapter, and with which rank and alpha: Hugging Face
// PEFT's rules plus short role names.
//
// A module is targeted when
//   - `target_regex` is set and matches its full name (PEFT's string form, re.fullmatch), or
//   - an entry of `target_modules` equals its name, is a suffix of it after a dot (PEFT's list
//     form: "q_proj" matches "model.layers.0.self_attn.q_proj"), is its role's short name
//     (q k v qkv o gate up down), or is "all-linear" (every block linear; heads excluded);
// and, if `layers` is not empty, its block index is listed (PEFT's layers_to_transform).
// `rank_pattern` / `alpha_pattern` override r / alpha for modules whose name matches
// `(.*\.)?KEY` (PEFT's rule) or whose short name is KEY; the first matching entry wins.
#pragma once

#include <regex>
#include <string>
#include <utility>
#include <vector>

#include "wegeft/adapters/lora.hpp"
#include "wegeft/adapters/wegeft.hpp"
#include "wegeft/core/error.hpp"

namespace wegeft {

enum class AdapterKind { lora, wegeft };

/// How WeGeFT generators are shared: one per role across all depths (the default: all q
/// projections share one generator, all v projections another, ...), one per layer, or the
/// explicit groups of `tied_modules` (the WeGeFT adapter format's rule: each group is a list of
/// regexes matched from the start of a module's name, as Python's re.match; a targeted module in
/// no group gets its own generator).
enum class WeGeFTSharing { per_role, per_layer, tied };

struct AdapterSpec {
  AdapterKind kind = AdapterKind::lora;
  std::vector<std::string> target_modules;
  std::string target_regex;
  std::vector<Index> layers;
  LoraConfig lora;
  WeGeFTConfig wegeft;
  WeGeFTSharing sharing = WeGeFTSharing::per_role;
  WeGeFTOrder order = WeGeFTOrder::automatic;
  std::vector<std::pair<std::string, Index>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::vector<std::vector<std::string>> tied_modules;  ///< groups, for WeGeFTSharing::tied
  std::uint64_t seed = 0;  ///< seeds initialisation and dropout streams
};

namespace detail {
/// std::regex of `pattern`; a malformed pattern is a wegeft::Error naming it.
inline std::regex compile_regex(const std::string& pattern) {
  try {
    return std::regex(pattern);
  } catch (const std::regex_error& e) {
    WEGEFT_CHECK(false, "invalid regular expression '" << pattern << "': " << e.what());
  }
  return {};
}
inline bool name_has_suffix(const std::string& name, const std::string& key) {
  if (name == key) return true;
  return name.size() > key.size() && name.compare(name.size() - key.size(), key.size(), key) == 0 &&
         name[name.size() - key.size() - 1] == '.';
}
inline bool pattern_matches(const std::string& key, const std::string& name, const char* role) {
  if (key == role) return true;
  return std::regex_match(name, compile_regex("(.*\\.)?(" + key + ")"));
}
}  // namespace detail

/// Whether `spec` targets the block linear `name` (role short name `role`, block `layer`).
inline bool targets_module(const AdapterSpec& spec, const std::string& name, const char* role, Index layer) {
  if (!spec.layers.empty() && std::find(spec.layers.begin(), spec.layers.end(), layer) == spec.layers.end())
    return false;
  if (!spec.target_regex.empty()) return std::regex_match(name, detail::compile_regex(spec.target_regex));
  for (const auto& t : spec.target_modules)
    if (t == "all-linear" || t == role || detail::name_has_suffix(name, t)) return true;
  return false;
}

/// The rank for module `name`: the first matching rank_pattern entry, else the spec's rank.
inline Index rank_for(const AdapterSpec& spec, const std::string& name, const char* role) {
  for (const auto& [key, r] : spec.rank_pattern)
    if (detail::pattern_matches(key, name, role)) return r;
  return spec.kind == AdapterKind::lora ? spec.lora.rank : spec.wegeft.rank;
}

/// The alpha for module `name`: the first matching alpha_pattern entry, else the spec's alpha.
inline double alpha_for(const AdapterSpec& spec, const std::string& name, const char* role) {
  for (const auto& [key, a] : spec.alpha_pattern)
    if (detail::pattern_matches(key, name, role)) return a;
  return spec.kind == AdapterKind::lora ? spec.lora.alpha : spec.wegeft.alpha;
}

/// Index of the first tied_modules group with a pattern that matches `name` from its start, or -1.
inline int tied_group_of(const AdapterSpec& spec, const std::string& name) {
  for (std::size_t g = 0; g < spec.tied_modules.size(); ++g)
    for (const auto& pattern : spec.tied_modules[g])
      if (std::regex_search(name, detail::compile_regex(pattern), std::regex_constants::match_continuous))
        return static_cast<int>(g);
  return -1;
}

}  // namespace wegeft

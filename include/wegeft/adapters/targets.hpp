// Which linear modules of a model get an adapter, and with which rank and alpha: Hugging Face
// PEFT's rules plus short role names.
//
// A module is targeted when
//   - `target_regex` is set and matches its full name (PEFT's string form, re.fullmatch), or
//   - an entry of `target_modules` equals its name, is a suffix of it after a dot (PEFT's list
//     form: "q_proj" matches "model.layers.0.self_attn.q_proj"), is its role's short name
//     (q k v qkv o gate up down pooler), or is "all-linear" (every block linear and BERT's
//     pooler.dense, as PEFT; heads excluded);
// and, if `layers` is not empty, its block index is listed (PEFT's layers_to_transform).
// `rank_pattern` / `alpha_pattern` override r / alpha for modules whose name matches
// `(.*\.)?KEY` (PEFT's rule) or whose short name is KEY; the first matching entry wins.
#pragma once

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/pattern.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

namespace detail {
inline bool name_has_suffix(const std::string& name, const std::string& key) {
  if (name == key) return true;
  return name.size() > key.size() && name.compare(name.size() - key.size(), key.size(), key) == 0 &&
         name[name.size() - key.size() - 1] == '.';
}
inline bool pattern_matches(const std::string& key, const std::string& name, const char* role) {
  if (key == role) return true;
  return Pattern("(.*\\.)?(?:" + key + ")").full_match(name);
}
}  // namespace detail

/// Whether `spec` (an AdapterSpec) targets the linear `name` (role short name `role`, block `layer`).
template <class Spec>
bool targets_module(const Spec& spec, const std::string& name, const char* role, Index layer) {
  if (!spec.layers.empty() &&
      std::find(spec.layers.begin(), spec.layers.end(), layer) == spec.layers.end())
    return false;
  if (!spec.target_regex.empty()) return Pattern(spec.target_regex).full_match(name);
  for (const auto& t : spec.target_modules)
    if (t == "all-linear" || t == role || detail::name_has_suffix(name, t)) return true;
  return false;
}

/// The rank for module `name`: the first matching rank_pattern entry, else `fallback`.
template <class Spec>
Index rank_for(const Spec& spec, const std::string& name, const char* role, Index fallback) {
  for (const auto& [key, r] : spec.rank_pattern)
    if (detail::pattern_matches(key, name, role)) return r;
  return fallback;
}

/// The alpha for module `name`: the first matching alpha_pattern entry, else `fallback`.
template <class Spec>
double alpha_for(const Spec& spec, const std::string& name, const char* role, double fallback) {
  for (const auto& [key, a] : spec.alpha_pattern)
    if (detail::pattern_matches(key, name, role)) return a;
  return fallback;
}

/// Index of the first group with a pattern that matches `name` from its start, or -1.
inline int tied_group_of(const std::vector<std::vector<std::string>>& groups,
                         const std::string& name) {
  for (std::size_t g = 0; g < groups.size(); ++g)
    for (const auto& pattern : groups[g])
      if (Pattern(pattern).prefix_match(name)) return static_cast<int>(g);
  return -1;
}

}  // namespace wegeft

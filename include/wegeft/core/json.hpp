// JSON helpers for the file readers and adapter configs: strict parsing (no duplicate keys) and typed field access
// whose every failure is a wegeft::Error naming the file and the field, never a JSON library
// exception.
#pragma once

#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/core/error.hpp"

namespace wegeft::detail {

/// The deepest nesting of arrays and objects a file may have. Every JSON file wegeft reads
/// (safetensors headers, configs, adapter configs) needs fewer than 10 levels; a deeper one is
/// refused before parsing, so no recursion (parse, copy, dump, destruction) sees untrusted depth.
inline constexpr int kMaxJsonDepth = 64;

/// Throws, naming `where`, if `text` nests arrays or objects deeper than kMaxJsonDepth (brackets
/// inside strings do not count).
inline void check_json_depth(const std::string& text, const std::string& where) {
  int depth = 0;
  bool in_string = false, escaped = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
      continue;
    }
    if (c == '"')
      in_string = true;
    else if (c == '[' || c == '{') {
      WEGEFT_CHECK(++depth <= kMaxJsonDepth, where << ": JSON nests deeper than " << kMaxJsonDepth
                                                   << " levels (at byte " << i << ")");
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
}

/// Parses JSON, rejecting duplicate keys in any object (nlohmann would keep the last silently)
/// and nesting deeper than kMaxJsonDepth.
inline nlohmann::json parse_json_strict(const std::string& text, const std::string& where) {
  check_json_depth(text, where);
  std::vector<std::set<std::string>> keys;
  const nlohmann::json::parser_callback_t check = [&](int, nlohmann::json::parse_event_t event,
                                                      nlohmann::json& parsed) {
    using E = nlohmann::json::parse_event_t;
    if (event == E::object_start) keys.emplace_back();
    if (event == E::object_end && !keys.empty()) keys.pop_back();
    if (event == E::key && !keys.empty()) {
      const auto& k = parsed.get_ref<const std::string&>();
      WEGEFT_CHECK(keys.back().insert(k).second, where << ": duplicate key \"" << k << "\"");
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text, check);
  } catch (const nlohmann::json::exception& e) {
    WEGEFT_CHECK(false, where << ": invalid JSON: " << e.what());
  }
  return {};
}

/// Field `key` of object `j` as a number, `fallback` when absent or null.
inline double json_number(const nlohmann::json& j, const char* key, double fallback,
                          const std::string& where) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  WEGEFT_CHECK(j[key].is_number(),
               where << ": \"" << key << "\" must be a number, got " << j[key].dump());
  return j[key].get<double>();
}

/// Field `key` of object `j` as a string, `fallback` when absent or null.
inline std::string json_string(const nlohmann::json& j, const char* key,
                               const std::string& fallback, const std::string& where) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  WEGEFT_CHECK(j[key].is_string(),
               where << ": \"" << key << "\" must be a string, got " << j[key].dump());
  return j[key].get<std::string>();
}

/// Field `key` of object `j` as a bool, `fallback` when absent or null.
inline bool json_bool(const nlohmann::json& j, const char* key, bool fallback,
                      const std::string& where) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return fallback;
  WEGEFT_CHECK(j[key].is_boolean(),
               where << ": \"" << key << "\" must be true or false, got " << j[key].dump());
  return j[key].get<bool>();
}

/// A string or a list of strings (null: empty).
inline std::vector<std::string> json_string_list(const nlohmann::json& j,
                                                 const std::string& where) {
  std::vector<std::string> out;
  if (j.is_null()) return out;
  if (j.is_string()) return {j.get<std::string>()};
  WEGEFT_CHECK(j.is_array(), where << " must be a list of strings");
  for (const auto& v : j) {
    WEGEFT_CHECK(v.is_string(), where << " must be a list of strings, got " << v.dump());
    out.push_back(v.get<std::string>());
  }
  return out;
}

}  // namespace wegeft::detail

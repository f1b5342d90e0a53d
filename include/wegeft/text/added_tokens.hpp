// Added (special) tokens: strings such as "[CLS]" or "<|im_start|>" that are matched in the raw
// text before any normalisation or pre-tokenisation and map straight to one id. Matching is
// leftmost-longest, as Hugging Face `tokenizers` does; `lstrip` / `rstrip` swallow the
// whitespace beside a match and `single_word` only matches a token not inside a word.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "wegeft/core/json.hpp"
#include "wegeft/text/unicode.hpp"

namespace wegeft::text {

using ::wegeft::detail::json_bool;
using ::wegeft::detail::json_number;
using ::wegeft::detail::json_string;
using ::wegeft::detail::parse_json_strict;

struct AddedToken {
  std::string content;
  std::int32_t id = -1;
  bool special = true;  // dropped by decode(..., skip_special = true)
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = false;  // matched after the normaliser rather than in the raw text
};

/// A piece of text after added-token splitting: either an added token's id, or text to tokenise.
struct TextPiece {
  std::string_view text;
  std::int32_t id = -1;  // >= 0: an added token
};

class AddedTokens {
 public:
  AddedTokens() = default;
  explicit AddedTokens(std::vector<AddedToken> tokens) : m_tokens(std::move(tokens)) {
    for (std::size_t i = 0; i < m_tokens.size(); ++i) {
      const auto& t = m_tokens[i];
      WEGEFT_CHECK(!t.content.empty(), "added token " << t.id << " has empty content");
      utf8_check(t.content, "added token content");
      m_by_id[t.id] = i;
      if (!t.normalized) m_raw_first[static_cast<unsigned char>(t.content[0])].push_back(i);
      if (t.normalized) m_norm_first[static_cast<unsigned char>(t.content[0])].push_back(i);
    }
  }

  const std::vector<AddedToken>& tokens() const { return m_tokens; }
  const AddedToken* find(std::int32_t id) const {
    const auto it = m_by_id.find(id);
    return it == m_by_id.end() ? nullptr : &m_tokens[it->second];
  }
  bool empty() const { return m_tokens.empty(); }

  /// Splits `s` at the added tokens matched in the raw text (normalized = false), or, with
  /// `normalized`, at those matched after normalisation.
  std::vector<TextPiece> split(std::string_view s, bool normalized = false) const {
    const auto& first = normalized ? m_norm_first : m_raw_first;
    std::vector<TextPiece> out;
    if (first.empty()) {
      if (!s.empty()) out.push_back({s, -1});
      return out;
    }
    std::size_t start = 0;  // beginning of the pending text
    std::size_t i = 0;
    while (i < s.size()) {
      const AddedToken* best = nullptr;
      const auto it = first.find(static_cast<unsigned char>(s[i]));
      if (it != first.end()) {
        for (std::size_t k : it->second) {
          const auto& t = m_tokens[k];
          if (s.compare(i, t.content.size(), t.content) != 0) continue;
          if (t.single_word && !(boundary_before(s, i) && boundary_after(s, i + t.content.size())))
            continue;
          if (best == nullptr || t.content.size() > best->content.size()) best = &t;
        }
      }
      if (best == nullptr) {
        ++i;
        continue;
      }
      std::size_t b = i, e = i + best->content.size();
      if (best->lstrip)
        while (b > start && is_space_byte(s[b - 1])) --b;
      if (best->rstrip)
        while (e < s.size() && is_space_byte(s[e])) ++e;
      if (b > start) out.push_back({s.substr(start, b - start), -1});
      out.push_back({s.substr(b, e - b), best->id});
      start = i = e;
    }
    if (start < s.size()) out.push_back({s.substr(start), -1});
    return out;
  }

 private:
  static bool is_space_byte(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
  }
  static bool is_word_byte(char c) {
    const auto u = static_cast<unsigned char>(c);
    return u >= 0x80 || (u >= '0' && u <= '9') || (u >= 'a' && u <= 'z') ||
           (u >= 'A' && u <= 'Z') || c == '_';
  }
  static bool boundary_before(std::string_view s, std::size_t i) {
    return i == 0 || !is_word_byte(s[i - 1]);
  }
  static bool boundary_after(std::string_view s, std::size_t i) {
    return i >= s.size() || !is_word_byte(s[i]);
  }

  std::vector<AddedToken> m_tokens;
  std::map<std::int32_t, std::size_t> m_by_id;
  std::map<unsigned char, std::vector<std::size_t>> m_raw_first, m_norm_first;
};

/// model.vocab of a tokenizer.json ({token: id}) as a list of `size` entries indexed by id
/// (ids outside [0, size) or given twice are refused); `seen[i]` marks the ids it assigned.
inline std::vector<std::string> vocab_from_json(const nlohmann::json& vocab, std::size_t size,
                                                std::vector<char>& seen, const std::string& path) {
  std::vector<std::string> out(size);
  seen.assign(size, 0);
  for (const auto& [tok, id] : vocab.items()) {
    WEGEFT_CHECK(
        id.is_number_integer() && id.get<std::int64_t>() >= 0 &&
            id.get<std::int64_t>() < std::int64_t(size),
        path << ": vocab entry '" << tok << "' has id " << id.dump() << " outside 0.." << size - 1);
    const auto i = id.get<std::size_t>();
    WEGEFT_CHECK(!seen[i], path << ": vocab id " << i << " is given to two tokens");
    seen[i] = 1;
    out[i] = tok;
  }
  return out;
}

/// The `added_tokens` array of a Hugging Face tokenizer.json. `path` names the file in errors.
inline AddedTokens added_tokens_from_json(const nlohmann::json& j, const std::string& path) {
  std::vector<AddedToken> out;
  if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return AddedTokens{};
  WEGEFT_CHECK(j["added_tokens"].is_array(), path << ": added_tokens is not an array");
  for (const auto& t : j["added_tokens"]) {
    WEGEFT_CHECK(t.is_object() && t.contains("id") && t["id"].is_number_integer() &&
                     t.contains("content") && t["content"].is_string(),
                 path << ": an added_tokens entry lacks an integer id or a string content");
    AddedToken a;
    a.id = t["id"].get<std::int32_t>();
    a.content = t["content"].get<std::string>();
    a.special = json_bool(t, "special", false, path);
    a.lstrip = json_bool(t, "lstrip", false, path);
    a.rstrip = json_bool(t, "rstrip", false, path);
    a.single_word = json_bool(t, "single_word", false, path);
    a.normalized = json_bool(t, "normalized", false, path);
    WEGEFT_CHECK(a.id >= 0, path << ": added token '" << a.content << "' has negative id " << a.id);
    out.push_back(std::move(a));
  }
  return AddedTokens(std::move(out));
}

}  // namespace wegeft::text

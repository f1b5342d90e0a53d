// Byte-level BPE, the tokenizer of GPT-2, SmolLM2 and Llama 3, as Hugging Face `tokenizers`
// runs it:
//
//   added tokens (<|im_start|>, <|endoftext|>, ...) are matched first, in the raw text;
//   pre-tokenizer steps split the text into pieces: a regular expression (GPT-2's, Llama 3's,
//     or the one a tokenizer.json gives) and, for SmolLM2, each digit on its own;
//   each piece's bytes are mapped to printable characters (GPT-2's byte-to-unicode table) and
//     merged pairwise by merge rank, lowest first, leftmost on ties;
//   decode maps the characters back to bytes; decode(encode(s)) == s for every valid UTF-8 s.
//
//   auto tok = wegeft::text::BpeTokenizer::from_file("model/tokenizer.json");
//   std::vector<std::int32_t> ids = tok.encode("Hello world");
//   std::string s = tok.decode(ids);
//
// From a GGUF file: wegeft::text::load_tokenizer (tokenizer.hpp) reads tokenizer.ggml.*.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "wegeft/core/json.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/text/added_tokens.hpp"
#include "wegeft/text/regex.hpp"
#include "wegeft/text/unicode.hpp"

namespace wegeft::text {

/// GPT-2's pre-tokenizer pattern (also SmolLM2's, after its digit split).
inline constexpr const char* kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
/// Llama 3's pre-tokenizer pattern.
inline constexpr const char* kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

/// One pre-tokenizer step: split each piece at the matches of a pattern (matches and the text
/// between them become pieces), or put every numeric character (Unicode N*) in a piece of its own.
struct PreTokenizeStep {
  enum class Kind { Regex, Digits } kind = Kind::Regex;
  std::shared_ptr<const Regex> regex;
};

struct BpeConfig {
  std::vector<PreTokenizeStep> steps;
  bool ignore_merges = false;  // a piece that is itself in the vocabulary is one token
  std::optional<std::int32_t> bos_id, eos_id, pad_id, unk_id;
  bool add_bos = false;  // prepend bos_id when encoding a document
};

namespace detail {

/// GPT-2's table: the 188 printable bytes map to themselves, the others to U+0100 onwards.
inline const std::array<char32_t, 256>& byte_to_char() {
  static const std::array<char32_t, 256> table = [] {
    std::array<char32_t, 256> t{};
    std::array<bool, 256> direct{};
    for (int b = 0x21; b <= 0x7E; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    char32_t next = 0x100;
    for (int b = 0; b < 256; ++b) t[b] = direct[b] ? static_cast<char32_t>(b) : next++;
    return t;
  }();
  return table;
}

}  // namespace detail

class BpeTokenizer {
 public:
  /// `vocab[i]` is token i in the byte-mapped alphabet; `merges` in rank order, as pairs.
  BpeTokenizer(std::vector<std::string> vocab,
               const std::vector<std::pair<std::string, std::string>>& merges, BpeConfig config,
               AddedTokens added, const std::string& what)
      : m_vocab(std::move(vocab)), m_config(std::move(config)), m_added(std::move(added)) {
    WEGEFT_CHECK(!m_vocab.empty(), what << ": the vocabulary is empty");
    m_index.reserve(m_vocab.size());
    for (std::size_t i = 0; i < m_vocab.size(); ++i) {
      utf8_check(m_vocab[i], what);
      m_index.emplace(m_vocab[i], static_cast<std::int32_t>(i));
    }
    m_ranks.reserve(merges.size());
    for (std::size_t r = 0; r < merges.size(); ++r) {
      const auto& [a, b] = merges[r];
      WEGEFT_CHECK(!a.empty() && !b.empty(), what << ": merge " << r << " has an empty side");
      m_ranks.emplace(a + ' ' + b,
                      static_cast<std::int32_t>(r));  // ' ' is never in the byte alphabet
    }
    for (const auto& t : m_added.tokens()) {
      WEGEFT_CHECK(static_cast<std::size_t>(t.id) < m_vocab.size(),
                   what << ": added token '" << t.content << "' has id " << t.id
                        << " past the vocabulary of " << m_vocab.size());
    }
    for (auto id : {m_config.bos_id, m_config.eos_id, m_config.pad_id, m_config.unk_id}) {
      WEGEFT_CHECK(!id || (*id >= 0 && static_cast<std::size_t>(*id) < m_vocab.size()),
                   what << ": special token id " << *id << " is outside the vocabulary of "
                        << m_vocab.size());
    }
    const auto& table = detail::byte_to_char();
    for (int b = 0; b < 256; ++b) m_char_to_byte.emplace(table[b], static_cast<unsigned char>(b));
  }

  /// A Hugging Face tokenizer.json whose model is BPE with a ByteLevel pre-tokenizer or decoder.
  static BpeTokenizer from_file(const std::string& path) {
    return from_json(parse_json_strict(read_text_file(path), path), path);
  }

  static BpeTokenizer from_json(const nlohmann::json& j, const std::string& path) {
    WEGEFT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(),
                 path << ": no \"model\" object");
    const auto& m = j["model"];
    WEGEFT_CHECK(json_string(m, "type", "BPE", path) == "BPE",
                 path << ": the model is '" << json_string(m, "type", "?", path) << "', not BPE");
    WEGEFT_CHECK(!json_bool(m, "byte_fallback", false, path),
                 path << ": BPE with byte_fallback (SentencePiece style) is not supported");
    WEGEFT_CHECK(
        json_string(m, "continuing_subword_prefix", "", path).empty() &&
            json_string(m, "end_of_word_suffix", "", path).empty(),
        path << ": BPE with a continuing_subword_prefix or end_of_word_suffix is not supported");
    WEGEFT_CHECK(!j.contains("normalizer") || j["normalizer"].is_null(),
                 path << ": a byte-level BPE tokenizer with a normalizer is not supported");
    WEGEFT_CHECK(m.contains("vocab") && m["vocab"].is_object(),
                 path << ": model.vocab is not an object");
    const std::size_t n_vocab = m["vocab"].size();
    WEGEFT_CHECK(n_vocab > 0 && n_vocab <= (1u << 24),
                 path << ": model.vocab has " << n_vocab << " entries");
    AddedTokens added = added_tokens_from_json(j, path);
    std::size_t total = n_vocab;
    for (const auto& t : added.tokens())
      total = std::max(total, static_cast<std::size_t>(t.id) + 1);
    WEGEFT_CHECK(total <= n_vocab + added.tokens().size(),
                 path << ": added token ids leave holes in the vocabulary");
    std::vector<char> seen;
    std::vector<std::string> vocab = vocab_from_json(m["vocab"], total, seen, path);
    for (const auto& t : added.tokens()) {
      const auto i = static_cast<std::size_t>(t.id);
      if (!seen[i]) vocab[i] = t.content, seen[i] = 1;
    }
    for (std::size_t i = 0; i < total; ++i)
      WEGEFT_CHECK(seen[i], path << ": no token has id " << i);
    std::vector<std::pair<std::string, std::string>> merges;
    if (m.contains("merges") && !m["merges"].is_null()) {
      WEGEFT_CHECK(m["merges"].is_array(), path << ": model.merges is not an array");
      merges.reserve(m["merges"].size());
      for (const auto& e : m["merges"]) {
        if (e.is_string()) {
          const auto s = e.get<std::string>();
          const auto sp = s.find(' ');
          WEGEFT_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size(),
                       path << ": merge '" << s << "' is not 'left right'");
          merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
        } else {
          WEGEFT_CHECK(e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string(),
                       path << ": merge " << e.dump() << " is not a pair of strings");
          merges.emplace_back(e[0].get<std::string>(), e[1].get<std::string>());
        }
      }
    }
    BpeConfig c;
    c.ignore_merges = json_bool(m, "ignore_merges", false, path);
    WEGEFT_CHECK(j.contains("pre_tokenizer") && j["pre_tokenizer"].is_object(),
                 path << ": no pre_tokenizer object");
    bool byte_level = false;
    add_steps(j["pre_tokenizer"], c.steps, byte_level, path, 0);
    WEGEFT_CHECK(
        byte_level,
        path << ": the pre_tokenizer has no ByteLevel step; only byte-level BPE is supported");
    if (const auto unk = json_string(m, "unk_token", "", path); !unk.empty()) {
      for (std::size_t i = 0; i < vocab.size(); ++i)
        if (vocab[i] == unk) c.unk_id = static_cast<std::int32_t>(i);
    }
    return BpeTokenizer(std::move(vocab), merges, std::move(c), std::move(added), path);
  }

  /// Ids of `s` (no BOS/EOS; see encode_document).
  std::vector<std::int32_t> encode(std::string_view s) const {
    utf8_check(s);
    std::vector<std::int32_t> ids;
    std::vector<std::string_view> pieces, next;
    for (const auto& part : m_added.split(s)) {
      if (part.id >= 0) {
        ids.push_back(part.id);
        continue;
      }
      pieces.assign(1, part.text);
      for (const auto& step : m_config.steps) {
        next.clear();
        for (auto p : pieces) split(step, p, next);
        pieces.swap(next);
      }
      for (auto p : pieces) piece_ids(p, ids);
    }
    return ids;
  }

  /// BOS (when the model adds one) + ids of `s`, + EOS with `add_eos`.
  std::vector<std::int32_t> encode_document(std::string_view s, bool add_eos) const {
    std::vector<std::int32_t> ids;
    if (m_config.add_bos && m_config.bos_id) ids.push_back(*m_config.bos_id);
    const auto body = encode(s);
    ids.insert(ids.end(), body.begin(), body.end());
    if (add_eos && m_config.eos_id) ids.push_back(*m_config.eos_id);
    return ids;
  }

  /// Bytes of `ids` as text; added special tokens left out with `skip_special`. Byte sequences
  /// that are not valid UTF-8 (a cut multi-byte character) come back as U+FFFD.
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = false) const {
    std::string bytes;
    for (std::int32_t id : ids) {
      WEGEFT_CHECK(id >= 0 && static_cast<std::size_t>(id) < m_vocab.size(),
                   "token id " << id << " is outside the vocabulary of " << m_vocab.size());
      if (const AddedToken* a = m_added.find(id)) {
        if (!(skip_special && a->special)) bytes += a->content;
        continue;
      }
      for (char32_t c : utf8_decode(m_vocab[static_cast<std::size_t>(id)])) {
        const auto it = m_char_to_byte.find(c);
        if (it != m_char_to_byte.end()) {
          bytes.push_back(static_cast<char>(it->second));
        } else {
          utf8_append(bytes, c);
        }
      }
    }
    return repair_utf8(bytes);
  }

  std::optional<std::int32_t> token_to_id(const std::string& t) const {
    const auto it = m_index.find(t);
    if (it == m_index.end()) return std::nullopt;
    return it->second;
  }
  const std::string& id_to_token(std::int32_t id) const {
    WEGEFT_CHECK(id >= 0 && static_cast<std::size_t>(id) < m_vocab.size(),
                 "token id " << id << " is outside the vocabulary");
    return m_vocab[static_cast<std::size_t>(id)];
  }
  std::size_t vocab_size() const { return m_vocab.size(); }
  const BpeConfig& config() const { return m_config; }
  BpeConfig& config() { return m_config; }
  const AddedTokens& added_tokens() const { return m_added; }

 private:
  static void add_steps(const nlohmann::json& p, std::vector<PreTokenizeStep>& steps,
                        bool& byte_level, const std::string& path, int depth) {
    WEGEFT_CHECK(depth < 8, path << ": pre_tokenizer sequences nest too deeply");
    const std::string type = json_string(p, "type", "", path);
    if (type == "Sequence") {
      WEGEFT_CHECK(p.contains("pretokenizers") && p["pretokenizers"].is_array(),
                   path << ": a Sequence pre_tokenizer without pretokenizers");
      for (const auto& q : p["pretokenizers"]) add_steps(q, steps, byte_level, path, depth + 1);
    } else if (type == "ByteLevel") {
      WEGEFT_CHECK(!json_bool(p, "add_prefix_space", false, path),
                   path << ": ByteLevel add_prefix_space = true is not supported");
      if (json_bool(p, "use_regex", true, path))
        steps.push_back(
            {PreTokenizeStep::Kind::Regex, std::make_shared<Regex>(kGpt2Pattern, path)});
      byte_level = true;
    } else if (type == "Digits") {
      WEGEFT_CHECK(json_bool(p, "individual_digits", false, path),
                   path << ": Digits without individual_digits is not supported");
      steps.push_back({PreTokenizeStep::Kind::Digits, nullptr});
    } else if (type == "Split") {
      WEGEFT_CHECK(json_string(p, "behavior", "", path) == "Isolated" &&
                       !json_bool(p, "invert", false, path),
                   path << ": only Split pre_tokenizers with behavior Isolated and invert false "
                           "are supported");
      WEGEFT_CHECK(p.contains("pattern") && p["pattern"].is_object() &&
                       p["pattern"].contains("Regex") && p["pattern"]["Regex"].is_string(),
                   path << ": a Split pre_tokenizer without a Regex pattern");
      steps.push_back({PreTokenizeStep::Kind::Regex,
                       std::make_shared<Regex>(p["pattern"]["Regex"].get<std::string>(), path)});
    } else {
      WEGEFT_CHECK(false, path << ": pre_tokenizer type '" << type
                               << "' is not supported (ByteLevel, Split, Digits, Sequence are)");
    }
  }

  static void split(const PreTokenizeStep& step, std::string_view s,
                    std::vector<std::string_view>& out) {
    if (step.kind == PreTokenizeStep::Kind::Regex) {
      std::size_t last = 0;
      for (const auto& [b, e] : step.regex->find_all(s)) {
        if (b > last) out.push_back(s.substr(last, b - last));
        out.push_back(s.substr(b, e - b));
        last = e;
      }
      if (last < s.size()) out.push_back(s.substr(last));
      return;
    }
    std::size_t start = 0, i = 0;
    while (i < s.size()) {
      char32_t c = 0;
      const std::size_t len = utf8_next(s, i, c);  // the text was checked in encode()
      if (is_numeric(c)) {
        if (i > start) out.push_back(s.substr(start, i - start));
        out.push_back(s.substr(i, len));
        start = i + len;
      }
      i += len;
    }
    if (start < s.size()) out.push_back(s.substr(start));
  }

  void piece_ids(std::string_view piece, std::vector<std::int32_t>& ids) const {
    const auto& table = detail::byte_to_char();
    std::vector<std::string> sym;
    sym.reserve(piece.size());
    std::string mapped;
    for (char ch : piece) {
      std::string one;
      utf8_append(one, table[static_cast<unsigned char>(ch)]);
      mapped += one;
      sym.push_back(std::move(one));
    }
    if (m_config.ignore_merges) {
      if (auto id = token_to_id(mapped)) {
        ids.push_back(*id);
        return;
      }
    }
    std::string key;
    while (sym.size() > 1) {
      std::int32_t best = -1;
      std::size_t at = 0;
      for (std::size_t i = 0; i + 1 < sym.size(); ++i) {
        key.assign(sym[i]).append(1, ' ').append(sym[i + 1]);
        const auto it = m_ranks.find(key);
        if (it != m_ranks.end() && (best < 0 || it->second < best)) best = it->second, at = i;
      }
      if (best < 0) break;
      sym[at] += sym[at + 1];
      sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
    }
    for (const auto& s : sym) {
      const auto it = m_index.find(s);
      if (it != m_index.end()) {
        ids.push_back(it->second);
      } else {
        WEGEFT_CHECK(m_config.unk_id.has_value(),
                     "the BPE vocabulary has no token '" << s << "' and no unknown token");
        ids.push_back(*m_config.unk_id);
      }
    }
  }

  /// Replaces each maximal invalid UTF-8 subsequence by U+FFFD.
  static std::string repair_utf8(const std::string& b) {
    std::string out;
    out.reserve(b.size());
    for (std::size_t i = 0; i < b.size();) {
      char32_t c = 0;
      const std::size_t len = utf8_next(b, i, c);
      if (len > 0) {
        out.append(b, i, len);
        i += len;
      } else {
        out += "\xEF\xBF\xBD";
        ++i;
      }
    }
    return out;
  }

  std::vector<std::string> m_vocab;
  std::unordered_map<std::string, std::int32_t> m_index;
  std::unordered_map<std::string, std::int32_t> m_ranks;
  BpeConfig m_config;
  AddedTokens m_added;
  std::unordered_map<char32_t, unsigned char> m_char_to_byte;
};

}  // namespace wegeft::text

// WordPiece, the tokenizer of BERT and MiniLM, as Hugging Face `tokenizers` runs it:
//
//   added tokens ([CLS], [SEP], ... written in the text) are matched first, in the raw text;
//   BertNormalizer: drop NUL, U+FFFD and control characters, whitespace -> ' ', spaces around
//     CJK ideographs, NFD + drop non-spacing marks (strip accents), lower-case;
//   BertPreTokenizer: split at whitespace, punctuation (Unicode P* and ASCII punctuation) alone;
//   WordPiece: greedy longest match with the "##" continuation prefix, a word longer than
//     max_input_chars_per_word or with no match becomes [UNK];
//   post-processing: [CLS] A [SEP] (type 0) and, for pairs, B [SEP] (type 1); truncation
//     "longest first" to max_length.
//
//   auto tok = wegeft::text::WordPieceTokenizer::from_file("model/tokenizer.json");  // or vocab.txt
//   auto enc = tok.encode("How old are you?", "I am six.", /*max_length=*/128);
//   // enc.ids, enc.type_ids; tok.decode(enc.ids) == "how old are you? i am six."
#pragma once

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "wegeft/core/json.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/text/added_tokens.hpp"
#include "wegeft/text/unicode.hpp"

namespace wegeft::text {

/// Token ids of one sequence or a pair, with the segment (token type) of each.
struct Encoding {
  std::vector<std::int32_t> ids;
  std::vector<std::int32_t> type_ids;
};

struct WordPieceConfig {
  bool clean_text = true;
  bool handle_chinese_chars = true;
  bool lowercase = true;
  std::optional<bool> strip_accents;  // unset: follow lowercase
  std::string unk_token = "[UNK]", cls_token = "[CLS]", sep_token = "[SEP]", pad_token = "[PAD]";
  std::string prefix = "##";
  std::size_t max_input_chars_per_word = 100;
};

namespace detail {

inline bool is_cjk(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

inline bool is_bert_punctuation(char32_t c) {
  const bool ascii_punct = (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) ||
                           (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
  return ascii_punct || is_punctuation(c);
}

/// Decoder clean-up of Hugging Face's WordPiece decoder, applied to each token as it is joined.
inline std::string wordpiece_cleanup(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},   {" ?", "?"},     {" !", "!"},    {" ,", ","},
      {" ' ", "'"},  {" n't", "n't"}, {" 'm", "'m"},  {" do not", " don't"},
      {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    const std::string f(from), t(to);
    for (std::size_t p = s.find(f); p != std::string::npos; p = s.find(f, p + t.size()))
      s.replace(p, f.size(), t);
  }
  return s;
}

}  // namespace detail

class WordPieceTokenizer {
 public:
  WordPieceTokenizer(std::vector<std::string> vocab, WordPieceConfig config, AddedTokens added,
                     const std::string& what)
      : m_vocab(std::move(vocab)), m_config(std::move(config)), m_added(std::move(added)) {
    WEGEFT_CHECK(!m_vocab.empty(), what << ": the vocabulary is empty");
    for (std::size_t i = 0; i < m_vocab.size(); ++i) {
      utf8_check(m_vocab[i], what);
      m_index.emplace(m_vocab[i], static_cast<std::int32_t>(i));  // first occurrence wins
    }
    for (const auto& t : m_added.tokens()) {
      WEGEFT_CHECK(t.id < static_cast<std::int32_t>(m_vocab.size()) ||
                       m_vocab.size() == static_cast<std::size_t>(t.id),
                   what << ": added token '" << t.content << "' has id " << t.id
                        << " past the vocabulary of " << m_vocab.size());
      if (static_cast<std::size_t>(t.id) == m_vocab.size()) m_vocab.push_back(t.content);
    }
    m_unk = required(m_config.unk_token, what);
    m_cls = required(m_config.cls_token, what);
    m_sep = required(m_config.sep_token, what);
    m_pad = token_to_id(m_config.pad_token).value_or(0);
    if (m_added.empty()) {  // vocab.txt: the usual BERT specials are matched in text as HF does
      std::vector<AddedToken> specials;
      for (const auto* s :
           {&m_config.pad_token, &m_config.unk_token, &m_config.cls_token, &m_config.sep_token}) {
        if (auto id = token_to_id(*s)) specials.push_back({*s, *id});
      }
      if (auto id = token_to_id("[MASK]")) specials.push_back({"[MASK]", *id});
      m_added = AddedTokens(std::move(specials));
    }
  }

  /// vocab.txt (one token per line) with `config`, or a tokenizer.json whose model is WordPiece.
  static WordPieceTokenizer from_file(const std::string& path, WordPieceConfig config = {}) {
    const std::string text = read_text_file(path);
    if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0)
      return from_json(parse_json_strict(text, path), path);
    std::vector<std::string> vocab;
    std::size_t b = 0;
    while (b < text.size()) {
      std::size_t e = text.find('\n', b);
      if (e == std::string::npos) e = text.size();
      std::string line = text.substr(b, e - b);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      vocab.push_back(std::move(line));
      b = e + 1;
    }
    return WordPieceTokenizer(std::move(vocab), std::move(config), {}, path);
  }

  /// A parsed tokenizer.json with model.type "WordPiece" (normaliser and specials read from it).
  static WordPieceTokenizer from_json(const nlohmann::json& j, const std::string& path) {
    WEGEFT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(),
                 path << ": no \"model\" object");
    const auto& m = j["model"];
    WEGEFT_CHECK(
        json_string(m, "type", "", path) == "WordPiece",
        path << ": the model is '" << json_string(m, "type", "?", path) << "', not WordPiece");
    WEGEFT_CHECK(m.contains("vocab") && m["vocab"].is_object(),
                 path << ": model.vocab is not an object");
    WordPieceConfig c;
    c.unk_token = json_string(m, "unk_token", c.unk_token, path);
    c.prefix = json_string(m, "continuing_subword_prefix", c.prefix, path);
    c.max_input_chars_per_word =
        static_cast<std::size_t>(json_number(m, "max_input_chars_per_word", 100, path));
    if (j.contains("normalizer") && !j["normalizer"].is_null()) {
      const auto& n = j["normalizer"];
      WEGEFT_CHECK(json_string(n, "type", "", path) == "BertNormalizer",
                   path << ": normalizer '" << json_string(n, "type", "?", path)
                        << "' is not supported with WordPiece");
      c.clean_text = json_bool(n, "clean_text", true, path);
      c.handle_chinese_chars = json_bool(n, "handle_chinese_chars", true, path);
      c.lowercase = json_bool(n, "lowercase", true, path);
      if (n.contains("strip_accents") && !n["strip_accents"].is_null())
        c.strip_accents = json_bool(n, "strip_accents", true, path);
    } else {
      c.clean_text = c.handle_chinese_chars = c.lowercase = false;
      c.strip_accents = false;
    }
    const std::size_t n_vocab = m["vocab"].size();
    WEGEFT_CHECK(n_vocab > 0 && n_vocab <= (1u << 24),
                 path << ": model.vocab has " << n_vocab << " entries");
    std::vector<char> seen;
    std::vector<std::string> vocab = vocab_from_json(m["vocab"], n_vocab, seen, path);
    return WordPieceTokenizer(std::move(vocab), std::move(c), added_tokens_from_json(j, path),
                              path);
  }

  /// Ids of `s` without [CLS]/[SEP].
  std::vector<std::int32_t> tokenize(std::string_view s) const {
    std::vector<std::int32_t> ids;
    for (const auto& piece : m_added.split(s)) {
      if (piece.id >= 0) {
        ids.push_back(piece.id);
        continue;
      }
      const std::u32string norm = normalize(utf8_decode(piece.text));
      std::u32string word;
      auto flush = [&] {
        if (!word.empty()) word_ids(word, ids);
        word.clear();
      };
      for (char32_t c : norm) {
        if (is_whitespace(c)) {
          flush();
        } else if (detail::is_bert_punctuation(c)) {
          flush();
          word.push_back(c);
          flush();
        } else {
          word.push_back(c);
        }
      }
      flush();
    }
    return ids;
  }

  /// [CLS] a [SEP] (b [SEP]), truncated longest-first so the whole fits `max_length` (0: no
  /// limit).
  Encoding encode(std::string_view a, std::optional<std::string_view> b = std::nullopt,
                  std::size_t max_length = 0) const {
    auto ia = tokenize(a);
    std::vector<std::int32_t> ib;
    if (b) ib = tokenize(*b);
    if (max_length > 0) {
      const std::size_t specials = b ? 3 : 2;
      WEGEFT_CHECK(max_length >= specials, "max_length " << max_length << " leaves no room for the "
                                                         << specials << " special tokens");
      const std::size_t room = max_length - specials;
      if (!b) {
        if (ia.size() > room) ia.resize(room);
      } else if (ia.size() + ib.size() > room) {
        std::size_t n1 = ia.size(), n2 = ib.size();
        const bool swap = n1 > n2;
        if (swap) std::swap(n1, n2);
        n2 = n1 > room ? n1 : std::max(n1, room - n1);
        if (n1 + n2 > room) {
          n1 = room / 2;
          n2 = n1 + room % 2;
        }
        if (swap) std::swap(n1, n2);
        ia.resize(std::min(ia.size(), n1));
        ib.resize(std::min(ib.size(), n2));
      }
    }
    Encoding e;
    e.ids.push_back(m_cls);
    e.ids.insert(e.ids.end(), ia.begin(), ia.end());
    e.ids.push_back(m_sep);
    e.type_ids.assign(e.ids.size(), 0);
    if (b) {
      e.ids.insert(e.ids.end(), ib.begin(), ib.end());
      e.ids.push_back(m_sep);
      e.type_ids.resize(e.ids.size(), 1);
    }
    return e;
  }

  /// Text of `ids`: tokens joined, "##" pieces glued to the previous one, HF's clean-up of
  /// spaces before punctuation and contractions; special tokens dropped with `skip_special`.
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = true) const {
    std::string out;
    bool first = true;
    for (std::int32_t id : ids) {
      WEGEFT_CHECK(id >= 0 && static_cast<std::size_t>(id) < m_vocab.size(),
                   "token id " << id << " is outside the vocabulary of " << m_vocab.size());
      const AddedToken* added = m_added.find(id);
      if (skip_special && added != nullptr && added->special) continue;
      std::string tok = m_vocab[static_cast<std::size_t>(id)];
      if (!first) {
        if (tok.compare(0, m_config.prefix.size(), m_config.prefix) == 0) {
          tok.erase(0, m_config.prefix.size());
        } else {
          tok.insert(tok.begin(), ' ');
        }
      }
      first = false;
      out += detail::wordpiece_cleanup(std::move(tok));
    }
    return out;
  }

  std::optional<std::int32_t> token_to_id(const std::string& t) const {
    const auto it = m_index.find(t);
    if (it != m_index.end()) return it->second;
    for (const auto& a : m_added.tokens())
      if (a.content == t) return a.id;
    return std::nullopt;
  }
  const std::string& id_to_token(std::int32_t id) const {
    WEGEFT_CHECK(id >= 0 && static_cast<std::size_t>(id) < m_vocab.size(),
                 "token id " << id << " is outside the vocabulary");
    return m_vocab[static_cast<std::size_t>(id)];
  }
  std::size_t vocab_size() const { return m_vocab.size(); }
  std::int32_t cls_id() const { return m_cls; }
  std::int32_t sep_id() const { return m_sep; }
  std::int32_t pad_id() const { return m_pad; }
  std::int32_t unk_id() const { return m_unk; }
  const WordPieceConfig& config() const { return m_config; }

 private:
  std::int32_t required(const std::string& t, const std::string& what) const {
    const auto id = token_to_id(t);
    WEGEFT_CHECK(id.has_value(), what << ": the vocabulary has no '" << t << "' token");
    return *id;
  }

  std::u32string normalize(const std::u32string& in) const {
    std::u32string s;
    s.reserve(in.size());
    for (char32_t c : in) {
      if (m_config.clean_text) {
        const bool tab_or_newline = c == U'\t' || c == U'\n' || c == U'\r';
        if (c == 0 || c == 0xFFFD || (!tab_or_newline && is_other(c)))
          continue;  // before the whitespace test: U+0085 is both
        if (tab_or_newline || is_whitespace(c)) {
          s.push_back(U' ');
          continue;
        }
      }
      if (m_config.handle_chinese_chars && detail::is_cjk(c)) {
        s.push_back(U' ');
        s.push_back(c);
        s.push_back(U' ');
        continue;
      }
      s.push_back(c);
    }
    if (m_config.strip_accents.value_or(m_config.lowercase)) {
      std::u32string d = nfd(s);
      s.clear();
      for (char32_t c : d)
        if (!is_nonspacing_mark(c)) s.push_back(c);
    }
    if (m_config.lowercase) {
      std::u32string l;
      l.reserve(s.size());
      for (char32_t c : s) append_lower(l, c);
      s = std::move(l);
    }
    return s;
  }

  void word_ids(const std::u32string& word, std::vector<std::int32_t>& ids) const {
    if (word.size() > m_config.max_input_chars_per_word) {
      ids.push_back(m_unk);
      return;
    }
    const std::size_t before = ids.size();
    std::size_t start = 0;
    std::string piece;
    while (start < word.size()) {
      std::size_t end = word.size();
      std::int32_t found = -1;
      while (start < end) {
        piece = start > 0 ? m_config.prefix : std::string();
        for (std::size_t k = start; k < end; ++k) utf8_append(piece, word[k]);
        const auto it = m_index.find(piece);
        if (it != m_index.end()) {
          found = it->second;
          break;
        }
        --end;
      }
      if (found < 0) {
        ids.resize(before);
        ids.push_back(m_unk);
        return;
      }
      ids.push_back(found);
      start = end;
    }
  }

  std::vector<std::string> m_vocab;
  std::unordered_map<std::string, std::int32_t> m_index;
  WordPieceConfig m_config;
  AddedTokens m_added;
  std::int32_t m_unk = 0, m_cls = 0, m_sep = 0, m_pad = 0;
};

}  // namespace wegeft::text

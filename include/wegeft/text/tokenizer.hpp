// Loading the tokenizer that comes with a model, and the chat template of instruct models.
//
//   auto tok = wegeft::text::Tokenizer::load("all-MiniLM-L6-v2/");          // tokenizer.json or vocab.txt
//   auto tok = wegeft::text::Tokenizer::load("SmolLM2-135M-Instruct.gguf"); // tokenizer.ggml.*
//   std::vector<std::int32_t> ids = tok.encode("some text");
//
// A Hugging Face folder: tokenizer.json (WordPiece or byte-level BPE), else vocab.txt
// (WordPiece); tokenizer_config.json supplies bos/eos/pad tokens, add_bos_token and the chat
// template. A GGUF file: tokenizer.ggml.model "gpt2" (byte-level BPE; the pre-tokenizer named by
// tokenizer.ggml.pre: default/gpt2, smollm, llama-bpe) or "bert" is not read; SentencePiece
// ("llama") tokenizers are refused with a message naming what is supported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "wegeft/core/json.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/io/gguf.hpp"
#include "wegeft/text/bpe.hpp"
#include "wegeft/text/wordpiece.hpp"

namespace wegeft::text {

/// One chat message of {"messages": [{"role": ..., "content": ...}, ...]} data.
struct ChatMessage {
  std::string role, content;
};

/// ChatML as SmolLM2-Instruct and Qwen use it: "<|im_start|>ROLE\nCONTENT<|im_end|>\n" per
/// message; `default_system` is put first when the first message is not a system one (the
/// template's own default, read from it by chat_default_system). Returns the text and, in
/// `assistant_spans`, the byte ranges of assistant contents including their "<|im_end|>" (what a
/// model is trained to produce when prompts are masked).
inline std::string render_chatml(
    const std::vector<ChatMessage>& messages, const std::string& default_system,
    std::vector<std::pair<std::size_t, std::size_t>>* assistant_spans = nullptr) {
  std::string out;
  if (!default_system.empty() && (messages.empty() || messages.front().role != "system"))
    out += "<|im_start|>system\n" + default_system + "<|im_end|>\n";
  for (const auto& m : messages) {
    out += "<|im_start|>" + m.role + "\n";
    const std::size_t b = out.size();
    out += m.content + "<|im_end|>";
    if (assistant_spans != nullptr && m.role == "assistant")
      assistant_spans->emplace_back(b, out.size());
    out += "\n";
  }
  return out;
}

/// The default system prompt a ChatML Jinja template inserts (the text between
/// "<|im_start|>system\n" and "<|im_end|>" in a literal of the template), or "" if none.
inline std::string chat_default_system(const std::string& tmpl) {
  const std::string open = "<|im_start|>system\n";
  const auto b = tmpl.find(open);
  if (b == std::string::npos) return "";
  const auto e = tmpl.find("<|im_end|>", b + open.size());
  if (e == std::string::npos) return "";
  std::string s = tmpl.substr(b + open.size(), e - b - open.size());
  if (s.find("{{") != std::string::npos || s.find("{%") != std::string::npos)
    return "";  // not a literal
  return s;
}

class Tokenizer {
 public:
  enum class Kind { WordPiece, Bpe };

  explicit Tokenizer(WordPieceTokenizer t) : m_impl(std::move(t)) {}
  explicit Tokenizer(BpeTokenizer t) : m_impl(std::move(t)) {}

  /// A model folder, a tokenizer.json, a vocab.txt, or a .gguf file.
  static Tokenizer load(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    WEGEFT_CHECK(fs::exists(path, ec), path << ": no such file or directory");
    if (fs::is_directory(path, ec)) {
      const std::string tj = (fs::path(path) / "tokenizer.json").string();
      const std::string vt = (fs::path(path) / "vocab.txt").string();
      const std::string cfg = (fs::path(path) / "tokenizer_config.json").string();
      std::optional<Tokenizer> t;
      if (fs::exists(tj, ec)) {
        t.emplace(from_tokenizer_json(tj));
      } else if (fs::exists(vt, ec)) {
        t.emplace(WordPieceTokenizer::from_file(vt));
      } else {
        WEGEFT_CHECK(false, path << ": no tokenizer.json or vocab.txt in the model folder");
      }
      if (fs::exists(cfg, ec)) t->apply_tokenizer_config(cfg);
      return std::move(*t);
    }
    const auto ext = fs::path(path).extension().string();
    if (ext == ".gguf") return from_gguf(GgufReader(path));
    if (ext == ".json") return from_tokenizer_json(path);
    return Tokenizer(WordPieceTokenizer::from_file(path));
  }

  static Tokenizer from_tokenizer_json(const std::string& path) {
    const auto j = parse_json_strict(read_text_file(path), path);
    WEGEFT_CHECK(j.is_object() && j.contains("model") && j["model"].is_object(),
                 path << ": no \"model\" object");
    const std::string type = json_string(j["model"], "type", "BPE", path);
    if (type == "WordPiece") return Tokenizer(WordPieceTokenizer::from_json(j, path));
    if (type == "BPE") return Tokenizer(BpeTokenizer::from_json(j, path));
    WEGEFT_CHECK(false, path << ": tokenizer model '" << type
                             << "' is not supported (WordPiece and byte-level BPE are)");
    return Tokenizer(BpeTokenizer::from_json(j, path));
  }

  static Tokenizer from_gguf(const GgufReader& f) {
    const auto& m = f.metadata();
    const std::string& p = f.path();
    const std::string model = json_string(m, "tokenizer.ggml.model", "", p);
    WEGEFT_CHECK(!model.empty(),
                 p << ": no tokenizer.ggml.model in the metadata; the file carries no tokenizer");
    WEGEFT_CHECK(model == "gpt2",
                 p << ": tokenizer.ggml.model is '" << model
                   << "'; only byte-level BPE ('gpt2') tokenizers are read from GGUF files");
    WEGEFT_CHECK(m.contains("tokenizer.ggml.tokens") && m["tokenizer.ggml.tokens"].is_array(),
                 p << ": no tokenizer.ggml.tokens array");
    const auto& toks = m["tokenizer.ggml.tokens"];
    WEGEFT_CHECK(!toks.empty() && toks.size() <= (1u << 24),
                 p << ": tokenizer.ggml.tokens has " << toks.size() << " entries");
    std::vector<std::string> vocab;
    vocab.reserve(toks.size());
    for (const auto& t : toks) {
      WEGEFT_CHECK(t.is_string(), p << ": tokenizer.ggml.tokens holds a non-string");
      vocab.push_back(t.get<std::string>());
    }
    std::vector<std::pair<std::string, std::string>> merges;
    if (m.contains("tokenizer.ggml.merges")) {
      WEGEFT_CHECK(m["tokenizer.ggml.merges"].is_array(),
                   p << ": tokenizer.ggml.merges is not an array");
      for (const auto& e : m["tokenizer.ggml.merges"]) {
        WEGEFT_CHECK(e.is_string(), p << ": tokenizer.ggml.merges holds a non-string");
        const auto s = e.get<std::string>();
        const auto sp = s.find(' ');
        WEGEFT_CHECK(sp != std::string::npos && sp > 0 && sp + 1 < s.size(),
                     p << ": merge '" << s << "' is not 'left right'");
        merges.emplace_back(s.substr(0, sp), s.substr(sp + 1));
      }
    }
    std::vector<AddedToken> added;
    if (m.contains("tokenizer.ggml.token_type")) {
      const auto& types = m["tokenizer.ggml.token_type"];
      WEGEFT_CHECK(types.is_array() && types.size() == vocab.size(),
                   p << ": tokenizer.ggml.token_type has " << (types.is_array() ? types.size() : 0)
                     << " entries for " << vocab.size() << " tokens");
      for (std::size_t i = 0; i < vocab.size(); ++i) {
        WEGEFT_CHECK(types[i].is_number_integer(),
                     p << ": tokenizer.ggml.token_type holds a non-integer");
        const auto ty = types[i].get<std::int64_t>();
        if (ty == 3 || ty == 4)
          added.push_back(
              {vocab[i], static_cast<std::int32_t>(i), ty == 3});  // control, user-defined
      }
    }
    const std::string pre = json_string(m, "tokenizer.ggml.pre", "default", p);
    BpeConfig c;
    if (pre == "default" || pre == "gpt2" || pre == "gpt-2") {
      c.steps.push_back({PreTokenizeStep::Kind::Regex, std::make_shared<Regex>(kGpt2Pattern, p)});
    } else if (pre == "smollm") {
      c.steps.push_back({PreTokenizeStep::Kind::Digits, nullptr});
      c.steps.push_back({PreTokenizeStep::Kind::Regex, std::make_shared<Regex>(kGpt2Pattern, p)});
    } else if (pre == "llama-bpe" || pre == "llama3") {
      c.steps.push_back({PreTokenizeStep::Kind::Regex, std::make_shared<Regex>(kLlama3Pattern, p)});
      c.ignore_merges = true;
    } else {
      WEGEFT_CHECK(false, p << ": tokenizer.ggml.pre '" << pre
                            << "' is not supported (default, gpt2, smollm, llama-bpe are)");
    }
    auto id_of = [&](const char* key) -> std::optional<std::int32_t> {
      if (!m.contains(key)) return std::nullopt;
      WEGEFT_CHECK(m[key].is_number_integer(), p << ": " << key << " is not an integer");
      return static_cast<std::int32_t>(m[key].get<std::int64_t>());
    };
    c.bos_id = id_of("tokenizer.ggml.bos_token_id");
    c.eos_id = id_of("tokenizer.ggml.eos_token_id");
    c.pad_id = id_of("tokenizer.ggml.padding_token_id");
    c.add_bos = json_bool(m, "tokenizer.ggml.add_bos_token", false, p);
    Tokenizer t(
        BpeTokenizer(std::move(vocab), merges, std::move(c), AddedTokens(std::move(added)), p));
    t.m_chat_template = json_string(m, "tokenizer.chat_template", "", p);
    return t;
  }

  Kind kind() const { return m_impl.index() == 0 ? Kind::WordPiece : Kind::Bpe; }
  const WordPieceTokenizer* wordpiece() const { return std::get_if<WordPieceTokenizer>(&m_impl); }
  const BpeTokenizer* bpe() const { return std::get_if<BpeTokenizer>(&m_impl); }

  /// Ids of `s` with no special tokens added.
  std::vector<std::int32_t> encode(std::string_view s) const {
    return std::visit(
        [&](const auto& t) {
          if constexpr (std::is_same_v<std::decay_t<decltype(t)>, WordPieceTokenizer>)
            return t.tokenize(s);
          else
            return t.encode(s);
        },
        m_impl);
  }
  std::string decode(const std::vector<std::int32_t>& ids, bool skip_special = true) const {
    return std::visit([&](const auto& t) { return t.decode(ids, skip_special); }, m_impl);
  }
  std::size_t vocab_size() const {
    return std::visit([](const auto& t) { return t.vocab_size(); }, m_impl);
  }
  std::optional<std::int32_t> token_to_id(const std::string& s) const {
    return std::visit([&](const auto& t) { return t.token_to_id(s); }, m_impl);
  }
  /// End of sequence (BPE) or [SEP] (WordPiece).
  std::optional<std::int32_t> eos_id() const {
    if (const auto* w = wordpiece()) return w->sep_id();
    return bpe()->config().eos_id;
  }
  std::optional<std::int32_t> bos_id() const {
    if (const auto* w = wordpiece()) return w->cls_id();
    return bpe()->config().bos_id;
  }
  std::optional<std::int32_t> pad_id() const {
    if (const auto* w = wordpiece()) return w->pad_id();
    return bpe()->config().pad_id;
  }
  /// The Jinja chat template the model came with ("" if none).
  const std::string& chat_template() const { return m_chat_template; }
  bool chatml() const { return m_chat_template.find("<|im_start|>") != std::string::npos; }

 private:
  void apply_tokenizer_config(const std::string& path) {
    const auto j = parse_json_strict(read_text_file(path), path);
    if (!j.is_object()) return;
    m_chat_template = json_string(j, "chat_template", "", path);
    auto* b = std::get_if<BpeTokenizer>(&m_impl);
    if (b == nullptr) return;
    auto token = [&](const char* key) -> std::optional<std::int32_t> {
      if (!j.contains(key) || j[key].is_null()) return std::nullopt;
      std::string s;
      if (j[key].is_string())
        s = j[key].get<std::string>();
      else if (j[key].is_object())
        s = json_string(j[key], "content", "", path);
      const auto id = b->token_to_id(s);
      WEGEFT_CHECK(id.has_value(),
                   path << ": " << key << " '" << s << "' is not in the vocabulary");
      return id;
    };
    auto& c = b->config();
    if (auto id = token("bos_token")) c.bos_id = id;
    if (auto id = token("eos_token")) c.eos_id = id;
    if (auto id = token("pad_token")) c.pad_id = id;
    if (auto id = token("unk_token")) c.unk_id = id;
    c.add_bos = json_bool(j, "add_bos_token", false, path);
  }

  std::variant<WordPieceTokenizer, BpeTokenizer> m_impl;
  std::string m_chat_template;
};

}  // namespace wegeft::text

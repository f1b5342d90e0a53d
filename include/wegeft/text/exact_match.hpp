// Greedy exact match of a causal LM's completions, decided by one teacher-forced forward pass:
// the scoring behind `wegeft eval --exact-match` and the stop rule `wegeft generate` uses.
//
//   auto rule = text::stop_rule(tokenizer, {"\n"});      // EOS, <|im_end|>, and a newline
//   text::ExactMatch m = rule.judge(targets, argmaxes);  // per example, in target order
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "wegeft/text/tokenizer.hpp"

namespace wegeft::text {

/// Greedy exact match of one causal-LM example: greedy decoding from the example's untrained
/// prefix gives its completion and then stops. Fed the example's own tokens, the argmax at each
/// target position is what greedy decoding would emit there as long as every earlier one was the
/// target, so one forward pass over the padded batch decides it (see StopRule::judge).
struct ExactMatch {
  bool correct = false;
  std::vector<std::int32_t> greedy;  // the argmax at the target positions, to where it was decided
};

/// What ends a generation: a stop token (EOS, <|im_end|>) or, with `strings` (generate and eval's
/// --stop), the first occurrence of one of them in the generated text, which is cut there.
struct StopRule {
  std::vector<std::int32_t> tokens;
  std::vector<std::string> strings;
  const text::Tokenizer* tok = nullptr;

  bool is_token(std::int32_t t) const {
    return std::find(tokens.begin(), tokens.end(), t) != tokens.end();
  }
  /// Where the first stop string starts in `text`, or npos.
  std::size_t find(const std::string& text) const {
    std::size_t at = std::string::npos;
    for (const auto& s : strings) at = std::min(at, text.find(s));
    return at;
  }
  /// Judges one example from the argmax `got` at its target positions `want` (in order). The
  /// targets are one or more turns, each ending in a stop token; a turn is right when the greedy
  /// text, cut at its first stop (token or string), is the turn's text and the generation did stop
  /// there; the example is right when every turn is.
  ExactMatch judge(const std::vector<std::int32_t>& want,
                   const std::vector<std::int32_t>& got) const {
    ExactMatch m;
    std::vector<std::int32_t> gold, mine;  // this turn's target tokens and greedy tokens
    std::string gold_text;                 // this turn's target text (with stop strings only)
    bool ended = true;                     // no turn begun yet
    for (std::size_t i = 0; i < want.size(); ++i) {
      m.greedy.push_back(got[i]);
      if (ended) {  // a new turn: its target tokens up to its stop token
        gold.clear();
        mine.clear();
        for (std::size_t k = i; k < want.size() && !is_token(want[k]); ++k) gold.push_back(want[k]);
        if (!strings.empty()) gold_text = tok->decode(gold, true);
        ended = false;
      }
      if (is_token(got[i])) {  // generation ends here: right if the turn ends here too
        if (!is_token(want[i])) return m;
        ended = true;
        continue;
      }
      mine.push_back(got[i]);
      if (!strings.empty()) {
        const std::string text = tok->decode(mine, true);
        if (const auto at = find(text); at != std::string::npos) {
          if (at != gold_text.size() || text.compare(0, at, gold_text) != 0) return m;
          // Right; teacher forcing resumes at the turn's stop token (the next target turn).
          while (i + 1 < want.size() && !is_token(want[i])) ++i;
          ended = true;
          continue;
        }
      }
      if (got[i] != want[i]) return m;  // off the completion: generation would not give it
    }
    m.correct = ended;  // a last turn without a stop token would not end the generation
    return m;
  }
};

/// The stop tokens: EOS and <|im_end|> (when the vocabulary has them).
inline StopRule stop_rule(const text::Tokenizer& tok, std::vector<std::string> strings = {}) {
  StopRule r{.tokens = {}, .strings = std::move(strings), .tok = &tok};
  if (auto eos = tok.eos_id()) r.tokens.push_back(*eos);
  if (auto im_end = tok.token_to_id("<|im_end|>"); im_end && !r.is_token(*im_end))
    r.tokens.push_back(*im_end);
  return r;
}

}  // namespace wegeft::text

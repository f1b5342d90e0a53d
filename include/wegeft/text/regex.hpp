// A compiled PCRE2 pattern (UTF-8, Unicode properties, JIT where the platform has it), used for
// the pre-tokenizer patterns of byte-level BPE tokenizers. Patterns come from tokenizer files, so
// compilation errors name the pattern and the offset, and matching runs under a match limit so a
// pathological pattern fails with an error instead of running for ever.
#pragma once

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "wegeft/core/error.hpp"

namespace wegeft::text {

class Regex {
 public:
  /// Compiles `pattern`; `what` names where it came from (for the error message).
  explicit Regex(const std::string& pattern, const std::string& what = "pattern")
      : m_pattern(pattern) {
    WEGEFT_CHECK(pattern.size() <= 4096, what << ": the regular expression is " << pattern.size()
                                              << " bytes long; at most 4096 are accepted");
    int code = 0;
    PCRE2_SIZE offset = 0;
    pcre2_code* re = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   PCRE2_UTF | PCRE2_UCP, &code, &offset, nullptr);
    if (re == nullptr) {
      PCRE2_UCHAR buf[256];
      pcre2_get_error_message(code, buf, sizeof buf);
      WEGEFT_CHECK(false, what << ": regular expression '" << pattern
                               << "' does not compile at offset " << offset << ": "
                               << reinterpret_cast<const char*>(buf));
    }
    m_code.reset(re);
    m_jit = pcre2_jit_compile(re, PCRE2_JIT_COMPLETE) == 0;
    m_context.reset(pcre2_match_context_create(nullptr));
    pcre2_set_match_limit(m_context.get(), 10'000'000);
  }

  const std::string& pattern() const { return m_pattern; }

  /// The [begin, end) byte ranges of successive non-overlapping matches in `s` (valid UTF-8).
  /// An empty match advances by one code point, as Rust's regex and Oniguruma iterators do.
  /// Safe to call from several threads at once.
  std::vector<std::pair<std::size_t, std::size_t>> find_all(std::string_view s) const {
    std::vector<std::pair<std::size_t, std::size_t>> out;
    std::size_t pos = 0;
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    std::unique_ptr<pcre2_match_data, DataFree> data(
        pcre2_match_data_create_from_pattern(m_code.get(), nullptr));
    WEGEFT_CHECK(data != nullptr, "out of memory for a regular expression match");
    while (pos <= s.size()) {
      const int rc = pcre2_match(m_code.get(), subject, s.size(), pos, PCRE2_NO_UTF_CHECK,
                                 data.get(), m_context.get());
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) {
        PCRE2_UCHAR buf[256];
        pcre2_get_error_message(rc, buf, sizeof buf);
        WEGEFT_CHECK(false, "regular expression '"
                                << m_pattern << "' failed on a " << s.size()
                                << "-byte text: " << reinterpret_cast<const char*>(buf));
      }
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(data.get());
      const std::size_t b = ov[0], e = ov[1];
      if (e > b) {
        out.emplace_back(b, e);
        pos = e;
      } else {
        if (pos >= s.size()) break;
        ++pos;
        while (pos < s.size() && (static_cast<unsigned char>(s[pos]) & 0xC0) == 0x80) ++pos;
      }
    }
    return out;
  }

  bool jit() const { return m_jit; }

 private:
  struct CodeFree {
    void operator()(pcre2_code* p) const { pcre2_code_free(p); }
  };
  struct ContextFree {
    void operator()(pcre2_match_context* p) const { pcre2_match_context_free(p); }
  };
  struct DataFree {
    void operator()(pcre2_match_data* p) const { pcre2_match_data_free(p); }
  };
  std::string m_pattern;
  std::unique_ptr<pcre2_code, CodeFree> m_code;
  std::unique_ptr<pcre2_match_context, ContextFree> m_context;
  bool m_jit = false;
};

}  // namespace wegeft::text

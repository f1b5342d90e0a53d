// UTF-8 decoding and encoding, and the Unicode facts the tokenizers need, from ICU (libicu):
// general categories, the White_Space property, canonical decomposition (NFD) and lower-casing
// with Unicode's full mappings applied one code point at a time, as Hugging Face `tokenizers`
// does (so a final capital sigma becomes σ, not ς).
//
// Link: the `wegeft::text` CMake target (ICU's uc library and PCRE2).
#pragma once

#include <unicode/uchar.h>
#include <unicode/unorm2.h>
#include <unicode/utf16.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "wegeft/core/error.hpp"

namespace wegeft::text {

/// Decodes the code point starting at byte `i` of `s` into `c`; returns its length in bytes, or 0
/// when the bytes there are not well-formed UTF-8 (overlong forms, surrogates, values past
/// U+10FFFF, truncated sequences, stray continuation bytes). `why`, if given, says which.
inline std::size_t utf8_next(std::string_view s, std::size_t i, char32_t& c,
                             const char** why = nullptr) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const std::size_t n = s.size();
  const unsigned char b = p[i];
  std::size_t len = 0;
  char32_t min = 0;
  const auto bad = [&](const char* w) -> std::size_t {
    if (why != nullptr) *why = w;
    return 0;
  };
  if (b < 0x80) {
    c = b;
    return 1;
  }
  if ((b & 0xE0) == 0xC0) {
    c = b & 0x1F, len = 2, min = 0x80;
  } else if ((b & 0xF0) == 0xE0) {
    c = b & 0x0F, len = 3, min = 0x800;
  } else if ((b & 0xF8) == 0xF0) {
    c = b & 0x07, len = 4, min = 0x10000;
  } else {
    return bad("is not a lead byte");
  }
  if (len > n - i) return bad("starts a sequence that is cut short");
  for (std::size_t k = 1; k < len; ++k) {
    if ((p[i + k] & 0xC0) != 0x80) return bad("starts a sequence with a missing continuation byte");
    c = (c << 6) | (p[i + k] & 0x3F);
  }
  if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
    return bad("starts a sequence that is overlong, a surrogate or out of range");
  return len;
}

/// Code points of `s`; refuses malformed UTF-8, naming the byte offset. `what` names the source
/// in the error.
inline std::u32string utf8_decode(std::string_view s, std::string_view what = "text") {
  std::u32string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size();) {
    char32_t c = 0;
    const char* why = "";
    const std::size_t len = utf8_next(s, i, c, &why);
    WEGEFT_CHECK(len > 0, what << " is not valid UTF-8: byte " << i << " (0x" << std::hex
                               << int(static_cast<unsigned char>(s[i])) << std::dec << ") " << why);
    out.push_back(c);
    i += len;
  }
  return out;
}

/// Throws (as utf8_decode) unless `s` is well-formed UTF-8; allocates nothing.
inline void utf8_check(std::string_view s, std::string_view what = "text") {
  for (std::size_t i = 0; i < s.size();) {
    char32_t c = 0;
    const std::size_t len = utf8_next(s, i, c);
    if (len == 0) (void)utf8_decode(s.substr(i), what);  // throws with the reason
    i += len;
  }
}

/// Appends the UTF-8 form of the code point `c` (which must be a valid scalar value).
inline void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

inline std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

/// Unicode's White_Space property (what Rust's char::is_whitespace tests).
inline bool is_whitespace(char32_t c) {
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

/// General category C* other than the line separators: Cc, Cf, Cs, Co, Cn.
inline bool is_other(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
      return true;
    default:
      return false;
  }
}

/// General category P* (connector, dash, open, close, initial, final, other punctuation).
inline bool is_punctuation(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_CONNECTOR_PUNCTUATION:
    case U_DASH_PUNCTUATION:
    case U_START_PUNCTUATION:
    case U_END_PUNCTUATION:
    case U_INITIAL_PUNCTUATION:
    case U_FINAL_PUNCTUATION:
    case U_OTHER_PUNCTUATION:
      return true;
    default:
      return false;
  }
}

/// General category N* (Nd, Nl, No): what Rust's char::is_numeric tests.
inline bool is_numeric(char32_t c) {
  switch (u_charType(static_cast<UChar32>(c))) {
    case U_DECIMAL_DIGIT_NUMBER:
    case U_LETTER_NUMBER:
    case U_OTHER_NUMBER:
      return true;
    default:
      return false;
  }
}

inline bool is_nonspacing_mark(char32_t c) {
  return u_charType(static_cast<UChar32>(c)) == U_NON_SPACING_MARK;
}

/// Canonical decomposition (NFD).
inline std::u32string nfd(std::u32string_view s) {
  UErrorCode err = U_ZERO_ERROR;
  const UNormalizer2* norm = unorm2_getNFDInstance(&err);
  WEGEFT_CHECK(U_SUCCESS(err), "ICU: no NFD normaliser (" << u_errorName(err) << ")");
  std::vector<UChar> in;
  in.reserve(s.size());
  for (char32_t c : s) {
    if (c < 0x10000) {
      in.push_back(static_cast<UChar>(c));
    } else {
      in.push_back(U16_LEAD(c));
      in.push_back(U16_TRAIL(c));
    }
  }
  std::vector<UChar> out(in.size() * 4 + 16);
  int32_t len = unorm2_normalize(norm, in.data(), static_cast<int32_t>(in.size()), out.data(),
                                 static_cast<int32_t>(out.size()), &err);
  if (err == U_BUFFER_OVERFLOW_ERROR) {
    err = U_ZERO_ERROR;
    out.resize(static_cast<std::size_t>(len));
    len = unorm2_normalize(norm, in.data(), static_cast<int32_t>(in.size()), out.data(), len, &err);
  }
  WEGEFT_CHECK(U_SUCCESS(err), "ICU: NFD failed (" << u_errorName(err) << ")");
  std::u32string r;
  r.reserve(static_cast<std::size_t>(len));
  for (int32_t i = 0; i < len;) {
    UChar32 c;
    U16_NEXT(out.data(), i, len, c);
    r.push_back(static_cast<char32_t>(c));
  }
  return r;
}

/// Lower-cases one code point at a time with Unicode's full, context-free mappings (U+0130 İ
/// becomes "i" + U+0307; everything else maps to one code point).
inline void append_lower(std::u32string& out, char32_t c) {
  if (c == 0x130) {
    out.push_back(U'i');
    out.push_back(0x307);
    return;
  }
  out.push_back(static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
}

}  // namespace wegeft::text

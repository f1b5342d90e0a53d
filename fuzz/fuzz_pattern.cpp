// libFuzzer target: the bytes before the first newline as a Pattern, the rest as the text it is
// matched against in all three modes. Only wegeft::Error may escape, and no input may make
// matching slower than linear (libFuzzer's -timeout catches a backtracking blow-up).
#include <wegeft/core/pattern.hpp>

#include <cstdint>
#include <string_view>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const std::size_t cut = all.find('\n');
  const std::string_view source = all.substr(0, cut), text = cut == std::string_view::npos
                                                                 ? std::string_view{}
                                                                 : all.substr(cut + 1);
  try {
    const wegeft::Pattern p(source);
    (void)p.full_match(text);
    (void)p.prefix_match(text);
    (void)p.search(text);
  } catch (const wegeft::Error&) {
  }
  return 0;
}

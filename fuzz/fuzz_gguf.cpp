// libFuzzer target: any bytes as a GGUF file. Only wegeft::Error may escape the reader.
#include <wegeft/io/gguf.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string dir = fuzz_write(data, size, "in.gguf");
  try {
    const wegeft::GgufReader f(dir + "/in.gguf");
    for (const auto& t : f.tensors()) {
      if (t.numel > (1u << 20) || t.ne.size() > 2) continue;
      try {
        (void)f.matrix<float>(t.name);
      } catch (const wegeft::Error&) {
      }
    }
  } catch (const wegeft::Error&) {
  }
  return 0;
}

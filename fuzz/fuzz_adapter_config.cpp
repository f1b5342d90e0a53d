// libFuzzer target: any bytes as an adapter_config.json (the spec it yields is then matched
// against a few module names, regexes from the file included) and as a Hugging Face config.json.
// Only wegeft::Error may escape.
#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/peft.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string dir = fuzz_write(data, size, "adapter_config.json");
  try {
    const wegeft::AdapterConfig c = wegeft::read_adapter_config(dir);
    for (const char* name : {"model.layers.0.self_attn.q_proj", "transformer.h.1.mlp.c_proj"}) {
      (void)wegeft::targets_module(c.spec, name, "q", 0);
      (void)wegeft::rank_for(c.spec, name, "q", 8);
      (void)wegeft::alpha_for(c.spec, name, "q", 8.0);
      if (const auto* w = std::get_if<wegeft::WeGeFTConfig>(&c.spec.method))
        (void)wegeft::tied_group_of(w->tied_modules, name);
    }
  } catch (const wegeft::Error&) {
  }
  try {
    const std::string text(reinterpret_cast<const char*>(data), size);
    const auto c = wegeft::config_from_hf(wegeft::detail::parse_json_strict(text, "config.json"),
                                          "config.json");
    c.validate();
  } catch (const wegeft::Error&) {
  }
  return 0;
}

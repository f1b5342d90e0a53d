// Writes the hostile inputs of tests/tool/hostile.sh into OUT_DIR: adapters whose tensors do not
// fit their config or the base, JSON nested 100,000 deep, patterns that make backtracking matchers
// explode, GGUF files whose sizes and types would make a careless reader allocate gigabytes,
// configs with absurd sizes, and adapters whose merge overflows. Each is small; what each must
// provoke is asserted by hostile.sh.
// Usage: make_hostile GOLDEN_DIR OUT_DIR
#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/peft.hpp>
#include <wegeft/io/safetensors.hpp>
#include <wegeft/nn/model.hpp>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace fs = std::filesystem;
using namespace wegeft;

namespace {

void write_text(const fs::path& p, const std::string& text) {
  fs::create_directories(p.parent_path());
  std::ofstream(p, std::ios::binary) << text;
}

/// A copy of adapter directory `src` into `dst` with tensor `name` replaced by `value` of `shape`
/// and dtype `dtype` (F32 unless given); an empty `name` copies every tensor unchanged.
void rewrite_adapter(const fs::path& src, const fs::path& dst, const std::string& name,
                     std::vector<double> value, std::vector<std::int64_t> shape,
                     DType dtype = DType::F32) {
  fs::create_directories(dst);
  fs::copy_file(src / "adapter_config.json", dst / "adapter_config.json",
                fs::copy_options::overwrite_existing);
  const SafetensorsReader in((src / "adapter_model.safetensors").string());
  SafetensorsBuilder b;
  for (const auto& t : in.tensors()) {
    if (t.name == name)
      b.add(name, dtype, shape, value.data(), value.size());
    else
      b.add_raw(t.name, t.dtype, t.shape, in.data(t), t.nbytes);
  }
  b.write((dst / "adapter_model.safetensors").string());
}

/// `dir`/adapter_config.json with `key` set to the raw JSON text `value`.
void set_config(const fs::path& dir, const std::string& key, const std::string& value) {
  auto j = nlohmann::ordered_json::parse(read_text_file((dir / "adapter_config.json").string()));
  j.erase(key);
  std::string text = j.dump(2);
  text.insert(text.size() - 2, ",\n  \"" + key + "\": " + value);
  write_text(dir / "adapter_config.json", text);
}

// Little-endian GGUF pieces.
struct Bytes {
  std::string s;
  template <class U>
  Bytes& put(U v) {
    char b[sizeof(U)];
    std::memcpy(b, &v, sizeof(U));
    s.append(b, sizeof(U));
    return *this;
  }
  Bytes& str(const std::string& v) {
    put<std::uint64_t>(v.size());
    s += v;
    return *this;
  }
  Bytes& kv_u32(const std::string& k, std::uint32_t v) {
    return str(k).put<std::uint32_t>(4).put(v);
  }
  Bytes& kv_str(const std::string& k, const std::string& v) {
    return str(k).put<std::uint32_t>(8).str(v);
  }
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s GOLDEN_DIR OUT_DIR\n", argv[0]);
    return 2;
  }
  const fs::path golden = argv[1], out = argv[2];
  try {
    fs::create_directories(out);
    const fs::path base = golden / "interop/llama/base", lora = golden / "interop/llama/lora";

    // 1. A WeGeFT adapter (r 2 on q and v) whose Psi has another rank or d_in than its config and the base.
    {
      auto m = load_hf_model<double>(base.string());
      ParameterStore<double> store;
      m.model->attach({.target_modules = {"q", "v"}, .method = WeGeFTConfig{.rank = 2, .alpha = 4}},
                      store);
      save_adapter(*m.model, store, (out / "wegeft-good").string());
      const std::string psi = "base_model.model.model.layers.0.self_attn.q_proj.wegeft_psi.weight";
      rewrite_adapter(out / "wegeft-good", out / "wegeft-rank", psi,
                      std::vector<double>(3 * 16, 0.5), {3, 16});
      rewrite_adapter(out / "wegeft-good", out / "wegeft-din", psi,
                      std::vector<double>(2 * 15, 0.5), {2, 15});
      rewrite_adapter(out / "wegeft-good", out / "wegeft-3d", psi, std::vector<double>(2 * 16, 0.5),
                      {2, 4, 4});
    }
    // LoRA tensors that do not fit: rank, 3-D, integer, a stray tensor.
    const std::string a0 = "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight";
    const std::string b0 = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight";
    rewrite_adapter(lora, out / "lora-rank", a0, std::vector<double>(3 * 16, 0.1), {3, 16});
    rewrite_adapter(lora, out / "lora-3d", a0, std::vector<double>(4 * 16, 0.1), {4, 4, 4});
    rewrite_adapter(lora, out / "lora-int", a0, std::vector<double>(4 * 16, 1), {4, 16},
                    DType::I32);
    rewrite_adapter(lora, out / "lora-b-shape", b0, std::vector<double>(15 * 4, 0.1), {15, 4});
    rewrite_adapter(lora, out / "lora-stray", "", {}, {});
    {
      const SafetensorsReader in((lora / "adapter_model.safetensors").string());
      SafetensorsBuilder b;
      for (const auto& t : in.tensors()) b.add_raw(t.name, t.dtype, t.shape, in.data(t), t.nbytes);
      const std::vector<float> extra(4 * 16, 0.1f);
      b.add("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", DType::F32, {4, 16},
            extra.data(), extra.size());
      b.write((out / "lora-stray/adapter_model.safetensors").string());
    }

    // 2. Nesting: an adapter config and a safetensors header 100,000 deep.
    const std::string deep = std::string(100000, '[') + std::string(100000, ']');
    rewrite_adapter(lora, out / "deep-config", "", {}, {});
    set_config(out / "deep-config", "lora_alpha", deep);
    rewrite_adapter(lora, out / "deep-unused", "", {}, {});
    set_config(out / "deep-unused", "megatron_config", deep);
    {
      const std::string header =
          R"({"x":{"dtype":"F32","shape":)" + deep + R"(,"data_offsets":[0,4]}})";
      std::string file(8, '\0');
      for (int i = 0; i < 8; ++i)
        file[static_cast<std::size_t>(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
      write_text(out / "deep-header.safetensors", file + header + std::string(4, '\0'));
    }

    // 3. Patterns: catastrophic backtracking, 20,000 nested groups, and a rank_pattern key of each kind.
    rewrite_adapter(lora, out / "redos", "", {}, {});
    set_config(out / "redos", "target_modules", R"("(.*.*.*)*X")");
    rewrite_adapter(lora, out / "redos-rank", "", {}, {});
    set_config(out / "redos-rank", "rank_pattern", R"({"(.*.*.*)*q_proj": 2})");
    rewrite_adapter(lora, out / "parens", "", {}, {});
    set_config(out / "parens", "target_modules",
               "\"" + std::string(20000, '(') + std::string(20000, ')') + "\"");
    rewrite_adapter(lora, out / "nested-groups", "", {}, {});
    set_config(out / "nested-groups", "target_modules",
               "\"" + std::string(100, '(') + "q_proj" + std::string(100, ')') + "\"");

    // 4. Memory: a 1 KB GGUF whose token embedding claims 2^22 x 64 values of an unknown type, one
    // whose metadata array claims 50 million elements in 50 MiB, and configs with absurd sizes.
    {
      Bytes g;
      g.put<std::uint32_t>(0x46554747u)
          .put<std::uint32_t>(3)
          .put<std::uint64_t>(1)
          .put<std::uint64_t>(6);
      g.kv_str("general.architecture", "llama")
          .kv_u32("llama.embedding_length", 64)
          .kv_u32("llama.block_count", 1);
      g.kv_u32("llama.attention.head_count", 1)
          .kv_u32("llama.feed_forward_length", 1)
          .kv_u32("llama.context_length", 8);
      g.str("token_embd.weight")
          .put<std::uint32_t>(2)
          .put<std::uint64_t>(64)
          .put<std::uint64_t>(1u << 22);
      g.put<std::uint32_t>(99).put<std::uint64_t>(0);
      g.s.append((32 - g.s.size() % 32) % 32, '\0');
      g.s.append(64, '\0');
      write_text(out / "huge-ne.gguf", g.s);
    }
    {
      const std::uint64_t n = 50ull << 20;
      Bytes g;
      g.put<std::uint32_t>(0x46554747u)
          .put<std::uint32_t>(3)
          .put<std::uint64_t>(0)
          .put<std::uint64_t>(1);
      g.str("tokenizer.ggml.token_type")
          .put<std::uint32_t>(9)
          .put<std::uint32_t>(0)
          .put<std::uint64_t>(n);
      g.s.append(n, '\1');
      write_text(out / "big-array.gguf", g.s);
    }
    {
      auto cfg = nlohmann::ordered_json::parse(read_text_file((base / "config.json").string()));
      cfg["vocab_size"] = 1ull << 40;
      write_text(out / "vocab40/config.json", cfg.dump(2));
      fs::copy_file(base / "model.safetensors", out / "vocab40/model.safetensors",
                    fs::copy_options::overwrite_existing);
      cfg["vocab_size"] = 1ull << 22;
      cfg["hidden_size"] = 4096;
      cfg["num_attention_heads"] = 32;
      cfg["num_key_value_heads"] = 32;
      write_text(out / "vocab22/config.json", cfg.dump(2));
      fs::copy_file(base / "model.safetensors", out / "vocab22/model.safetensors",
                    fs::copy_options::overwrite_existing);
    }

    // 5. Finite inputs with wrong results: a merge that overflows F32, alpha 0 for convert, a
    // modules_to_save path, and an integer base weight.
    rewrite_adapter(lora, out / "alpha-huge", "", {}, {});
    set_config(out / "alpha-huge", "lora_alpha", "1e300");
    rewrite_adapter(lora, out / "alpha-zero", "", {}, {});
    set_config(out / "alpha-zero", "lora_alpha", "0");
    rewrite_adapter(lora, out / "save-path", "", {}, {});
    set_config(out / "save-path", "modules_to_save", R"(["../../etc/passwd"])");
    {
      fs::create_directories(out / "int-base");
      fs::copy_file(base / "config.json", out / "int-base/config.json",
                    fs::copy_options::overwrite_existing);
      const SafetensorsReader in((base / "model.safetensors").string());
      SafetensorsBuilder b;
      for (const auto& t : in.tensors()) {
        if (t.name == "model.layers.1.self_attn.q_proj.weight") {
          const std::vector<double> ints(t.numel, 3.0);
          b.add(t.name, DType::I8, t.shape, ints.data(), ints.size());
        } else {
          b.add_raw(t.name, t.dtype, t.shape, in.data(t), t.nbytes);
        }
      }
      b.write((out / "int-base/model.safetensors").string());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_hostile: %s\n", e.what());
    return 1;
  }
  return 0;
}

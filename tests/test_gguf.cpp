// GGUF: files written by llama.cpp's gguf package (tools/reference/make_gguf_golden.py) in every
// supported type, the Llama model they hold, our writer, and hostile files.
#include "support.hpp"

#include <filesystem>
#include <fstream>

#include <wegeft/io/gguf.hpp>
#include <wegeft/io/gguf_model.hpp>

using namespace wegeft;
namespace fs = std::filesystem;

namespace {
std::string gguf_path(const std::string& name) {
  return std::string(WEGEFT_GOLDEN_DIR) + "/gguf/" + name;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
}  // namespace

TEST_CASE("GGUF tensors of every supported type dequantize as llama.cpp's gguf package does",
          "[io][gguf]") {
  const std::string type =
      GENERATE(as<std::string>{}, "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1");
  INFO(type);
  const GgufReader f(gguf_path("tiny-" + type + ".gguf"));
  const wt::Golden g("gguf/expected.txt");
  CHECK(f.version() == 3);
  CHECK(f.metadata()["general.architecture"] == "llama");
  CHECK(f.metadata()["tokenizer.ggml.tokens"].size() == 40);
  CHECK(f.metadata()["tokenizer.ggml.tokens"][7] == "tok7");
  for (const char* name : {"blk.0.attn_q.weight", "blk.1.ffn_down.weight"}) {
    INFO(name);
    CHECK(wt::rel_diff(f.matrix<double>(name), g.get(type + "." + name)) < 1e-7);
  }
}

TEST_CASE("a Llama GGUF file loads with q/k un-permuted and gives Hugging Face's logits",
          "[io][gguf]") {
  const std::string type =
      GENERATE(as<std::string>{}, "f32", "f16", "q8_0");  // Q4 dequantization is checked above
  INFO(type);
  auto loaded = load_gguf_model<double>(gguf_path("tiny-" + type + ".gguf"));
  const ModelConfig& c = loaded.model->config();
  CHECK(c.hidden == 32);
  CHECK(c.kv_heads == 2);
  CHECK(c.vocab_size == 40);
  CHECK(loaded.ignored.empty());
  const wt::Golden g("gguf/expected.txt");
  const Matrix<double> ids = g.get("input.input_ids"), mask = g.get("input.attention_mask");
  std::vector<std::int32_t> id;
  std::vector<std::uint8_t> m;
  for (Index i = 0; i < ids.size(); ++i) {
    id.push_back(static_cast<std::int32_t>(ids.data()[i]));
    m.push_back(mask.data()[i] != 0);
  }
  Transformer<double>::Activations acts;
  loaded.model->forward(
      acts, {.ids = id.data(), .mask = m.data(), .batch = ids.rows(), .seq = ids.cols()});
  // F32 holds the reference weights exactly; the lossy types must still be close.
  const double tol = type == "f32" ? 1e-6 : type == "f16" ? 1e-2 : 5e-2;
  CHECK(wt::rel_diff(acts.logits, g.get("logits")) < tol);
}

TEST_CASE("GGUF written by wegeft reads back", "[io][gguf]") {
  const fs::path dir = fs::temp_directory_path() /
                       ("wegeft-gguf-" + std::to_string(Rng(std::random_device{}()).next_u64()));
  fs::create_directories(dir);
  Rng rng(1);
  const Matrix<float> a = wt::random_matrix<float>(3, 5, rng);
  GgufWriter w;
  w.set("general.architecture", "llama");
  w.set_u32("adapter.lora.rank", 3);
  w.set_f32("adapter.lora.alpha", 6.0f);
  w.set_strings("names", {"x", "y"});
  w.add("a.lora_a", a);
  w.add("a.lora_b", a, GgmlType::F16);
  w.add("v", Matrix<float>(a.topRows(1)), GgmlType::F32, true);
  w.write((dir / "out.gguf").string());
  const GgufReader f((dir / "out.gguf").string());
  CHECK(f.metadata()["adapter.lora.alpha"] == 6.0);
  CHECK(f.metadata()["names"][1] == "y");
  CHECK(f.info("a.lora_a").ne == std::vector<std::uint64_t>{5, 3});
  CHECK(f.info("v").ne.size() == 1);
  CHECK(f.matrix<float>("a.lora_a") == a);
  CHECK(wt::rel_diff(f.matrix<float>("a.lora_b"), a) < 1e-3);
  fs::remove_all(dir);
}

TEST_CASE("hostile GGUF files get clear errors naming the file and the problem",
          "[io][gguf][hostile]") {
  const std::string good = read_all(gguf_path("tiny-q8_0.gguf"));
  const fs::path dir =
      fs::temp_directory_path() /
      ("wegeft-gguf-bad-" + std::to_string(Rng(std::random_device{}()).next_u64()));
  fs::create_directories(dir);
  const std::string path = (dir / "bad.gguf").string();
  const auto expect = [&](std::string bytes, const char* message) {
    INFO(message);
    std::ofstream(path, std::ios::binary) << bytes;
    CHECK_THROWS_WITH(GgufReader(path), Catch::Contains(message) && Catch::Contains("bad.gguf"));
  };
  const auto patch64 = [](std::string s, std::size_t at, std::uint64_t v) {
    std::memcpy(s.data() + at, &v, 8);
    return s;
  };
  expect("", "truncated");
  expect("GGML" + good.substr(4), "bad magic");
  expect(patch64(good, 4, 1).substr(0, 8) + good.substr(8), "version 1 is not supported");
  expect(patch64(good, 8, 1ull << 40), "more than the file can hold");
  expect(patch64(good, 16, 1ull << 40), "more than the file can hold");
  expect(good.substr(0, 40), "more than the file can hold");
  expect(patch64(good, 24, 1ull << 50), "runs past the end of the file");  // first key's length
  expect(good.substr(0, good.size() - 100), "runs past the end of the");
  // first tensor info: find its name and corrupt the fields after it
  const std::string first = "token_embd.weight";
  const auto name_at = good.find(first);
  REQUIRE(name_at != std::string::npos);
  std::string dims5 = good;
  const std::uint32_t five = 5;
  std::memcpy(dims5.data() + name_at + first.size(), &five, 4);
  expect(dims5, "has 5 dimensions");
  std::string misaligned = good;
  const std::size_t type_at = name_at + first.size() + 4 + 16;
  const std::uint64_t odd = 7;
  std::memcpy(misaligned.data() + type_at + 4, &odd, 8);
  expect(misaligned, "is not aligned to 32");
  std::string blocks = good;
  const std::uint64_t ne0 = 33;
  std::memcpy(blocks.data() + name_at + first.size() + 4, &ne0, 8);
  expect(blocks, "not a multiple of its block size 32");
  std::string unknown = good;
  const std::uint32_t q5 = 6;
  std::memcpy(unknown.data() + type_at, &q5, 4);
  std::ofstream(path, std::ios::binary) << unknown;
  const GgufReader f(path);  // inspectable ...
  CHECK_THROWS_WITH(f.matrix<float>(first),
                    Catch::Contains("cannot dequantize"));  // ... but not loadable
  fs::remove_all(dir);
}

// The file operations behind the wegeft tool: merging adapters into checkpoints (checked against
// PEFT's logits and against the unmerged adapted model) and LoRA -> GGUF conversion.
#include "support.hpp"

#include <filesystem>

#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/merge.hpp>
#include <wegeft/io/peft.hpp>

using namespace wegeft;
namespace fs = std::filesystem;

namespace {

std::string interop(const std::string& rel) {
  return std::string(WEGEFT_GOLDEN_DIR) + "/interop/" + rel;
}

struct TempDir {
  fs::path path = fs::temp_directory_path() /
                  ("wegeft-tools-" + std::to_string(Rng(std::random_device{}()).next_u64()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  std::string str(const std::string& sub = "") const { return (path / sub).string(); }
};

// Merges `adapter` into the interop base of `family`; returns the merged checkpoint directory.
std::string merged_checkpoint(const TempDir& dir, const std::string& family,
                              const std::string& adapter) {
  fs::create_directories(dir.path / "merged");
  fs::copy_file(interop(family + "/base/config.json"), dir.path / "merged" / "config.json");
  merge_adapter(interop(family + "/base"), adapter, dir.str("merged/model.safetensors"));
  return dir.str("merged");
}

ModelInput<double> text_input(const wt::Golden& g, std::vector<std::int32_t>& ids,
                              std::vector<std::uint8_t>& mask) {
  const Matrix<double> id = g.get("input.input_ids"), m = g.get("input.attention_mask");
  for (Index i = 0; i < id.size(); ++i) {
    ids.push_back(static_cast<std::int32_t>(id.data()[i]));
    mask.push_back(m.data()[i] != 0);
  }
  return {.ids = ids.data(), .mask = mask.data(), .batch = id.rows(), .seq = id.cols()};
}

}  // namespace

TEST_CASE("merging a PEFT LoRA adapter into a checkpoint gives PEFT's logits from the plain model",
          "[tools][merge]") {
  const std::string family = GENERATE(as<std::string>{}, "gpt2", "llama");
  INFO(family);
  TempDir dir;
  auto loaded = load_hf_model<double>(merged_checkpoint(dir, family, interop(family + "/lora")));
  const wt::Golden g("interop/" + family + "/expected.txt");
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> mask;
  Transformer<double>::Activations acts;
  loaded.model->forward(acts, text_input(g, ids, mask));
  CHECK(wt::rel_diff(acts.logits, g.get("logits")) <
        1e-5);  // merged weights are stored back as float32
  // dtypes preserved, untouched tensors byte-identical
  const SafetensorsReader base(interop(family + "/base/model.safetensors")),
      merged(dir.str("merged/model.safetensors"));
  CHECK(merged.tensors().size() == base.tensors().size());
  for (const auto& t : base.tensors()) {
    INFO(t.name);
    CHECK(merged.info(t.name).dtype == t.dtype);
    if (t.name.find("norm") != std::string::npos || t.name.find("embed") != std::string::npos)
      CHECK(std::memcmp(merged.data(merged.info(t.name)), base.data(t), t.nbytes) == 0);
  }
}

TEST_CASE("merging a LoRA adapter with modules_to_save replaces the head and adds s B A",
          "[tools][merge]") {
  TempDir dir;
  merged_checkpoint(dir, "bert", interop("bert/lora"));
  const SafetensorsReader base(interop("bert/base/model.safetensors")),
      merged(dir.str("merged/model.safetensors"));
  const SafetensorsReader adapter(interop("bert/lora/adapter_model.safetensors"));
  const std::string m = "bert.encoder.layer.1.attention.self.value";
  const Matrix<double> a = adapter.matrix<double>("base_model.model." + m + ".lora_A.weight");
  const Matrix<double> b = adapter.matrix<double>("base_model.model." + m + ".lora_B.weight");
  CHECK(a.rows() == 3);  // rank_pattern {"value": 3}, lora_alpha 4 -> s = 4 / 3
  const Matrix<double> want =
      base.matrix<double>(m + ".weight") + (4.0 / 3.0) * wt::reference_matmul<double>(b, a);
  CHECK(wt::rel_diff(merged.matrix<double>(m + ".weight"), want) < 1e-6);
  CHECK(merged.matrix<double>("classifier.weight") ==
        adapter.matrix<double>("base_model.model.classifier.weight"));
  CHECK(merged.matrix<double>("bert.encoder.layer.1.attention.self.key.weight") ==
        base.matrix<double>("bert.encoder.layer.1.attention.self.key.weight"));
}

TEST_CASE("merging a WeGeFT or DoRA adapter gives the adapted model's output from the plain model",
          "[tools][merge]") {
  const std::string family =
      GENERATE(as<std::string>{}, "gpt2", "llama");  // gpt2: [in, out] Conv1D weights
  const int which = GENERATE(1, 2);
  INFO(family << " " << method_name(wt::method_config(which, 2, 3)));
  TempDir dir;
  auto adapted = load_hf_model<double>(interop(family + "/base"));
  ParameterStore<double> store;
  adapted.model->attach({.target_modules = {"all-linear"},
                         .method = wt::method_config(which, 2, 3),
                         .rank_pattern = {{"down", 3}}},
                        store);
  Rng rng(8);
  for (std::size_t i = 0; i < store.entries().size(); ++i)
    fill_uniform(store.value(ParamId{i}), rng, -0.4, 0.4);
  save_adapter(*adapted.model, store, dir.str("adapter"), "", DType::F64);
  auto merged = load_hf_model<double>(merged_checkpoint(dir, family, dir.str("adapter")));
  const wt::Golden g("interop/" + family + "/expected.txt");
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> mask;
  const auto in = text_input(g, ids, mask);
  Transformer<double>::Activations a, m;
  adapted.model->forward(a, in);
  merged.model->forward(m, in);
  CHECK(wt::rel_diff(m.logits, a.logits) < 1e-5);
  CHECK(wt::rel_diff(m.logits, g.get("logits")) > 1e-3);  // the adapter did change the model
}

TEST_CASE("LoRA to GGUF conversion folds every module's scale into lora_b and permutes q/k rows",
          "[tools][gguf]") {
  TempDir dir;
  const Index n = convert_lora_to_gguf(interop("llama/lora"), interop("llama/base/config.json"),
                                       dir.str("a.gguf"));
  CHECK(n == 7);
  const GgufReader f(dir.str("a.gguf"));
  CHECK(f.metadata()["general.type"] == "adapter");
  CHECK(f.metadata()["adapter.type"] == "lora");
  const double alpha = f.metadata()["adapter.lora.alpha"].get<double>();
  CHECK(alpha == 8.0);
  const SafetensorsReader adapter(interop("llama/lora/adapter_model.safetensors"));
  // llama.cpp applies alpha / r; the true scales are rsLoRA's alpha_m / sqrt(r) (alpha_pattern down_proj = 2)
  for (const auto& [module, gg, heads] :
       {std::tuple{"model.layers.1.self_attn.q_proj", "blk.1.attn_q", Index(4)},
        std::tuple{"model.layers.1.self_attn.k_proj", "blk.1.attn_k", Index(2)},
        std::tuple{"model.layers.1.mlp.down_proj", "blk.1.ffn_down", Index(0)}}) {
    INFO(module);
    const Matrix<double> b =
        adapter.matrix<double>(std::string("base_model.model.") + module + ".lora_B.weight");
    const Matrix<double> a =
        adapter.matrix<double>(std::string("base_model.model.") + module + ".lora_A.weight");
    const double r = static_cast<double>(a.rows());
    const double module_alpha = std::string(module).ends_with("down_proj") ? 2.0 : 8.0;
    Matrix<double> got_b = f.matrix<double>(std::string(gg) + ".weight.lora_b");
    if (heads > 0) got_b = llama_permute_rows(got_b, heads, false);
    CHECK(wt::rel_diff(Matrix<double>(got_b * (alpha / r)),
                       Matrix<double>(b * (module_alpha / std::sqrt(r)))) < 1e-6);
    CHECK(f.matrix<double>(std::string(gg) + ".weight.lora_a") == a);
  }
  CHECK_THROWS_WITH(convert_lora_to_gguf(interop("bert/lora"), interop("bert/base/config.json"),
                                         dir.str("b.gguf")),
                    Catch::Contains("modules_to_save"));
  CHECK(!fs::exists(dir.str("b.gguf")));
}

TEST_CASE("llama q/k row permutation matches llama.cpp's reshape-swapaxes definition",
          "[tools][gguf]") {
  // llama.cpp: w.reshape(heads, 2, d / 2, cols).swapaxes(1, 2).reshape(w.shape)
  const Index heads = 3, d = 4, cols = 2;
  Matrix<double> w(heads * d, cols);
  for (Index i = 0; i < w.size(); ++i) w.data()[i] = static_cast<double>(i);
  const Matrix<double> p = llama_permute_rows(w, heads, true);
  for (Index h = 0; h < heads; ++h)
    for (Index a = 0; a < d / 2; ++a)
      for (Index s = 0; s < 2; ++s)  // output index (h, a, s) <- input index (h, s, a)
        CHECK(p.row(h * d + a * 2 + s) == w.row(h * d + s * (d / 2) + a));
  CHECK(llama_permute_rows(p, heads, false) == w);
}

TEST_CASE(
    "merge refuses adapters whose tensors do not fit their config or the base, writing nothing",
    "[tools][merge][hostile]") {
  TempDir dir;
  auto adapted = load_hf_model<double>(interop("llama/base"));
  ParameterStore<double> store;
  adapted.model->attach(
      {.target_modules = {"q", "v"}, .method = WeGeFTConfig{.rank = 2, .alpha = 3}}, store);
  for (const auto& m : adapted.model->modules())
    if (m.adapter) std::get<WeGeFTAdapter<double>>(*m.adapter).generator().psi().setConstant(100.0);
  save_adapter(*adapted.model, store, dir.str("good"), "", DType::F32);
  const SafetensorsReader good(dir.str("good/adapter_model.safetensors"));
  // Rewrites the adapter with tensor `name` replaced by `value` (same dtype) into dir/<sub>.
  const auto variant = [&](const std::string& sub, const std::string& name,
                           const Matrix<double>& value, std::vector<std::int64_t> shape) {
    fs::create_directories(dir.path / sub);
    fs::copy_file(dir.path / "good" / "adapter_config.json",
                  dir.path / sub / "adapter_config.json");
    SafetensorsBuilder b;
    for (const auto& t : good.tensors()) {
      if (t.name == name)
        b.add(name, DType::F32, shape, value.data(), static_cast<std::size_t>(value.size()));
      else
        b.add_raw(t.name, t.dtype, t.shape, good.data(t), t.nbytes);
    }
    b.write(dir.str(sub + "/adapter_model.safetensors"));
    return dir.str(sub);
  };
  Rng rng(4);
  const std::string psi = "base_model.model.model.layers.0.self_attn.q_proj.wegeft_psi.weight";
  const struct {
    const char* sub;
    Index rows, cols;
    std::vector<std::int64_t> shape;
    const char* message;
  } cases[] = {
      {"rank", 3, 16, {3, 16}, "has shape [3, 16], the adapter needs [2, 16]"},  // r != config's r
      {"d_in",
       2,
       15,
       {2, 15},
       "has shape [2, 15], the adapter needs [2, 16]"},  // d_in != the weight's
      {"three_d", 2, 16, {2, 4, 4}, "has shape [2, 4, 4], the adapter needs [2, 16]"},  // 3-D
  };
  for (const auto& c : cases) {
    INFO(c.sub);
    const std::string a =
        variant(c.sub, psi, wt::random_matrix<double>(c.rows, c.cols, rng), c.shape);
    CHECK_THROWS_WITH(
        merge_adapter(interop("llama/base"), a, dir.str(std::string(c.sub) + ".safetensors")),
        Catch::Contains(c.message) && Catch::Contains("wegeft_psi"));
    CHECK(!fs::exists(dir.str(std::string(c.sub) + ".safetensors")));
  }
  // A merge that overflows the weights' dtype is refused, naming the tensor.
  const std::string phi = "base_model.model.model.layers.0.self_attn.q_proj.wegeft_phi.weight";
  const std::string big = variant("big", phi, Matrix<double>::Constant(2, 16, 3e38), {2, 16});
  CHECK_THROWS_WITH(
      merge_adapter(interop("llama/base"), big, dir.str("big.safetensors")),
      Catch::Contains("not finite or do not fit F32") && Catch::Contains("q_proj.weight"));
  CHECK(!fs::exists(dir.str("big.safetensors")));
  // The unchanged adapter merges.
  CHECK(merge_adapter(interop("llama/base"), dir.str("good"), dir.str("ok.safetensors")) == 4);
}

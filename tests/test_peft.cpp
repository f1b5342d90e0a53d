// Hugging Face checkpoints and adapter directories written by transformers and PEFT themselves
// (tests/golden/interop, tools/reference/make_interop_golden.py), round trips through our
// writer, and bad adapter directories.
#include "support.hpp"

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <wegeft/io/checkpoint.hpp>
#include <wegeft/io/hf_model.hpp>
#include <wegeft/io/peft.hpp>
#include <wegeft/train/trainer.hpp>

using namespace wegeft;
namespace fs = std::filesystem;

namespace {

std::string interop(const std::string& rel) {
  return std::string(WEGEFT_GOLDEN_DIR) + "/interop/" + rel;
}

struct Inputs {
  std::vector<std::int32_t> ids;
  std::vector<std::uint8_t> mask;
  Matrix<double> images;
  Index batch = 0, seq = 0;
  ModelInput<double> input() const {
    return {.ids = ids.empty() ? nullptr : ids.data(),
            .mask = mask.empty() ? nullptr : mask.data(),
            .images = images.size() ? images.data() : nullptr,
            .batch = batch,
            .seq = seq};
  }
};

Inputs read_inputs(const wt::Golden& g) {
  Inputs in;
  if (g.has("input.pixel_values")) {
    in.images = g.get("input.pixel_values");
    in.batch = in.images.rows();
    return in;
  }
  const Matrix<double> ids = g.get("input.input_ids"), mask = g.get("input.attention_mask");
  in.batch = ids.rows();
  in.seq = ids.cols();
  for (Index i = 0; i < ids.size(); ++i) {
    in.ids.push_back(static_cast<std::int32_t>(ids.data()[i]));
    in.mask.push_back(mask.data()[i] != 0);
  }
  return in;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

struct TempDir {
  fs::path path = fs::temp_directory_path() /
                  ("wegeft-peft-" + std::to_string(Rng(std::random_device{}()).next_u64()));
  TempDir() { fs::create_directories(path); }
  ~TempDir() { fs::remove_all(path); }
  std::string str(const std::string& sub = "") const { return (path / sub).string(); }
};

}  // namespace

TEST_CASE(
    "checkpoints and LoRA adapters written by transformers and PEFT load and give PEFT's logits",
    "[io][peft][interop]") {
  const std::string family = GENERATE(as<std::string>{}, "bert", "gpt2", "llama", "vit");
  INFO(family);
  auto loaded = load_hf_model<double>(interop(family + "/base"));
  Transformer<double>& model = *loaded.model;
  CHECK(to_string(model.config().family) == family);
  ParameterStore<double> store;
  const Index adapted = load_adapter(model, store, interop(family + "/lora"));
  CHECK(adapted == (family == "llama" ? 7 : 4));  // llama: layers_to_transform = [1]
  if (family == "llama") {
    CHECK(model.adapter<LoraAdapter<double>>("model.layers.0.self_attn.q_proj") == nullptr);
    CHECK(model.adapter<LoraAdapter<double>>("model.layers.1.mlp.down_proj")->scale() ==
          Approx(2.0 / 2.0));  // alpha_pattern, rsLoRA: 2 / sqrt(4)
    CHECK(model.adapter<LoraAdapter<double>>("model.layers.1.mlp.up_proj")->scale() ==
          Approx(8.0 / 2.0));
  }
  if (family == "bert")
    CHECK(model.adapter<LoraAdapter<double>>("bert.encoder.layer.0.attention.self.value")->rank() ==
          3);  // rank_pattern
  const wt::Golden g("interop/" + family + "/expected.txt");
  const Inputs in = read_inputs(g);
  Transformer<double>::Activations acts;
  model.set_training(false);
  model.forward(acts, in.input());
  CHECK(wt::rel_diff(acts.logits, g.get("logits")) < 1e-10);
}

TEST_CASE(
    "a bare BertModel checkpoint without the bert. prefix loads (sentence-transformers layout)",
    "[io][peft]") {
  auto loaded = load_hf_model<float>(interop("bert_bare"));
  CHECK(loaded.model->config().name_prefix().empty());
  CHECK(loaded.model->tensors().count("encoder.layer.1.attention.self.query.weight") == 1);
  CHECK(loaded.model->tensor("embeddings.word_embeddings.weight").rows() == 11);
  CHECK(loaded.ignored.empty());
}

TEST_CASE(
    "a saved model holds the tensors transformers wrote: same names, shapes, dtype and values",
    "[io][peft][interop]") {
  // Each interop checkpoint was written by transformers (save_pretrained); wegeft loads it and
  // writes it again: every tensor the model uses comes out with transformers' own name, shape
  // and value, and config.json reads back as the same config.
  const std::string family = GENERATE(as<std::string>{}, "bert", "gpt2", "llama", "vit");
  INFO(family);
  auto loaded = load_hf_model<double>(interop(family + "/base"));
  const fs::path dir = fs::temp_directory_path() /
                       ("wegeft-save-" + std::to_string(Rng(std::random_device{}()).next_u64()));
  save_hf_model(*loaded.model, dir.string(), DType::F32);
  const SafetensorsReader theirs(interop(family + "/base/model.safetensors"));
  const SafetensorsReader ours((dir / "model.safetensors").string());
  CHECK(ours.tensors().size() + loaded.ignored.size() == theirs.tensors().size());
  for (const auto& t : ours.tensors()) {
    INFO(t.name);
    REQUIRE(theirs.contains(t.name));
    CHECK(t.shape == theirs.info(t.name).shape);
    CHECK(t.dtype == DType::F32);
    const Matrix<double> a = ours.matrix<double>(t.name), b = theirs.matrix<double>(t.name);
    REQUIRE(a.size() == b.size());
    CHECK((a - b.cast<float>().cast<double>()).cwiseAbs().maxCoeff() == 0.0);
  }
  auto again = load_hf_model<double>(dir.string());
  const ModelConfig &c0 = loaded.model->config(), &c1 = again.model->config();
  CHECK((c1.family == c0.family && c1.hidden == c0.hidden && c1.layers == c0.layers &&
         c1.heads == c0.heads && c1.kv_heads == c0.kv_heads && c1.intermediate == c0.intermediate &&
         c1.vocab_size == c0.vocab_size && c1.max_positions == c0.max_positions &&
         c1.norm_eps == c0.norm_eps && c1.rope_theta == c0.rope_theta &&
         c1.tied_lm_head == c0.tied_lm_head && c1.image_size == c0.image_size &&
         c1.patch_size == c0.patch_size && c1.channels == c0.channels &&
         c1.type_vocab_size == c0.type_vocab_size && c1.name_prefix() == c0.name_prefix()));
  CHECK(again.ignored.empty());
  fs::remove_all(dir);
}

TEST_CASE("saving a model refuses values that are not finite and leaves the directory as it was",
          "[io][peft]") {
  Transformer<float> model(ModelConfig::tiny(Family::vit));
  Rng rng(3);
  model.init_random(rng);
  const fs::path dir = fs::temp_directory_path() /
                       ("wegeft-save-" + std::to_string(Rng(std::random_device{}()).next_u64()));
  save_hf_model(model, dir.string());
  const auto before = fs::file_size(dir / "model.safetensors");
  model.tensor("vit.encoder.layer.0.attention.attention.query.weight")(0, 1) =
      std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(save_hf_model(model, dir.string()),
                    Catch::Contains("vit.encoder.layer.0.attention.attention.query.weight") &&
                        Catch::Contains("not finite"));
  CHECK(fs::file_size(dir / "model.safetensors") == before);
  CHECK(load_hf_model<float>(dir.string()).model->config().family == Family::vit);
  fs::remove_all(dir);
}

TEST_CASE("adapters written by wegeft load back identically, every method", "[io][peft]") {
  const int which = GENERATE(range(0, wt::kMethods));
  const WeGeFTSharing sharing = GENERATE(WeGeFTSharing::per_role, WeGeFTSharing::per_layer);
  if (which != 1 && sharing == WeGeFTSharing::per_layer) return;
  MethodConfig method = wt::method_config(which, 2, 4);
  if (auto* w = std::get_if<WeGeFTConfig>(&method)) w->sharing = sharing;
  INFO(method_name(method));
  TempDir dir;
  auto a = load_hf_model<double>(interop("llama/base"));
  ParameterStore<double> store;
  a.model->attach({.target_modules = {"q", "v", "down"},
                   .layers = {},
                   .method = method,
                   .rank_pattern = {{"down_proj", 3}},
                   .alpha_pattern = {{"v_proj", 1.5}},
                   .seed = 9},
                  store);
  a.model->add_classifier(2, store);
  Rng rng(3);
  for (std::size_t i = 0; i < store.entries().size(); ++i)
    fill_uniform(store.value(ParamId{i}), rng, -0.5, 0.5);
  save_adapter(*a.model, store, dir.str("adapter"), "tiny-llama", DType::F64);
  const auto cfg = read_adapter_config(dir.str("adapter"));
  CHECK(cfg.json["peft_type"] == (which == 1 ? "WEGEFT" : "LORA"));
  CHECK(cfg.json.value("use_dora", nlohmann::json()) == (which == 2   ? nlohmann::json(true)
                                                         : which == 0 ? nlohmann::json(false)
                                                                      : nlohmann::json()));
  CHECK(cfg.spec.method.index() == method.index());
  CHECK(cfg.json["base_model_name_or_path"] == "tiny-llama");
  CHECK(cfg.json["modules_to_save"] == nlohmann::json::array({"score"}));
  CHECK(cfg.json["rank_pattern"].size() == 2);  // both down_proj layers
  if (which == 1) {
    const auto tied = cfg.json["tied_modules"];
    if (sharing == WeGeFTSharing::per_role) {
      CHECK(tied.size() == 3);
      CHECK(tied[0] == nlohmann::json::array({R"(model\.layers\.\d+\.self_attn\.q_proj$)"}));
    } else {
      CHECK(tied.empty());
    }
  }
  auto b = load_hf_model<double>(interop("llama/base"));
  ParameterStore<double> store_b;
  load_adapter(*b.model, store_b, dir.str("adapter"));
  REQUIRE(store_b.entries().size() == store.entries().size());
  for (std::size_t i = 0; i < store.entries().size(); ++i) {
    INFO(store.entries()[i].name);
    CHECK(store_b.entries()[i].name == store.entries()[i].name);
    CHECK(store_b.value(ParamId{i}) == store.value(ParamId{i}));
  }
  const wt::Golden g("interop/llama/expected.txt");
  const Inputs in = read_inputs(g);
  Transformer<double>::Activations acts_a, acts_b;
  a.model->forward(acts_a, in.input());
  b.model->forward(acts_b, in.input());
  CHECK(acts_a.logits == acts_b.logits);
  CHECK(b.model->adapters()->size() == a.model->adapters()->size());

  // With WEGEFT_INTEROP_OUT set, leave a LoRA adapter and our logits for tools/reference/check_peft_interop.py.
  if (const char* out = std::getenv("WEGEFT_INTEROP_OUT"); out && which == 0) {
    auto c = load_hf_model<double>(interop("llama/base"));
    ParameterStore<double> s;
    c.model->attach({.target_modules = {"all-linear"},
                     .method = LoraConfig{.rank = 2, .alpha = 4, .use_rslora = true},
                     .rank_pattern = {{"down_proj", 3}},
                     .alpha_pattern = {{"v_proj", 1.5}}},
                    s);
    for (std::size_t i = 0; i < s.entries().size(); ++i)
      fill_uniform(s.value(ParamId{i}), rng, -0.5, 0.5);
    save_adapter(*c.model, s, std::string(out) + "/llama-lora", "interop/llama/base");
    Transformer<double>::Activations acts;
    c.model->forward(acts, in.input());
    std::ofstream f(std::string(out) + "/llama-lora/wegeft_logits.txt");
    f.precision(17);
    f << acts.logits.rows() << " " << acts.logits.cols() << "\n" << acts.logits << "\n";
  }
}

TEST_CASE("bad adapter directories get clear errors naming the file and the field",
          "[io][peft][hostile]") {
  TempDir dir;
  const auto write_config = [&](const std::string& json) {
    fs::create_directories(dir.path / "a");
    std::ofstream(dir.path / "a" / "adapter_config.json") << json;
  };
  const auto expect = [&](const std::string& json, const char* message) {
    INFO(json);
    write_config(json);
    CHECK_THROWS_WITH(read_adapter_config(dir.str("a")),
                      Catch::Contains(message) && Catch::Contains("adapter_config.json"));
  };
  expect(R"({"peft_type": "IA3", "r": 2, "target_modules": ["q"]})", "peft_type \"IA3\"");
  expect(R"({"peft_type": "LORA", "target_modules": ["q"]})", "\"r\" must be a positive integer");
  expect(R"({"peft_type": "LORA", "r": 0, "target_modules": ["q"]})",
         "\"r\" must be a positive integer");
  expect(R"({"peft_type": "LORA", "r": 2})", "target_modules");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "use_dora": "yes"})",
         "\"use_dora\" must be true or false");
  expect(
      R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "modules_to_save": ["../../etc/passwd"]})",
      "is not a module name");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "bias": "all"})",
         "bias \"all\"");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "lora_alpha": "x"})",
         "\"lora_alpha\" must be a number");
  expect(R"({"peft_type": "LORA", "r": 2, "r": 3, "target_modules": ["q"]})",
         "duplicate key \"r\"");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": [1]})", "list of strings");
  expect(R"({"peft_type": "LORA", )", "invalid JSON");
  expect(R"({"peft_type": 5, "r": 2, "target_modules": ["q"]})",
         "\"peft_type\" must be a string, got 5");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "use_rslora": "yes"})",
         "\"use_rslora\" must be true or false");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "bias": 0})",
         "\"bias\" must be a string");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "layers_to_transform": ["1"]})",
         "is not an integer");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "rank_pattern": {"q": 0}})",
         "is not a positive integer");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": "q_proj("})",
         "invalid regular expression 'q_proj('");
  expect(R"({"peft_type": "LORA", "r": 2, "target_modules": ["q"], "lora_alpha": )" +
             std::string(200000, '[') + std::string(200000, ']') + "}",
         "JSON nests deeper than 64 levels");
  // The input the adapter-config fuzzer found: a numeric peft_type used to escape as a JSON exception.
  write_config(
      read_all(std::string(WEGEFT_GOLDEN_DIR) + "/io/adapter_config_numeric_peft_type.json"));
  CHECK_THROWS_AS(read_adapter_config(dir.str("a")), Error);

  // Weights that do not fit the model.
  auto m = load_hf_model<float>(interop("gpt2/base"));
  const std::string src = interop("gpt2/lora");
  fs::copy(src, dir.path / "b");
  ParameterStore<float> store;
  std::ofstream(dir.path / "b" / "adapter_config.json")
      << R"({"peft_type": "LORA", "r": 3, "lora_alpha": 8, "target_modules": ["c_attn", "mlp.c_proj"]})";
  CHECK_THROWS_WITH(load_adapter(*m.model, store, dir.str("b")),
                    Catch::Contains("has shape [2, 12], the adapter needs [3, 12]"));
  auto m2 = load_hf_model<float>(interop("gpt2/base"));
  ParameterStore<float> store2;
  std::ofstream(dir.path / "b" / "adapter_config.json")
      << R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["c_attn"]})";
  CHECK_THROWS_WITH(load_adapter(*m2.model, store2, dir.str("b")),
                    Catch::Contains("belongs to no adapter parameter"));
  auto m3 = load_hf_model<float>(interop("gpt2/base"));
  ParameterStore<float> store3;
  std::ofstream(dir.path / "b" / "adapter_config.json")
      << R"({"peft_type": "LORA", "r": 2, "lora_alpha": 8, "target_modules": ["c_attn", "c_fc", "mlp.c_proj"]})";
  CHECK_THROWS_WITH(
      load_adapter(*m3.model, store3, dir.str("b")),
      Catch::Contains("missing tensor 'base_model.model.transformer.h.0.mlp.c_fc.lora_A.weight'"));
  auto m4 = load_hf_model<float>(interop("gpt2/base"));
  ParameterStore<float> store4;
  fs::remove(dir.path / "b" / "adapter_model.safetensors");
  CHECK_THROWS_WITH(load_adapter(*m4.model, store4, dir.str("b")),
                    Catch::Contains("no adapter_model.safetensors"));
  CHECK_THROWS_WITH(load_hf_model<float>(dir.str("b")), Catch::Contains("config.json"));
}

TEST_CASE("resuming from a checkpoint is bit-identical to an uninterrupted run",
          "[io][checkpoint]") {
  TempDir dir;
  const auto setup = [](Transformer<float>& model, ParameterStore<float>& store) {
    Rng init(1);
    model.init_random(init);
    model.attach({.target_modules = {"all-linear"},
                  .method = WeGeFTConfig{.rank = 2, .alpha = 4, .dropout = 0.2},
                  .seed = 5},
                 store);
    model.add_classifier(3, store);
  };
  const auto run = [](Transformer<float>& model, Trainer<float>& trainer, Rng& data, int steps) {
    std::vector<std::int32_t> ids(4 * 6), labels(4);
    for (int s = 0; s < steps; ++s) {
      for (auto& id : ids) id = static_cast<std::int32_t>(data.next_u32() % 11);
      for (auto& l : labels) l = static_cast<std::int32_t>(data.next_u32() % 3);
      trainer.classification_step({.ids = ids.data(), .batch = 4, .seq = 6}, labels.data());
    }
    (void)model;
  };
  const ModelConfig c = ModelConfig::tiny(Family::bert);
  const TrainerConfig tc{.adamw = {.lr = 1e-2}, .schedule = {ScheduleKind::linear, 2, 10}};
  // uninterrupted: 8 steps
  Transformer<float> a(c);
  ParameterStore<float> sa;
  setup(a, sa);
  Trainer<float> ta(a, tc);
  Rng da(77);
  run(a, ta, da, 8);
  // interrupted after 3 steps, saved, restored into fresh objects, 5 more steps
  std::vector<float> resumed;
  {
    Transformer<float> b(c);
    ParameterStore<float> sb;
    setup(b, sb);
    Trainer<float> tb(b, tc);
    Rng db(77);
    run(b, tb, db, 3);
    save_checkpoint(dir.str("ckpt.safetensors"), b, sb, tb.optimizer(), {{"data", db.state()}});
  }
  Transformer<float> b(c);
  ParameterStore<float> sb;
  setup(b, sb);
  Trainer<float> tb(b, tc);
  std::map<std::string, Rng::State> rngs;
  load_checkpoint(dir.str("ckpt.safetensors"), b, sb, tb.optimizer(), &rngs);
  CHECK(tb.optimizer_steps() == 3);
  Rng db;
  db.set_state(rngs.at("data"));
  run(b, tb, db, 5);
  CHECK(std::equal(sa.values().begin(), sa.values().end(), sb.values().begin(), sb.values().end()));
  CHECK(ta.optimizer().state().m == tb.optimizer().state().m);

  // a checkpoint of another model is refused
  Transformer<float> other(c);
  ParameterStore<float> so;
  other.attach({.target_modules = {"q"}, .method = LoraConfig{.rank = 2}}, so);
  AdamW<float> opt;
  CHECK_THROWS_WITH(load_checkpoint(dir.str("ckpt.safetensors"), other, so, opt),
                    Catch::Contains("no saved value for parameter"));
}

TEST_CASE("a damaged checkpoint is refused by its checksum and changes nothing",
          "[io][checkpoint][hostile]") {
  TempDir dir;
  const ModelConfig c = ModelConfig::tiny(Family::llama);
  Transformer<float> model(c);
  Rng init(2);
  model.init_random(init);
  ParameterStore<float> store;
  model.attach({.target_modules = {"q", "v"}, .method = LoraConfig{.rank = 2}, .seed = 3}, store);
  AdamW<float> opt;
  for (auto& v : store.values())
    v += 0.25f;  // B starts at zero: make every byte of the file matter
  save_checkpoint(dir.str("ckpt.safetensors"), model, store, opt);
  const std::string good = read_all(dir.str("ckpt.safetensors"));
  const std::vector<float> before(store.values().begin(), store.values().end());
  CHECK_NOTHROW(load_checkpoint(dir.str("ckpt.safetensors"), model, store, opt));
  // The trailing bytes zeroed (a torn copy), then one flipped bit in the middle of the data.
  std::string zeroed = good;
  std::fill(zeroed.end() - 16, zeroed.end(), '\0');
  std::string flipped = good;
  flipped[flipped.size() - flipped.size() / 4] ^= 0x10;
  for (const std::string* bad : {&zeroed, &flipped}) {
    { std::ofstream(dir.str("bad.safetensors"), std::ios::binary) << *bad; }
    CHECK_THROWS_WITH(
        load_checkpoint(dir.str("bad.safetensors"), model, store, opt),
        Catch::Contains("bad.safetensors: checksum mismatch") && Catch::Contains("damaged"));
    CHECK(std::equal(before.begin(), before.end(), store.values().begin(), store.values().end()));
  }
}

TEST_CASE("a DoRA adapter written by PEFT loads and gives PEFT's logits",
          "[io][peft][interop][dora]") {
  auto loaded = load_hf_model<double>(interop("bert/base"));
  Transformer<double>& model = *loaded.model;
  ParameterStore<double> store;
  CHECK(load_adapter(model, store, interop("bert/dora")) == 4);
  const auto* value =
      model.adapter<DoraAdapter<double>>("bert.encoder.layer.1.attention.self.value");
  REQUIRE(value != nullptr);
  CHECK(value->rank() == 3);  // rank_pattern
  CHECK(model.has_classifier());
  const wt::Golden g("interop/bert/dora_expected.txt");
  const Inputs in = read_inputs(g);
  Transformer<double>::Activations acts;
  model.set_training(false);
  model.forward(acts, in.input());
  CHECK(wt::rel_diff(acts.logits, g.get("logits")) < 1e-10);
}

TEST_CASE("a PEFT all-linear LoRA on BERT adapts the pooler and gives PEFT's logits",
          "[io][peft][interop]") {
  // PEFT writes target_modules as the 13 full names (pooler.dense among them) and
  // modules_to_save ["classifier", "score"] (task_type SEQ_CLS); only the classifier exists.
  auto loaded = load_hf_model<double>(interop("bert/base"));
  Transformer<double>& model = *loaded.model;
  ParameterStore<double> store;
  CHECK(load_adapter(model, store, interop("bert/lora_all_linear")) == 13);
  CHECK(model.adapter<LoraAdapter<double>>("bert.pooler.dense") != nullptr);
  CHECK(model.has_classifier());
  const wt::Golden g("interop/bert/lora_all_linear_expected.txt");
  const Inputs in = read_inputs(g);
  Transformer<double>::Activations acts;
  model.set_training(false);
  model.forward(acts, in.input());
  CHECK(wt::rel_diff(acts.logits, g.get("logits")) < 1e-10);
}

TEST_CASE(
    "the pooler's adapter gets gradients equal to finite differences of the classification loss",
    "[model][peft]") {
  auto loaded = load_hf_model<double>(interop("bert/base"));
  Transformer<double>& model = *loaded.model;
  ParameterStore<double> store;
  load_adapter(model, store, interop("bert/lora_all_linear"));
  const wt::Golden g("interop/bert/lora_all_linear_expected.txt");
  const Inputs in = read_inputs(g);
  const std::vector<std::int32_t> labels = {1, 0};
  Transformer<double>::Activations acts;
  model.set_training(false);
  auto loss = [&] {
    model.forward(acts, in.input());
    return model.classification_loss(acts, labels.data());
  };
  store.zero_grad();
  loss();
  model.backward(acts);
  std::size_t checked = 0;
  for (std::size_t i = 0; i < store.entries().size(); ++i) {
    if (store.entries()[i].name.find("pooler.dense") == std::string::npos) continue;
    auto v = store.value(ParamId{i});
    const auto gr = store.grad(ParamId{i});
    for (Index k = 0; k < v.size(); k += 3) {
      const double keep = v.data()[k], h = 1e-6;
      v.data()[k] = keep + h;
      const double up = loss();
      v.data()[k] = keep - h;
      const double down = loss();
      v.data()[k] = keep;
      CHECK(std::abs((up - down) / (2 * h) - gr.data()[k]) <
            1e-7 * std::max(1.0, std::abs(gr.data()[k])));
      ++checked;
    }
  }
  CHECK(checked > 0);
}

TEST_CASE("adapters on a caller's own layers save and load without a Transformer, methods mixed",
          "[io][peft]") {
  TempDir dir;
  Rng rng(21);
  // Three frozen layers of the caller's: two share d_in (one WeGeFT group), one gets LoRA.
  std::vector<Matrix<double>> w = {wt::random_matrix<double>(6, 5, rng),
                                   wt::random_matrix<double>(4, 5, rng),
                                   wt::random_matrix<double>(5, 6, rng)};
  const auto sites_of = [](std::vector<Matrix<double>>& ws) {
    return std::vector<AdapterSite<double>>{{"enc.0.proj", "proj", 0, FrozenLinear<double>(ws[0])},
                                            {"enc.1.proj", "proj", 1, FrozenLinear<double>(ws[1])},
                                            {"head.out", "out", -1, FrozenLinear<double>(ws[2])}};
  };
  const auto sites = sites_of(w);
  ParameterStore<double> store;
  AdapterSet<double> set(store);
  CHECK(set.attach({.target_modules = {"proj"}, .method = WeGeFTConfig{.rank = 2, .alpha = 3}},
                   sites) == 2);
  CHECK(set.attach({.target_modules = {"out"}, .method = LoraConfig{.rank = 2, .alpha = 4}},
                   sites) == 1);
  for (std::size_t i = 0; i < store.entries().size(); ++i)
    fill_uniform(store.value(ParamId{i}), rng, -0.5, 0.5);
  save_adapter(set, dir.str("mixed"), {.dtype = DType::F64});
  CHECK(fs::exists(dir.path / "mixed" / "lora" / "adapter_config.json"));
  CHECK(read_adapter_config(dir.str("mixed/wegeft")).json["tied_modules"] ==
        nlohmann::json::parse(R"([["enc\\.\\d+\\.proj$"]])"));

  std::vector<Matrix<double>> w2 = w;
  const auto sites2 = sites_of(w2);
  ParameterStore<double> store2;
  AdapterSet<double> set2(store2);
  CHECK(load_adapter(set2, std::span<const AdapterSite<double>>(sites2), dir.str("mixed/wegeft"))
            .second == 2);
  CHECK(load_adapter(set2, std::span<const AdapterSite<double>>(sites2), dir.str("mixed/lora"))
            .second == 1);
  REQUIRE(store2.entries().size() == store.entries().size());
  const Matrix<double> x5 = wt::random_matrix<double>(3, 5, rng),
                       x6 = wt::random_matrix<double>(3, 6, rng);
  for (const auto& e : set.entries()) {
    INFO(e.name);
    const Matrix<double>& x = e.name == "head.out" ? x6 : x5;
    Matrix<double> y1 = std::visit(
        [&](auto& a) {
          Matrix<double> y(x.rows(), a.base().d_out());
          typename std::decay_t<decltype(a)>::Cache c;
          a.forward(y, c, x);
          return y;
        },
        *e.adapter);
    Matrix<double> y2 = std::visit(
        [&](auto& a) {
          Matrix<double> y(x.rows(), a.base().d_out());
          typename std::decay_t<decltype(a)>::Cache c;
          a.forward(y, c, x);
          return y;
        },
        *set2.find(e.name));
    CHECK(y1 == y2);
    CHECK(!y1.isApprox(wt::reference_linear<double>(x,
                                                    e.name == "head.out"     ? w[2]
                                                    : e.name == "enc.0.proj" ? w[0]
                                                                             : w[1],
                                                    nullptr)));
  }
}

TEST_CASE("a failed adapter load leaves the model and store as they were, and a retry works",
          "[io][peft][hostile]") {
  TempDir dir;
  fs::copy(interop("llama/lora"), dir.path / "a");
  // Corrupt one tensor's shape through the config: rank 3 where the file holds rank 4.
  const std::string good = read_all((dir.path / "a" / "adapter_config.json").string());
  std::string bad = good;
  bad.replace(bad.find("\"r\": 4"), 6, "\"r\": 3");
  std::ofstream(dir.path / "a" / "adapter_config.json") << bad;
  auto m = load_hf_model<double>(interop("llama/base"));
  ParameterStore<double> store;
  CHECK_THROWS_WITH(load_adapter(*m.model, store, dir.str("a")),
                    Catch::Contains("the adapter needs"));
  CHECK(store.entries().empty());
  for (const auto& mod : m.model->modules()) CHECK(mod.adapter == nullptr);
  std::ofstream(dir.path / "a" / "adapter_config.json") << good;
  CHECK(load_adapter(*m.model, store, dir.str("a")) == 7);
}

TEST_CASE("a model binds one parameter store", "[model][peft]") {
  Transformer<float> model(ModelConfig::tiny(Family::bert));
  ParameterStore<float> a, b;
  model.attach({.target_modules = {"q"}, .method = LoraConfig{.rank = 2}}, a);
  CHECK_THROWS_WITH(model.attach({.target_modules = {"v"}, .method = LoraConfig{.rank = 2}}, b),
                    Catch::Contains("another ParameterStore"));
  CHECK_THROWS_WITH(model.add_classifier(3, b), Catch::Contains("another ParameterStore"));
  CHECK(b.entries().empty());
  const auto before = a.entries().size();
  // key attaches first, then value's rank fails: the whole call is undone.
  CHECK_THROWS_WITH(model.attach({.target_modules = {"k", "v"},
                                  .method = LoraConfig{.rank = 2},
                                  .rank_pattern = {{"value", 50}}},
                                 a),
                    Catch::Contains("exceeds"));
  CHECK(a.entries().size() == before);
  CHECK(model.adapter<LoraAdapter<float>>("bert.encoder.layer.0.attention.self.key") == nullptr);
}

// The whole transformer: gradient checks through tiny models of every family with adapters on
// every linear, checkpointing, overfitting, target matching and bad input.
#include "support.hpp"

#include <set>

#include <wegeft/nn/model.hpp>
#include <wegeft/optim/adamw.hpp>
#include <wegeft/train/trainer.hpp>

using namespace wegeft;

namespace {

// Distinct WeGeFT generators among a model's adapters.
template <class T>
std::size_t generator_count(Transformer<T>& model) {
  std::set<const void*> gens;
  for (const auto& m : model.modules())
    if (m.adapter)
      if (const auto* w = std::get_if<WeGeFTAdapter<T>>(m.adapter)) gens.insert(&w->generator());
  return gens.size();
}

struct TinyBatch {
  Index batch = 2, seq = 5;
  std::vector<std::int32_t> ids, targets, labels;
  std::vector<std::uint8_t> mask;
  Matrix<double> images;
};

// Random ids, next-token targets (padding ignored), labels, a mask with one padded tail.
TinyBatch make_batch(const ModelConfig& c, Rng& rng) {
  TinyBatch b;
  const Index n = b.batch * b.seq;
  for (Index i = 0; i < n; ++i)
    b.ids.push_back(static_cast<std::int32_t>(rng.next_u32() % std::max<Index>(c.vocab_size, 1)));
  b.mask.assign(static_cast<std::size_t>(n), 1);
  b.mask[static_cast<std::size_t>(n - 1)] = 0;
  b.mask[static_cast<std::size_t>(n - 2)] = 0;
  for (Index i = 0; i < n; ++i) {
    const bool last = (i + 1) % b.seq == 0;
    b.targets.push_back(last || !b.mask[static_cast<std::size_t>(i + 1)]
                            ? kIgnoreIndex
                            : b.ids[static_cast<std::size_t>(i + 1)]);
  }
  b.labels = {1, 2};
  if (c.family == Family::vit) {
    b.images.resize(b.batch, c.channels * c.image_size * c.image_size);
    fill_uniform(b.images, rng, -1.0, 1.0);
  }
  return b;
}

bool uses_lm_head(const ModelConfig& c) {
  return c.family == Family::gpt2 || c.family == Family::llama;
}

double run_loss(Transformer<double>& model, Transformer<double>::Activations& acts, TinyBatch& b) {
  const ModelConfig& c = model.config();
  ModelInput<double> in{.ids = b.ids.data(),
                        .mask = c.family == Family::vit ? nullptr : b.mask.data(),
                        .images = b.images.size() ? b.images.data() : nullptr,
                        .batch = b.batch,
                        .seq = b.seq};
  model.forward(acts, in);
  return model.has_classifier() ? model.classification_loss(acts, b.labels.data())
                                : model.lm_loss(acts, b.targets.data());
}

// The store's gradients (from a backward the caller ran) against central differences of the
// model's loss on b.
void check_store_gradients(const char* what, Transformer<double>& model,
                           ParameterStore<double>& store, TinyBatch& b) {
  const Matrix<double> analytic = ConstMatrixMap<double>(store.grads().data(), 1, store.size());
  const std::function<double()> loss = [&] {
    Transformer<double>::Activations a;
    return run_loss(model, a, b);
  };
  wt::check_gradient<double>(what, MatrixMap<double>(store.values().data(), 1, store.size()),
                             analytic, loss);
}

}  // namespace

TEST_CASE("whole-model gradients of every trainable parameter match finite differences",
          "[model][grad]") {
  const Family family = GENERATE(Family::bert, Family::gpt2, Family::llama, Family::vit);
  const int method =
      GENERATE(0, 1);  // DoRA holds its norm constant for the gradient: see test_dora.cpp
  // both attention kernels, whichever the family's attention (causal or not) picks by default
  const AttentionKernel kernel = GENERATE(AttentionKernel::flash, AttentionKernel::probabilities);
  INFO(to_string(family) << " " << method_name(wt::method_config(method, 2, 4))
                         << (kernel == AttentionKernel::flash ? " flash" : " probabilities"));
  Rng rng(11);
  ModelConfig c = ModelConfig::tiny(family);
  Transformer<double> model(c);
  model.set_attention_kernel(kernel);
  model.init_random(rng);
  ParameterStore<double> store;
  const Index adapted = model.attach(
      {.target_modules = {"all-linear"}, .method = wt::method_config(method, 2, 4)}, store);
  // all-linear: every block linear, and BERT's pooler (whose adapter trains through the classifier).
  CHECK(adapted ==
        c.layers * static_cast<Index>(c.roles().size()) + (family == Family::bert ? 1 : 0));
  if (!uses_lm_head(c) || family == Family::llama) model.add_classifier(3, store);
  model.train_norms(".*(norm|LayerNorm|ln_1|layernorm_after).*", store);
  for (auto& v : store.values())
    v = rng.uniform(-0.3, 0.3);  // B = 0 / Phi = 0 would hide gradients
  TinyBatch b = make_batch(c, rng);
  Transformer<double>::Activations acts;
  run_loss(model, acts, b);
  model.backward(acts);
  check_store_gradients("all trainable parameters", model, store, b);
}

TEST_CASE(
    "a chunked LM loss keeps no [N, vocab] logits and gives the loss and gradients of the "
    "full head, which match finite differences",
    "[model][grad]") {
  const Family family = GENERATE(Family::gpt2, Family::llama);
  const Index chunk = GENERATE(1, 3, 64);  // N = 10: one row, a ragged last chunk, all at once
  INFO(to_string(family) << " chunk " << chunk);
  Rng rng(17);
  const ModelConfig c = ModelConfig::tiny(family);
  Transformer<double> model(c);
  model.init_random(rng);
  ParameterStore<double> store;
  model.attach({.target_modules = {"all-linear"}, .method = LoraConfig{.rank = 2, .alpha = 4}},
               store);
  for (auto& v : store.values()) v = rng.uniform(-0.3, 0.3);
  TinyBatch b = make_batch(c, rng);  // two targets ignored (padding) and each sequence's last
  Transformer<double>::Activations full;
  const double full_loss = run_loss(model, full, b);
  model.backward(full);
  const std::vector<double> full_grads(store.grads().begin(), store.grads().end());
  store.zero_grad();

  model.set_lm_loss_chunk(chunk);
  Transformer<double>::Activations acts;
  const double loss = run_loss(model, acts, b);
  CHECK(acts.logits.rows() == 0);
  CHECK(acts.dlogits.rows() == std::min<Index>(chunk, acts.n));
  CHECK(loss == Approx(full_loss).epsilon(1e-12));
  model.backward(acts);
  CHECK_THROWS_WITH(model.backward(acts), Catch::Contains("lm_loss"));
  for (Index i = 0; i < store.size(); ++i)
    CHECK(store.grads()[static_cast<std::size_t>(i)] ==
          Approx(full_grads[static_cast<std::size_t>(i)]).margin(1e-12));
  check_store_gradients("adapters under a chunked LM loss", model, store, b);
}

TEST_CASE("checkpointed backward gives the same gradients as the plain one, dropout included",
          "[model]") {
  const Family family = GENERATE(Family::bert, Family::llama);
  const int method = GENERATE(range(0, wt::kMethods));
  INFO(to_string(family) << " " << method_name(wt::method_config(method, 2, 4)));
  Rng rng(12);
  const ModelConfig c = ModelConfig::tiny(family);
  std::vector<double> grads[2];
  for (int checkpoint = 0; checkpoint < 2; ++checkpoint) {
    Transformer<double> model(c);
    Rng init(5);
    model.init_random(init);
    ParameterStore<double> store;
    model.attach({.target_modules = {"q", "v", "down"},
                  .method = wt::method_config(method, 2, 4, 0.3),
                  .seed = 3},
                 store);
    if (family == Family::bert) model.add_classifier(3, store);
    Rng values(6);
    for (auto& v : store.values()) v = values.uniform(-0.3, 0.3);
    model.set_checkpointing(checkpoint == 1);
    Rng data(7);
    TinyBatch b = make_batch(c, data);
    Transformer<double>::Activations acts;
    run_loss(model, acts, b);
    if (checkpoint) CHECK(acts.blocks[0].released);
    model.backward(acts);
    grads[checkpoint].assign(store.grads().begin(), store.grads().end());
  }
  REQUIRE(grads[0].size() == grads[1].size());
  CHECK(grads[0] == grads[1]);
  CHECK(std::any_of(grads[0].begin(), grads[0].end(), [](double g) { return g != 0; }));
}

TEST_CASE("a tiny model overfits one batch to near-zero loss with every adapter method",
          "[model]") {
  const Family family = GENERATE(Family::gpt2, Family::llama);
  const int method = GENERATE(range(0, wt::kMethods));
  INFO(to_string(family) << " " << method_name(wt::method_config(method, 4, 8)));
  Rng rng(13);
  ModelConfig c = ModelConfig::tiny(family);
  Transformer<double> model(c);
  model.init_random(rng, 0.3);
  // The LM head sees a normalised hidden state, so its weights bound the reachable logit margin.
  model.tensor(family == Family::gpt2 ? c.token_embedding_name() + ".weight" : "lm_head.weight") *=
      5.0;
  ParameterStore<double> store;
  model.attach({.target_modules = {"all-linear"}, .method = wt::method_config(method, 4, 8)},
               store);
  TinyBatch b = make_batch(c, rng);
  AdamW<double> opt({.lr = 2e-2, .weight_decay = 0.0});
  Transformer<double>::Activations acts;
  double first = 0, loss = 0;
  for (int step = 0; step < 300; ++step) {
    loss = run_loss(model, acts, b);
    if (step == 0) first = loss;
    store.zero_grad();
    model.backward(acts);
    opt.step(store.values(), store.grads());
  }
  INFO("first loss " << first << ", last " << loss);
  CHECK(first > 1.5);
  CHECK(loss < 0.05);
}

TEST_CASE("decode with a key/value cache gives forward's logits at every position, in chunks",
          "[model][decode]") {
  const Family family = GENERATE(Family::gpt2, Family::llama);
  const int method = GENERATE(0, 1);  // LoRA, WeGeFT, unmerged
  INFO(to_string(family) << " " << method_name(wt::method_config(method, 4, 8)));
  Rng rng(23);
  ModelConfig c = ModelConfig::tiny(family);
  c.max_positions = 16;
  if (family == Family::llama) c.kv_heads = 2;  // grouped keys: 4 query heads over 2
  Transformer<float> model(c);
  model.init_random(rng, 0.3);
  ParameterStore<float> store;
  model.attach({.target_modules = {"all-linear"}, .method = wt::method_config(method, 4, 8)},
               store);
  for (float& p : store.values()) p = 0.2f * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
  std::vector<std::int32_t> ids(13);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u32() % c.vocab_size);
  Transformer<float>::Activations acts;  // the oracle: the training forward over the whole text
  model.forward(acts, {.ids = ids.data(), .batch = 1, .seq = static_cast<Index>(ids.size())});
  Transformer<float>::KvCache cache;
  Matrix<float> logits;
  Index at = 0;
  for (const Index m : {Index(5), Index(1), Index(3), Index(1), Index(1), Index(2)}) {
    model.decode(cache, ids.data() + at, m, logits);
    at += m;
    INFO("after " << at << " tokens");
    CHECK(cache.length == at);
    CHECK(wt::rel_diff(logits, acts.logits.row(at - 1)) < 1e-5);
  }
  REQUIRE(at == static_cast<Index>(ids.size()));
  cache.clear();  // a new sequence in the same cache: the first 4 tokens in one call
  model.decode(cache, ids.data(), 4, logits);
  Transformer<float>::Activations short_acts;
  model.forward(short_acts, {.ids = ids.data(), .batch = 1, .seq = 4});
  CHECK(wt::rel_diff(logits, short_acts.logits.row(3)) < 1e-5);
  // 4 cached + 13 new tokens pass the 16 positions
  CHECK_THROWS_WITH(model.decode(cache, ids.data(), 13, logits),
                    Catch::Contains("4 cached and 13 new tokens exceed the model's 16 positions"));
  CHECK(cache.length == 4);
  CHECK_THROWS_WITH(model.decode(cache, ids.data(), 0, logits), Catch::Contains("no tokens"));
}

TEST_CASE("decode refuses models without an LM head and caches of another model",
          "[model][decode][errors]") {
  Rng rng(3);
  Transformer<float> bert(ModelConfig::tiny(Family::bert));
  bert.init_random(rng, 0.1);
  Transformer<float>::KvCache cache;
  Matrix<float> logits;
  const std::vector<std::int32_t> ids = {1, 2, 3};
  CHECK_THROWS_WITH(bert.decode(cache, ids.data(), 3, logits),
                    Catch::Contains("decode: needs a causal language model") &&
                        Catch::Contains("this is a bert model"));
  Transformer<float> llama(ModelConfig::tiny(Family::llama));
  llama.init_random(rng, 0.1);
  llama.decode(cache, ids.data(), 3, logits);
  ModelConfig wider = ModelConfig::tiny(Family::llama);
  wider.layers = 3;
  Transformer<float> other(wider);
  other.init_random(rng, 0.1);
  CHECK_THROWS_WITH(other.decode(cache, ids.data(), 1, logits),
                    Catch::Contains("the cache holds 3 tokens of a model of another shape"));
}

TEST_CASE("a frozen tensor given new storage after attach is refused by the forward, by name",
          "[model][safety]") {
  const std::string q0 = "model.layers.0.self_attn.q_proj.weight";
  const std::string k0 = "model.layers.0.self_attn.k_proj.weight";
  const std::vector<std::int32_t> ids = {1, 2, 3, 4};
  const ModelInput<float> in{.ids = ids.data(), .batch = 1, .seq = 4};
  Rng rng(5);
  Transformer<float> model(ModelConfig::tiny(Family::llama));
  model.init_random(rng, 0.1);
  ParameterStore<float> store;
  model.attach({.target_modules = {"q"}, .method = LoraConfig{.rank = 2}}, store);
  Transformer<float>::Activations acts;
  // In place (an expression of the same shape): the adapter's view stays valid.
  model.tensor(q0) = model.tensor(q0) * 0.5f;
  model.forward(acts, in);
  CHECK(acts.logits.allFinite());
  // A layer without an adapter reads its tensor directly: a new one is fine.
  const Matrix<float> k_new =
      Matrix<float>::Constant(model.tensor(k0).rows(), model.tensor(k0).cols(), 0.01f);
  model.tensor(k0) = Matrix<float>(k_new);  // a temporary, moved in
  model.forward(acts, in);
  CHECK(acts.logits.allFinite());
  // A temporary moved into the adapted layer's tensor takes new storage: the adapter would read
  // the old, freed one.
  const Matrix<float> q_new =
      Matrix<float>::Constant(model.tensor(q0).rows(), model.tensor(q0).cols(), 0.01f);
  model.tensor(q0) = Matrix<float>(q_new);
  CHECK_THROWS_WITH(
      model.forward(acts, in),
      Catch::Contains("model.layers.0.self_attn.q_proj: its frozen weight or bias was "
                      "given new storage"));
}

TEST_CASE("adapters attach by short name, module suffix, regex, all-linear and layer filter",
          "[model][targets]") {
  const ModelConfig c = ModelConfig::tiny(Family::llama);
  Transformer<float> model(c);
  ParameterStore<float> store;
  CHECK(model.attach({.target_modules = {"q", "v"}, .method = LoraConfig{.rank = 2}}, store) == 4);
  CHECK(model.adapter<LoraAdapter<float>>("model.layers.1.self_attn.v_proj") != nullptr);
  CHECK(model.adapter<LoraAdapter<float>>("model.layers.1.self_attn.k_proj") == nullptr);
  CHECK(model.attach({.target_modules = {"k_proj"}, .layers = {1}, .method = LoraConfig{.rank = 2}},
                     store) == 1);
  CHECK(model.adapter<LoraAdapter<float>>("model.layers.1.self_attn.k_proj") != nullptr);
  CHECK(model.attach({.target_regex = R"(model\.layers\.0\.mlp\.(up|down)_proj)",
                      .method = LoraConfig{.rank = 2}},
                     store) == 2);
  CHECK_THROWS_WITH(model.attach({.target_modules = {"q"}, .method = LoraConfig{.rank = 2}}, store),
                    Catch::Contains("already has an adapter"));
  CHECK_THROWS_WITH(
      model.attach({.target_modules = {"query"}, .method = LoraConfig{.rank = 2}}, store),
      Catch::Contains("[query] match no module"));

  Transformer<float> gpt(ModelConfig::tiny(Family::gpt2));
  ParameterStore<float> s2;
  CHECK(gpt.attach({.target_modules = {"c_attn"}, .method = LoraConfig{.rank = 2}}, s2) == 2);
  CHECK(gpt.adapter<LoraAdapter<float>>("transformer.h.0.attn.c_attn")->d_out() == 36);

  Transformer<float> all(c);
  ParameterStore<float> s3;
  const Index n = all.attach({.target_modules = {"all-linear"},
                              .method = WeGeFTConfig{.rank = 2, .alpha = 4},
                              .rank_pattern = {{"down", 3}},
                              .alpha_pattern = {{"q_proj", 1.0}}},
                             s3);
  CHECK(n == 14);
  CHECK(generator_count(all) == 7);  // one per role, shared across the two layers
  CHECK(all.adapter<WeGeFTAdapter<float>>("model.layers.0.mlp.down_proj")->generator().rank() == 3);
  CHECK(all.adapter<WeGeFTAdapter<float>>("model.layers.1.self_attn.q_proj")->generator().scale() ==
        0.5f);
  CHECK(&all.adapter<WeGeFTAdapter<float>>("model.layers.0.self_attn.k_proj")->generator() ==
        &all.adapter<WeGeFTAdapter<float>>("model.layers.1.self_attn.k_proj")->generator());
  CHECK(all.adapter<WeGeFTAdapter<float>>("model.layers.0.self_attn.k_proj")->generator().name() ==
        "model.layers.0.self_attn.k_proj");
  CHECK(s3.parameter_count() ==
        2 * 2 * 16 * 6 + 2 * 3 * 20);  // six roles with d_in 16, down with d_in 20

  Transformer<float> per_layer(c);
  ParameterStore<float> s4;
  per_layer.attach(
      {.target_modules = {"q", "k"},
       .method = WeGeFTConfig{.rank = 2, .alpha = 4, .sharing = WeGeFTSharing::per_layer}},
      s4);
  CHECK(generator_count(per_layer) == 4);
}

TEST_CASE("model bad input gets clear errors", "[model][errors]") {
  ModelConfig c = ModelConfig::tiny(Family::llama);
  c.heads = 5;
  CHECK_THROWS_WITH(Transformer<float>{c},
                    Catch::Contains("5 heads do not divide the hidden width 16"));
  c = ModelConfig::tiny(Family::llama);
  c.kv_heads = 3;
  CHECK_THROWS_WITH(Transformer<float>{c},
                    Catch::Contains("3 key/value heads do not divide 4 query heads"));
  c = ModelConfig::tiny(Family::gpt2);
  Transformer<float> model(c);
  Transformer<float>::Activations acts;
  std::vector<std::int32_t> ids(40, 1);
  CHECK_THROWS_WITH(model.forward(acts, {.ids = ids.data(), .batch = 2, .seq = 20}),
                    Catch::Contains("sequence length 20 exceeds the model's 16 positions"));
  ids[7] = 11;
  CHECK_THROWS_WITH(model.forward(acts, {.ids = ids.data(), .batch = 2, .seq = 8}),
                    Catch::Contains("token id 11 at position 7 is outside the vocabulary [0, 11)"));
  CHECK_THROWS_WITH(model.tensor("transformer.h.0.attn.q_proj.weight"),
                    Catch::Contains("no tensor"));
  ParameterStore<float> store;
  CHECK_THROWS_WITH(model.train_norms("nothing", store), Catch::Contains("matches no norm tensor"));
}

TEST_CASE("API misuse gets wegeft::Error, not a crash or a silently useless adapter",
          "[model][errors][hostile]") {
  Transformer<float> model(ModelConfig::tiny(Family::llama));
  Rng init(1);
  model.init_random(init);
  ParameterStore<float> store;
  // Backward before any forward: the activations hold nothing to differentiate.
  Transformer<float>::Activations fresh;
  CHECK_THROWS_WITH(model.backward(fresh),
                    Catch::Contains("backward needs the activations of a forward"));
  // A malformed norm pattern is a wegeft::Error naming the pattern.
  CHECK_THROWS_WITH(model.train_norms("model.norm(", store),
                    Catch::Contains("invalid regular expression 'model.norm('"));
  // alpha 0 (an update that is always zero) and a scale that overflows float are refused, for each method.
  CHECK_THROWS_WITH(
      model.attach({.target_modules = {"q"}, .method = LoraConfig{.rank = 2, .alpha = 0}}, store),
      Catch::Contains("alpha must be finite and non-zero, got 0"));
  CHECK_THROWS_WITH(
      model.attach({.target_modules = {"q"}, .method = WeGeFTConfig{.rank = 2, .alpha = 0}}, store),
      Catch::Contains("alpha must be finite and non-zero, got 0"));
  CHECK_THROWS_WITH(
      model.attach({.target_modules = {"q"}, .method = LoraConfig{.rank = 2, .alpha = 1e300}},
                   store),
      Catch::Contains("overflows the compute type"));
  CHECK_THROWS_WITH(
      model.attach({.target_modules = {"q"}, .method = WeGeFTConfig{.rank = 2, .alpha = 1e300}},
                   store),
      Catch::Contains("overflows the compute type"));
  CHECK(store.entries().empty());
  // Two adapters under one name in one store.
  Matrix<float> w = Matrix<float>::Ones(4, 6);
  ParameterStore<float> own;
  Rng rng(2);
  LoraAdapter<float> first(own, FrozenLinear<float>(w.data(), 4, 6), LoraConfig{.rank = 2}, rng,
                           "layer");
  CHECK_THROWS_WITH(LoraAdapter<float>(own, FrozenLinear<float>(w.data(), 4, 6),
                                       LoraConfig{.rank = 2}, rng, "layer"),
                    Catch::Contains("parameter 'layer.lora_A.weight' is already in this store"));
}

TEST_CASE(
    "whole tiny models equal Hugging Face transformers + PEFT: logits, loss and every adapter "
    "gradient",
    "[model][golden]") {
  const Family family = GENERATE(Family::bert, Family::gpt2, Family::llama, Family::vit);
  const int which = GENERATE(0, 1);  // DoRA's golden model is the interop test in test_peft.cpp
  const std::string method = method_name(wt::method_config(which, 2, 4));
  INFO(to_string(family) << " " << method);
  const wt::Golden g(std::string("model_") + to_string(family) + ".txt");
  const ModelConfig c = ModelConfig::tiny(family);
  Transformer<double> model(c);
  Index loaded = 0;
  for (const auto& [name, t] : model.tensors()) {
    INFO("base tensor " << name);
    const Matrix<double> want = g.get("base." + name);
    REQUIRE(want.rows() == t.rows());
    REQUIRE(want.cols() == t.cols());
    model.tensor(name) = want;
    ++loaded;
  }
  CHECK(loaded == g.count_prefix("base."));  // every Hugging Face parameter has a place

  ParameterStore<double> store;
  // The golden model adapts every block linear (make_model_golden.py's ROLES), not BERT's pooler.
  std::vector<std::string> roles;
  for (LinearRole r : c.roles()) roles.push_back(short_name(r));
  model.attach({.target_modules = roles, .method = wt::method_config(which, 2, 4)}, store);
  const bool classify = family == Family::bert || family == Family::vit;
  if (classify) model.add_classifier(3, store);
  for (const auto& e : store.entries()) {
    INFO("trainable " << e.name);
    store.value(ParamId{std::size_t(&e - store.entries().data())}) =
        g.get(method + ".value." + e.name);
  }

  const Index batch = 2, seq = 6;
  std::vector<std::int32_t> ids, targets, labels;
  std::vector<std::uint8_t> mask;
  Matrix<double> images;
  if (family == Family::vit) {
    images = g.get("input.pixel_values");
  } else {
    const Matrix<double> id = g.get("input.input_ids"), m = g.get("input.attention_mask");
    for (Index i = 0; i < id.size(); ++i) {
      ids.push_back(static_cast<std::int32_t>(id.data()[i]));
      mask.push_back(m.data()[i] != 0);
    }
  }
  const Matrix<double> lab = g.get("input.labels");
  if (classify) {
    for (Index i = 0; i < lab.size(); ++i)
      labels.push_back(static_cast<std::int32_t>(lab.data()[i]));
  } else {
    for (Index b = 0; b < batch; ++b)
      for (Index t = 0; t < seq; ++t)
        targets.push_back(t + 1 < seq ? static_cast<std::int32_t>(lab(b, t + 1)) : kIgnoreIndex);
  }
  Transformer<double>::Activations acts;
  model.forward(acts, {.ids = ids.empty() ? nullptr : ids.data(),
                       .mask = mask.empty() ? nullptr : mask.data(),
                       .images = images.size() ? images.data() : nullptr,
                       .batch = batch,
                       .seq = seq});
  const double loss = classify ? model.classification_loss(acts, labels.data())
                               : model.lm_loss(acts, targets.data());
  CHECK(wt::rel_diff(acts.logits, g.get(method + ".logits")) < 1e-12);
  CHECK(loss == Approx(g.get(method + ".loss")(0, 0)).epsilon(1e-12));
  model.backward(acts);
  Index compared = 0;
  for (const auto& e : store.entries()) {
    INFO("gradient of " << e.name);
    CHECK(wt::rel_diff(store.grad(ParamId{std::size_t(&e - store.entries().data())}),
                       g.get(method + ".grad." + e.name)) < 1e-11);
    ++compared;
  }
  CHECK(compared == g.count_prefix(method + ".grad."));
}

TEST_CASE("trainer: 2 accumulated micro-batches give the same step as one batch of twice the size",
          "[model][optim]") {
  // classification, and language modelling whose micro-batches run a chunked LM loss
  const bool lm = GENERATE(false, true);
  INFO((lm ? "llama LM, chunked loss" : "bert classifier"));
  const ModelConfig c = ModelConfig::tiny(lm ? Family::llama : Family::bert);
  std::vector<double> before, after[2];
  Rng data(21);
  std::vector<std::int32_t> ids(4 * 5), labels = {0, 2, 1, 2}, targets(4 * 5);
  for (auto& id : ids) id = static_cast<std::int32_t>(data.next_u32() % 11);
  for (std::size_t i = 0; i < targets.size(); ++i)  // next token; each sequence's last ignored
    targets[i] = i % 5 == 4 ? kIgnoreIndex : ids[i + 1];
  for (int accumulate = 0; accumulate < 2; ++accumulate) {
    Transformer<double> model(c);
    Rng init(4);
    model.init_random(init);
    ParameterStore<double> store;
    model.attach({.target_modules = {"q", "v"}, .method = WeGeFTConfig{.rank = 2, .alpha = 4}},
                 store);
    if (lm && accumulate) model.set_lm_loss_chunk(3);  // the one-batch run keeps the logits
    if (!lm) model.add_classifier(3, store);
    before.assign(store.values().begin(), store.values().end());
    Trainer<double> trainer(
        model, {.adamw = {.lr = 1e-2}, .max_grad_norm = 0.5, .accumulation = accumulate ? 2 : 1});
    const auto step = [&](Index first, Index batch) {
      const ModelInput<double> in{.ids = ids.data() + first * 5, .batch = batch, .seq = 5};
      if (lm)
        trainer.lm_step(in, targets.data() + first * 5);
      else
        trainer.classification_step(in, labels.data() + first);
    };
    if (accumulate) {
      step(0, 2);
      CHECK(trainer.optimizer_steps() == 0);
      step(2, 2);
    } else {
      step(0, 4);
    }
    CHECK(trainer.optimizer_steps() == 1);
    if (!lm) CHECK(trainer.last_grad_norm() > 0.5);  // clipping was active
    after[accumulate].assign(store.values().begin(), store.values().end());
  }
  REQUIRE(after[0].size() == after[1].size());
  double moved = 0;
  for (std::size_t i = 0; i < after[0].size(); ++i) {
    CHECK(after[0][i] == Approx(after[1][i]).margin(1e-12));
    moved = std::max(moved, std::abs(after[1][i] - before[i]));
  }
  CHECK(moved > 1e-4);  // the step did move the parameters
}

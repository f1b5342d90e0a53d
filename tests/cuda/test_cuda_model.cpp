// The whole Llama- and GPT-2-family training step on the GPU (cuda::CausalLM) against the CPU
// model (Transformer<float>) on the same weights and batch: the loss and every adapter gradient,
// LoRA and WeGeFT on every linear, a padded batch with ignored targets, tied and untied LM heads
// (GPT-2: the fused q/k/v projection, LayerNorm, learned positions, GELU); and
// a 25-step AdamW run over two batches (which it memorises) whose losses track the CPU run's; a steady-state step that allocates no
// device memory; a run checkpointed and resumed on either backend; decoding with a key/value
// cache against the CPU forward's logits at every position. F32 on the GPU is full fp32
// (tolerances 1e-4 relative to the largest value of each gradient); BF16 rounds every activation,
// so its tolerances are 2e-2 on the loss and 8e-2 on the gradients, with the CPU model given the
// same bf16-rounded weights.
#include "support_cuda.hpp"

#include <wegeft/io/checkpoint.hpp>
#include <wegeft/optim/adamw.hpp>

#include <cmath>
#include <filesystem>
#include <random>
#include <variant>
#include <vector>

namespace {

using wegeft::DType;
using wegeft::Index;
using wegeft::Matrix;
namespace cu = wegeft::cuda;

using wt::cuda::context;

wegeft::ModelConfig small_llama(bool tied) {
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(wegeft::Family::llama);
  c.hidden = 64;
  c.heads = 4;
  c.kv_heads = 2;
  c.intermediate = 96;
  c.vocab_size = 101;
  c.layers = 2;
  c.max_positions = 32;
  c.tied_lm_head = tied;
  return c;
}

wegeft::ModelConfig small_gpt2() {
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(wegeft::Family::gpt2);
  c.hidden = 48;
  c.heads = 3;
  c.kv_heads = 3;
  c.intermediate = 80;
  c.vocab_size = 101;
  c.layers = 2;
  c.max_positions = 32;
  return c;
}

/// A host model with random weights and `method` on every linear, its adapter parameters random
/// too (LoRA's B = 0 would hide half the gradients); bf16-rounded when `dtype` is BF16.
std::unique_ptr<wegeft::Transformer<float>> host_model(
    bool tied, int method, DType dtype, wegeft::Rng& rng,
    wegeft::Family family = wegeft::Family::llama) {
  const bool gpt2 = family == wegeft::Family::gpt2;
  auto m = std::make_unique<wegeft::Transformer<float>>(gpt2 ? small_gpt2() : small_llama(tied));
  m->init_random(rng, 0.15);
  using Targets = std::vector<std::string>;
  m->attach({.target_modules = gpt2 ? Targets{"qkv", "o", "up", "down"}
                                    : Targets{"q", "k", "v", "o", "gate", "up", "down"},
             .method = wt::method_config(method, 4, 8.0)});
  wt::cuda::randomise_and_round(*m, dtype, rng);
  return m;
}

struct Batch {
  Index batch = 3, seq = 9;
  std::vector<std::int32_t> ids, targets;
  std::vector<std::uint8_t> mask;
};

/// Three sequences of 9 tokens, the last one with 3 padding tokens; targets: the next token,
/// ignored at padding, at each sequence's end and at the first token of the second one.
Batch batch_of(Index vocab, wegeft::Rng& rng) {
  Batch b;
  const Index n = b.batch * b.seq;
  b.ids.resize(n);
  b.mask.assign(n, 1);
  for (auto& id : b.ids)
    id = static_cast<std::int32_t>(rng.uniform() * static_cast<double>(vocab)) % vocab;
  for (Index t = 6; t < 9; ++t) b.mask[2 * 9 + t] = 0;
  b.targets.assign(n, wegeft::kIgnoreIndex);
  for (Index s = 0; s < b.batch; ++s)
    for (Index t = 0; t + 1 < b.seq; ++t)
      if (b.mask[s * b.seq + t + 1]) b.targets[s * b.seq + t] = b.ids[s * b.seq + t + 1];
  b.targets[9] = wegeft::kIgnoreIndex;
  return b;
}

double cpu_step(wegeft::Transformer<float>& m, const Batch& b) {
  m.store().zero_grad();
  wegeft::Transformer<float>::Activations acts;
  m.forward(acts, {.ids = b.ids.data(), .mask = b.mask.data(), .batch = b.batch, .seq = b.seq});
  const double loss = m.lm_loss(acts, b.targets.data());
  m.backward(acts);
  return loss;
}

cu::LmBatch gpu_batch(const Batch& b) {
  return {.ids = b.ids.data(),
          .mask = b.mask.data(),
          .targets = b.targets.data(),
          .batch = b.batch,
          .seq = b.seq};
}

}  // namespace

TEST_CASE("cuda CausalLM step: the loss and every adapter gradient equal the CPU model's",
          "[cuda][model]") {
  auto& ctx = context();
  for (const auto family : {wegeft::Family::llama, wegeft::Family::gpt2})
    for (int method : {0, 1}) {  // LoRA, WeGeFT
      for (DType dtype : {DType::F32, DType::BF16}) {
        const bool tied = method == 1 || family == wegeft::Family::gpt2;
        INFO(wegeft::to_string(family)
             << ", " << (method ? "WeGeFT" : "LoRA") << ", " << wegeft::dtype_name(dtype) << ", "
             << (tied ? "tied" : "untied") << " LM head");
        wegeft::Rng rng(31 + method);
        auto host = host_model(tied, method, dtype, rng, family);
        const Batch b = batch_of(host->config().vocab_size, rng);
        const double cpu_loss = cpu_step(*host, b);
        const wegeft::ParameterStore<float> want = wt::cuda::gradients_of(host->store());

        cu::CausalLM gpu(ctx, *host, dtype);
        if (dtype == DType::F32) {  // greedy tokens: the CPU logits' argmax at every position
          REQUIRE(gpu.eval_loss(gpu_batch(b)) == Approx(cpu_loss).epsilon(1e-5));
          wegeft::Transformer<float>::Activations acts;
          host->forward(
              acts, {.ids = b.ids.data(), .mask = b.mask.data(), .batch = b.batch, .seq = b.seq});
          const std::vector<std::int32_t> greedy = gpu.greedy_tokens();
          REQUIRE(greedy.size() == static_cast<std::size_t>(acts.logits.rows()));
          for (Index i = 0; i < acts.logits.rows(); ++i) {
            Index arg = 0;
            acts.logits.row(i).maxCoeff(&arg);
            CHECK(greedy[static_cast<std::size_t>(i)] == arg);
          }
        }
        const double gpu_loss = gpu.train_step(gpu_batch(b));
        const double loss_tol = dtype == DType::F32 ? 1e-5 : 2e-2;
        CHECK(std::abs(gpu_loss - cpu_loss) / cpu_loss < loss_tol);
        gpu.store().download(ctx, host->store(), true);
        const double tol = dtype == DType::F32 ? 1e-4 : 8e-2;
        wt::cuda::check_gradients(want, host->store(), tol);
      }
    }
}

TEST_CASE("cuda CausalLM: 25 AdamW steps track the CPU model's losses", "[cuda][model]") {
  auto& ctx = context();
  const auto family = GENERATE(wegeft::Family::llama, wegeft::Family::gpt2);
  INFO(wegeft::to_string(family));
  wegeft::Rng rng(41);
  auto host = host_model(false, 1, DType::F32, rng, family);
  auto twin = host_model(false, 1, DType::F32, rng, family);  // overwritten below: the same start
  for (auto& [name, t] : host->tensors()) twin->tensor(name) = t;
  std::copy(host->store().values().begin(), host->store().values().end(),
            twin->store().values().begin());
  cu::CausalLM gpu(ctx, *twin, DType::F32);
  const wegeft::AdamWConfig config{.lr = 3e-3};
  wegeft::AdamW<float> cpu_opt(config);
  cu::AdamW gpu_opt(config);
  std::vector<double> cpu_losses, gpu_losses;
  // Two fixed batches in turn: random tokens carry nothing to learn across fresh batches, so only
  // a repeated batch shows the loss falling.
  const Batch batches[2] = {batch_of(host->config().vocab_size, rng),
                            batch_of(host->config().vocab_size, rng)};
  for (int step = 0; step < 25; ++step) {
    const Batch& b = batches[step % 2];
    cpu_losses.push_back(cpu_step(*host, b));
    cpu_opt.step(host->store().values(), host->store().grads());
    gpu_losses.push_back(gpu.train_step(gpu_batch(b)));
    gpu_opt.step(ctx, gpu.store());
    gpu.store().zero_grad(ctx);
    gpu.refresh();
  }
  INFO("first loss " << cpu_losses.front() << ", last " << cpu_losses.back());
  CHECK(cpu_losses.back() < cpu_losses.front());  // it trains
  for (int step = 0; step < 25; ++step) {
    INFO("step " << step << ": cpu " << cpu_losses[step] << ", gpu " << gpu_losses[step]);
    CHECK(std::abs(gpu_losses[step] - cpu_losses[step]) / cpu_losses[step] < 1e-4);
  }
}

TEST_CASE(
    "cuda CausalLM decode with a key/value cache gives the CPU forward's logits at every "
    "position, in chunks",
    "[cuda][model][decode]") {
  auto& ctx = context();
  for (const auto family : {wegeft::Family::llama, wegeft::Family::gpt2})
    for (int method : {0, 1})  // LoRA, WeGeFT, unmerged
      for (DType dtype : {DType::F32, DType::BF16}) {
        INFO(wegeft::to_string(family)
             << ", " << (method ? "WeGeFT" : "LoRA") << ", " << wegeft::dtype_name(dtype));
        wegeft::Rng rng(61 + method);
        auto host = host_model(method == 0, method, dtype, rng, family);
        const Index vocab = host->config().vocab_size;
        std::vector<std::int32_t> ids(24);
        for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u32() % vocab);
        // The oracle: the CPU model's training forward over the whole text.
        wegeft::Transformer<float>::Activations acts;
        host->forward(acts, {.ids = ids.data(), .batch = 1, .seq = static_cast<Index>(ids.size())});
        // F32: full fp32 on both sides; BF16: every activation rounded on the GPU.
        const double tol = dtype == DType::F32 ? 1e-4 : 3e-2;
        cu::CausalLM gpu(ctx, *host, dtype);
        cu::CausalLM::KvCache cache;
        // Chunks, then one token at a time: the single tokens after the cache run the decode
        // step's CUDA graph (captured after the first single token on each cache buffer: at 5,
        // 11 and 20, where the cache has grown to 10, 20 and 32 rows) or, with graphs off, the
        // same kernels launched one by one.
        std::vector<Index> chunks{5, 1, 3, 2};
        chunks.resize(chunks.size() + 13, 1);
        const auto run = [&](const wegeft::Transformer<float>::Activations& want, Index at) {
          std::size_t allocations = 0;
          for (const Index m : chunks) {
            if (at + m > static_cast<Index>(ids.size())) break;
            // the cache holds 20 rows from 11 tokens to 20: those steps allocate nothing
            if (at == 11) allocations = cu::device_allocations();
            if (at == 20) CHECK(cu::device_allocations() == allocations);
            const Matrix<float> logits = cu::download(ctx, gpu.decode(cache, ids.data() + at, m));
            at += m;
            INFO("after " << at << " tokens");
            CHECK(cache.length == at);
            REQUIRE(logits.rows() == 1);
            CHECK(wt::rel_diff(logits, want.logits.row(at - 1)) < tol);
            if (dtype == DType::F32) {  // greedy decoding picks the CPU's token
              Index arg = 0;
              want.logits.row(at - 1).maxCoeff(&arg);
              CHECK(gpu.greedy_tokens() ==
                    std::vector<std::int32_t>{static_cast<std::int32_t>(arg)});
            }
          }
          CHECK(at == static_cast<Index>(ids.size()));
        };
        for (const bool graphs : {true, false}) {
          INFO("decode graphs " << (graphs ? "on" : "off"));
          gpu.use_decode_graphs(graphs);
          cache = {};
          run(acts, 0);
        }
        // New adapter values after a graph was captured: the replays read them (refresh()
        // rewrites the buffers the graph reads). The cache keeps its 32 rows, so the single
        // tokens from 5 on replay the graph captured before the change.
        gpu.use_decode_graphs(true);
        cache = {};
        run(acts, 0);
        for (auto& value : host->store().values()) value *= 1.5f;
        gpu.store().upload(ctx, host->store());
        gpu.refresh();
        wegeft::Transformer<float>::Activations changed;
        host->forward(changed,
                      {.ids = ids.data(), .batch = 1, .seq = static_cast<Index>(ids.size())});
        REQUIRE(wt::rel_diff(changed.logits, acts.logits) > 10 * tol);  // the change shows
        cache.clear();
        const Matrix<float> prompt = cu::download(ctx, gpu.decode(cache, ids.data(), 5));
        CHECK(wt::rel_diff(prompt, changed.logits.row(4)) < tol);
        chunks.assign(19, 1);
        run(changed, 5);
        cache.clear();  // a new sequence in the same cache: the first 4 tokens in one call
        const Matrix<float> four = cu::download(ctx, gpu.decode(cache, ids.data(), 4));
        wegeft::Transformer<float>::Activations short_acts;
        host->forward(short_acts, {.ids = ids.data(), .batch = 1, .seq = 4});
        CHECK(wt::rel_diff(four, short_acts.logits.row(3)) < tol);
        // 4 cached + 29 new tokens pass the 32 positions; nothing is appended
        const std::vector<std::int32_t> many(29, 1);
        CHECK_THROWS_WITH(
            gpu.decode(cache, many.data(), 29),
            Catch::Contains("4 cached and 29 new tokens exceed the model's 32 positions"));
        CHECK(cache.length == 4);
        CHECK_THROWS_WITH(gpu.decode(cache, ids.data(), 0), Catch::Contains("no tokens"));
        const std::int32_t bad = static_cast<std::int32_t>(vocab);
        CHECK_THROWS_WITH(gpu.decode(cache, &bad, 1),
                          Catch::Contains("token id 101 at position 0 is outside the vocabulary"));
        CHECK(cache.length == 4);
        // a training step after decoding runs in the same buffers and still matches the CPU
        const Batch b = batch_of(vocab, rng);
        const double cpu_loss = cpu_step(*host, b);
        CHECK(std::abs(gpu.eval_loss(gpu_batch(b)) - cpu_loss) / cpu_loss <
              (dtype == DType::F32 ? 1e-5 : 2e-2));
      }
}

TEST_CASE("cuda CausalLM decode refuses a cache of a model of another shape", "[cuda][model]") {
  auto& ctx = context();
  wegeft::Rng rng(67);
  auto llama = host_model(true, 0, DType::F32, rng);
  auto gpt2 = host_model(true, 0, DType::F32, rng, wegeft::Family::gpt2);
  cu::CausalLM a(ctx, *llama, DType::F32), b(ctx, *gpt2, DType::F32);
  cu::CausalLM::KvCache cache;
  const std::vector<std::int32_t> ids = {1, 2, 3};
  a.decode(cache, ids.data(), 3);
  CHECK_THROWS_WITH(b.decode(cache, ids.data(), 1),
                    Catch::Contains("the cache holds 3 tokens of a model of another shape"));
  cache.clear();  // a cleared cache is taken over
  b.decode(cache, ids.data(), 3);
  CHECK(cache.length == 3);
}

TEST_CASE("cuda CausalLM refuses what it does not run, naming it", "[cuda][model]") {
  auto& ctx = context();
  wegeft::Transformer<float> bert(wegeft::ModelConfig::tiny(wegeft::Family::bert));
  CHECK_THROWS_WITH(cu::CausalLM(ctx, bert, DType::BF16),
                    Catch::Contains("runs the llama and gpt2 families; this model is bert"));
  wegeft::Transformer<float> classifier(wegeft::ModelConfig::tiny(wegeft::Family::llama));
  classifier.add_classifier(2);
  CHECK_THROWS_WITH(cu::CausalLM(ctx, classifier, DType::BF16),
                    Catch::Contains("has a classification head: cuda::SequenceClassifier runs it"));
  wegeft::Rng rng(5);
  auto host = host_model(true, 0, DType::F32, rng);
  cu::CausalLM gpu(ctx, *host, DType::F32);
  Batch b = batch_of(host->config().vocab_size, rng);
  b.ids[4] = 101;
  CHECK_THROWS_WITH(gpu.train_step(gpu_batch(b)),
                    Catch::Contains("token id 101 at position 4 is outside the vocabulary of 101"));
  b.ids[4] = 7;
  gpu.train_step(gpu_batch(b));
  CHECK_THROWS_WITH(gpu.greedy_tokens(), Catch::Contains("run eval_loss first"));
}

TEST_CASE("cuda CausalLM: a steady-state training step and an evaluation allocate no device memory",
          "[cuda][model]") {
  auto& ctx = context();
  wegeft::Rng rng(53);
  auto host = host_model(false, 0, DType::BF16, rng);
  cu::CausalLM gpu(ctx, *host, DType::BF16);
  cu::AdamW opt({.lr = 1e-3});
  const Batch b = batch_of(host->config().vocab_size, rng);
  auto full_step = [&] {  // as `wegeft finetune --device cuda` runs one
    const double loss = gpu.train_step(gpu_batch(b));
    const double norm = cu::clip_grad_norm(ctx, gpu.store(), 1.0);
    opt.step(ctx, gpu.store());
    gpu.store().zero_grad(ctx);
    gpu.refresh();
    return std::isfinite(loss) && std::isfinite(norm) && norm > 0;
  };
  for (int warm = 0; warm < 2; ++warm) REQUIRE(full_step());  // plans, tuning, AdamW's moments
  REQUIRE(std::isfinite(gpu.eval_loss(gpu_batch(b))));
  const std::size_t before = cu::device_allocations(), bytes = cu::device_bytes_in_use();
  for (int step = 0; step < 3; ++step) {
    REQUIRE(full_step());
    REQUIRE(std::isfinite(gpu.eval_loss(gpu_batch(b))));
  }
  CHECK(cu::device_allocations() == before);
  CHECK(cu::device_bytes_in_use() == bytes);
}

TEST_CASE(
    "cuda CausalLM: a GPU run saved with save_checkpoint resumes exactly on the GPU and closely "
    "on the CPU",
    "[cuda][model]") {
  namespace fs = std::filesystem;
  auto& ctx = context();
  wegeft::Rng rng(61);
  auto straight = host_model(false, 1, DType::F32, rng);
  // Three more hosts with the same frozen weights and adapter start as `straight`.
  auto copy_of = [&](wegeft::Transformer<float>& from) {
    auto m = host_model(false, 1, DType::F32, rng);
    for (auto& [name, t] : from.tensors()) m->tensor(name) = t;
    std::copy(from.store().values().begin(), from.store().values().end(),
              m->store().values().begin());
    return m;
  };
  auto first = copy_of(*straight), gpu_resumed = copy_of(*straight),
       cpu_resumed = copy_of(*straight);
  std::vector<Batch> batches;
  for (int i = 0; i < 6; ++i) batches.push_back(batch_of(straight->config().vocab_size, rng));
  const wegeft::AdamWConfig config{.lr = 3e-3};
  auto gpu_steps = [&](cu::CausalLM& lm, cu::AdamW& opt, int from, int to) {
    std::vector<double> losses;
    for (int i = from; i < to; ++i) {
      losses.push_back(lm.train_step(gpu_batch(batches[static_cast<std::size_t>(i)])));
      opt.step(ctx, lm.store());
      lm.store().zero_grad(ctx);
      lm.refresh();
    }
    return losses;
  };

  cu::CausalLM lm_straight(ctx, *straight, DType::F32);
  cu::AdamW opt_straight(config);
  const std::vector<double> want = gpu_steps(lm_straight, opt_straight, 0, 6);
  lm_straight.store().download(ctx, straight->store());
  const wegeft::AdamW<float>::State want_state = opt_straight.state(ctx);
  REQUIRE(want_state.step == 6);
  REQUIRE(want_state.m.size() == static_cast<std::size_t>(straight->store().size()));

  // Three steps, then the values and the optimizer state through a checkpoint file.
  const fs::path file =
      fs::temp_directory_path() /
      ("wegeft-cuda-ckpt-" + std::to_string(std::random_device{}()) + ".safetensors");
  {
    cu::CausalLM lm(ctx, *first, DType::F32);
    cu::AdamW opt(config);
    gpu_steps(lm, opt, 0, 3);
    lm.store().download(ctx, first->store());
    wegeft::AdamW<float> host_opt(config);
    host_opt.set_state(opt.state(ctx));
    wegeft::save_checkpoint(file.string(), *first, first->store(), host_opt);
  }

  // Resumed on the GPU as `wegeft finetune --resume --device cuda` does: the device model is
  // built first, then the checkpoint loaded into the host and uploaded.
  cu::CausalLM lm(ctx, *gpu_resumed, DType::F32);
  wegeft::AdamW<float> loaded(config);
  wegeft::load_checkpoint(file.string(), *gpu_resumed, gpu_resumed->store(), loaded);
  cu::AdamW opt(config);
  lm.store().upload(ctx, gpu_resumed->store());
  opt.set_state(ctx, loaded.state());
  lm.refresh();
  const std::vector<double> got = gpu_steps(lm, opt, 3, 6);
  lm.store().download(ctx, gpu_resumed->store());
  for (int i = 0; i < 3; ++i)
    CHECK(got[static_cast<std::size_t>(i)] == want[static_cast<std::size_t>(i) + 3]);
  CHECK(std::equal(gpu_resumed->store().values().begin(), gpu_resumed->store().values().end(),
                   straight->store().values().begin()));
  const wegeft::AdamW<float>::State got_state = opt.state(ctx);
  CHECK(got_state.step == 6);
  CHECK(got_state.m == want_state.m);
  CHECK(got_state.v == want_state.v);

  // Resumed on the CPU: the same file, the host model's step and optimizer.
  wegeft::AdamW<float> cpu_opt(config);
  wegeft::load_checkpoint(file.string(), *cpu_resumed, cpu_resumed->store(), cpu_opt);
  fs::remove(file);
  CHECK(cpu_opt.state().step == 3);
  for (int i = 3; i < 6; ++i) {
    const double loss = cpu_step(*cpu_resumed, batches[static_cast<std::size_t>(i)]);
    cpu_opt.step(cpu_resumed->store().values(), cpu_resumed->store().grads());
    INFO("step " << i << ": cpu " << loss << ", gpu " << want[static_cast<std::size_t>(i)]);
    CHECK(std::abs(loss - want[static_cast<std::size_t>(i)]) / loss < 1e-4);
  }
  double worst = 0, largest = 0;
  for (Index i = 0; i < straight->store().size(); ++i) {
    const auto u = static_cast<std::size_t>(i);
    worst = std::max(
        worst, double(std::abs(cpu_resumed->store().values()[u] - straight->store().values()[u])));
    largest = std::max(largest, double(std::abs(straight->store().values()[u])));
  }
  CHECK(worst / largest < 1e-4);
}

TEST_CASE(
    "cuda CausalLM: a model whose adapters are merged into its weights scores as the adapted one",
    "[cuda][model]") {
  auto& ctx = context();
  for (int method : {0, 1}) {
    INFO((method ? "WeGeFT" : "LoRA"));
    wegeft::Rng rng(71 + method);
    auto host = host_model(false, method, DType::F32, rng);
    const Batch b = batch_of(host->config().vocab_size, rng);
    double adapted = 0;
    {
      cu::CausalLM gpu(ctx, *host, DType::F32);
      adapted = gpu.eval_loss(gpu_batch(b));
    }
    wt::cuda::merge_adapters(*host);
    cu::CausalLM merged(ctx, *host, DType::F32);  // the merged weights, no adapter layers
    CHECK(std::abs(merged.eval_loss(gpu_batch(b)) - adapted) / adapted < 1e-5);
    wegeft::Transformer<float>::Activations acts;  // the CPU's merged model (forward only)
    host->forward(acts,
                  {.ids = b.ids.data(), .mask = b.mask.data(), .batch = b.batch, .seq = b.seq});
    CHECK(std::abs(host->lm_loss(acts, b.targets.data()) - adapted) / adapted < 1e-5);
  }
}

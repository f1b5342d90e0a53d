// The whole Llama-family training step on the GPU (cuda::CausalLM) against the CPU model
// (Transformer<float>) on the same weights and batch: the loss and every adapter gradient, LoRA
// and WeGeFT on every linear, a padded batch with ignored targets, tied and untied LM heads; and
// a 25-step AdamW run whose losses track the CPU run's. F32 on the GPU is full fp32 (tolerances
// 1e-4 relative to the largest value of each gradient); BF16 rounds every activation, so its
// tolerances are 2e-2 on the loss and 8e-2 on the gradients, with the CPU model given the same
// bf16-rounded weights.
#include "support_cuda.hpp"

#include <wegeft/optim/adamw.hpp>

#include <vector>

namespace {

using wegeft::DType;
using wegeft::Index;
using wegeft::Matrix;
namespace cu = wegeft::cuda;

using wt::cuda::context;

float bf16_round(float v) {
  return wegeft::bf16_to_float(wegeft::float_to_bf16(v));
}

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

/// A host model with random weights and `method` on every linear, its adapter parameters random
/// too (LoRA's B = 0 would hide half the gradients); bf16-rounded when `dtype` is BF16.
std::unique_ptr<wegeft::Transformer<float>> host_model(bool tied, int method, DType dtype,
                                                       wegeft::Rng& rng) {
  auto m = std::make_unique<wegeft::Transformer<float>>(small_llama(tied));
  m->init_random(rng, 0.15);
  m->attach({.target_modules = {"q", "k", "v", "o", "gate", "up", "down"},
             .method = wt::method_config(method, 4, 8.0)});
  for (float& v : m->store().values()) v = 0.2f * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
  if (dtype == DType::BF16) {
    for (auto& [name, t] : m->tensors())
      m->tensor(name) = t.unaryExpr([](float v) { return bf16_round(v); });
    for (float& v : m->store().values()) v = bf16_round(v);
  }
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
  for (int method : {0, 1}) {  // LoRA, WeGeFT
    for (DType dtype : {DType::F32, DType::BF16}) {
      const bool tied = method == 1;
      INFO((method ? "WeGeFT" : "LoRA") << ", " << wegeft::dtype_name(dtype) << ", "
                                        << (tied ? "tied" : "untied") << " LM head");
      wegeft::Rng rng(31 + method);
      auto host = host_model(tied, method, dtype, rng);
      const Batch b = batch_of(host->config().vocab_size, rng);
      const double cpu_loss = cpu_step(*host, b);
      wegeft::ParameterStore<float> want;  // the CPU gradients, kept
      for (const auto& e : host->store().entries()) want.add(e.name, e.rows, e.cols);
      std::copy(host->store().grads().begin(), host->store().grads().end(), want.grads().begin());

      cu::CausalLM gpu(ctx, *host, dtype);
      const double gpu_loss = gpu.train_step(gpu_batch(b));
      const double loss_tol = dtype == DType::F32 ? 1e-5 : 2e-2;
      CHECK(std::abs(gpu_loss - cpu_loss) / cpu_loss < loss_tol);
      gpu.store().download(ctx, host->store(), true);
      const double tol = dtype == DType::F32 ? 1e-4 : 8e-2;
      for (std::size_t i = 0; i < want.entries().size(); ++i) {
        const wegeft::ParamId id{i};
        INFO(want.entry(id).name);
        const Matrix<double> w = want.grad(id).cast<double>();
        const Matrix<double> g = host->store().grad(id).cast<double>();
        REQUIRE(g.allFinite());
        REQUIRE(w.cwiseAbs().maxCoeff() > 0);
        CHECK((g - w).cwiseAbs().maxCoeff() / w.cwiseAbs().maxCoeff() < tol);
      }
    }
  }
}

TEST_CASE("cuda CausalLM: 25 AdamW steps track the CPU model's losses", "[cuda][model]") {
  auto& ctx = context();
  wegeft::Rng rng(41);
  auto host = host_model(false, 1, DType::F32, rng);
  auto twin = host_model(false, 1, DType::F32, rng);  // overwritten below: the same start
  for (auto& [name, t] : host->tensors()) twin->tensor(name) = t;
  std::copy(host->store().values().begin(), host->store().values().end(),
            twin->store().values().begin());
  cu::CausalLM gpu(ctx, *twin, DType::F32);
  const wegeft::AdamWConfig config{.lr = 3e-3};
  wegeft::AdamW<float> cpu_opt(config);
  cu::AdamW gpu_opt(config);
  std::vector<double> cpu_losses, gpu_losses;
  for (int step = 0; step < 25; ++step) {
    const Batch b = batch_of(host->config().vocab_size, rng);
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

TEST_CASE("cuda CausalLM refuses what it does not run, naming it", "[cuda][model]") {
  auto& ctx = context();
  wegeft::Transformer<float> bert(wegeft::ModelConfig::tiny(wegeft::Family::bert));
  CHECK_THROWS_WITH(cu::CausalLM(ctx, bert, DType::BF16), Catch::Contains("runs the llama family"));
  wegeft::Rng rng(5);
  auto host = host_model(true, 0, DType::F32, rng);
  cu::CausalLM gpu(ctx, *host, DType::F32);
  Batch b = batch_of(host->config().vocab_size, rng);
  b.ids[4] = 101;
  CHECK_THROWS_WITH(gpu.train_step(gpu_batch(b)),
                    Catch::Contains("token id 101 at position 4 is outside the vocabulary of 101"));
}

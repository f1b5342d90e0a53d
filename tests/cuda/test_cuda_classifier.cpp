// The classification step on the GPU (cuda::SequenceClassifier) against the CPU model
// (Transformer<float> with add_classifier) on the same weights and batch: the loss, the logits
// and every trainable gradient (the adapters' and the head's); for BERT with LoRA and WeGeFT on
// every linear (the pooler included) and on q and v alone (the other linears frozen), a padded
// batch; for Llama and GPT-2 (the last token's state under the head) on every linear, over a
// batch padded on the left, on the right and with a hole; for a ViT (images of 16 x 16 in
// patches of 4, the class token pooled after the final norm) on every linear and on q and v;
// each family again pooling the mean of its tokens; and 20 AdamW steps whose losses track the CPU
// run's, for each kind. Tolerances as test_cuda_model.cpp: F32 on
// the GPU is full fp32 (1e-5 on the loss, 1e-4 relative to each gradient's largest value); BF16
// rounds every activation (2e-2 on the loss, 8e-2 on the gradients), with the CPU model given the
// same bf16-rounded weights.
#include "support_cuda.hpp"

#include <wegeft/optim/adamw.hpp>

#include <cmath>
#include <variant>
#include <vector>

namespace {

using wegeft::DType;
using wegeft::Index;
using wegeft::Matrix;
namespace cu = wegeft::cuda;

using wt::cuda::context;

wegeft::ModelConfig small_bert() {
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(wegeft::Family::bert);
  c.hidden = 64;
  c.heads = 4;  // head_dim 16: the tensor-core attention in BF16
  c.kv_heads = 4;
  c.intermediate = 96;
  c.vocab_size = 101;
  c.layers = 2;
  c.max_positions = 16;
  return c;
}

constexpr Index kLabels = 5;

/// A host BERT with random weights, `method` on `targets` and a 5-label head, the adapter and
/// head parameters random too (LoRA's B = 0 would hide half the gradients); bf16-rounded when
/// `dtype` is BF16.
std::unique_ptr<wegeft::Transformer<float>> host_model(
    int method, const std::vector<std::string>& targets, DType dtype, wegeft::Rng& rng,
    wegeft::Pooling pooling = wegeft::Pooling::cls) {
  auto m = std::make_unique<wegeft::Transformer<float>>(small_bert());
  m->init_random(rng, 0.15);
  m->attach({.target_modules = targets, .method = wt::method_config(method, 4, 8.0)});
  m->add_classifier(kLabels, pooling);
  wt::cuda::randomise_and_round(*m, dtype, rng);
  return m;
}

struct Batch {
  Index batch = 3, seq = 9;
  std::vector<std::int32_t> ids, labels;
  std::vector<std::uint8_t> mask;
  std::vector<float> images;  // vit: [batch, C, H, W], no ids or mask
};

/// Three sequences of 9 tokens, the last with 4 padding tokens, labels at random.
Batch batch_of(Index vocab, wegeft::Rng& rng) {
  Batch b;
  const Index n = b.batch * b.seq;
  b.ids.resize(n);
  b.mask.assign(n, 1);
  for (auto& id : b.ids)
    id = static_cast<std::int32_t>(rng.uniform() * static_cast<double>(vocab)) % vocab;
  for (Index t = 5; t < 9; ++t) b.mask[2 * 9 + t] = 0;
  for (Index s = 0; s < b.batch; ++s)
    b.labels.push_back(static_cast<std::int32_t>(rng.uniform() * static_cast<double>(kLabels)) %
                       kLabels);
  return b;
}

double cpu_step(wegeft::Transformer<float>& m, const Batch& b, Matrix<float>* logits = nullptr) {
  m.store().zero_grad();
  wegeft::Transformer<float>::Activations acts;
  const float* images = b.images.empty() ? nullptr : b.images.data();
  m.forward(acts, {.ids = b.ids.empty() ? nullptr : b.ids.data(),
                   .mask = b.mask.empty() ? nullptr : b.mask.data(),
                   .images = images,
                   .batch = b.batch,
                   .seq = b.seq});
  if (logits) *logits = acts.logits;
  const double loss = m.classification_loss(acts, b.labels.data());
  m.backward(acts);
  return loss;
}

cu::ClsBatch gpu_batch(const Batch& b) {
  return {.ids = b.ids.empty() ? nullptr : b.ids.data(),
          .mask = b.mask.empty() ? nullptr : b.mask.data(),
          .labels = b.labels.data(),
          .batch = b.batch,
          .seq = b.seq,
          .images = b.images.empty() ? nullptr : b.images.data()};
}

const std::vector<std::string> kAll = {"q", "k", "v", "o", "up", "down", "pooler"};
const std::vector<std::string> kQV = {"q", "v"};
const std::vector<std::string> kVitAll = {"q", "k", "v", "o", "up", "down"};  // (no pooler)

/// A 2-layer Llama (hidden 64, 4 query heads over 2 key/value heads) or GPT-2 (hidden 48, 3
/// heads) with random weights, `method` on every linear and a 5-label head on the last token,
/// its adapter and head parameters random; bf16-rounded when `dtype` is BF16.
std::unique_ptr<wegeft::Transformer<float>> decoder_model(
    wegeft::Family family, int method, DType dtype, wegeft::Rng& rng,
    wegeft::Pooling pooling = wegeft::Pooling::last) {
  const bool gpt2 = family == wegeft::Family::gpt2;
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(family);
  c.hidden = gpt2 ? 48 : 64;
  c.heads = gpt2 ? 3 : 4;
  c.kv_heads = gpt2 ? 3 : 2;
  c.intermediate = gpt2 ? 80 : 96;
  c.vocab_size = 101;
  c.layers = 2;
  c.max_positions = 16;
  auto m = std::make_unique<wegeft::Transformer<float>>(c);
  m->init_random(rng, 0.15);
  using Targets = std::vector<std::string>;
  m->attach({.target_modules = gpt2 ? Targets{"qkv", "o", "up", "down"}
                                    : Targets{"q", "k", "v", "o", "gate", "up", "down"},
             .method = wt::method_config(method, 4, 8.0)});
  m->add_classifier(kLabels, pooling);
  REQUIRE(m->pooling() == pooling);
  wt::cuda::randomise_and_round(*m, dtype, rng);
  return m;
}

/// A 2-layer ViT (hidden 64, 4 heads of 16, MLP 96) over 3-channel 16 x 16 images in patches of
/// 4 (16 patches and the class token), `method` on `targets`, a 5-label head on the class token;
/// random weights and parameters, bf16-rounded when `dtype` is BF16.
std::unique_ptr<wegeft::Transformer<float>> vit_model(
    int method, const std::vector<std::string>& targets, DType dtype, wegeft::Rng& rng,
    wegeft::Pooling pooling = wegeft::Pooling::cls) {
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(wegeft::Family::vit);
  c.hidden = 64;
  c.heads = 4;
  c.kv_heads = 4;
  c.intermediate = 96;
  c.image_size = 16;
  c.patch_size = 4;
  c.max_positions = c.patches() + 1;
  auto m = std::make_unique<wegeft::Transformer<float>>(c);
  m->init_random(rng, 0.15);
  m->attach({.target_modules = targets, .method = wt::method_config(method, 4, 8.0)});
  m->add_classifier(kLabels, pooling);
  REQUIRE(m->pooling() == pooling);
  wt::cuda::randomise_and_round(*m, dtype, rng);
  return m;
}

/// Three images of uniform noise in [-1, 1) (bf16-rounded when `dtype` is BF16, as the GPU
/// uploads them) and labels at random.
Batch vit_batch_of(const wegeft::ModelConfig& c, DType dtype, wegeft::Rng& rng) {
  Batch b;
  b.seq = c.patches() + 1;
  b.images.resize(static_cast<std::size_t>(b.batch * c.channels * c.image_size * c.image_size));
  for (float& x : b.images) {
    x = static_cast<float>(2.0 * rng.uniform() - 1.0);
    if (dtype == DType::BF16) x = wegeft::bf16_to_float(wegeft::float_to_bf16(x));
  }
  for (Index s = 0; s < b.batch; ++s)
    b.labels.push_back(static_cast<std::int32_t>(rng.uniform() * static_cast<double>(kLabels)) %
                       kLabels);
  return b;
}

/// batch_of's three sequences, padded so that each one's last token sits elsewhere: the first
/// has a hole at position 4 (last token 8), the second 3 padding tokens in front (last token 8),
/// the third 4 at the end (last token 4).
Batch decoder_batch_of(Index vocab, wegeft::Rng& rng) {
  Batch b = batch_of(vocab, rng);
  b.mask[4] = 0;
  for (Index t = 0; t < 3; ++t) b.mask[9 + t] = 0;
  return b;
}

/// The GPU classifier's evaluation and training step on host's weights and batch b against the
/// CPU model's: the loss, the logits and every trainable gradient; a second training step adds
/// the same gradients again.
void check_step_against_cpu(wegeft::Transformer<float>& host, const Batch& b, DType dtype) {
  auto& ctx = context();
  Matrix<float> cpu_logits;
  const double cpu_loss = cpu_step(host, b, &cpu_logits);
  const wegeft::ParameterStore<float> want = wt::cuda::gradients_of(host.store());

  cu::SequenceClassifier gpu(ctx, host, dtype);
  CHECK(gpu.labels() == kLabels);
  const double loss_tol = dtype == DType::F32 ? 1e-5 : 2e-2;
  const double eval = gpu.eval_loss(gpu_batch(b));
  CHECK(std::abs(eval - cpu_loss) / cpu_loss < loss_tol);
  const Matrix<float> logits = gpu.logits();
  REQUIRE(logits.rows() == b.batch);
  REQUIRE(logits.cols() == kLabels);
  CHECK((logits - cpu_logits).cwiseAbs().maxCoeff() / cpu_logits.cwiseAbs().maxCoeff() <
        (dtype == DType::F32 ? 1e-4 : 5e-2));
  const double gpu_loss = gpu.train_step(gpu_batch(b));
  CHECK(std::abs(gpu_loss - cpu_loss) / cpu_loss < loss_tol);
  CHECK_THROWS_WITH(gpu.logits(), Catch::Contains("run eval_loss first"));
  const double tol = dtype == DType::F32 ? 1e-4 : 8e-2;
  gpu.store().download(ctx, host.store(), true);
  wt::cuda::check_gradients(want, host.store(), tol);
  gpu.train_step(gpu_batch(b));
  gpu.store().download(ctx, host.store(), true);
  wegeft::ParameterStore<float> twice = wt::cuda::gradients_of(want);
  for (float& g : twice.grads()) g *= 2.0f;
  wt::cuda::check_gradients(twice, host.store(), tol);
}

/// 20 AdamW steps over batch b on the CPU (host) and on the GPU (twin, given host's weights and
/// parameters first): the CPU's loss halves, the GPU's tracks it within 1e-4 relative at every
/// step, and from the third step on the GPU allocates no device memory.
void check_adamw_tracks(wegeft::Transformer<float>& host, wegeft::Transformer<float>& twin,
                        const Batch& b) {
  auto& ctx = context();
  for (auto& [name, t] : host.tensors()) twin.tensor(name) = t;
  std::copy(host.store().values().begin(), host.store().values().end(),
            twin.store().values().begin());
  cu::SequenceClassifier gpu(ctx, twin, DType::F32);
  const wegeft::AdamWConfig config{.lr = 3e-3};
  wegeft::AdamW<float> cpu_opt(config);
  cu::AdamW gpu_opt(config);
  std::vector<double> cpu_losses, gpu_losses;
  std::size_t allocations = 0;
  for (int step = 0; step < 20; ++step) {
    if (step == 2) allocations = cu::device_allocations();
    cpu_losses.push_back(cpu_step(host, b));
    cpu_opt.step(host.store().values(), host.store().grads());
    gpu_losses.push_back(gpu.train_step(gpu_batch(b)));
    gpu_opt.step(ctx, gpu.store());
    gpu.store().zero_grad(ctx);
    gpu.refresh();
  }
  CHECK(cu::device_allocations() == allocations);
  INFO("first loss " << cpu_losses.front() << ", last " << cpu_losses.back());
  CHECK(cpu_losses.back() < 0.5 * cpu_losses.front());  // it trains
  for (int step = 0; step < 20; ++step) {
    INFO("step " << step << ": cpu " << cpu_losses[step] << ", gpu " << gpu_losses[step]);
    CHECK(std::abs(gpu_losses[step] - cpu_losses[step]) / cpu_losses[step] < 1e-4);
  }
}

/// fn(method, targets, dtype) for LoRA and WeGeFT, on `all` and on q and v, in F32 and BF16.
template <class Fn>
void for_each_variant(const std::vector<std::string>& all, Fn fn) {
  for (int method : {0, 1}) {  // LoRA, WeGeFT
    for (const auto* targets : {&all, &kQV}) {
      for (DType dtype : {DType::F32, DType::BF16}) {
        INFO((method ? "WeGeFT" : "LoRA")
             << " on " << targets->size() << " linears, " << wegeft::dtype_name(dtype));
        fn(method, *targets, dtype);
      }
    }
  }
}

}  // namespace

TEST_CASE(
    "cuda SequenceClassifier step: the loss, the logits and every trainable gradient equal the "
    "CPU model's",
    "[cuda][classifier]") {
  for_each_variant(kAll, [](int method, const std::vector<std::string>& targets, DType dtype) {
    wegeft::Rng rng(81 + method);
    auto host = host_model(method, targets, dtype, rng);
    check_step_against_cpu(*host, batch_of(host->config().vocab_size, rng), dtype);
  });
}

TEST_CASE(
    "cuda SequenceClassifier: 20 AdamW steps track the CPU model's losses, and a steady-state "
    "step allocates nothing",
    "[cuda][classifier]") {
  wegeft::Rng rng(91);
  auto host = host_model(1, kAll, DType::F32, rng);
  auto twin = host_model(1, kAll, DType::F32, rng);  // given host's start by check_adamw_tracks
  check_adamw_tracks(*host, *twin, batch_of(host->config().vocab_size, rng));
}

TEST_CASE("cuda SequenceClassifier refuses what it does not run, naming it", "[cuda][classifier]") {
  auto& ctx = context();
  wegeft::Rng rng(93);
  wegeft::Transformer<float> vit(wegeft::ModelConfig::tiny(wegeft::Family::vit));
  vit.add_classifier(3, wegeft::Pooling::last);
  CHECK_THROWS_WITH(cu::SequenceClassifier(ctx, vit, DType::BF16),
                    Catch::Contains("vit classifier pools the first token"));
  wegeft::Transformer<float> llama(wegeft::ModelConfig::tiny(wegeft::Family::llama));
  llama.add_classifier(3, wegeft::Pooling::cls);
  CHECK_THROWS_WITH(cu::SequenceClassifier(ctx, llama, DType::BF16),
                    Catch::Contains("this head pools the first token"));
  wegeft::Transformer<float> headless(small_bert());
  CHECK_THROWS_WITH(cu::SequenceClassifier(ctx, headless, DType::BF16),
                    Catch::Contains("needs a classification head"));
  auto host = host_model(0, kQV, DType::F32, rng);
  cu::SequenceClassifier gpu(ctx, *host, DType::F32);
  Batch b = batch_of(host->config().vocab_size, rng);
  b.labels[1] = 5;
  CHECK_THROWS_WITH(gpu.train_step(gpu_batch(b)),
                    Catch::Contains("label 5 of sequence 1 is outside the head's 5 labels"));
}

TEST_CASE(
    "cuda SequenceClassifier: a model whose adapters are merged into its weights scores as the "
    "adapted one",
    "[cuda][classifier]") {
  auto& ctx = context();
  for (int method : {0, 1}) {
    INFO((method ? "WeGeFT" : "LoRA"));
    wegeft::Rng rng(95 + method);
    auto host = host_model(method, kAll, DType::F32, rng);
    const Batch b = batch_of(host->config().vocab_size, rng);
    Matrix<float> adapted;
    {
      cu::SequenceClassifier gpu(ctx, *host, DType::F32);
      gpu.eval_loss(gpu_batch(b));
      adapted = gpu.logits();
    }
    wt::cuda::merge_adapters(*host);
    cu::SequenceClassifier merged(ctx, *host, DType::F32);
    merged.eval_loss(gpu_batch(b));
    const Matrix<float> got = merged.logits();
    CHECK((got - adapted).cwiseAbs().maxCoeff() / adapted.cwiseAbs().maxCoeff() < 1e-4);
  }
}

TEST_CASE(
    "cuda SequenceClassifier on a Llama and a GPT-2: the loss, the logits and every trainable "
    "gradient equal the CPU model's, the last token pooled past padding and holes",
    "[cuda][classifier]") {
  for (auto family : {wegeft::Family::llama, wegeft::Family::gpt2}) {
    for (int method : {0, 1}) {  // LoRA, WeGeFT
      for (DType dtype : {DType::F32, DType::BF16}) {
        INFO(wegeft::to_string(family)
             << ", " << (method ? "WeGeFT" : "LoRA") << ", " << wegeft::dtype_name(dtype));
        wegeft::Rng rng(101 + method);
        auto host = decoder_model(family, method, dtype, rng);
        check_step_against_cpu(*host, decoder_batch_of(host->config().vocab_size, rng), dtype);
      }
    }
  }
}

TEST_CASE(
    "cuda SequenceClassifier on a Llama: 20 AdamW steps track the CPU model's losses, and a "
    "steady-state step allocates nothing",
    "[cuda][classifier]") {
  wegeft::Rng rng(111);
  auto host = decoder_model(wegeft::Family::llama, 0, DType::F32, rng);
  auto twin = decoder_model(wegeft::Family::llama, 0, DType::F32, rng);
  check_adamw_tracks(*host, *twin, decoder_batch_of(host->config().vocab_size, rng));
}

TEST_CASE(
    "cuda SequenceClassifier on a ViT: the loss, the logits and every trainable gradient equal "
    "the CPU model's",
    "[cuda][classifier]") {
  for_each_variant(kVitAll, [](int method, const std::vector<std::string>& targets, DType dtype) {
    wegeft::Rng rng(121 + method);
    auto host = vit_model(method, targets, dtype, rng);
    check_step_against_cpu(*host, vit_batch_of(host->config(), dtype, rng), dtype);
  });
}

TEST_CASE(
    "cuda SequenceClassifier on a ViT: 20 AdamW steps track the CPU model's losses, and a "
    "steady-state step allocates nothing",
    "[cuda][classifier]") {
  wegeft::Rng rng(131);
  auto host = vit_model(0, kVitAll, DType::F32, rng);
  auto twin = vit_model(0, kVitAll, DType::F32, rng);
  check_adamw_tracks(*host, *twin, vit_batch_of(host->config(), DType::F32, rng));
}

TEST_CASE("cuda SequenceClassifier on a ViT refuses a batch without images", "[cuda][classifier]") {
  auto& ctx = context();
  wegeft::Rng rng(133);
  auto host = vit_model(0, kQV, DType::F32, rng);
  cu::SequenceClassifier gpu(ctx, *host, DType::F32);
  Batch b = vit_batch_of(host->config(), DType::F32, rng);
  b.images.clear();
  CHECK_THROWS_WITH(gpu.train_step(gpu_batch(b)), Catch::Contains("vit batch needs images"));
}

TEST_CASE(
    "cuda SequenceClassifier pooling the mean: the loss, the logits and every trainable gradient "
    "equal the CPU model's for each family, padding left out",
    "[cuda][classifier]") {
  const auto mean = wegeft::Pooling::mean;
  for (int method : {0, 1}) {  // LoRA, WeGeFT
    for (DType dtype : {DType::F32, DType::BF16}) {
      INFO((method ? "WeGeFT" : "LoRA") << ", " << wegeft::dtype_name(dtype));
      wegeft::Rng rng(141 + method);
      {
        INFO("bert");
        auto host = host_model(method, kAll, dtype, rng, mean);
        check_step_against_cpu(*host, batch_of(host->config().vocab_size, rng), dtype);
      }
      for (auto family : {wegeft::Family::llama, wegeft::Family::gpt2}) {
        INFO(wegeft::to_string(family));
        auto host = decoder_model(family, method, dtype, rng, mean);
        check_step_against_cpu(*host, decoder_batch_of(host->config().vocab_size, rng), dtype);
      }
      {
        INFO("vit");
        auto host = vit_model(method, kVitAll, dtype, rng, mean);
        check_step_against_cpu(*host, vit_batch_of(host->config(), dtype, rng), dtype);
      }
    }
  }
}

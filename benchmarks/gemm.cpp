// Dense fp32 GEMM C[M, N] = A[M, K] B[K, N] through the configured backend, against the machine's
// measured FMA peak (benchmarks/peak.hpp), at M = 2048, K = 768, N = 3072 (an MLP up-projection
// of 2048 tokens at width 768), one thread unless WEGEFT_THREADS says otherwise.
//
//   build/release/benchmarks/bench_gemm
#include <wegeft/wegeft.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "peak.hpp"

int main() {
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  const wegeft::Index M = 2048, K = 768, N = 3072;
  wegeft::Rng rng(1);
  wegeft::Matrix<float> a(M, K), b(N, K), c(M, N);
  wegeft::fill_uniform(a, rng, -1.f, 1.f);
  wegeft::fill_uniform(b, rng, -1.f, 1.f);
  const double peak = wegeft_bench::measured_fma_peak_gflops();
  std::vector<double> times;
  for (int i = 0; i < 11; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    c.noalias() = a * b.transpose();  // the layout of a linear layer: y = x W^T
    times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  const double gflops = 2.0 * M * N * K / times[times.size() / 2] * 1e-9;
  std::printf(
      "gemm %ldx%ldx%ld fp32 [%s]: %.1f GFLOP/s; measured FMA peak %.1f GFLOP/s per thread; %.1f "
      "%% of peak\n",
      long(M), long(K), long(N), wegeft::gemm_backend().c_str(), gflops, peak,
      100.0 * gflops / (peak * threads));
  return 0;
}

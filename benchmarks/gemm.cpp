// Dense fp32 GEMM C[M, N] = A[M, K] B[K, N] through the configured backend, against the machine's
// measured FMA peak (benchmarks/peak.hpp), at M = 2048, K = 768, N = 3072 (an MLP up-projection
// of 2048 tokens at width 768), one thread unless WEGEFT_THREADS says otherwise.
//
//   build/release/benchmarks/bench_gemm
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

#include "peak.hpp"
#include "timing.hpp"

int main() {
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  const wegeft::Index M = 2048, K = 768, N = 3072;
  wegeft::Rng rng(1);
  wegeft::Matrix<float> a(M, K), b(N, K), c(M, N);
  wegeft::fill_uniform(a, rng, -1.f, 1.f);
  wegeft::fill_uniform(b, rng, -1.f, 1.f);
  const double peak = wegeft_bench::measured_fma_peak_gflops();
  const double seconds = wegeft_bench::median_seconds(0, 11, [&] {
    c.noalias() = a * b.transpose();  // the layout of a linear layer: y = x W^T
  });
  const double gflops = 2.0 * M * N * K / seconds * 1e-9;
  std::printf(
      "gemm %ldx%ldx%ld fp32 [%s]: %.1f GFLOP/s; measured FMA peak %.1f GFLOP/s per thread; %.1f "
      "%% of peak\n",
      long(M), long(K), long(N), wegeft::gemm_backend().c_str(), gflops, peak,
      100.0 * gflops / (peak * threads));
  // The same product through gemm_bf16 (B packed once), with each kernel this CPU has.
  std::vector<wegeft::Bf16Kernel> kernels;
  if (wegeft::bf16_gemm_available()) kernels.push_back(wegeft::Bf16Kernel::avx512bf16);
  if (wegeft::amx_bf16_available()) kernels.push_back(wegeft::Bf16Kernel::amx);
  for (const auto kernel : kernels) {
    wegeft::set_bf16_kernel(kernel);
    const auto packed = wegeft::Bf16Panels::from_rows(b.data(), N, K, K);
    const double bf16_peak = wegeft_bench::measured_bf16_kernel_peak_gflops();
    const double bf16_seconds = wegeft_bench::median_seconds(
        0, 11, [&] { wegeft::gemm_bf16(c.data(), N, a.data(), K, M, packed, false); });
    const double bf16_gflops = 2.0 * M * N * K / bf16_seconds * 1e-9;
    std::printf(
        "gemm %ldx%ldx%ld bf16 [gemm_bf16, %s, %d thread(s)]: %.1f GFLOP/s; measured "
        "%s peak %.1f GFLOP/s per thread; %.1f %% of peak; %.2fx the fp32 GEMM above\n",
        long(M), long(K), long(N), wegeft::bf16_kernel_name().c_str(), threads, bf16_gflops,
        wegeft_bench::bf16_kernel_instruction(), bf16_peak,
        100.0 * bf16_gflops / (bf16_peak * threads), bf16_gflops / gflops);
  }
  wegeft::set_bf16_kernel(wegeft::Bf16Kernel::automatic);
  return 0;
}

// The card's bf16 GEMM rate through wegeft::cuda::gemm (8192^3 on random data, 3 warm-up runs,
// then the median of 5 timings of 10): what the benchmarks' utilisation figures are of.
#pragma once

#include <wegeft/cuda.hpp>

inline double bf16_gemm_tflops(wegeft::cuda::Context& ctx) {
  namespace cu = wegeft::cuda;
  wegeft::Rng rng(3);
  const wegeft::Index s = 8192;
  wegeft::Matrix<float> a(s, s);
  wegeft::fill_uniform(a, rng, -1.0f, 1.0f);
  auto ad = cu::Tensor::from_host(ctx, a, wegeft::DType::BF16);
  auto bd = cu::Tensor::from_host(ctx, a.transpose(), wegeft::DType::BF16);
  cu::Tensor cd(wegeft::DType::BF16, s, s);
  auto run = [&] { cu::gemm(ctx, cd.view(), ad.view(), cu::Op::N, bd.view(), cu::Op::T, 1, 0); };
  for (int i = 0; i < 3; ++i) run();
  const double ms = cu::time_ms(
                        ctx,
                        [&] {
                          for (int i = 0; i < 10; ++i) run();
                        },
                        5) /
                    10;
  const double tflops = 2.0 * double(s) * double(s) * double(s) / (ms * 1e-3) * 1e-12;
  std::printf("bf16 GEMM 8192^3: %.3f ms, %.0f TFLOP/s (the rate the utilisation below is of)\n",
              ms, tflops);
  return tflops;
}

// One linear layer's training step on the GPU, frozen and adapted, in BF16 storage with fp32
// accumulation (wegeft::cuda::Linear / AdaptedLinear).
//
// Step = forward + backward with the input gradient (and the adapter's parameter gradients),
// no optimizer. Each variant is timed with CUDA events over `iters` back-to-back steps, eagerly
// and replayed as a captured CUDA graph; the variants of one shape alternate within each round,
// and each is reported as the median over rounds of its time divided by the frozen base step's
// time in the same round and mode, next to the ratio the FLOP count predicts. The base step's
// rate is also given against an 8192^3 BF16 GEMM measured in the same run.
//
//   build/cuda/benchmarks/cuda/bench_cuda_linear_step [rounds] [large|small]   (both shapes)
//
// WEGEFT_CUDA_RANK_R=gemm runs the rank-r products through cuBLASLt instead of wegeft's kernel.
#include <wegeft/cuda.hpp>
#include <wegeft/version.hpp>

#include "peak.hpp"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace cu = wegeft::cuda;
using wegeft::DType;
using wegeft::Index;
using wegeft::Matrix;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

Matrix<float> random(Index rows, Index cols, wegeft::Rng& rng, float lo, float hi) {
  Matrix<float> m(rows, cols);
  wegeft::fill_uniform(m, rng, lo, hi);
  return m;
}

struct Variant {
  std::string name;
  double ideal;
  std::function<void()> step;
  cu::Graph graph;
  std::vector<double> eager, graphed, eager_ratio, graph_ratio;
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 9;
  cu::Context ctx;
  std::printf("wegeft %s CUDA linear-layer training step, BF16 storage, fp32 accumulation\n",
              wegeft::version);
  std::printf("card: %s\n", ctx.description().c_str());

  // the card's BF16 GEMM rate through the same gemm(), 8192^3 on random data
  const double peak_tflops = bf16_gemm_tflops(ctx);
  std::printf("%d rounds; per round each variant runs `iters` steps eagerly and as a graph\n\n",
              rounds);

  struct Shape {
    Index n, d, lora_rank, wegeft_rank;
    int iters;
  };
  const std::string only = argc > 2 ? argv[2] : "";
  if (!only.empty() && only != "large" && only != "small") {
    std::fprintf(stderr, "usage: %s [rounds] [large|small]\n", argv[0]);
    return 2;
  }
  std::vector<Shape> shapes;
  if (only != "small") shapes.push_back({16384, 4096, 16, 64, 5});
  if (only != "large") shapes.push_back({2048, 768, 8, 8, 50});
  const char* rank_r = std::getenv("WEGEFT_CUDA_RANK_R");
  std::printf("rank-r products: %s\n\n", rank_r && std::string(rank_r) == "gemm"
                                             ? "cuBLASLt (WEGEFT_CUDA_RANK_R=gemm)"
                                             : "wegeft's kernel where it applies");
  std::printf("%-34s %10s %10s %12s %12s %10s\n", "variant", "eager ms", "graph ms", "eager ratio",
              "graph ratio", "FLOP ideal");
  for (const Shape& sh : shapes) {
    wegeft::Rng rng(7);
    const Index n = sh.n, d = sh.d;
    Matrix<float> w = random(d, d, rng, -0.02f, 0.02f);
    wegeft::Vector<float> b = random(d, 1, rng, -0.1f, 0.1f);
    const wegeft::FrozenLinear<float> base(w, &b);
    wegeft::ParameterStore<float> store;
    wegeft::LoraAdapter<float> lora(
        store, base, {.rank = sh.lora_rank, .alpha = 2.0 * double(sh.lora_rank)}, rng, "lora");
    lora.lora_B().setConstant(0.01f);
    wegeft::WeGeFTGenerator<float> gen(
        store, d, {.rank = sh.wegeft_rank, .alpha = 2.0 * double(sh.wegeft_rank)}, rng, "wegeft");
    gen.phi().setConstant(0.01f);
    wegeft::WeGeFTAdapter<float> wg(gen, base, rng, wegeft::WeGeFTOrder::weight_side);
    cu::DeviceStore dev(ctx, store);
    cu::Linear frozen(ctx, base, DType::BF16);
    cu::AdaptedLinear lora_dev(ctx, dev, lora, DType::BF16);
    cu::AdaptedLinear wg_dev(ctx, dev, wg, DType::BF16);
    const Index spare = std::max(lora_dev.padded_rank(), wg_dev.padded_rank());
    auto x = cu::Tensor::from_host(ctx, random(n, d, rng, -1, 1), DType::BF16, d + spare);
    auto dy = cu::Tensor::from_host(ctx, random(n, d, rng, -1, 1), DType::BF16, d + spare);
    cu::Tensor y(DType::BF16, n, d), dx(DType::BF16, n, d);
    const auto xv = x.block(0, 0, n, d), dyv = dy.block(0, 0, n, d);
    const double base_flops = 4.0 * double(n) * double(d) * double(d);
    auto adapted = [&](cu::AdaptedLinear& l) {
      return [&, lp = &l] {
        const auto cache = lp->forward(ctx, y.view(), xv);
        lp->backward(ctx, dx.view(), cache, dyv);
      };
    };
    // the same x and dy without spare columns, for the base step as a plain layer would run it
    auto xc = cu::Tensor::from_host(ctx, random(n, d, rng, -1, 1), DType::BF16);
    auto dyc = cu::Tensor::from_host(ctx, random(n, d, rng, -1, 1), DType::BF16);
    std::vector<Variant> vs;
    const std::string tag = "N=" + std::to_string(n) + " d=" + std::to_string(d);
    vs.push_back({"frozen base " + tag, 1.0, [&] {
                    frozen.forward(ctx, y.view(), xv);
                    frozen.backward_input(ctx, dx.view(), dyv);
                  }});
    vs.push_back({"frozen base, no spare cols", 1.0, [&] {
                    frozen.forward(ctx, y.view(), xc.view());
                    frozen.backward_input(ctx, dx.view(), dyc.view());
                  }});
    const double lr = double(sh.lora_rank), wr = double(sh.wegeft_rank);
    vs.push_back({"LoRA r=" + std::to_string(sh.lora_rank) + " " + tag,
                  1.0 + 6.0 * double(n) * lr * 2.0 * double(d) / base_flops, adapted(lora_dev)});
    vs.push_back(
        {"WeGeFT r=" + std::to_string(sh.wegeft_rank) + " " + tag,
         1.0 + (6.0 * double(n) * wr * 2.0 * double(d) + 4.0 * wr * double(d) * double(d)) /
                   base_flops,
         adapted(wg_dev)});
    for (auto& v : vs) {
      for (int i = 0; i < 3; ++i) v.step();  // warm-up: plans, module load
      v.graph = cu::Graph(ctx, [&] {
        for (int i = 0; i < sh.iters; ++i) v.step();
      });
      v.graph.launch(ctx);
    }
    ctx.synchronize();
    for (int round = 0; round < rounds; ++round) {
      for (std::size_t k = 0; k < vs.size(); ++k) {
        auto& v = vs[round % 2 ? vs.size() - 1 - k : k];
        v.eager.push_back(cu::time_ms(
                              ctx,
                              [&] {
                                for (int i = 0; i < sh.iters; ++i) v.step();
                              },
                              1) /
                          sh.iters);
        v.graphed.push_back(cu::time_ms(
                                ctx, [&] { v.graph.launch(ctx); }, 1) /
                            sh.iters);
      }
      for (auto& v : vs) {
        v.eager_ratio.push_back(v.eager.back() / vs[0].eager.back());
        v.graph_ratio.push_back(v.graphed.back() / vs[0].graphed.back());
      }
    }
    for (auto& v : vs)
      std::printf("%-34s %10.4f %10.4f %12.3f %12.3f %10.3f\n", v.name.c_str(), median(v.eager),
                  median(v.graphed), median(v.eager_ratio), median(v.graph_ratio), v.ideal);
    for (auto& v : vs)
      std::printf("RESULT %s|%.5f|%.5f|%.4f|%.4f|%.4f\n", v.name.c_str(), median(v.eager),
                  median(v.graphed), median(v.eager_ratio), median(v.graph_ratio), v.ideal);
    // each product of the LoRA step alone (eager, median of 5 x iters), with the bytes it must
    // move at the least and the rate that implies
    {
      const Index r = sh.lora_rank, rp = lora_dev.padded_rank();
      cu::Tensor wext(DType::BF16, d + rp, d + rp), ga(DType::F32, r, d), gb(DType::F32, d, r);
      cu::fill(ctx, wext.view(), 0.01f);
      cu::fill(ctx, ga.view(), 0.0f);
      cu::fill(ctx, gb.view(), 0.0f);
      // x and dy with their spare columns (the tensors are [n, d] views of row stride d + spare)
      auto widen = [](wegeft::TensorView v, Index cols) {
        v.cols = cols;
        return v;
      };
      const auto xu = widen(x.view(), d + rp), u = xu.block(0, d, n, rp);
      const auto dyg = widen(dy.view(), d + rp), g = dyg.block(0, d, n, rp);
      const double nd2 = 2.0 * double(n) * double(d);  // bytes of one [N, d] bf16 pass
      struct Product {
        const char* name;
        double bytes;
        std::function<void()> run;
      };
      const Product products[] = {
          {"u = x A^T", nd2,
           [&] { cu::gemm(ctx, u, xv, cu::Op::N, wext.block(d, 0, rp, d), cu::Op::T, 1, 0); }},
          {"y = [x|u] [W|sB]^T + b", 2 * nd2,
           [&] {
             cu::gemm(ctx, y.view(), xu, cu::Op::N, wext.block(0, 0, d, d + rp), cu::Op::T, 1, 0);
           }},
          {"g = dy sB", nd2,
           [&] { cu::gemm(ctx, g, dyv, cu::Op::N, wext.block(0, d, d, rp), cu::Op::N, 1, 0); }},
          {"dB += s dy^T u", nd2,
           [&] { cu::gemm(ctx, gb.view(), dyv, cu::Op::T, u.block(0, 0, n, r), cu::Op::N, 2, 1); }},
          {"dA += g^T x", nd2,
           [&] { cu::gemm(ctx, ga.view(), g.block(0, 0, n, r), cu::Op::T, xv, cu::Op::N, 1, 1); }},
          {"dx = [dy|g] [W;A]", 2 * nd2,
           [&] {
             cu::gemm(ctx, dx.view(), dyg, cu::Op::N, wext.block(0, 0, d + rp, d), cu::Op::N, 1, 0);
           }},
      };
      std::printf("LoRA r=%ld step, product by product (%s):\n", long(r), tag.c_str());
      for (const auto& p : products) {
        for (int i = 0; i < 2; ++i) p.run();
        const double ms = cu::time_ms(
                              ctx,
                              [&] {
                                for (int i = 0; i < sh.iters; ++i) p.run();
                              },
                              5) /
                          sh.iters;
        std::printf("  %-26s %9.4f ms  %7.0f GB/s of its least traffic\n", p.name, ms,
                    p.bytes / (ms * 1e-3) * 1e-9);
      }
    }
    const double base_tflops = base_flops / (median(vs[0].graphed) * 1e-3) * 1e-12;
    std::printf("frozen base step %s: %.0f TFLOP/s, %.0f %% of the measured GEMM rate\n\n",
                tag.c_str(), base_tflops, 100.0 * base_tflops / peak_tflops);
  }
  return 0;
}

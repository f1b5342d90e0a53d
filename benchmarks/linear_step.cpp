// One frozen linear layer's training step, alone and with adapters.
//
// Step = forward + backward with the input gradient (and the adapter's parameter gradients).
// The frozen base step (y = x W^T + b, dx = dy W) is the baseline; every variant runs in the same
// rounds, in alternating order, and is reported as the median over rounds of its time divided by
// the base step's time in that round, next to the ratio the multiply-add count predicts.
//
//   build/release/benchmarks/bench_linear_step [rounds] [only the variants whose name contains this]
//
// WEGEFT_PRECISION=bf16: the frozen products (base and adapted) in bf16 (gemm_bf16, AVX512-BF16),
// the adapters' own products in fp32, as Transformer::set_bf16_products runs them.
#include <wegeft/wegeft.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

using wegeft::Index;
using wegeft::Matrix;
using T = float;

namespace {

double seconds(const std::function<void()>& f) {
  const auto t0 = std::chrono::steady_clock::now();
  f();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown";
}

struct Variant {
  std::string name;
  double ideal;  // predicted ratio from multiply-adds
  std::function<void()> step;
  std::vector<double> ratios, times;
};

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 15;
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  const Index n = 2048, d_in = 768, d_out = 768;
  wegeft::Rng rng(1);
  Matrix<T> w(d_out, d_in), x(n, d_in), dy(n, d_out), y(n, d_out), dx(n, d_in);
  wegeft::Vector<T> b(d_out);
  wegeft::fill_uniform(w, rng, T(-0.05), T(0.05));
  wegeft::fill_uniform(x, rng, T(-1), T(1));
  wegeft::fill_uniform(dy, rng, T(-1), T(1));
  b.setConstant(T(0.01));
  const char* precision = std::getenv("WEGEFT_PRECISION");
  const bool bf16 = precision != nullptr && std::string(precision) == "bf16";
  if (bf16 && !wegeft::bf16_gemm_available()) {
    std::printf("wegeft linear-layer step bf16: this CPU has no AVX512-BF16, nothing to measure\n");
    return 0;
  }
  wegeft::Bf16Weight packed;
  if (bf16) packed.pack(w.data(), d_out, d_in);
  wegeft::FrozenLinear<T> base(w.data(), d_out, d_in, b.data(), &packed);
  const double base_macs = 2.0 * double(n) * double(d_in) * double(d_out);

  std::printf(
      "wegeft %s linear-layer training step, %s, N = %ld, d_in = %ld, d_out = %ld\n",
      wegeft::version,
      bf16 ? ("bf16 frozen products (" + wegeft::bf16_kernel_name() + ")").c_str() : "float32",
      long(n), long(d_in), long(d_out));
  std::printf("backend: %s\n", wegeft::gemm_backend().c_str());
  std::printf("cpu: %s; %d rounds, median of per-round ratios to the frozen base step\n\n",
              cpu_model().c_str(), rounds);

  wegeft::ParameterStore<T> store;
  std::vector<std::unique_ptr<wegeft::LoraAdapter<T>>> loras;
  std::vector<std::unique_ptr<wegeft::WeGeFTGenerator<T>>> gens;
  std::vector<std::unique_ptr<wegeft::WeGeFTAdapter<T>>> layers;
  std::vector<Variant> variants;
  variants.push_back({"frozen base", 1.0, [&] {
                        base.forward(y, x);
                        base.backward_input(dx, dy);
                      }});
  for (Index r : {8, 16, 64}) {
    loras.push_back(std::make_unique<wegeft::LoraAdapter<T>>(
        store, base, wegeft::LoraConfig{.rank = r, .alpha = 2.0 * r}, rng,
        "lora_r" + std::to_string(r)));
    auto* lora = loras.back().get();
    lora->lora_B().setConstant(T(0.01));
    auto cache = std::make_shared<wegeft::LoraAdapter<T>::Cache>();
    const double lora_macs = 3.0 * double(n) * double(r) * double(d_in + d_out);
    variants.push_back(
        {"LoRA r=" + std::to_string(r), 1.0 + lora_macs / base_macs, [=, &y, &x, &dx, &dy] {
           lora->forward(y, *cache, x);
           lora->backward(dx, *cache, x, dy);
         }});
    gens.push_back(std::make_unique<wegeft::WeGeFTGenerator<T>>(
        store, d_in, wegeft::WeGeFTConfig{.rank = r, .alpha = 2.0 * r}, rng,
        "wegeft_r" + std::to_string(r)));
    gens.back()->phi().setConstant(T(0.01));
    for (auto order : {wegeft::WeGeFTOrder::weight_side, wegeft::WeGeFTOrder::input_edit}) {
      layers.push_back(std::make_unique<wegeft::WeGeFTAdapter<T>>(*gens.back(), base, rng, order));
      auto* layer = layers.back().get();
      auto wcache = std::make_shared<wegeft::WeGeFTAdapter<T>::Cache>();
      const double macs = wegeft::wegeft_extra_macs(order, n, r, d_in, d_out);
      variants.push_back({"WeGeFT r=" + std::to_string(r) + " " + wegeft::to_string(order),
                          1.0 + macs / base_macs, [=, &y, &x, &dx, &dy] {
                            layer->forward(y, *wcache, x);
                            layer->backward(dx, *wcache, x, dy);
                          }});
    }
  }

  // The order WeGeFTOrder::automatic takes for this layer and N, per rank.
  for (Index r : {8, 16, 64}) {
    wegeft::ParameterStore<T> probe_store;
    wegeft::WeGeFTGenerator<T> probe_gen(probe_store, d_in, wegeft::WeGeFTConfig{.rank = r}, rng);
    wegeft::WeGeFTAdapter<T> probe(probe_gen, base, rng);
    const char* order = wegeft::to_string(probe.resolve_order(n));
    std::printf("automatic order at r = %ld: %s\n", long(r), order);
    std::printf("AUTO WeGeFT r=%ld|WeGeFT r=%ld %s\n", long(r), long(r), order);
  }
  std::printf("\n");

  if (argc >
      2) {  // only the variants whose name contains argv[2] (and the base), e.g. for a profiler
    const std::string only = argv[2];
    std::erase_if(variants, [&](const Variant& v) {
      return v.name != "frozen base" && v.name.find(only) == std::string::npos;
    });
  }
  for (auto& v : variants) v.step();  // warm-up: allocations, caches
  for (int round = 0; round < rounds; ++round) {
    std::vector<double> t(variants.size());
    for (std::size_t k = 0; k < variants.size(); ++k) {
      // alternate the order so drift in clock speed does not favour one variant
      const std::size_t i = round % 2 ? variants.size() - 1 - k : k;
      t[i] = seconds(variants[i].step);
    }
    for (std::size_t i = 0; i < variants.size(); ++i) {
      variants[i].times.push_back(t[i]);
      variants[i].ratios.push_back(t[i] / t[0]);
    }
  }
  std::printf("%-28s %12s %14s %14s\n", "variant", "median ms", "ratio to base", "FLOP ideal");
  for (const auto& v : variants)
    std::printf("%-28s %12.2f %14.3f %14.3f\n", v.name.c_str(), 1e3 * median(v.times),
                median(v.ratios), v.ideal);
  for (const auto& v : variants)  // machine-readable, for scripts/bench
    std::printf("RESULT %s|%.4f|%.4f|%.4f\n", v.name.c_str(), 1e3 * median(v.times),
                median(v.ratios), v.ideal);
  const double gflops = 2.0 * base_macs / median(variants[0].times) * 1e-9;
  std::printf("\nfrozen base step: %.1f GFLOP/s\n", gflops);
  return 0;
}

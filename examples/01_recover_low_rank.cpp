// Recover a known weight change of four frozen layers with LoRA and with WeGeFT.
//
// Four "pretrained" layers W_l [96, 96] stand for the q projections of four transformer blocks.
// A teacher changes them and the adapters must learn the change from input/output pairs alone:
//
//   shared:      W_l* = W_l + W_l M with one rank-4 M for every layer (WeGeFT's hypothesis: the
//                update is generated from the pretrained weight by a map shared across depth);
//   independent: W_l* = W_l + U_l V_l with an unrelated rank-4 change per layer.
//
// LoRA (r = 4 per layer) can represent both. WeGeFT (one generator with r = 4 shared by the four
// layers) represents the first with a quarter of LoRA's parameters, and only approximates the
// second. Both train with Adam on fresh random batches; the program prints the falling loss and,
// at the end, how close each learned update is to the teacher's.
//
//   build/release/examples/recover_low_rank [steps]
#include <wegeft/wegeft.hpp>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

using wegeft::Index;
using wegeft::Matrix;

namespace {

constexpr Index kLayers = 4, kDim = 96, kRank = 4, kBatch = 256;

// Adam over a flat parameter store (bias-corrected, no weight decay).
struct Adam {
  double lr, beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
  std::vector<double> m, v;
  long step = 0;
  void update(wegeft::ParameterStore<double>& store) {
    auto w = store.values();
    auto g = store.grads();
    if (m.empty()) m.assign(w.size(), 0.0), v.assign(w.size(), 0.0);
    ++step;
    const double c1 = 1 - std::pow(beta1, step), c2 = 1 - std::pow(beta2, step);
    for (std::size_t i = 0; i < w.size(); ++i) {
      m[i] = beta1 * m[i] + (1 - beta1) * g[i];
      v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
      w[i] -= lr * (m[i] / c1) / (std::sqrt(v[i] / c2) + eps);
    }
  }
};

Matrix<double> gaussian(Index rows, Index cols, wegeft::Rng& rng, double std) {
  Matrix<double> m(rows, cols);
  wegeft::fill_normal(m, rng, std);
  return m;
}

struct Result {
  double first_loss = 0, final_loss = 0, delta_error = 0;
  Index params = 0;
};

// Trains adapters of kind `Adapter` on the four layers; `make` builds them over the store.
template <class Make>
Result train(const char* label, const std::vector<Matrix<double>>& pretrained,
             const std::vector<Matrix<double>>& teacher, int steps, Make make) {
  std::vector<Matrix<double>> w = pretrained;  // the frozen copies the adapters attach to
  wegeft::ParameterStore<double> store;
  wegeft::Rng rng(1);
  auto adapters = make(store, w, rng);
  using Adapter = typename decltype(adapters)::value_type;
  std::vector<typename Adapter::Cache> caches(kLayers);
  Adam adam{.lr = 2e-3};
  wegeft::Rng data(2);
  Result result;
  result.params = store.parameter_count();
  Matrix<double> y(kBatch, kDim), dy(kBatch, kDim);
  for (int step = 0; step <= steps; ++step) {
    const Matrix<double> x = gaussian(kBatch, kDim, data, 1.0);
    double loss = 0;
    store.zero_grad();
    for (Index l = 0; l < kLayers; ++l) {
      adapters[l].forward(y, caches[l], x);
      const Matrix<double> target = x * teacher[l].transpose();
      dy = (y - target) / double(kBatch * kDim);  // gradient of the mean squared error / 2
      loss += 0.5 * (y - target).squaredNorm() / double(kBatch * kDim);
      adapters[l].backward(caches[l], x, dy);
    }
    if (step == 0) result.first_loss = loss;
    result.final_loss = loss;
    if (step % (steps / 6) == 0 || step == steps)
      std::printf("  %-22s step %5d  loss %.3e  (%.2e of the start)\n", label, step, loss,
                  loss / result.first_loss);
    if (step < steps) adam.update(store);
  }
  double err = 0, norm = 0;
  for (Index l = 0; l < kLayers; ++l) {
    const Matrix<double> truth = teacher[l] - pretrained[l];
    err += (adapters[l].delta() - truth).squaredNorm();
    norm += truth.squaredNorm();
  }
  result.delta_error = std::sqrt(err / norm);
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 600;
  if (steps < 5) {
    std::fprintf(stderr, "usage: %s [steps >= 5]\n", argv[0]);
    return 2;
  }
  wegeft::Rng rng(2025);
  std::vector<Matrix<double>> pretrained;
  for (Index l = 0; l < kLayers; ++l)
    pretrained.push_back(gaussian(kDim, kDim, rng, 1.0 / std::sqrt(kDim)));

  // Teacher changes of relative size about 0.3.
  const Matrix<double> m = gaussian(kDim, kRank, rng, 0.3 / std::sqrt(kRank)) *
                           gaussian(kRank, kDim, rng, 1.0 / std::sqrt(kDim));
  std::vector<Matrix<double>> shared, independent;
  for (Index l = 0; l < kLayers; ++l) {
    shared.push_back(pretrained[l] + pretrained[l] * m);
    independent.push_back(pretrained[l] + gaussian(kDim, kRank, rng, 0.3 / std::sqrt(kRank)) *
                                              gaussian(kRank, kDim, rng, 1.0 / std::sqrt(kDim)));
  }

  const auto make_lora = [](wegeft::ParameterStore<double>& store, std::vector<Matrix<double>>& w,
                            wegeft::Rng& r) {
    std::vector<wegeft::LoraAdapter<double>> out;
    for (Index l = 0; l < kLayers; ++l)
      out.emplace_back(store, wegeft::FrozenLinear<double>(w[l]),
                       wegeft::LoraConfig{.rank = kRank, .alpha = 2.0 * kRank}, r,
                       "layers." + std::to_string(l) + ".q_proj");
    return out;
  };
  // A generator must outlive the layers attached to it.
  std::vector<std::unique_ptr<wegeft::WeGeFTGenerator<double>>> generators;
  const auto make_wegeft = [&generators](wegeft::ParameterStore<double>& store,
                                         std::vector<Matrix<double>>& w, wegeft::Rng& r) {
    generators.push_back(std::make_unique<wegeft::WeGeFTGenerator<double>>(
        store, kDim, wegeft::WeGeFTConfig{.rank = kRank, .alpha = 2.0 * kRank}, r, "q_proj"));
    std::vector<wegeft::WeGeFTAdapter<double>> out;
    for (Index l = 0; l < kLayers; ++l)
      out.emplace_back(*generators.back(), wegeft::FrozenLinear<double>(w[l]), r);
    return out;
  };

  std::printf(
      "wegeft %s: recover the weight change of %ld frozen [%ld, %ld] layers, rank %ld, "
      "%d Adam steps of %ld random inputs, double precision, Eigen %d.%d.%d\n",
      wegeft::version, long(kLayers), long(kDim), long(kDim), long(kRank), steps, long(kBatch),
      EIGEN_WORLD_VERSION, EIGEN_MAJOR_VERSION, EIGEN_MINOR_VERSION);
  struct Row {
    const char* teacher;
    const char* method;
    Result r;
  };
  std::vector<Row> rows;
  std::printf("teacher: shared generated change W_l M\n");
  rows.push_back(
      {"shared W_l M", "LoRA r=4 per layer", train("LoRA", pretrained, shared, steps, make_lora)});
  rows.push_back({"shared W_l M", "WeGeFT r=4 shared",
                  train("WeGeFT", pretrained, shared, steps, make_wegeft)});
  std::printf("teacher: independent change U_l V_l per layer\n");
  rows.push_back({"independent U_l V_l", "LoRA r=4 per layer",
                  train("LoRA", pretrained, independent, steps, make_lora)});
  rows.push_back({"independent U_l V_l", "WeGeFT r=4 shared",
                  train("WeGeFT", pretrained, independent, steps, make_wegeft)});

  std::printf("\n%-20s  %-19s  %10s  %12s  %12s  %18s\n", "teacher", "method", "trainable",
              "first loss", "final loss", "|dW - truth|/|truth|");
  for (const auto& row : rows)
    std::printf("%-20s  %-19s  %10ld  %12.3e  %12.3e  %18.2e\n", row.teacher, row.method,
                long(row.r.params), row.r.first_loss, row.r.final_loss, row.r.delta_error);
  return 0;
}

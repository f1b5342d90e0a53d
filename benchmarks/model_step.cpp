// One training step of a MiniLM-sized BERT encoder (6 layers, width 384, 12 heads, MLP 1536,
// sequence 128, batch 32) with LoRA r = 8 on q and v and a new 2-label classifier: forward,
// cross-entropy, backward, AdamW. Prints the median step time over rounds and the process's peak
// resident memory. The PyTorch peer is benchmarks/torch/model_step.py.
//
//   build/release/benchmarks/bench_model_step [rounds]
#include <sys/resource.h>

#include <wegeft/wegeft.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 5;
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
  wegeft::AdamW<float> opt({.lr = 1e-4});
  const wegeft::Index batch = 32, seq = 128;
  std::vector<std::int32_t> ids(batch * seq), labels(batch);
  for (auto& id : ids) id = static_cast<std::int32_t>(rng.next_u32() % 1000);
  for (auto& l : labels) l = static_cast<std::int32_t>(rng.next_u32() % 2);
  wegeft::Transformer<float>::Activations acts;
  std::vector<double> times;
  double loss = 0;
  for (int r = 0; r <= rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    model.forward(acts, {.ids = ids.data(), .batch = batch, .seq = seq});
    loss = model.classification_loss(acts, labels.data());
    model.backward(acts);
    opt.step(store.values(), store.grads());
    store.zero_grad();
    if (r > 0)
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  std::printf("wegeft model step [%s]: loss %.4f, trainable %ld\n", wegeft::gemm_backend().c_str(),
              loss, long(store.parameter_count()));
  std::printf("RESULT model step|%.4f|%.1f\n", 1e3 * times[times.size() / 2],
              ru.ru_maxrss / 1024.0);
  return 0;
}

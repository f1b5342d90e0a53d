// Built with -fsanitize=thread (ctest threads.tsan): four threads run eval-mode forwards on one
// adapted model, starting right after attach, and must give the logits one thread gives, with no
// data race reported. Exit status 0 when both hold (ThreadSanitizer exits 66 on a race).
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <thread>
#include <vector>

using namespace wegeft;

namespace {
void make(Transformer<float>& model, ParameterStore<float>& store) {
  Rng init(3);
  model.init_random(init);
  model.attach({.target_modules = {"q", "v", "down"},
                .method = WeGeFTConfig{.rank = 2, .alpha = 4, .dropout = 0.3}},
               store);
  model.attach(
      {.target_modules = {"k", "up"}, .method = LoraConfig{.rank = 2, .alpha = 4, .dropout = 0.3}},
      store);
  for (auto& v : store.values()) v += 0.01f;
  model.set_training(false);
}
}  // namespace

int main() {
  Transformer<float> reference(ModelConfig::tiny(Family::llama)),
      model(ModelConfig::tiny(Family::llama));
  ParameterStore<float> reference_store, store;
  make(reference, reference_store);
  make(model, store);
  std::vector<std::vector<std::int32_t>> inputs(4);
  for (std::size_t t = 0; t < inputs.size(); ++t)
    for (int i = 0; i < 16; ++i)
      inputs[t].push_back(static_cast<std::int32_t>((i * 5 + t * 3) % 11));
  std::vector<Matrix<float>> alone(inputs.size()), together(inputs.size());
  for (std::size_t t = 0; t < inputs.size(); ++t) {
    Transformer<float>::Activations acts;
    reference.forward(acts, {.ids = inputs[t].data(), .batch = 2, .seq = 8});
    alone[t] = acts.logits;
  }
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < inputs.size(); ++t)
    threads.emplace_back([&, t] {
      Transformer<float>::Activations acts;
      for (int repeat = 0; repeat < 20; ++repeat)
        model.forward(acts, {.ids = inputs[t].data(), .batch = 2, .seq = 8});
      together[t] = acts.logits;
    });
  for (auto& th : threads) th.join();
  for (std::size_t t = 0; t < inputs.size(); ++t)
    if (together[t] != alone[t]) {
      std::printf("thread %zu: logits differ from the one-thread run\n", t);
      return 1;
    }
  std::printf("4 threads x 20 eval forwards: logits equal the one-thread run\n");
  return 0;
}

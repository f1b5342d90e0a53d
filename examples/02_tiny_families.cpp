// Trains a tiny randomly initialised model of each family end to end, once with LoRA and once
// with WeGeFT on every block linear, on a synthetic task the frozen model cannot solve:
//   gpt2, llama: continue an arithmetic sequence (next = previous + step mod vocab);
//   bert:        classify a token sequence by its last token mod 3 (attention from [CLS] must find it);
//   vit:         classify an 8x8 image by its brightest quadrant (3 classes).
// It prints the falling loss (fresh batches every step, AdamW, float32) and exits non-zero if any
// run's loss did not fall to below half of its first average.
//
//   build/release/examples/tiny_families [steps]
#include <wegeft/nn/model.hpp>
#include <wegeft/train/trainer.hpp>
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <cstdlib>
#include <vector>

using namespace wegeft;

namespace {

struct Batch {
  std::vector<std::int32_t> ids, targets, labels;
  std::vector<float> images;
};

Batch make_batch(const ModelConfig& c, Index batch, Index seq, Rng& rng) {
  Batch b;
  for (Index i = 0; i < batch; ++i) {
    if (c.family == Family::vit) {
      const Index q = rng.next_u32() % 3, half = c.image_size / 2;
      for (Index ch = 0; ch < c.channels; ++ch)
        for (Index y = 0; y < c.image_size; ++y)
          for (Index x = 0; x < c.image_size; ++x) {
            const Index quad = (y >= half) * 2 + (x >= half);
            b.images.push_back(rng.uniform(-0.5f, 0.5f) + (quad == q ? 1.0f : 0.0f));
          }
      b.labels.push_back(static_cast<std::int32_t>(q));
      continue;
    }
    const std::int32_t start = rng.next_u32() % c.vocab_size, step = 1 + rng.next_u32() % 3;
    for (Index t = 0; t < seq; ++t)
      b.ids.push_back(c.family == Family::bert
                          ? static_cast<std::int32_t>(rng.next_u32() % c.vocab_size)
                          : static_cast<std::int32_t>((start + step * t) % c.vocab_size));
    for (Index t = 0; t < seq; ++t)
      b.targets.push_back(t + 1 < seq && t >= 1 ? b.ids[std::size_t(i * seq + t + 1)]
                                                : kIgnoreIndex);
    b.labels.push_back(b.ids.back() % 3);
  }
  return b;
}

// Returns true when the last fifth's mean loss is below half of the first fifth's.
bool train(Family family, const MethodConfig& method, int steps) {
  ModelConfig c = ModelConfig::tiny(family);
  c.hidden = 32;
  c.heads = 4;
  c.kv_heads = family == Family::llama ? 2 : 4;
  c.intermediate = 64;
  c.vocab_size = family == Family::vit ? 0 : 13;
  Transformer<float> model(c);
  Rng init(1);
  model.init_random(init, 0.25);
  const Index adapted =
      model.attach({.target_modules = {"all-linear"}, .method = method});  // into model.store()
  const bool classify = family == Family::bert || family == Family::vit;
  if (classify) model.add_classifier(3);
  Trainer<float> trainer(model, {.adamw = {.lr = 1e-2, .weight_decay = 0.0},
                                 .schedule = {ScheduleKind::cosine, steps / 10, steps}});
  Rng data(2);
  std::printf("%-5s %-6s  %2ld adapted linears, %5ld trainable of %6ld frozen   loss:",
              to_string(family), method_name(method), long(adapted),
              long(model.store().parameter_count()), long(model.frozen_parameter_count()));
  const Index batch = 16, seq = 8;
  double avg = 0, first = 0, last = 0;
  for (int step = 1; step <= steps; ++step) {
    Batch b = make_batch(c, batch, seq, data);
    const ModelInput<float> in{.ids = b.ids.empty() ? nullptr : b.ids.data(),
                               .images = b.images.empty() ? nullptr : b.images.data(),
                               .batch = batch,
                               .seq = seq};
    avg += classify ? trainer.classification_step(in, b.labels.data())
                    : trainer.lm_step(in, b.targets.data());
    if (step % (steps / 5) == 0) {
      last = avg / (steps / 5);
      if (first == 0) first = last;
      std::printf(" %.3f", last);
      avg = 0;
    }
  }
  std::printf("\n");
  return last < 0.5 * first;
}

}  // namespace

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 500;
  if (steps < 10) {
    std::fprintf(stderr, "usage: %s [steps >= 10]\n", argv[0]);
    return 2;
  }
  std::printf(
      "tiny models of each family, random frozen weights, %d steps; loss averaged over each "
      "fifth\n",
      steps);
  bool all_fell = true;
  for (Family f : {Family::bert, Family::gpt2, Family::llama, Family::vit})
    for (const MethodConfig& m : {MethodConfig(LoraConfig{.rank = 4, .alpha = 8}),
                                  MethodConfig(WeGeFTConfig{.rank = 4, .alpha = 8}),
                                  MethodConfig(DoraConfig{.rank = 4, .alpha = 8})})
      all_fell &= train(f, m, steps);
  return all_fell ? 0 : 1;
}

// The training API in one program (docs/model.md): a model from a Hugging Face checkpoint, each
// method's default settings, the model's own parameter store, optimizers and their options,
// clipping and schedules, the Trainer, the adapters through modules(), merging a whole model, and
// saving and loading the adapter. Run: wegeft_docs_training CHECKPOINT_DIR (a bert checkpoint;
// the test passes tests/golden/interop/bert/base). Exit code 0 when every check holds.
#include <wegeft/io.hpp>
#include <wegeft/wegeft.hpp>

#include <cstdio>
#include <filesystem>
#include <variant>
#include <vector>

namespace {
int failures = 0;
void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok:    " : "FAILED:", what);
  failures += ok ? 0 : 1;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR\n", argv[0]);
    return 2;
  }
  // A checkpoint folder (config.json + model.safetensors): the model and the tensors it ignored.
  wegeft::LoadedModel<float> loaded = wegeft::load_hf_model<float>(argv[1]);
  wegeft::Transformer<float>& model = *loaded.model;
  std::printf("%s model, %ld frozen parameters, %zu checkpoint tensors unused\n",
              wegeft::to_string(model.config().family), long(model.frozen_parameter_count()),
              loaded.ignored.size());

  // Each method's defaults: LoRA r 8 / alpha 8, WeGeFT r 64 / alpha 128 shared per role, DoRA as LoRA.
  const wegeft::LoraConfig lora_defaults;
  const wegeft::WeGeFTConfig wegeft_defaults;
  const wegeft::DoraConfig dora_defaults;
  expect(lora_defaults.rank == 8 && wegeft_defaults.rank == 64 && wegeft_defaults.alpha == 128 &&
             wegeft_defaults.sharing == wegeft::WeGeFTSharing::per_role && dora_defaults.rank == 8,
         "default configs");

  // WeGeFT on every attention and MLP linear, a new classification head, all in model.store().
  model.attach({.target_modules = {"all-linear"},
                .method = wegeft::WeGeFTConfig{.rank = 4, .alpha = 8},
                .seed = 1});
  model.add_classifier(3);
  wegeft::ParameterStore<float>& store = model.store();
  std::printf("%ld trainable parameters\n", long(store.parameter_count()));

  // The adapters: every block linear in model order, with its adapter (any method) or none.
  int adapted = 0;
  for (const auto& m : model.modules())
    if (m.adapter) {
      std::visit([&](auto& a) { adapted += a.parameters().empty() ? 0 : 1; }, *m.adapter);
    }
  expect(adapted == static_cast<int>(model.modules().size()), "every block linear has an adapter");

  // A batch: token ids [batch, seq] with a padding mask, and labels.
  const wegeft::Index batch = 4, seq = 6;
  std::vector<std::int32_t> ids(batch * seq), labels = {0, 1, 2, 1};
  std::vector<std::uint8_t> mask(batch * seq, 1);
  for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<std::int32_t>((7 * i + 3) % 11);
  mask[batch * seq - 1] = 0;
  const wegeft::ModelInput<float> input{
      .ids = ids.data(), .mask = mask.data(), .batch = batch, .seq = seq};

  // The Trainer: AdamW and its options, a warmup + cosine schedule, clipping, 2 micro-batches per step.
  wegeft::Trainer<float> trainer(
      model, {.adamw = {.lr = 1e-2, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8, .weight_decay = 0.0},
              .schedule = {wegeft::ScheduleKind::cosine, 2, 40},
              .max_grad_norm = 1.0,
              .accumulation = 2});
  double first = 0, last = 0;
  for (int step = 0; step < 80; ++step) {
    last = trainer.classification_step(input, labels.data());
    if (step == 0) first = last;
  }
  std::printf("loss %.4f -> %.4f after %ld optimizer steps (lr now %.2e)\n", first, last,
              long(trainer.optimizer_steps()), trainer.current_lr());
  expect(trainer.optimizer_steps() == 40 && last < 0.5 * first, "the Trainer fits the batch");

  // The same pieces by hand: SGD with Nesterov momentum and clipping on the store's flat buffers.
  wegeft::Sgd<float> sgd({.lr = 1e-3, .momentum = 0.9, .nesterov = true});
  wegeft::Transformer<float>::Activations acts;
  model.forward(acts, input);
  model.classification_loss(acts, labels.data());
  model.backward(acts);
  const double norm = wegeft::clip_grad_norm(store.grads(), 1.0);
  sgd.step(store.values(), store.grads());
  store.zero_grad();
  expect(norm > 0, "a hand-written step (forward, loss, backward, clip, SGD)");

  // Merge every adapter into the frozen weights: the plain model gives the adapted outputs.
  model.set_training(false);
  model.forward(acts, input);
  const wegeft::Matrix<float> adapted_logits = acts.logits;
  for (const auto& m : model.modules())
    if (m.adapter) std::visit([](auto& a) { a.merge(); }, *m.adapter);
  model.forward(acts, input);
  expect((acts.logits - adapted_logits).cwiseAbs().maxCoeff() < 1e-4,
         "the merged model gives the adapted outputs");
  for (const auto& m : model.modules())
    if (m.adapter) std::visit([](auto& a) { a.unmerge(); }, *m.adapter);

  // Save the adapter (a WeGeFT directory, the head under modules_to_save) and load it elsewhere.
  const auto dir = std::filesystem::temp_directory_path() / "wegeft-docs-training-adapter";
  wegeft::save_adapter(model, store, dir.string(), argv[1]);
  wegeft::LoadedModel<float> other = wegeft::load_hf_model<float>(argv[1]);
  wegeft::load_adapter(*other.model, other.model->store(), dir.string());
  other.model->set_training(false);
  wegeft::Transformer<float>::Activations other_acts;
  other.model->forward(other_acts, input);
  expect((other_acts.logits - adapted_logits).cwiseAbs().maxCoeff() < 1e-4,
         "the saved adapter loads and gives the same outputs");
  std::filesystem::remove_all(dir);
  return failures == 0 ? 0 : 1;
}

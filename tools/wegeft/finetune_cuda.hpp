// `wegeft finetune --device cuda`: the causal-LM training step on the GPU (wegeft::cuda::CausalLM)
// behind the hooks the finetune loop calls. Compiled only when the tool links wegeft::cuda.
#pragma once

#include <wegeft/cuda.hpp>

#include <memory>
#include <string>

namespace wegeft::tool {

inline GpuBackend cuda_backend(Transformer<float>& model, const TrainerConfig& tc) {
  struct State {
    cuda::Context ctx;
    cuda::CausalLM lm;
    cuda::AdamW opt;
    TrainerConfig tc;
    Index micro = 0;
    State(Transformer<float>& m, const TrainerConfig& c)
        : ctx(0), lm(ctx, m, DType::BF16), opt(c.adamw), tc(c) {}
    double lr() const { return tc.adamw.lr * tc.schedule.multiplier(opt.steps()); }
    static cuda::LmBatch of(const text::Batch& b) {
      return {.ids = b.ids.data(),
              .mask = b.mask.data(),
              .targets = b.targets.data(),
              .batch = b.batch,
              .seq = b.seq};
    }
  };
  WEGEFT_CHECK(cuda::device_count() > 0, "--device cuda: the CUDA driver reports no GPU");
  auto s = std::make_shared<State>(model, tc);
  GpuBackend g;
  g.description = s->ctx.description() + ", bf16";
  g.step = [s](const text::Batch& b) {
    // Each micro-batch contributes 1/accumulation of its mean-loss gradient (as the CPU Trainer).
    const double loss =
        s->lm.step(State::of(b), true, 1.0 / static_cast<double>(s->tc.accumulation));
    if (++s->micro < s->tc.accumulation) return loss;
    s->micro = 0;
    if (s->tc.max_grad_norm > 0) cuda::clip_grad_norm(s->ctx, s->lm.store(), s->tc.max_grad_norm);
    s->opt.step(s->ctx, s->lm.store(), s->lr());
    s->lm.store().zero_grad(s->ctx);
    s->lm.refresh();
    return loss;
  };
  g.lr = [s] { return s->lr(); };
  g.validate = [s](const text::Dataset& data, Index batch_size, std::int32_t pad,
                   std::int64_t max_batches) {
    EvalResult r;
    double total = 0;
    for_each_batch(
        data, Task::causal_lm, batch_size, pad, max_batches, [&](const text::Batch& batch) {
          if (batch.target_count == 0) return;
          total += s->lm.eval_loss(State::of(batch)) * static_cast<double>(batch.target_count);
          r.count += batch.target_count;
        });
    r.loss = r.count ? total / static_cast<double>(r.count) : std::nan("");
    return r;
  };
  g.to_host = [s, &model] { s->lm.store().download(s->ctx, model.store()); };
  g.peak_gib = [] { return static_cast<double>(cuda::peak_device_bytes()) / double(1 << 30); };
  return g;
}

}  // namespace wegeft::tool

// `wegeft finetune / eval / generate --device cuda`: the training step on the GPU behind the hooks
// the finetune loop calls: a llama or gpt2 causal LM (wegeft::cuda::CausalLM), or a llama, gpt2 or
// BERT classifier (wegeft::cuda::SequenceClassifier). Compiled only when the tool links wegeft::cuda.
#pragma once

#include <wegeft/cuda.hpp>

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace wegeft::tool {

inline GpuBackend cuda_backend(Transformer<float>& model, const TrainerConfig& tc) {
  struct State {
    cuda::Context ctx;
    std::optional<cuda::CausalLM> lm;
    std::optional<cuda::SequenceClassifier> cls;
    cuda::AdamW opt;
    TrainerConfig tc;
    Index micro = 0;
    cuda::CausalLM::KvCache cache;      // generation: the keys and values of `decoded`
    std::vector<std::int32_t> decoded;  // the tokens the cache holds
    State(Transformer<float>& m, const TrainerConfig& c) : ctx(0), opt(c.adamw), tc(c) {
      if (m.has_classifier())
        cls.emplace(ctx, m, DType::BF16);
      else
        lm.emplace(ctx, m, DType::BF16);
    }
    double lr() const { return tc.adamw.lr * tc.schedule.multiplier(opt.steps()); }
    cuda::DeviceStore& store() { return lm ? lm->store() : cls->store(); }
    void refresh() {
      if (lm)
        lm->refresh();
      else
        cls->refresh();
    }
    double step(const text::Batch& b, bool backward, double dloss = 1.0) {
      if (lm)
        return lm->step({.ids = b.ids.data(),
                         .mask = b.mask.data(),
                         .targets = b.targets.data(),
                         .batch = b.batch,
                         .seq = b.seq},
                        backward, dloss);
      return cls->step({.ids = b.ids.data(),
                        .mask = b.mask.data(),
                        .labels = b.labels.data(),
                        .batch = b.batch,
                        .seq = b.seq},
                       backward, dloss);
    }
  };
  WEGEFT_CHECK(cuda::device_count() > 0, "--device cuda: the CUDA driver reports no GPU");
  const Family family = model.config().family;
  WEGEFT_CHECK(family == Family::llama || family == Family::gpt2 ||
                   (family == Family::bert && model.has_classifier()),
               "--device cuda runs llama- and gpt2-family causal LMs and classifiers and "
               "bert-family classifiers; this is a "
                   << to_string(family) << (model.has_classifier() ? " classifier" : " model")
                   << " (run it on the CPU)");
  auto s = std::make_shared<State>(model, tc);
  const Task task = model.has_classifier() ? Task::classification : Task::causal_lm;
  GpuBackend g;
  g.description = s->ctx.description() + ", bf16";
  g.step = [s](const text::Batch& b) {
    // Each micro-batch contributes 1/accumulation of its mean-loss gradient (as the CPU Trainer).
    const double loss = s->step(b, true, 1.0 / static_cast<double>(s->tc.accumulation));
    if (++s->micro < s->tc.accumulation) return loss;
    s->micro = 0;
    if (s->tc.max_grad_norm > 0) cuda::clip_grad_norm(s->ctx, s->store(), s->tc.max_grad_norm);
    s->opt.step(s->ctx, s->store(), s->lr());
    s->store().zero_grad(s->ctx);
    s->refresh();
    return loss;
  };
  g.lr = [s] { return s->lr(); };
  g.validate = [s, task](const text::Dataset& data, Index batch_size, std::int32_t pad,
                         std::int64_t max_batches, std::vector<text::ExactMatch>* matches,
                         const text::StopRule* stops) {
    WEGEFT_CHECK(!matches || stops, "evaluate: exact match needs a stop rule");
    WEGEFT_CHECK(!matches || task == Task::causal_lm, "exact match scores a causal LM");
    EvalTally tally;
    if (matches) matches->clear();
    for_each_batch(data, task, batch_size, pad, max_batches, [&](const text::Batch& batch) {
      if (task == Task::classification) {
        const double loss = s->step(batch, false);
        tally.add_classified(loss, s->cls->logits(), batch);
        return;
      }
      if (batch.target_count == 0 && !matches) return;
      const double loss = s->step(batch, false);
      if (matches) {
        const std::vector<std::int32_t> greedy = s->lm->greedy_tokens();
        tally.correct += judge_batch(
            batch, [&](std::size_t cell) { return greedy[cell]; }, *stops, *matches);
      }
      tally.add_lm(loss, batch.target_count);
    });
    return tally.result(matches);
  };
  g.next_logits = [s](const std::vector<std::int32_t>& ids) {
    WEGEFT_CHECK(s->lm, "generation needs a causal language model");
    WEGEFT_CHECK(!ids.empty(), "generation needs at least one token");
    // Decoded incrementally: only the tokens past those the cache holds, when ids continues them
    // (the last one again when it adds none); else from the start.
    auto& seen = s->decoded;
    if (seen.size() > ids.size() || !std::equal(seen.begin(), seen.end(), ids.begin())) {
      s->cache.clear();
      seen.clear();
    }
    if (seen.size() == ids.size()) {
      seen.pop_back();
      s->cache.length -= 1;
    }
    const auto done = static_cast<std::ptrdiff_t>(seen.size());
    const TensorView logits =
        s->lm->decode(s->cache, ids.data() + done, static_cast<Index>(ids.size()) - done);
    seen.assign(ids.begin(), ids.end());
    return cuda::download(s->ctx, logits);
  };
  g.plan = [s](Index batch, Index seq) {
    if (s->lm)
      s->lm->plan(batch, seq);
    else
      s->cls->plan(batch, seq);
  };
  g.to_host = [s, &model](AdamW<float>& opt) {
    s->store().download(s->ctx, model.store());
    opt.set_state(s->opt.state(s->ctx));
  };
  g.from_host = [s, &model](const AdamW<float>& opt) {
    s->store().upload(s->ctx, model.store());
    s->opt.set_state(s->ctx, opt.state());
    s->refresh();
  };
  g.peak_gib = [] { return static_cast<double>(cuda::peak_device_bytes()) / double(1 << 30); };
  return g;
}

}  // namespace wegeft::tool

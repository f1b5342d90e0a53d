// A small training loop helper: micro-batches with gradient accumulation, global-norm clipping,
// a warmup schedule and AdamW. It only calls public pieces (Transformer::forward, the loss
// functions, backward, clip_grad_norm, AdamW::step), so a user can write their own loop instead.
//
//   wegeft::Trainer<float> trainer(model, {.adamw = {.lr = 1e-3}, .accumulation = 4,
//                                          .schedule = {wegeft::ScheduleKind::cosine, 10, 500}});
//
// It trains the model's store() (every trainable parameter the model has when the trainer is made).
//   for (...) double loss = trainer.lm_step(input, targets);   // optimizer steps every 4th call
#pragma once

#include <cstdint>
#include <span>

#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/nn/model.hpp"
#include "wegeft/optim/adamw.hpp"
#include "wegeft/optim/clip.hpp"
#include "wegeft/optim/schedule.hpp"

namespace wegeft {

struct TrainerConfig {
  AdamWConfig adamw;
  Schedule schedule;           // multiplies adamw.lr
  double max_grad_norm = 1.0;  // <= 0: no clipping
  Index accumulation = 1;      // micro-batches per optimizer step
};

template <class T>
class Trainer {
 public:
  Trainer(Transformer<T>& model, const TrainerConfig& config)
      : m_model(&model), m_store(&model.store()), m_config(config), m_opt(config.adamw) {
    WEGEFT_CHECK(config.accumulation >= 1,
                 "gradient accumulation needs >= 1 micro-batch, got " << config.accumulation);
  }

  /// One micro-batch of language modelling (targets [N], kIgnoreIndex skips a token). Returns its
  /// mean loss. Each micro-batch contributes 1/accumulation of its gradient.
  double lm_step(const ModelInput<T>& in, const std::int32_t* targets) {
    m_model->forward(m_acts, in);
    const double loss = m_model->lm_loss(m_acts, targets);
    finish_micro_batch();
    return loss;
  }
  /// One micro-batch of sequence classification (labels [batch]).
  double classification_step(const ModelInput<T>& in, const std::int32_t* labels) {
    m_model->forward(m_acts, in);
    const double loss = m_model->classification_loss(m_acts, labels);
    finish_micro_batch();
    return loss;
  }

  std::int64_t optimizer_steps() const { return m_opt.state().step; }
  /// Gradient norm before clipping at the last optimizer step.
  double last_grad_norm() const { return m_last_norm; }
  double current_lr() const {
    return m_config.adamw.lr * m_config.schedule.multiplier(optimizer_steps());
  }
  AdamW<T>& optimizer() { return m_opt; }

 private:
  void finish_micro_batch() {
    m_model->divide_loss_gradient(m_acts, static_cast<T>(m_config.accumulation));
    m_model->backward(m_acts);
    if (++m_micro < m_config.accumulation) return;
    m_micro = 0;
    const std::span<T> grads = m_store->grads();
    if (m_config.max_grad_norm > 0) m_last_norm = clip_grad_norm(grads, m_config.max_grad_norm);
    m_opt.step(m_store->values(), grads, current_lr());
    m_store->zero_grad();
  }

  Transformer<T>* m_model;
  ParameterStore<T>* m_store;
  TrainerConfig m_config;
  AdamW<T> m_opt;
  typename Transformer<T>::Activations m_acts;
  Index m_micro = 0;
  double m_last_norm = 0;
};

}  // namespace wegeft

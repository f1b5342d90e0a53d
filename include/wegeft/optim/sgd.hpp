// SGD with momentum over a flat parameter buffer, with torch.optim.SGD's semantics:
// g += wd * p (L2), buf = momentum * buf + (1 - dampening) * g (buf = g at the first step),
// g = nesterov ? g + momentum * buf : buf, p -= lr * g.
#pragma once

#include <span>
#include <vector>

#include "wegeft/core/error.hpp"

namespace wegeft {

struct SgdConfig {
  double lr = 1e-2;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

template <class T>
class Sgd {
 public:
  explicit Sgd(const SgdConfig& config = {}) : m_config(config) {
    WEGEFT_CHECK(config.lr >= 0, "SGD lr must be >= 0, got " << config.lr);
    WEGEFT_CHECK(config.momentum >= 0, "SGD momentum must be >= 0, got " << config.momentum);
    WEGEFT_CHECK(!config.nesterov || (config.momentum > 0 && config.dampening == 0),
                 "SGD nesterov needs momentum > 0 and dampening 0");
  }

  void step(std::span<T> params, std::span<const T> grads, double lr = -1.0) {
    WEGEFT_CHECK(params.size() == grads.size(),
                 "SGD got " << params.size() << " parameters and " << grads.size() << " gradients");
    if (lr < 0) lr = m_config.lr;
    const bool first = m_buffer.empty();
    if (m_config.momentum != 0 && first) m_buffer.assign(params.size(), T(0));
    for (std::size_t i = 0; i < params.size(); ++i) {
      double g = grads[i] + m_config.weight_decay * params[i];
      if (m_config.momentum != 0) {
        const double buf =
            first ? g : m_config.momentum * m_buffer[i] + (1.0 - m_config.dampening) * g;
        m_buffer[i] = static_cast<T>(buf);
        g = m_config.nesterov ? g + m_config.momentum * buf : buf;
      }
      params[i] = static_cast<T>(params[i] - lr * g);
    }
  }

  const std::vector<T>& momentum_buffer() const { return m_buffer; }
  void set_momentum_buffer(std::vector<T> buffer) { m_buffer = std::move(buffer); }

 private:
  SgdConfig m_config;
  std::vector<T> m_buffer;
};

}  // namespace wegeft

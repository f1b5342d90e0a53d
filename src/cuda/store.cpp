// wegeft::cuda::DeviceStore and wegeft::cuda::AdamW.
#include <cmath>

#include "check.hpp"
#include "context_impl.hpp"
#include "launch.hpp"
#include "wegeft/cuda/store.hpp"

namespace wegeft::cuda {

DeviceStore::DeviceStore(Context& ctx, const ParameterStore<float>& host)
    : m_host(&host),
      m_size(host.size()),
      m_values(static_cast<std::size_t>(host.size()) * sizeof(float)),
      m_grads(static_cast<std::size_t>(host.size()) * sizeof(float)),
      m_norm(sizeof(double)) {
  upload(ctx, host);
  zero_grad(ctx);
}

void DeviceStore::check_layout(const ParameterStore<float>& host) const {
  WEGEFT_CHECK(host.size() == m_size && host.entries().size() == m_host->entries().size(),
               "parameter store of " << host.size() << " values in " << host.entries().size()
                                     << " tensors, the device store mirrors " << m_size
                                     << " values in " << m_host->entries().size());
}

TensorView DeviceStore::slice(void* base, ParamId id) const {
  const auto& e = m_host->entry(id);
  return {static_cast<float*>(base) + e.offset, DType::F32, Device::cuda, e.rows, e.cols, e.cols};
}
TensorView DeviceStore::value(ParamId id) const {
  return slice(m_values.data(), id);
}
TensorView DeviceStore::grad(ParamId id) const {
  return slice(m_grads.data(), id);
}

void DeviceStore::zero_grad(Context& ctx) {
  if (m_size)
    WEGEFT_CUDA_CHECK(cudaMemsetAsync(
        m_grads.data(), 0, static_cast<std::size_t>(m_size) * sizeof(float), ctx.impl().stream));
}

void DeviceStore::download(Context& ctx, ParameterStore<float>& host, bool grads) const {
  check_layout(host);
  const auto n = static_cast<std::size_t>(m_size);
  download_floats(ctx, host.values().data(), values(), n);
  if (grads) download_floats(ctx, host.grads().data(), this->grads(), n);
}

void DeviceStore::upload(Context& ctx, const ParameterStore<float>& host) {
  check_layout(host);
  upload_floats(ctx, values(), host.values().data(), static_cast<std::size_t>(m_size));
}

AdamW::AdamW(const AdamWConfig& config) : m_config(config) {
  const wegeft::AdamW<float> checked(config);  // the host optimizer's checks of the settings
  (void)checked;
}

void AdamW::step(Context& ctx, DeviceStore& store, double lr) {
  const auto bytes = static_cast<std::size_t>(store.size()) * sizeof(float);
  if (m_m.bytes() == 0) {
    m_m = Buffer(bytes);
    m_v = Buffer(bytes);
    WEGEFT_CUDA_CHECK(cudaMemsetAsync(m_m.data(), 0, bytes, ctx.impl().stream));
    WEGEFT_CUDA_CHECK(cudaMemsetAsync(m_v.data(), 0, bytes, ctx.impl().stream));
  }
  WEGEFT_CHECK(m_m.bytes() == bytes, "AdamW state holds " << m_m.bytes() / sizeof(float)
                                                          << " values, the store " << store.size());
  if (lr < 0) lr = m_config.lr;
  const std::int64_t t = ++m_step;
  const double b1 = m_config.beta1, b2 = m_config.beta2;
  const double c1 = 1.0 - std::pow(b1, static_cast<double>(t));
  const AdamWStep c{static_cast<float>(b1),
                    static_cast<float>(1.0 - b1),
                    static_cast<float>(b2),
                    static_cast<float>(1.0 - b2),
                    static_cast<float>(std::sqrt(1.0 - std::pow(b2, static_cast<double>(t)))),
                    static_cast<float>(m_config.eps),
                    static_cast<float>(lr / c1),
                    static_cast<float>(1.0 - lr * m_config.weight_decay)};
  adamw_update(ctx, store.values(), static_cast<float*>(m_m.data()),
               static_cast<float*>(m_v.data()), store.grads(), store.size(), c);
}

wegeft::AdamW<float>::State AdamW::state(Context& ctx) const {
  wegeft::AdamW<float>::State s;
  s.step = m_step;
  const std::size_t n = m_m.bytes() / sizeof(float);
  s.m.resize(n);
  s.v.resize(n);
  download_floats(ctx, s.m.data(), static_cast<const float*>(m_m.data()), n);
  download_floats(ctx, s.v.data(), static_cast<const float*>(m_v.data()), n);
  return s;
}

void AdamW::set_state(Context& ctx, const wegeft::AdamW<float>::State& state) {
  WEGEFT_CHECK(state.m.size() == state.v.size() && state.step >= 0,
               "AdamW state has " << state.m.size() << " first and " << state.v.size()
                                  << " second moments at step " << state.step);
  const std::size_t bytes = state.m.size() * sizeof(float);
  if (m_m.bytes() != bytes) {
    m_m = Buffer(bytes);
    m_v = Buffer(bytes);
  }
  upload_floats(ctx, static_cast<float*>(m_m.data()), state.m.data(), state.m.size());
  upload_floats(ctx, static_cast<float*>(m_v.data()), state.v.data(), state.v.size());
  m_step = state.step;
}

}  // namespace wegeft::cuda

namespace wegeft::cuda {

double clip_grad_norm(Context& ctx, DeviceStore& store, double max_norm) {
  WEGEFT_CHECK(max_norm > 0, "clip_grad_norm needs max_norm > 0, got " << max_norm);
  auto* sum = static_cast<double*>(store.m_norm.data());
  detail::launch_sum_squares(ctx.stream(), sum, store.grads(), store.size());
  detail::check_launch("sum_squares");
  double ss = 0;
  WEGEFT_CUDA_CHECK(
      cudaMemcpyAsync(&ss, sum, sizeof(double), cudaMemcpyDeviceToHost, ctx.impl().stream));
  ctx.synchronize();
  const double norm = std::sqrt(ss);
  WEGEFT_CHECK(std::isfinite(norm),
               "gradient norm is " << norm << "; a gradient is NaN or infinite");
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0 && store.size() > 0) {
    const TensorView all{store.grads(), DType::F32, Device::cuda, 1, store.size(), store.size()};
    scale_copy(ctx, all, all, static_cast<float>(coef));
  }
  return norm;
}

}  // namespace wegeft::cuda

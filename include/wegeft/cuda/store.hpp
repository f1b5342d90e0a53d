// Trainable parameters on the device: a DeviceStore mirrors a host ParameterStore<float> (same
// flat layout, same offsets, so a ParamId means the same tensor on both), holding fp32 values and
// gradients that stay on the device for the whole training step; AdamW keeps its moments there
// and updates the whole flat buffer in one kernel.
//
//   wegeft::ParameterStore<float> store;                 // adapters registered and initialised
//   ...
//   wegeft::cuda::DeviceStore dev(ctx, store);           // uploads the values, zero gradients
//   wegeft::cuda::AdamW opt({.lr = 1e-3});
//   ... forward / backward on the device ...
//   opt.step(ctx, dev);  dev.zero_grad(ctx);
//   dev.download(ctx, store);                            // to save with the usual io functions
#pragma once

#include <cstdint>

#include "wegeft/core/parameters.hpp"
#include "wegeft/cuda/ops.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/optim/adamw.hpp"

namespace wegeft::cuda {

class DeviceStore {
 public:
  DeviceStore(Context& ctx, const ParameterStore<float>& host);

  Index size() const { return m_size; }
  float* values() const { return static_cast<float*>(m_values.data()); }
  float* grads() const { return static_cast<float*>(m_grads.data()); }
  /// The [rows, cols] F32 views of one parameter and its gradient (the host store's layout).
  TensorView value(ParamId id) const;
  TensorView grad(ParamId id) const;
  const ParameterStore<float>& host() const { return *m_host; }

  void zero_grad(Context& ctx);
  /// Values (and gradients) back into `host`, which must have this store's layout.
  void download(Context& ctx, ParameterStore<float>& host, bool grads = false) const;
  /// Values from `host` (same layout) to the device.
  void upload(Context& ctx, const ParameterStore<float>& host);

 private:
  TensorView slice(void* base, ParamId id) const;
  void check_layout(const ParameterStore<float>& host) const;
  friend double clip_grad_norm(Context& ctx, DeviceStore& store, double max_norm);
  const ParameterStore<float>* m_host;
  Index m_size;
  Buffer m_values, m_grads;
  Buffer m_norm;  // one double: clip_grad_norm's sum of squares
};

/// Global-norm gradient clipping of every gradient in `store`, as optim/clip.hpp's
/// clip_grad_norm (torch.nn.utils.clip_grad_norm_): if the 2-norm (summed in double) exceeds
/// max_norm, every gradient is scaled by max_norm / (norm + 1e-6). Returns the norm before
/// clipping (waits for it); a non-finite norm throws.
double clip_grad_norm(Context& ctx, DeviceStore& store, double max_norm);

/// AdamW over a DeviceStore's flat buffer, the moments on the device (allocated at the first step
/// or by set_state).
class AdamW {
 public:
  explicit AdamW(const AdamWConfig& config = {});
  /// One update of every value from its gradient; `lr` < 0 uses the config's.
  void step(Context& ctx, DeviceStore& store, double lr = -1.0);
  std::int64_t steps() const { return m_step; }
  /// The step count and both moments on the host, as the host optimizer holds them (no moments
  /// before the first step), so save_checkpoint writes a GPU run as it writes a CPU run.
  wegeft::AdamW<float>::State state(Context& ctx) const;
  /// Restores a state from state() or from the host optimizer (load_checkpoint): the count, and
  /// the moments uploaded; the next step() checks their length against the store's.
  void set_state(Context& ctx, const wegeft::AdamW<float>::State& state);

 private:
  AdamWConfig m_config;
  std::int64_t m_step = 0;
  Buffer m_m, m_v;
};

}  // namespace wegeft::cuda

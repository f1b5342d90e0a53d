// Linear layers on the GPU: the frozen base (Linear) and the base with a LoRA or WeGeFT adapter
// (AdaptedLinear), as a training step's forward and backward.
//
// The frozen weight is stored once on the device, in BF16 (or F32), inside an extended
// [d_out + rp, d_in + rp] matrix (rp = the rank rounded up to 8) that also holds the adapter's
// factors in the weight's dtype:
//
//          d_in    rp
//        +-------+----+
//   d_out|   W   | sB |      LoRA:   A [r, d_in] below W, s B [d_out, r] beside it
//        +-------+----+      WeGeFT: Psi [r, d_in] below W, s P = s W Phi^T [d_out, r] beside it
//   rp   |   A   | 0  |
//        +-------+----+
//
// so that the adapter's term joins the frozen GEMM as extra inner dimension instead of a pass of
// its own over [N, d] (the two methods share one step; WeGeFT is its weight-side order (i)):
//   forward   u = x A^T                        [N, rp], into x's spare columns
//             y = [x | u] [W | sB]^T + b       one GEMM, k = d_in + rp
//   backward  g = dy (sB)                      [N, rp], into dy's spare columns
//             dx = [dy | g] [W ; A]            one GEMM, k = d_out + rp
//             LoRA:   dA += g^T x,  dB += s dy^T u
//             WeGeFT: dPsi += g^T x, dPhi += (s dy^T u)^T W
// The caller gives x and dy rp spare columns after their d_in / d_out (row stride at least
// input_cols() / output_grad_cols()); the layer overwrites them. Parameters and their fp32
// gradients live in a DeviceStore; after the optimizer changes them, refresh() writes their
// weight-dtype copies into the extended matrix (and, for WeGeFT, recomputes P = W Phi^T).
//
//   wegeft::cuda::AdaptedLinear q(ctx, dev, cpu_lora, wegeft::DType::BF16);
//   wegeft::cuda::Tensor x(wegeft::DType::BF16, n, q.input_cols());    // d_in used, rp spare
//   auto cache = q.forward(ctx, y, x.view());
//   q.backward(ctx, dx, cache, dy);                                     // dy: output_grad_cols()
//   opt.step(ctx, dev);  q.refresh(ctx);
//
// Adapter dropout (LoRA's input dropout, WeGeFT's weight dropout) is not implemented on the GPU;
// a layer whose config asks for it is refused.
#pragma once

#include <optional>
#include <string>

#include "wegeft/adapters/lora.hpp"
#include "wegeft/adapters/wegeft.hpp"
#include "wegeft/core/view.hpp"
#include "wegeft/cuda/ops.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/cuda/store.hpp"

namespace wegeft::cuda {

/// The frozen layer y = x W^T + b with W [d_out, d_in] and b [d_out] on the device.
class Linear {
 public:
  Linear(Context& ctx, const FrozenLinear<float>& base, DType dtype);
  Index d_in() const { return m_w.cols(); }
  Index d_out() const { return m_w.rows(); }
  /// y [N, d_out] = x [N, d_in] W^T + b. Overwrites y.
  void forward(Context& ctx, const TensorView& y, const TensorView& x) const;
  /// dx [N, d_in] = dy [N, d_out] W. Overwrites dx.
  void backward_input(Context& ctx, const TensorView& dx, const TensorView& dy) const;

 private:
  Tensor m_w, m_b;
  bool m_has_bias;
};

class AdaptedLinear {
 public:
  enum class Method { lora, wegeft };
  /// What forward() leaves for backward(): u = x A^T, the spare columns of x.
  struct Cache {
    TensorView x, u;
  };

  /// The layer of a host LoRA / WeGeFT adapter: W and b uploaded in `dtype` (BF16 or F32), the
  /// adapter's parameters taken from `store` (a mirror of the store the host adapter lives in).
  AdaptedLinear(Context& ctx, DeviceStore& store, const LoraAdapter<float>& adapter, DType dtype);
  AdaptedLinear(Context& ctx, DeviceStore& store, const WeGeFTAdapter<float>& adapter, DType dtype);

  Method method() const { return m_method; }
  Index d_in() const { return m_d_in; }
  Index d_out() const { return m_d_out; }
  Index rank() const { return m_rank; }
  Index padded_rank() const { return m_rp; }
  float scale() const { return m_scale; }
  DType dtype() const { return m_w.dtype(); }
  /// The row stride x needs (d_in + padded rank) and the one dy needs (d_out + padded rank).
  Index input_cols() const { return m_d_in + m_rp; }
  Index output_grad_cols() const { return m_d_out + m_rp; }

  /// Writes the weight-dtype copies of the adapter's parameters into the extended weight (and
  /// recomputes s W Phi^T for WeGeFT). Call after every change of the parameters' values.
  void refresh(Context& ctx);

  /// y [N, d_out] = x W^T + b + the adapter's term. Overwrites y and x's spare columns
  /// [d_in, d_in + rp) with u; x's first d_in columns are read only.
  Cache forward(Context& ctx, const TensorView& y, const TensorView& x);

  /// dx [N, d_in] = dy W + the adapter's input gradient (overwritten; skipped when dx is empty);
  /// the adapter's parameter gradients += into the store. dy's spare columns are overwritten.
  void backward(Context& ctx, const TensorView& dx, const Cache& cache, const TensorView& dy);

 private:
  AdaptedLinear(Context& ctx, DeviceStore& store, const FrozenLinear<float>& base, DType dtype,
                Method method, Index rank, float scale, ParamId down, ParamId up,
                const std::string& name);
  TensorView w_forward() const;   // [d_out, d_in + rp]
  TensorView w_backward() const;  // [d_out + rp, d_in]
  void check_input(const TensorView& x, const char* what, Index cols, Index n) const;

  Method m_method;
  DeviceStore* m_store;
  Index m_d_in, m_d_out, m_rank, m_rp;
  float m_scale;
  ParamId m_down, m_up;  // LoRA: A, B; WeGeFT: Psi, Phi
  std::string m_name;
  Tensor m_w;  // [d_out + rp, d_in + rp], the weight's dtype
  Tensor m_b;  // [1, d_out]
  bool m_has_bias;
  Tensor m_phi;     // WeGeFT: Phi [r, d_in] in the weight's dtype
  Tensor m_grad_p;  // WeGeFT: s dy^T u [d_out, r] in the weight's dtype
};

}  // namespace wegeft::cuda

// wegeft::cuda::Linear and wegeft::cuda::AdaptedLinear (see wegeft/cuda/linear.hpp for the
// layout of the extended weight and the products of a step).
#include "wegeft/cuda/linear.hpp"

#include "context_impl.hpp"

namespace wegeft::cuda {

namespace {

Index round_up(Index v, Index to) {
  return (v + to - 1) / to * to;
}

void check_dtype(DType dtype) {
  WEGEFT_CHECK(dtype == DType::BF16 || dtype == DType::F32,
               "a CUDA linear layer stores its weight in BF16 or F32, not " << dtype_name(dtype));
}

Tensor upload_bias(Context& ctx, const FrozenLinear<float>& base, DType dtype) {
  if (!base.bias()) return {};
  const ConstMatrixMap<float> b(base.bias(), 1, base.d_out());
  return Tensor::from_host(ctx, b, dtype);
}

}  // namespace

Linear::Linear(Context& ctx, const FrozenLinear<float>& base, DType dtype)
    : m_has_bias(base.bias() != nullptr) {
  check_dtype(dtype);
  m_w = Tensor::from_host(ctx, base.weight(), dtype);
  m_b = upload_bias(ctx, base, dtype);
}

void Linear::forward(Context& ctx, const TensorView& y, const TensorView& x) const {
  WEGEFT_CHECK(x.cols == d_in(), "linear input x is " << x.describe() << ", the layer's W is ["
                                                      << d_out() << ", " << d_in() << "]");
  const TensorView bias = m_b.view();
  gemm(ctx, y, x, Op::N, m_w.view(), Op::T, 1.0f, 0.0f, m_has_bias ? &bias : nullptr);
}

void Linear::backward_input(Context& ctx, const TensorView& dx, const TensorView& dy) const {
  WEGEFT_CHECK(dy.cols == d_out(), "linear output gradient dy is "
                                       << dy.describe() << ", the layer's W is [" << d_out() << ", "
                                       << d_in() << "]");
  gemm(ctx, dx, dy, Op::N, m_w.view(), Op::N, 1.0f, 0.0f);
}

AdaptedLinear::AdaptedLinear(Context& ctx, DeviceStore& store, const FrozenLinear<float>& base,
                             DType dtype, Method method, Index rank, float scale, ParamId down,
                             ParamId up, const std::string& name)
    : m_method(method),
      m_store(&store),
      m_d_in(base.d_in()),
      m_d_out(base.d_out()),
      m_rank(rank),
      m_rp(round_up(rank, 8)),
      m_scale(scale),
      m_down(down),
      m_up(up),
      m_name(name),
      m_has_bias(base.bias() != nullptr) {
  check_dtype(dtype);
  const auto& down_entry = store.host().entry(down);
  WEGEFT_CHECK(down_entry.rows == rank && down_entry.cols == m_d_in,
               "'" << name << "': its down factor in the device store is [" << down_entry.rows
                   << ", " << down_entry.cols << "], the layer needs [" << rank << ", " << m_d_in
                   << "]");
  Matrix<float> w = Matrix<float>::Zero(m_d_out + m_rp, m_d_in + m_rp);
  w.topLeftCorner(m_d_out, m_d_in) = base.weight();
  m_w = Tensor::from_host(ctx, w, dtype);
  m_b = upload_bias(ctx, base, dtype);
  if (method == Method::wegeft) {
    m_phi = Tensor(dtype, rank, m_d_in);
    m_grad_p = Tensor(dtype, m_d_out, rank);
  }
  refresh(ctx);
}

AdaptedLinear::AdaptedLinear(Context& ctx, DeviceStore& store, const LoraAdapter<float>& adapter,
                             DType dtype)
    : AdaptedLinear(ctx, store, adapter.base(), dtype, Method::lora, adapter.rank(),
                    adapter.scale(), adapter.id_A(), adapter.id_B(), "LoRA layer") {
  WEGEFT_CHECK(adapter.config().dropout == 0.0,
               "LoRA dropout " << adapter.config().dropout
                               << " is not implemented on the GPU; use dropout 0");
  WEGEFT_CHECK(!adapter.merged(),
               "the LoRA adapter is merged; unmerge it before moving it to the GPU");
}

AdaptedLinear::AdaptedLinear(Context& ctx, DeviceStore& store, const WeGeFTAdapter<float>& adapter,
                             DType dtype)
    : AdaptedLinear(ctx, store, adapter.base(), dtype, Method::wegeft, adapter.generator().rank(),
                    adapter.generator().scale(), adapter.generator().id_psi(),
                    adapter.generator().id_phi(), "WeGeFT layer of " + adapter.generator().name()) {
  WEGEFT_CHECK(adapter.config().dropout == 0.0,
               "WeGeFT weight dropout " << adapter.config().dropout
                                        << " is not implemented on the GPU; use dropout 0");
  WEGEFT_CHECK(!adapter.merged(),
               "the WeGeFT adapter is merged; unmerge it before moving it to the GPU");
}

TensorView AdaptedLinear::w_forward() const {
  return m_w.block(0, 0, m_d_out, m_d_in + m_rp);
}
TensorView AdaptedLinear::w_backward() const {
  return m_w.block(0, 0, m_d_out + m_rp, m_d_in);
}

void AdaptedLinear::refresh(Context& ctx) {
  // the down factor (A or Psi) below W; its padding rows stay zero
  scale_copy(ctx, m_w.block(m_d_out, 0, m_rank, m_d_in), m_store->value(m_down));
  const TensorView side = m_w.block(0, m_d_in, m_d_out, m_rank);
  if (m_method == Method::lora) {
    scale_copy(ctx, side, m_store->value(m_up), m_scale);  // s B
  } else {
    scale_copy(ctx, m_phi.view(), m_store->value(m_up));
    gemm(ctx, side, m_w.block(0, 0, m_d_out, m_d_in), Op::N, m_phi.view(), Op::T, m_scale,
         0.0f);  // s W Phi^T
  }
}

void AdaptedLinear::check_input(const TensorView& x, const char* what, Index cols, Index n) const {
  WEGEFT_CHECK(x.device == Device::cuda && x.dtype == dtype(),
               m_name << ": " << what << " is " << x.describe() << ", the layer computes in "
                      << dtype_name(dtype()) << " on the GPU");
  WEGEFT_CHECK(x.cols == cols && (n < 0 || x.rows == n),
               m_name << ": " << what << " is " << x.describe() << ", expected ["
                      << (n < 0 ? x.rows : n) << ", " << cols << "]");
  WEGEFT_CHECK(x.ld >= cols + m_rp, m_name << ": " << what << " has row stride " << x.ld
                                           << "; the layer needs " << cols + m_rp << " (" << cols
                                           << " columns and " << m_rp << " spare ones for the rank-"
                                           << m_rank << " term)");
}

AdaptedLinear::Cache AdaptedLinear::forward(Context& ctx, const TensorView& y,
                                            const TensorView& x) {
  check_input(x, "input x", m_d_in, -1);
  const Index n = x.rows;
  TensorView xu = x;  // [N, d_in + rp]: x and its spare columns
  xu.cols = m_d_in + m_rp;
  const TensorView u = xu.block(0, m_d_in, n, m_rp);
  rank_r_product(ctx, u, x, m_w.block(m_d_out, 0, m_rp, m_d_in), Op::T);  // u = x A^T
  const TensorView bias = m_b.view();
  gemm(ctx, y, xu, Op::N, w_forward(), Op::T, 1.0f, 0.0f, m_has_bias ? &bias : nullptr);
  return {x, u};
}

void AdaptedLinear::backward(Context& ctx, const TensorView& dx, const Cache& cache,
                             const TensorView& dy) {
  const Index n = cache.x.rows;
  WEGEFT_CHECK(cache.u.data != nullptr && cache.u.rows == n && cache.u.cols == m_rp,
               m_name << ": backward needs the cache of this layer's forward");
  check_input(dy, "output gradient dy", m_d_out, n);
  if (!(dx.rows == 0 && dx.cols == 0))
    WEGEFT_CHECK(dx.rows == n && dx.cols == m_d_in && dx.dtype == dtype(),
                 m_name << ": input gradient dx is " << dx.describe() << ", expected [" << n << ", "
                        << m_d_in << "] " << dtype_name(dtype()));
  TensorView dyg = dy;  // [N, d_out + rp]: dy and its spare columns
  dyg.cols = m_d_out + m_rp;
  const TensorView g = dyg.block(0, m_d_out, n, m_rp);
  const TensorView u_r = cache.u.block(0, 0, n, m_rank);
  // lane 1, beside the products on lane 0: the up factor's gradient (needs dy and u only)
  detail::fork(ctx);
  if (m_method == Method::lora) {
    detail::gemm_on(ctx, 1, m_store->grad(m_up), dy, Op::T, u_r, Op::N, m_scale,
                    1.0f);  // dB += s dy^T u
  } else {
    detail::gemm_on(ctx, 1, m_grad_p.view(), dy, Op::T, u_r, Op::N, m_scale,
                    0.0f);  // g_P = s dy^T u
    detail::gemm_on(ctx, 1, m_store->grad(m_up), m_grad_p.view(), Op::T,
                    m_w.block(0, 0, m_d_out, m_d_in), Op::N, 1.0f, 1.0f);  // dPhi += g_P^T W
  }
  rank_r_product(ctx, g, dy, m_w.block(0, m_d_in, m_d_out, m_rp), Op::N);  // g = dy sB
  // lane 1 again once g exists: dA (or dPsi) += g^T x, beside dx on lane 0
  detail::fork(ctx);
  detail::gemm_on(ctx, 1, m_store->grad(m_down), g.block(0, 0, n, m_rank), Op::T, cache.x, Op::N,
                  1.0f, 1.0f);
  if (!(dx.rows == 0 && dx.cols == 0))
    gemm(ctx, dx, dyg, Op::N, w_backward(), Op::N, 1.0f, 0.0f);  // dx = [dy | g] [W ; A]
  detail::join(ctx);
}

}  // namespace wegeft::cuda

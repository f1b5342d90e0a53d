// The frozen linear layer that adapters attach to: y = x W^T + b.
//
// W is [d_out, d_in] and b is [d_out] (optional). The layer does not own them: it is a view over
// weights the caller keeps (a loaded checkpoint, a Matrix). Its backward only produces the input
// gradient; a frozen weight never gets a gradient and costs no FLOPs for one. The weights are
// writable so an adapter can merge into them.
//
//   wegeft::Matrix<float> w = ...;  wegeft::Vector<float> b = ...;
//   wegeft::FrozenLinear<float> base(w, &b);
//   base.forward(y, x);             // y: [N, d_out] = x [N, d_in] W^T + b
//   base.backward_input(dx, dy);    // dx: [N, d_in] = dy W   (overwrites dx)
//
// bf16 products: given a Bf16Weight (W packed in bf16 both ways, owned by the caller and filled
// or cleared at any time: the layer reads it at each call), the float layer computes x W^T and
// dy W with gemm_bf16 (inputs rounded to bf16, sums in fp32) while the weight is packed; W itself
// stays in fp32 for everything else (adapters' W Phi^T, merging).
#pragma once

#include <type_traits>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/gemm_bf16.hpp"
#include "wegeft/kernels/cpu/linear.hpp"
#include "wegeft/kernels/cpu/rank_r.hpp"

namespace wegeft {

/// A frozen weight W [d_out, d_in] packed in bf16 for both of its products: `forward` for
/// y = x W^T, `backward` for dx = dy W. Empty until pack().
struct Bf16Weight {
  Bf16Panels forward, backward;

  void pack(const float* w, Index d_out, Index d_in) {
    forward = Bf16Panels::from_rows(w, d_out, d_in, d_in);
    backward = Bf16Panels::from_cols(w, d_out, d_in, d_in);
  }
  void clear() { *this = Bf16Weight{}; }
  bool packed() const { return !forward.empty(); }
  std::size_t bytes() const { return forward.bytes() + backward.bytes(); }
};

template <class T>
class FrozenLinear {
 public:
  /// View over `weight` [d_out, d_in] and, if not null, `bias` [d_out]; `bf16` (float only, may
  /// be null) is where a bf16 packing of the weight is kept when the products run in bf16.
  FrozenLinear(T* weight, Index d_out, Index d_in, T* bias = nullptr,
               const Bf16Weight* bf16 = nullptr)
      : m_weight(weight, d_out, d_in), m_bias(bias), m_bf16(bf16) {
    WEGEFT_CHECK((bf16 == nullptr || std::is_same_v<T, float>),
                 "FrozenLinear: bf16 products are for float layers");
    WEGEFT_CHECK(weight != nullptr, "FrozenLinear got a null weight pointer");
    WEGEFT_CHECK(d_out > 0 && d_in > 0,
                 "FrozenLinear weight has empty shape [" << d_out << ", " << d_in << "]");
  }
  explicit FrozenLinear(Matrix<T>& weight, Vector<T>* bias = nullptr)
      : FrozenLinear(weight.data(), weight.rows(), weight.cols(), check_bias(bias, weight.rows())) {
  }

  Index d_in() const { return m_weight.cols(); }
  Index d_out() const { return m_weight.rows(); }
  MatrixMap<T>& weight() { return m_weight; }
  const MatrixMap<T>& weight() const { return m_weight; }
  const T* bias() const { return m_bias; }

  /// Whether the products run in bf16 now (a packed Bf16Weight is attached).
  bool bf16() const { return m_bf16 != nullptr && m_bf16->packed(); }

  /// y [N, d_out] = x [N, d_in] W^T + b. Overwrites y.
  void forward(MatRef<T> y, CMatRef<T> x) const {
    check_input(x);
    check_shape(y, x.rows(), d_out(), "linear output y");
    if (!bf16()) return linear_forward<T>(y, x, m_weight, m_bias);
    if (m_bias != nullptr) y.rowwise() = ConstVectorMap<T>(m_bias, d_out()).transpose();
    bf16_product(y, x, m_bf16->forward, m_bias != nullptr);
  }
  /// y [N, d_out] += x [N, d_in] W^T (no bias): the frozen product added onto what an adapter
  /// wrote into y.
  void accumulate_forward(MatRef<T> y, CMatRef<T> x) const {
    check_input(x);
    check_shape(y, x.rows(), d_out(), "linear output y");
    if (!bf16()) {
      y.noalias() += x * m_weight.transpose();
      return;
    }
    bf16_product(y, x, m_bf16->forward, true);
  }
  /// dx [N, d_in] = dy [N, d_out] W. Overwrites dx.
  void backward_input(MatRef<T> dx, CMatRef<T> dy) const {
    check_dy(dx, dy);
    if (!bf16()) return linear_backward_input<T>(dx, dy, m_weight);
    bf16_product(dx, dy, m_bf16->backward, false);
  }
  /// dx [N, d_in] += dy [N, d_out] W.
  void accumulate_backward_input(MatRef<T> dx, CMatRef<T> dy) const {
    check_dy(dx, dy);
    if (!bf16()) {
      dx.noalias() += dy * m_weight;
      return;
    }
    bf16_product(dx, dy, m_bf16->backward, true);
  }
  /// y [N, d_out] += x W^T, with an adapter's rank-r work `side(parts, drive)` (the driver form of
  /// rank_r_project_expand, kernels/cpu/rank_r.hpp) run around it. In bf16, drive is the GEMM
  /// itself (gemm_bf16_with): the side's rows run on each block of rows of y just ahead of the
  /// product's work on them, on the thread that computes them, while those rows of x and y are in
  /// cache. Otherwise side runs its rows itself (parts 0) and the product follows.
  template <class Side>
  void accumulate_forward_around(MatRef<T> y, CMatRef<T> x, Side&& side) const {
    check_input(x);
    check_shape(y, x.rows(), d_out(), "linear output y");
    around(y, x, m_bf16 != nullptr ? &m_bf16->forward : nullptr, side,
           [&] { accumulate_forward(y, x); });
  }
  /// dx [N, d_in] += dy W around `side(parts, drive)`, as accumulate_forward_around (the driver
  /// form of rank_r_backward, which writes its share of dx first).
  template <class Side>
  void accumulate_backward_input_around(MatRef<T> dx, CMatRef<T> dy, Side&& side) const {
    check_dy(dx, dy);
    around(dx, dy, m_bf16 != nullptr ? &m_bf16->backward : nullptr, side,
           [&] { accumulate_backward_input(dx, dy); });
  }
  void check_input(CMatRef<T> x) const {
    WEGEFT_CHECK(x.cols() == d_in(), "input x has shape "
                                         << shape_of(x) << ", the layer's W is [" << d_out() << ", "
                                         << d_in() << "] so x needs " << d_in() << " columns");
  }

 private:
  static T* check_bias(Vector<T>* bias, Index d_out) {
    if (bias == nullptr) return nullptr;
    WEGEFT_CHECK(bias->size() == d_out,
                 "bias has " << bias->size() << " entries, the weight has " << d_out << " rows");
    return bias->data();
  }

  /// side(parts, gemm) where the products run in bf16, else side(0, nothing) then plain().
  template <class Side, class Plain>
  void around(MatRef<T> c, CMatRef<T> a, const Bf16Panels* b, Side& side, Plain&& plain) const {
    if constexpr (std::is_same_v<T, float>) {
      if (bf16()) {
        side(gemm_bf16_parts(a.rows(), *b), [&](auto&& rows) {
          gemm_bf16_with(c.data(), c.outerStride(), a.data(), a.outerStride(), a.rows(), *b, true,
                         rows);
        });
        return;
      }
    }
    side(0, detail::OwnRows{});
    plain();
  }
  void check_dy(CMatRef<T> dx, CMatRef<T> dy) const {
    WEGEFT_CHECK(dy.cols() == d_out(), "output gradient dy has shape "
                                           << shape_of(dy) << ", expected [N, " << d_out() << "]");
    check_shape(dx, dy.rows(), d_in(), "input gradient dx");
  }
  static void bf16_product(MatRef<T> c, CMatRef<T> a, const Bf16Panels& b, bool accumulate) {
    if constexpr (std::is_same_v<T, float>)
      gemm_bf16(c.data(), c.outerStride(), a.data(), a.outerStride(), a.rows(), b, accumulate);
  }

  MatrixMap<T> m_weight;
  T* m_bias;
  const Bf16Weight* m_bf16;
};

}  // namespace wegeft

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
#pragma once

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/linear.hpp"

namespace wegeft {

template <class T>
class FrozenLinear {
 public:
  /// View over `weight` [d_out, d_in] and, if not null, `bias` [d_out].
  FrozenLinear(T* weight, Index d_out, Index d_in, T* bias = nullptr)
      : m_weight(weight, d_out, d_in), m_bias(bias) {
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

  /// y [N, d_out] = x [N, d_in] W^T + b. Overwrites y.
  void forward(MatRef<T> y, CMatRef<T> x) const {
    check_input(x);
    check_shape(y, x.rows(), d_out(), "linear output y");
    linear_forward<T>(y, x, m_weight, m_bias);
  }
  /// dx [N, d_in] = dy [N, d_out] W. Overwrites dx.
  void backward_input(MatRef<T> dx, CMatRef<T> dy) const {
    WEGEFT_CHECK(dy.cols() == d_out(), "output gradient dy has shape "
                                           << shape_of(dy) << ", expected [N, " << d_out() << "]");
    check_shape(dx, dy.rows(), d_in(), "input gradient dx");
    linear_backward_input<T>(dx, dy, m_weight);
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

  MatrixMap<T> m_weight;
  T* m_bias;
};

}  // namespace wegeft

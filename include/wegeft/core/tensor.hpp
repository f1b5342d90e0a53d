// Row-major tensor aliases and views over Eigen.
//
// Activations are row-major [rows = tokens, cols = features], weights are torch-shaped
// [d_out, d_in]. Functions take `CMatRef<T>` for read-only inputs (accepts a Matrix, a Map or a
// contiguous block without copying) and `MatRef<T>` for outputs, which the caller sizes.
//
//   wegeft::Matrix<float> x(6, 7);                         // owning, row-major
//   auto v = wegeft::view(buffer.data(), 6, 7);           // non-owning view over raw memory
#pragma once

#include <Eigen/Core>
#include <cstdint>
#include <string>
#include <vector>

#include "wegeft/core/error.hpp"

namespace wegeft {

using Index = Eigen::Index;

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// Non-owning views: pointer + shape.
template <class T>
using MatrixMap = Eigen::Map<Matrix<T>>;
template <class T>
using ConstMatrixMap = Eigen::Map<const Matrix<T>>;
template <class T>
using VectorMap = Eigen::Map<Vector<T>>;
template <class T>
using ConstVectorMap = Eigen::Map<const Vector<T>>;

/// Argument types: a writable row-major view and a read-only one.
template <class T>
using MatRef = Eigen::Ref<Matrix<T>>;
template <class T>
using CMatRef = const Eigen::Ref<const Matrix<T>>&;

template <class T>
MatrixMap<T> view(T* data, Index rows, Index cols) {
  return MatrixMap<T>(data, rows, cols);
}
template <class T>
ConstMatrixMap<T> view(const T* data, Index rows, Index cols) {
  return ConstMatrixMap<T>(data, rows, cols);
}

/// "[rows, cols]" for messages.
template <class M>
std::string shape_of(const M& m) {
  return "[" + std::to_string(m.rows()) + ", " + std::to_string(m.cols()) + "]";
}

/// A per-thread scratch matrix that keeps its memory between calls, so a hot path that needs a
/// large temporary does not allocate (and page-fault) on every call. Slot `slot` (0..3) is
/// [rows, cols] until the next call with the same slot on this thread.
template <class T>
MatrixMap<T> workspace(int slot, Index rows, Index cols) {
  thread_local std::vector<T> buffers[4];
  auto& b = buffers[slot];
  if (b.size() < static_cast<std::size_t>(rows * cols))
    b.resize(static_cast<std::size_t>(rows * cols));
  return MatrixMap<T>(b.data(), rows, cols);
}

/// Throw wegeft::Error unless `m` is [rows, cols]; `what` names the tensor in the message.
template <class M>
void check_shape(const M& m, Index rows, Index cols, const char* what) {
  WEGEFT_CHECK(m.rows() == rows && m.cols() == cols, what << " has shape " << shape_of(m)
                                                          << ", expected [" << rows << ", " << cols
                                                          << "]");
}
/// The same for `owner`'s argument `what` ("LoRA", "output y"); builds no string unless it fails.
template <class M>
void check_shape(const M& m, Index rows, Index cols, const char* owner, const char* what) {
  WEGEFT_CHECK(m.rows() == rows && m.cols() == cols, owner << " " << what << " has shape "
                                                           << shape_of(m) << ", expected [" << rows
                                                           << ", " << cols << "]");
}

}  // namespace wegeft

// Test helpers: random inputs, per-type tolerances, a finite-difference gradient check, a scalar
// reference linear layer and the golden-file reader.
#pragma once

#include <catch2/catch.hpp>

#include <cmath>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>

#include <wegeft/wegeft.hpp>

namespace wt {

using wegeft::Index;
using wegeft::Matrix;

template <class T>
struct Tol;
template <>
struct Tol<double> {
  static constexpr double fd_step = 1e-6;  // the test losses are quadratic in each scalar, so
  static constexpr double fd = 1e-6;       // central differences are exact up to rounding
  static constexpr double close = 1e-10;   // two exact computations of the same quantity
};
template <>
struct Tol<float> {
  static constexpr double fd_step = 1e-2;
  static constexpr double fd = 2e-2;
  static constexpr double close = 2e-4;
};

/// Settings of the registered method `which` (0 LoRA, 1 WeGeFT, 2 DoRA) with one rank, alpha and
/// dropout, for tests that run every method.
inline constexpr int kMethods = 3;
inline wegeft::MethodConfig method_config(int which, Index rank, double alpha,
                                          double dropout = 0.0) {
  if (which == 1) return wegeft::WeGeFTConfig{.rank = rank, .alpha = alpha, .dropout = dropout};
  if (which == 2) return wegeft::DoraConfig{.rank = rank, .alpha = alpha, .dropout = dropout};
  return wegeft::LoraConfig{.rank = rank, .alpha = alpha, .dropout = dropout};
}

/// Uniform(-1, 1) entries, never all zero.
template <class T>
Matrix<T> random_matrix(Index rows, Index cols, wegeft::Rng& rng) {
  Matrix<T> m(rows, cols);
  wegeft::fill_uniform(m, rng, T(-1), T(1));
  return m;
}

/// max |a - b| / max(1, max |b|): a scale-aware distance.
template <class A, class B>
double rel_diff(const A& a, const B& b) {
  REQUIRE(a.rows() == b.rows());
  REQUIRE(a.cols() == b.cols());
  const double scale = std::max(1.0, static_cast<double>(b.cwiseAbs().maxCoeff()));
  return static_cast<double>((a - b).cwiseAbs().maxCoeff()) / scale;
}

/// L = 0.5 * sum((y - target)^2) in double; its gradient with respect to y is y - target.
template <class T>
double half_squared_error(const Matrix<T>& y, const Matrix<T>& target) {
  return 0.5 * (y.template cast<double>() - target.template cast<double>()).squaredNorm();
}

/// Central finite differences of `loss` with respect to every entry of `param`, compared with
/// `analytic`. `param` is perturbed in place and restored.
template <class T, class Param>
void check_gradient(const char* what, Param&& param, const Matrix<T>& analytic,
                    const std::function<double()>& loss) {
  INFO("finite-difference check of " << what);
  REQUIRE(param.rows() == analytic.rows());
  REQUIRE(param.cols() == analytic.cols());
  Matrix<double> fd(param.rows(), param.cols());
  const double h = Tol<T>::fd_step;
  for (Index i = 0; i < param.rows(); ++i) {
    for (Index j = 0; j < param.cols(); ++j) {
      const T saved = param(i, j);
      param(i, j) = static_cast<T>(saved + h);
      const double up = loss();
      param(i, j) = static_cast<T>(saved - h);
      const double down = loss();
      param(i, j) = saved;
      fd(i, j) = (up - down) / (2 * h);
    }
  }
  const Matrix<double> an = analytic.template cast<double>();
  INFO("max |analytic| = " << an.cwiseAbs().maxCoeff());
  CHECK(rel_diff(an, fd) < Tol<T>::fd);
  CHECK(an.cwiseAbs().maxCoeff() > 0.0);  // the check compared something non-trivial
}

/// Scalar loops: y[n][o] = sum_i x[n][i] w[o][i] + b[o], accumulated in long double.
template <class T>
Matrix<T> reference_linear(const Matrix<T>& x, const Matrix<T>& w, const T* bias) {
  Matrix<T> y(x.rows(), w.rows());
  for (Index n = 0; n < x.rows(); ++n)
    for (Index o = 0; o < w.rows(); ++o) {
      long double acc = bias ? bias[o] : 0;
      for (Index i = 0; i < x.cols(); ++i) acc += static_cast<long double>(x(n, i)) * w(o, i);
      y(n, o) = static_cast<T>(acc);
    }
  return y;
}

/// Scalar loops: c = a b.
template <class T>
Matrix<T> reference_matmul(const Matrix<T>& a, const Matrix<T>& b) {
  Matrix<T> c(a.rows(), b.cols());
  for (Index i = 0; i < a.rows(); ++i)
    for (Index j = 0; j < b.cols(); ++j) {
      long double acc = 0;
      for (Index k = 0; k < a.cols(); ++k) acc += static_cast<long double>(a(i, k)) * b(k, j);
      c(i, j) = static_cast<T>(acc);
    }
  return c;
}

/// Tensors of a golden file written by tools/reference (name rows cols, then the values).
class Golden {
 public:
  explicit Golden(const std::string& file) {
    const std::string path = std::string(WEGEFT_GOLDEN_DIR) + "/" + file;
    std::ifstream in(path);
    REQUIRE(in.good());
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty() || line[0] == '#') continue;
      std::istringstream head(line);
      std::string name;
      Index rows = 0, cols = 0;
      head >> name >> rows >> cols;
      REQUIRE((rows > 0 && cols > 0));
      Matrix<double> m(rows, cols);
      std::string token;  // strtod also reads "inf" and "nan", which operator>> does not
      for (Index i = 0; i < rows; ++i)
        for (Index j = 0; j < cols; ++j) {
          REQUIRE(static_cast<bool>(in >> token));
          char* end = nullptr;
          m(i, j) = std::strtod(token.c_str(), &end);
          REQUIRE(*end == '\0');
        }
      m_tensors.emplace(name, std::move(m));
    }
    REQUIRE(!m_tensors.empty());
  }
  bool has(const std::string& name) const { return m_tensors.count(name) > 0; }
  Index count_prefix(const std::string& prefix) const {
    Index n = 0;
    for (const auto& [name, t] : m_tensors) n += name.rfind(prefix, 0) == 0;
    return n;
  }
  template <class T = double>
  Matrix<T> get(const std::string& name) const {
    INFO("golden tensor " << name);
    const auto it = m_tensors.find(name);
    REQUIRE(it != m_tensors.end());
    return it->second.template cast<T>();
  }

 private:
  std::map<std::string, Matrix<double>> m_tensors;
};

}  // namespace wt

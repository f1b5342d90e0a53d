// Cross-entropy over logits with an ignore index, mean over the counted rows (PyTorch's
// F.cross_entropy with reduction="mean").
//
// Each row is vectorised in the compute type (Eigen's max, exp and sum packets): one pass for
// the row's maximum, one that writes exp(x - max) (into dlogits when the gradient is wanted) while
// summing it in blocks, and one that scales it to the gradient. The sums of blocks, the logarithm
// and the mean are in double. cross_entropy_forward_backward does loss and gradient in those three
// passes, where a forward followed by a backward reads every row five times and takes exp twice.
// Rows split over OpenMP threads as the other kernels do (kernels/cpu/threads.hpp); each row's
// loss is summed in row order, so the result does not depend on the thread count.
// kernels/cpu/reference.hpp holds the element-at-a-time double versions used as the test oracle.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/threads.hpp"

namespace wegeft {

inline constexpr std::int32_t kIgnoreIndex = -100;

namespace detail {

/// Checks every target (in [0, vocab) or ignore_index) and returns the number of counted rows.
inline Index count_targets(const std::int32_t* targets, Index n, Index vocab,
                           std::int32_t ignore_index) {
  Index count = 0;
  for (Index i = 0; i < n; ++i) {
    const std::int32_t t = targets[i];
    if (t == ignore_index) continue;
    WEGEFT_CHECK(t >= 0 && t < vocab, "target " << t << " at row " << i << " is outside [0, "
                                                << vocab << ") and is not the ignore index "
                                                << ignore_index);
    ++count;
  }
  return count;
}

/// For one row x [V]: returns max(x) and sum(exp(x - max)); writes exp(x - max) to e if given.
/// The exponentials are summed in the compute type over blocks of 1024 and the blocks in double.
template <class T>
std::pair<T, double> row_softmax_parts(const T* x, Index vocab, T* e) {
  using Row = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;
  using RowOut = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
  constexpr Index kBlock = 1024;
  const T max = Row(x, vocab).maxCoeff();
  double sum = 0;
  for (Index j = 0; j < vocab; j += kBlock) {
    const Index len = std::min(kBlock, vocab - j);
    if (e != nullptr) {
      RowOut out(e + j, len);
      out = (Row(x + j, len) - max).exp();
      sum += static_cast<double>(out.sum());
    } else {
      sum += static_cast<double>((Row(x + j, len) - max).exp().sum());
    }
  }
  return {max, sum};
}

/// Loss and (if dlogits is given) gradient for all rows; returns the mean over counted rows. The
/// gradient is scaled by dloss / divisor, or dloss / (counted rows) when divisor < 0.
template <class T>
double cross_entropy_rows(T* dlogits, T* losses, const T* logits, const std::int32_t* targets,
                          Index n, Index vocab, double dloss, Index divisor,
                          std::int32_t ignore_index, Index* counted) {
  WEGEFT_CHECK(n >= 0 && vocab > 0,
               "cross-entropy over " << n << " rows of " << vocab << " logits");
  const Index count = count_targets(targets, n, vocab, ignore_index);
  if (counted) *counted = count;
  if (divisor < 0) divisor = count;
  const double scale = divisor ? dloss / static_cast<double>(divisor) : 0.0;
  // Per-row losses in a per-thread buffer that grows to the largest n seen (no allocation after);
  // the worker threads reach it through this thread's pointer.
  thread_local std::vector<double> row_buffer;
  row_buffer.assign(static_cast<std::size_t>(n), 0.0);
  double* const row_loss = row_buffer.data();
  const auto rows = [&](Index, Index begin, Index end) {
    for (Index i = begin; i < end; ++i) {
      T* drow = dlogits ? dlogits + i * vocab : nullptr;
      const std::int32_t t = targets[i];
      if (t == ignore_index) {
        if (drow) std::fill(drow, drow + vocab, T(0));
        if (losses) losses[i] = T(0);
        continue;
      }
      const T* row = logits + i * vocab;
      const double target_logit = row[t];  // before drow, which may alias row, is written
      const auto [max, sum] = row_softmax_parts(row, vocab, drow);
      const double loss = std::log(sum) + static_cast<double>(max) - target_logit;
      row_loss[i] = loss;
      if (losses) losses[i] = static_cast<T>(loss);
      if (drow) {
        Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>(drow, vocab) *= static_cast<T>(scale / sum);
        drow[t] -= static_cast<T>(scale);
      }
    }
  };
  const int threads = kernel_threads(n * vocab);
  if (threads > 1)
    for_each_part(n, 1, threads, rows);
  else
    rows(0, 0, n);
  double total = 0;
  for (Index i = 0; i < n; ++i) total += row_loss[i];
  return count ? total / static_cast<double>(count) : 0.0;
}

}  // namespace detail

}  // namespace wegeft

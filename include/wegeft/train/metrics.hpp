// Classification scores from a confusion matrix: accuracy and macro-averaged F1 (as scikit-learn's
// f1_score(average="macro"): the unweighted mean of each class's F1 over the classes that occur as
// a true or a predicted label; a class with no true and no predicted example does not count).
//
//   wegeft::Confusion c(4);                 // 4 classes
//   c.add(true_label, predicted_label);     // per example
//   double acc = c.accuracy(), f1 = c.macro_f1();
#pragma once

#include <cstddef>
#include <limits>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

class Confusion {
 public:
  explicit Confusion(Index classes)
      : m_classes(classes), m_counts(static_cast<std::size_t>(classes * classes), 0) {
    WEGEFT_CHECK(classes >= 1, "a confusion matrix needs at least one class, got " << classes);
  }

  /// One example: its true class and the predicted one, both in [0, classes).
  void add(Index truth, Index predicted) {
    WEGEFT_CHECK(truth >= 0 && truth < m_classes && predicted >= 0 && predicted < m_classes,
                 "class " << truth << " / " << predicted << " is outside [0, " << m_classes << ")");
    ++m_counts[static_cast<std::size_t>(truth * m_classes + predicted)];
    ++m_total;
  }

  Index classes() const { return m_classes; }
  std::size_t total() const { return m_total; }
  /// Examples of true class `t` predicted as `p`.
  std::size_t count(Index t, Index p) const {
    return m_counts[static_cast<std::size_t>(t * m_classes + p)];
  }

  /// Fraction of examples predicted correctly (NaN when there are none).
  double accuracy() const {
    std::size_t right = 0;
    for (Index c = 0; c < m_classes; ++c) right += count(c, c);
    return m_total ? double(right) / double(m_total) : nan();
  }

  /// F1 of class `c`: 2 TP / (2 TP + FP + FN); 0 when it has true or predicted examples but no
  /// true positive, NaN when it has neither.
  double f1(Index c) const {
    std::size_t truth = 0, predicted = 0;
    for (Index k = 0; k < m_classes; ++k) {
      truth += count(c, k);
      predicted += count(k, c);
    }
    if (truth + predicted == 0) return nan();
    return 2.0 * double(count(c, c)) / double(truth + predicted);
  }

  /// Mean F1 over the classes that occur (as a true or a predicted label); NaN when empty.
  double macro_f1() const {
    double sum = 0;
    Index present = 0;
    for (Index c = 0; c < m_classes; ++c) {
      const double f = f1(c);
      if (f == f) sum += f, ++present;
    }
    return present ? sum / double(present) : nan();
  }

 private:
  static double nan() { return std::numeric_limits<double>::quiet_NaN(); }
  Index m_classes;
  std::vector<std::size_t> m_counts;  // [classes, classes], row = truth
  std::size_t m_total = 0;
};

}  // namespace wegeft

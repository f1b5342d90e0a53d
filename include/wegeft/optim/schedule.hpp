// Learning-rate schedules with linear warmup, as Hugging Face transformers' get_*_schedule_with_warmup:
// the multiplier of the base learning rate at optimizer step `step` (0-based).
//   constant: step < warmup ? step / warmup : 1
//   linear:   step < warmup ? step / warmup : max(0, (total - step) / (total - warmup))
//   cosine:   step < warmup ? step / warmup : max(0, 0.5 (1 + cos(pi * progress))),
//             progress = (step - warmup) / (total - warmup)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "wegeft/core/error.hpp"

namespace wegeft {

enum class ScheduleKind { constant, linear, cosine };

struct Schedule {
  ScheduleKind kind = ScheduleKind::constant;
  std::int64_t warmup_steps = 0;
  std::int64_t total_steps = 0;  // needed by linear and cosine

  double multiplier(std::int64_t step) const {
    WEGEFT_CHECK(warmup_steps >= 0 && step >= 0,
                 "schedule got step " << step << " and warmup " << warmup_steps);
    WEGEFT_CHECK(kind == ScheduleKind::constant || total_steps > 0,
                 "linear and cosine schedules need total_steps > 0");
    if (step < warmup_steps)
      return static_cast<double>(step) /
             static_cast<double>(std::max<std::int64_t>(1, warmup_steps));
    if (kind == ScheduleKind::constant) return 1.0;
    const double span = static_cast<double>(std::max<std::int64_t>(1, total_steps - warmup_steps));
    if (kind == ScheduleKind::linear)
      return std::max(0.0, static_cast<double>(total_steps - step) / span);
    const double progress = static_cast<double>(step - warmup_steps) / span;
    return std::max(0.0, 0.5 * (1.0 + std::cos(std::numbers::pi * progress)));
  }
};

}  // namespace wegeft

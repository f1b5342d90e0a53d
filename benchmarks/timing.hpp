// Timing helpers of the benchmarks: the median wall time of repeated calls, and the process's
// peak resident memory.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <vector>

namespace wegeft_bench {

/// Calls f() warmup + rounds times; the median seconds of the last `rounds` calls.
template <class F>
double median_seconds(int warmup, int rounds, F&& f) {
  std::vector<double> times;
  for (int r = 0; r < warmup + rounds; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    if (r >= warmup)
      times.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

/// The peak resident memory of this process so far, MiB.
inline double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<double>(ru.ru_maxrss) / 1024.0;
}

}  // namespace wegeft_bench

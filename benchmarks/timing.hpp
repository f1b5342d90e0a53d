// Timing helpers of the benchmarks: the median wall time of repeated calls, and the process's
// peak resident memory.
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <wegeft/kernels/cpu/attention.hpp>

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

/// The attention-kernel argument of the model benchmarks: automatic (the model's default), flash
/// or probabilities; anything else exits with a message.
inline wegeft::AttentionKernel attention_kernel_arg(const char* bench, const char* arg) {
  if (std::strcmp(arg, "automatic") == 0) return wegeft::AttentionKernel::automatic;
  if (std::strcmp(arg, "flash") == 0) return wegeft::AttentionKernel::flash;
  if (std::strcmp(arg, "probabilities") == 0) return wegeft::AttentionKernel::probabilities;
  std::fprintf(stderr, "%s: attention must be automatic, flash or probabilities, got '%s'\n", bench,
               arg);
  std::exit(2);
}

inline const char* attention_kernel_name(wegeft::AttentionKernel k) {
  return k == wegeft::AttentionKernel::flash           ? "flash"
         : k == wegeft::AttentionKernel::probabilities ? "probabilities"
                                                       : "automatic";
}

}  // namespace wegeft_bench

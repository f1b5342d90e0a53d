// The rank-r kernels (kernels/cpu/rank_r.hpp) against the Eigen/BLAS products they replace, on
// the adapter shapes of the layer-step benchmark (N = 2048 rows of width 768); then cross-entropy
// (loss and gradient over 256 rows of a 32000-word vocabulary) and the AdamW update (1M
// parameters) against their element-at-a-time double loops (kernels/cpu/reference.hpp). Measured
// in the same run, alternating, medians. One thread unless WEGEFT_THREADS says otherwise.
//
//   build/release/benchmarks/bench_kernels [rounds]
#include <wegeft/kernels/cpu/reference.hpp>
#include <wegeft/wegeft.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <span>
#include <vector>

using wegeft::Index;
using wegeft::Matrix;
using T = float;

namespace {

double median_ms(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return 1e3 * v[v.size() / 2];
}

/// Median times of `ours` and `theirs`, run alternately `rounds` times each.
std::pair<double, double> race(int rounds, const std::function<void()>& ours,
                               const std::function<void()>& theirs) {
  std::vector<double> a, b;
  auto time = [](const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  ours();
  theirs();
  for (int i = 0; i < rounds; ++i) {
    a.push_back(time(ours));
    b.push_back(time(theirs));
  }
  return {median_ms(a), median_ms(b)};
}

void report(const char* what, Index r, std::pair<double, double> t) {
  std::printf("%-46s r=%-3ld %9.3f %9.3f %8.2fx\n", what, long(r), t.first, t.second,
              t.second / t.first);
}

}  // namespace

int main(int argc, char** argv) {
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 31;
  const int threads = std::getenv("WEGEFT_THREADS") ? std::atoi(std::getenv("WEGEFT_THREADS")) : 1;
  wegeft::set_threads(threads);
  const Index n = 2048, d = 768;
  wegeft::Rng rng(1);
  Matrix<T> x(n, d), y(n, d);
  wegeft::Vector<T> b(d);
  wegeft::fill_uniform(x, rng, T(-1), T(1));
  wegeft::fill_uniform(b, rng, T(-1), T(1));
  std::printf("rank-r kernels, float32, N = %ld, d = %ld; backend: %s\n", long(n), long(d),
              wegeft::gemm_backend().c_str());
  std::printf("%-46s %-5s %9s %9s %9s\n", "kernel (vs the product it replaces)", "rank", "ours ms",
              "theirs ms", "speedup");
  for (Index r : {4, 8, 16, 64}) {
    Matrix<T> a(r, d), u(n, r), g(n, r), m(d, r), G(d, r), dA(r, d);
    wegeft::fill_uniform(a, rng, T(-1), T(1));
    wegeft::fill_uniform(u, rng, T(-1), T(1));
    wegeft::fill_uniform(m, rng, T(-1), T(1));
    G.setZero();
    dA.setZero();
    report("u = X A^T (rank_r_project vs GEMM)", r,
           race(
               rounds, [&] { wegeft::rank_r_project(u.data(), x.data(), d, a.data(), n, d, r); },
               [&] { u.noalias() = x * a.transpose(); }));
    report("dA += g^T X (rank_r_reduce vs GEMM)", r,
           race(
               rounds, [&] { wegeft::rank_r_reduce(dA.data(), u.data(), x.data(), d, n, d, r); },
               [&] { dA.noalias() += u.transpose() * x; }));
    report("g = Y M, G += Y^T U (rank_r_pass vs 2 GEMMs)", r,
           race(
               rounds,
               [&] {
                 wegeft::rank_r_pass(g.data(), G.data(), x.data(), m.data(), u.data(), n, d, r, d);
               },
               [&] {
                 g.noalias() = x * m;
                 G.noalias() += x.transpose() * u;
               }));
    report("Y = 1 b^T + U Bt (rank_r_expand vs fill+GEMM)", r,
           race(
               rounds,
               [&] {
                 wegeft::rank_r_expand(y.data(), d, static_cast<const T*>(nullptr), 0, b.data(),
                                       u.data(), a.data(), n, d, r);
               },
               [&] {
                 y.rowwise() = b.transpose();
                 y.noalias() += u * a;
               }));
  }
  {
    const Index rows = 256, vocab = 32000;
    Matrix<T> logits(rows, vocab), dlogits(rows, vocab);
    wegeft::fill_uniform(logits, rng, T(-8), T(8));
    std::vector<std::int32_t> targets(static_cast<std::size_t>(rows));
    for (Index i = 0; i < rows; ++i)
      targets[std::size_t(i)] = static_cast<std::int32_t>(i * 7919 % vocab);
    const auto t = race(
        std::max(3, rounds / 4),
        [&] {
          wegeft::cross_entropy_forward_backward(dlogits.data(), static_cast<T*>(nullptr),
                                                 logits.data(), targets.data(), rows, vocab);
        },
        [&] {
          Index counted = 0;
          wegeft::reference::cross_entropy_forward(static_cast<T*>(nullptr), logits.data(),
                                                   targets.data(), rows, vocab,
                                                   wegeft::kIgnoreIndex, &counted);
          wegeft::reference::cross_entropy_backward(dlogits.data(), logits.data(), targets.data(),
                                                    rows, vocab, counted, 1.0,
                                                    wegeft::kIgnoreIndex);
        });
    std::printf("%-52s %9.3f %9.3f %8.2fx\n",
                "cross-entropy loss+grad 256 x 32000 (vs double loops)", t.first, t.second,
                t.second / t.first);
  }
  {
    const Index np = Index(1) << 20;
    std::vector<T> p(static_cast<std::size_t>(np)), g(p.size()), q(p.size()), m(p.size(), T(0)),
        v(p.size(), T(0));
    for (std::size_t i = 0; i < p.size(); ++i) {
      p[i] = q[i] = rng.uniform(T(-1), T(1));
      g[i] = rng.uniform(T(-1), T(1));
    }
    wegeft::AdamW<T> opt({.lr = 1e-6});
    std::int64_t step = 0;
    const auto t = race(
        rounds, [&] { opt.step(std::span<T>(p), std::span<const T>(g)); },
        [&] {
          wegeft::reference::adamw_step(q.data(), m.data(), v.data(), g.data(), np, 1e-6, 0.9,
                                        0.999, 1e-8, 0.01, ++step);
        });
    std::printf("%-52s %9.3f %9.3f %8.2fx\n", "AdamW update, 1M parameters (vs double loop)",
                t.first, t.second, t.second / t.first);
  }
  return 0;
}

// Fused SIMD kernels for the rank-r side products of the adapters.
//
// rank_r_pass streams a large row-major [N, d] tensor Y once and, for a rank r, computes both
//   g[N, r]  = Y M          (M [d, r]: the gradient of the r-dimensional bottleneck)
//   G[d, r] += Y^T U        (U [N, r]: the gradient of a [d, r] adapter factor)
// Rows are taken four at a time so each element of Y is loaded once; the rank is padded to whole
// SIMD registers and fixed at compile time (at most 64), so the r-wide inner loops are a few
// register operations. Two skinny GEMMs would stream Y twice and run at a fraction of the vector
// width. Larger ranks fall back to Eigen products; the smallest ones run as the two kernels
// below, which keep whole registers busy where a rank-wide register would be mostly empty.
//
// rank_r_expand writes a large [N, d] tensor once as a rank-r product plus an optional row
// (a bias) and an optional same-shape tensor:
//   Y = X + 1 b^T + U Bt     (U [N, r], Bt [r, d]; X and b may be absent)
// It is how an adapter adds its low-rank term without an extra pass: the adapter term (with the
// bias) is written first and the frozen layer's GEMM then accumulates onto it (beta = 1), taking
// the place of the zero-fill that a GEMM into a fresh output does anyway. With X = Y it updates Y
// in place.
//
// rank_r_project (u = X A^T) and rank_r_reduce (G += g^T X) are the two remaining skinny products
// of an adapter step, with r outputs per row of a large X: the first as r dot products per row
// (accumulated along the row, reduced at its end), the second as r x block accumulators swept
// down column blocks of X. A GEMM library runs these shapes at a third of the vector width.
//
// rank_r_project_expand (the forward's u = X A^T and Y = 1 b^T + u Bt) and rank_r_backward (the
// backward's g = dy M, G += dy^T U, H += g^T x and dx = g C) run an adapter step's side products
// as one threaded region each, on blocks of rows that stay in L2 across the products.
//
// Built with OpenMP (wegeft::openmp), each splits its rows or column blocks over Eigen's thread
// count once the tensor has 64K values or more (the policy is in kernels/cpu/threads.hpp).
//
// All four are written with Eigen's packet primitives, so they use whatever SIMD Eigen was compiled
// for (SSE/AVX2+FMA/AVX-512/NEON, or scalar). The scalar oracles are in kernels/cpu/reference.hpp.
#pragma once

#include <algorithm>
#include <array>
#include <vector>

#include "wegeft/core/parameters.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/threads.hpp"

// SIMD packet types carry alignment attributes that GCC drops (and warns about) when they are
// template arguments; only their size and operations are used here.
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wignored-attributes"
#endif

namespace wegeft {

namespace detail {

/// The kernels' padded copies of their small operands and partial sums, by use. Each is a
/// per-thread buffer that only grows, so a call of a shape seen before allocates nothing; the
/// pointer stays valid until the next request of the same use on this thread (worker threads of
/// the call read and write it through the caller's pointer).
enum class Scratch {
  left,
  right,
  input,
  rows_out,
  sums_g,
  sums_h,
  tail_rows,
  tail_in,
  tail_out,
  thread_sums,
  count
};
template <class T>
T* scratch(Scratch use, Index n, bool zero) {
  thread_local std::array<std::vector<T, AlignedAllocator<T, 64>>,
                          static_cast<std::size_t>(Scratch::count)>
      buffers;
  auto& b = buffers[static_cast<std::size_t>(use)];
  if (b.size() < static_cast<std::size_t>(n)) b.resize(static_cast<std::size_t>(n));
  if (zero) std::fill(b.begin(), b.begin() + n, T(0));
  return b.data();
}

template <class Packet>
inline constexpr int packet_size = Eigen::internal::unpacket_traits<Packet>::size;

/// Rows [0, n) of Y (row stride ldy), n a multiple of 4; the padded rank is NP packets: g = Y M
/// and G += Y^T U in one pass. M, U, g, G have rows of NP packets, aligned. Up to two packets of
/// rank the four rows of U stay in registers; above that they are reloaded from a copy on the
/// stack (reloading them from U itself, whose rows share address bits with G's, stalled loads
/// behind the stores to G: 3.5 ms instead of 1.8 at r = 64).
template <class T, class Packet, int NP>
void rank_r_rows(T* __restrict g, T* __restrict G, const T* __restrict Y, const T* __restrict M,
                 const T* __restrict U, Index n, Index d, Index ldy) {
  using namespace Eigen::internal;
  constexpr int L = packet_size<Packet>, R = NP * L;
  constexpr bool keep_u = NP <= 2;
  for (Index i = 0; i < n; i += 4) {
    Packet a[4][NP], u[4][keep_u ? NP : 1];
    alignas(64) T ul[keep_u ? 1 : 4 * R];  // the four rows of U, local to this tile
    for (int j = 0; j < 4; ++j)
      for (int p = 0; p < NP; ++p) {
        a[j][p] = pset1<Packet>(T(0));
        if constexpr (keep_u)
          u[j][p] = pload<Packet>(U + (i + j) * R + p * L);
        else
          pstore(ul + j * R + p * L, pload<Packet>(U + (i + j) * R + p * L));
      }
    const T* y = Y + i * ldy;
    const T* ui = ul;
    for (Index o = 0; o < d; ++o) {
      const Packet v0 = pset1<Packet>(y[o]), v1 = pset1<Packet>(y[ldy + o]);
      const Packet v2 = pset1<Packet>(y[2 * ldy + o]), v3 = pset1<Packet>(y[3 * ldy + o]);
      for (int p = 0; p < NP; ++p) {
        const Packet m = pload<Packet>(M + o * R + p * L);
        a[0][p] = pmadd(v0, m, a[0][p]);
        a[1][p] = pmadd(v1, m, a[1][p]);
        a[2][p] = pmadd(v2, m, a[2][p]);
        a[3][p] = pmadd(v3, m, a[3][p]);
        Packet gr = pload<Packet>(G + o * R + p * L);
        if constexpr (keep_u) {
          gr = pmadd(v0, u[0][p], gr);
          gr = pmadd(v1, u[1][p], gr);
          gr = pmadd(v2, u[2][p], gr);
          gr = pmadd(v3, u[3][p], gr);
        } else {
          gr = pmadd(v0, pload<Packet>(ui + p * L), gr);
          gr = pmadd(v1, pload<Packet>(ui + R + p * L), gr);
          gr = pmadd(v2, pload<Packet>(ui + 2 * R + p * L), gr);
          gr = pmadd(v3, pload<Packet>(ui + 3 * R + p * L), gr);
        }
        pstore(G + o * R + p * L, gr);
      }
    }
    for (int j = 0; j < 4; ++j)
      for (int p = 0; p < NP; ++p) pstore(g + (i + j) * R + p * L, a[j][p]);
  }
}

template <class T, class Packet, int NP>
void rank_r_padded(T* g, T* G, const T* Y, const T* M, const T* U, Index n, Index d, Index ldy) {
  constexpr Index R = NP * packet_size<Packet>;
  const Index whole = n / 4 * 4;
  const int threads = static_cast<int>(std::min<Index>(kernel_threads(n * d), whole / 4));
  if (threads <= 1) {
    rank_r_rows<T, Packet, NP>(g, G, Y, M, U, whole, d, ldy);
  } else {
    // Rows split across threads; each accumulates its own copy of G, summed at the end.
    T* parts = scratch<T>(Scratch::thread_sums, (threads - 1) * d * R, true);
    for_each_step(0, threads, 1, threads, [&](Index t) {
      const Index i0 = whole / 4 * t / threads * 4, i1 = whole / 4 * (t + 1) / threads * 4;
      T* Gt = t == 0 ? G : parts + (t - 1) * d * R;
      rank_r_rows<T, Packet, NP>(g + i0 * R, Gt, Y + i0 * ldy, M, U + i0 * R, i1 - i0, d, ldy);
    });
    for (int t = 1; t < threads; ++t)
      for (Index e = 0; e < d * R; ++e) G[e] += parts[(t - 1) * d * R + e];
  }
  if (whole == n) return;
  // The last 1-3 rows go through the same code on a zero-padded copy (zero rows add nothing).
  T* y = scratch<T>(Scratch::tail_rows, 4 * d, true);
  T* u = scratch<T>(Scratch::tail_in, 4 * R, true);
  T* gt = scratch<T>(Scratch::tail_out, 4 * R, false);
  for (Index i = whole; i < n; ++i) std::copy(Y + i * ldy, Y + i * ldy + d, y + (i - whole) * d);
  std::copy(U + whole * R, U + n * R, u);
  rank_r_rows<T, Packet, NP>(gt, G, y, M, u, 4, d, d);
  std::copy(gt, gt + (n - whole) * R, g + whole * R);
}

/// Rows [i0, i0 + 4), columns [c0, c0 + NP packets): Y = X + b + U Bt, Bt's rows `d` apart and
/// U's rows `ldu` apart.
template <class T, class Packet, int NP>
inline void expand_tile(T* Y, Index ldy, const T* X, Index ldx, const T* __restrict b,
                        const T* __restrict U, Index ldu, const T* __restrict Bt, Index d, Index r,
                        Index i0, Index c0) {
  using namespace Eigen::internal;
  constexpr int L = packet_size<Packet>;
  Packet a[4][NP];
  for (int p = 0; p < NP; ++p) {
    const Packet base = b != nullptr ? ploadu<Packet>(b + c0 + p * L) : pset1<Packet>(T(0));
    for (int j = 0; j < 4; ++j) a[j][p] = base;
  }
  if (X != nullptr)
    for (int j = 0; j < 4; ++j)
      for (int p = 0; p < NP; ++p)
        a[j][p] = padd(a[j][p], ploadu<Packet>(X + (i0 + j) * ldx + c0 + p * L));
  const T* u = U + i0 * ldu;
  for (Index k = 0; k < r; ++k) {
    const Packet u0 = pset1<Packet>(u[k]), u1 = pset1<Packet>(u[ldu + k]);
    const Packet u2 = pset1<Packet>(u[2 * ldu + k]), u3 = pset1<Packet>(u[3 * ldu + k]);
    for (int p = 0; p < NP; ++p) {
      const Packet bt = ploadu<Packet>(Bt + k * d + c0 + p * L);
      a[0][p] = pmadd(u0, bt, a[0][p]);
      a[1][p] = pmadd(u1, bt, a[1][p]);
      a[2][p] = pmadd(u2, bt, a[2][p]);
      a[3][p] = pmadd(u3, bt, a[3][p]);
    }
  }
  for (int j = 0; j < 4; ++j)
    for (int p = 0; p < NP; ++p) pstoreu(Y + (i0 + j) * ldy + c0 + p * L, a[j][p]);
}

}  // namespace detail

namespace detail {

/// Accumulator registers the rank-r kernels may hold: half the register file.
template <class Packet>
inline constexpr int max_accumulators = sizeof(Packet) >= 64 ? 16 : 8;

/// Ranks are taken KB at a time: 8 where 8 x 2 accumulators fit, else 4.
template <class Packet, int R>
inline constexpr int rank_block = (R % 8 == 0 && max_accumulators<Packet> >= 16) ? 8 : 4;

/// u[i0 .. i0 + ROWS, k0 .. k0 + KB) (rows of u are R apart) = X rows . A rows over columns
/// [0, dv) (a multiple of L); A's rows are `lda` apart. Columns [dv, d) are added by the caller.
template <class T, class Packet, int R, int KB, int ROWS>
inline void project_rows(T* u, const T* X, Index ldx, const T* __restrict A, Index lda, Index dv,
                         Index i0, int k0) {
  using namespace Eigen::internal;
  constexpr int L = packet_size<Packet>;
  Packet acc[ROWS][KB];
  for (int j = 0; j < ROWS; ++j)
    for (int k = 0; k < KB; ++k) acc[j][k] = pset1<Packet>(T(0));
  for (Index c = 0; c < dv; c += L) {
    Packet xv[ROWS];
    for (int j = 0; j < ROWS; ++j) xv[j] = ploadu<Packet>(X + (i0 + j) * ldx + c);
    for (int k = 0; k < KB; ++k) {
      const Packet a = ploadu<Packet>(A + (k0 + k) * lda + c);
      for (int j = 0; j < ROWS; ++j) acc[j][k] = pmadd(xv[j], a, acc[j][k]);
    }
  }
  for (int j = 0; j < ROWS; ++j)
    for (int k = 0; k < KB; ++k) u[(i0 + j) * R + k0 + k] = predux(acc[j][k]);
}

template <class T, class Packet, int R>
void project_padded(T* u, const T* X, Index ldx, const T* A, Index n, Index d, int threads) {
  constexpr int L = packet_size<Packet>, KB = rank_block<Packet, R>;
  constexpr int ROWS = max_accumulators<Packet> / KB;
  const Index dv = d / L * L, whole = n / ROWS * ROWS;
  // Chunks of rows (in L2) swept once per rank block, so the block's rows of A stay in L1.
  constexpr Index chunk = 16 * ROWS;
  auto rows = [=](Index i0) {
    for (int k0 = 0; k0 < R; k0 += KB)
      for (Index i = i0; i < std::min(whole, i0 + chunk); i += ROWS)
        project_rows<T, Packet, R, KB, ROWS>(u, X, ldx, A, d, dv, i, k0);
  };
  for_each_step(0, whole, chunk, threads, rows);
  for (Index i = whole; i < n; ++i)
    for (int k0 = 0; k0 < R; k0 += KB)
      project_rows<T, Packet, R, KB, 1>(u, X, ldx, A, d, dv, i, k0);
  if (dv < d)
    for (Index i = 0; i < n; ++i)
      for (int k = 0; k < R; ++k) {
        T acc = u[i * R + k];
        for (Index c = dv; c < d; ++c) acc += X[i * ldx + c] * A[k * d + c];
        u[i * R + k] = acc;
      }
}

/// G[k0 .. k0 + KB, c0 .. c0 + CP packets) += g^T X over all n rows; g's rows are R apart.
template <class T, class Packet, int R, int KB, int CP>
inline void reduce_block(T* G, Index ldg, const T* __restrict g, const T* X, Index ldx, Index n,
                         Index c0, int k0) {
  using namespace Eigen::internal;
  constexpr int L = packet_size<Packet>;
  Packet acc[KB][CP];
  for (int k = 0; k < KB; ++k)
    for (int p = 0; p < CP; ++p) acc[k][p] = pset1<Packet>(T(0));
  for (Index i = 0; i < n; ++i) {
    Packet xv[CP];
    for (int p = 0; p < CP; ++p) xv[p] = ploadu<Packet>(X + i * ldx + c0 + p * L);
    for (int k = 0; k < KB; ++k) {
      const Packet gk = pset1<Packet>(g[i * R + k0 + k]);
      for (int p = 0; p < CP; ++p) acc[k][p] = pmadd(gk, xv[p], acc[k][p]);
    }
  }
  for (int k = 0; k < KB; ++k)
    for (int p = 0; p < CP; ++p) {
      T* dst = G + (k0 + k) * ldg + c0 + p * L;
      pstoreu(dst, padd(ploadu<Packet>(dst), acc[k][p]));
    }
}

template <class T, class Packet, int R>
void reduce_padded(T* G, const T* g, const T* X, Index ldx, Index n, Index d, int threads) {
  constexpr int L = packet_size<Packet>, KB = rank_block<Packet, R>;
  constexpr int CP = max_accumulators<Packet> / KB;
  const Index whole = d / (CP * L) * (CP * L), dv = d / L * L;
  auto columns = [=](Index c) {
    for (int k0 = 0; k0 < R; k0 += KB)
      reduce_block<T, Packet, R, KB, CP>(G, d, g, X, ldx, n, c, k0);
  };
  for_each_step(0, whole, CP * L, threads, columns);
  for (Index c = whole; c < dv; c += L)
    for (int k0 = 0; k0 < R; k0 += KB) reduce_block<T, Packet, R, KB, 1>(G, d, g, X, ldx, n, c, k0);
  for (Index c = dv; c < d; ++c)
    for (int k = 0; k < R; ++k) {
      T acc = 0;
      for (Index i = 0; i < n; ++i) acc += g[i * R + k] * X[i * ldx + c];
      G[k * d + c] += acc;
    }
}

/// Calls f(std::integral_constant<int, R>) with the rank padded to what the kernels take: 4, or
/// a multiple of 8 where rank blocks of 8 fit (AVX-512), else of 4.
template <class T, class F>
void with_padded_rank(Index r, F&& f) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  if (r <= 4) return f(std::integral_constant<int, 4>{});
  if (r <= 8) return f(std::integral_constant<int, 8>{});
  if constexpr (max_accumulators<Packet> >= 16) {
    f(std::integral_constant<int, 16>{});
  } else {
    if (r <= 12) return f(std::integral_constant<int, 12>{});
    f(std::integral_constant<int, 16>{});
  }
}

}  // namespace detail

/// The largest rank that rank_r_project and rank_r_reduce handle themselves (16 with 32 vector
/// registers, else 8); above it they use Eigen (or BLAS) products, which are efficient once the
/// inner dimension is that wide.
template <class T>
inline constexpr Index max_project_rank =
    detail::max_accumulators<typename Eigen::internal::packet_traits<T>::type> >= 16 ? 16 : 8;

/// u [N, r] = X [N, d] A^T (A [r, d]), overwriting u. X's rows are `ldx` apart; u and A are
/// contiguous. Each row of X is read once for all r outputs (dot products along d, reduced at
/// the end of the row), where a GEMM with r output columns runs at a fraction of the vector width.
template <class T>
void rank_r_project(T* u, const T* X, Index ldx, const T* A, Index n, Index d, Index r) {
  if (r > max_project_rank<T> || n == 0) {
    const Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> x(X, n, d,
                                                                 Eigen::OuterStride<>(ldx));
    MatrixMap<T>(u, n, r).noalias() = x * ConstMatrixMap<T>(A, r, d).transpose();
    return;
  }
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  detail::with_padded_rank<T>(r, [&](auto rp) {
    constexpr int R = decltype(rp)::value;
    T* ap = detail::scratch<T>(detail::Scratch::left, R * d, true);
    T* up = detail::scratch<T>(detail::Scratch::rows_out, n * R, false);
    std::copy(A, A + r * d, ap);
    detail::project_padded<T, Packet, R>(up, X, ldx, ap, n, d, detail::kernel_threads(n * d));
    for (Index i = 0; i < n; ++i) std::copy(up + i * R, up + i * R + r, u + i * r);
  });
}

/// G [r, d] += g^T X (g [N, r], X [N, d]). X's rows are `ldx` apart; G and g are contiguous.
/// Column blocks of X are swept down all rows with the r x block accumulators in registers.
template <class T>
void rank_r_reduce(T* G, const T* g, const T* X, Index ldx, Index n, Index d, Index r) {
  if (r > max_project_rank<T> || n == 0) {
    const Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> x(X, n, d,
                                                                 Eigen::OuterStride<>(ldx));
    MatrixMap<T>(G, r, d).noalias() += ConstMatrixMap<T>(g, n, r).transpose() * x;
    return;
  }
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  detail::with_padded_rank<T>(r, [&](auto rp) {
    constexpr int R = decltype(rp)::value;
    T* gp = detail::scratch<T>(detail::Scratch::input, n * R, true);
    T* Gp = detail::scratch<T>(detail::Scratch::sums_g, R * d, true);
    for (Index i = 0; i < n; ++i) std::copy(g + i * r, g + (i + 1) * r, gp + i * R);
    detail::reduce_padded<T, Packet, R>(Gp, gp, X, ldx, n, d, detail::kernel_threads(n * d));
    for (Index k = 0; k < r; ++k)
      for (Index c = 0; c < d; ++c) G[k * d + c] += Gp[k * d + c];
  });
}

namespace detail {

/// rank_r_expand's kernel path, U's rows `ldu` apart, column blocks split over `threads`.
template <class T>
void expand_range(T* Y, Index ldy, const T* X, Index ldx, const T* b, const T* U, Index ldu,
                  const T* Bt, Index n, Index d, Index r, int threads) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  constexpr Index L = packet_size<Packet>;
  // Tiles of 4 rows by NP registers: 4 x 4 accumulators with 32 vector registers, else 4 x 2.
  constexpr int NP = max_accumulators<Packet> >= 16 ? 4 : 2;
  constexpr Index C = NP * L;
  const Index whole_rows = n / 4 * 4, whole_cols = d / C * C, whole_packets = d / L * L;
  // Column blocks outside, rows inside: Bt's [r, C] slice stays in L1 while every row uses it.
  auto columns = [=](Index c) {
    for (Index i = 0; i < whole_rows; i += 4)
      expand_tile<T, Packet, NP>(Y, ldy, X, ldx, b, U, ldu, Bt, d, r, i, c);
  };
  for_each_step(0, whole_cols, C, threads, columns);
  for (Index c = whole_cols; c < whole_packets; c += L)  // single registers for what is left
    for (Index i = 0; i < whole_rows; i += 4)
      expand_tile<T, Packet, 1>(Y, ldy, X, ldx, b, U, ldu, Bt, d, r, i, c);
  // Edges: plain loops (fewer than L columns of every row, at most 3 rows).
  auto edge = [&](Index i, Index c) {
    T acc = b != nullptr ? b[c] : T(0);
    if (X != nullptr) acc += X[i * ldx + c];
    for (Index k = 0; k < r; ++k) acc += U[i * ldu + k] * Bt[k * d + c];
    Y[i * ldy + c] = acc;
  };
  for (Index i = 0; i < whole_rows; ++i)
    for (Index c = whole_packets; c < d; ++c) edge(i, c);
  for (Index i = whole_rows; i < n; ++i)
    for (Index c = 0; c < d; ++c) edge(i, c);
}

}  // namespace detail

/// The largest rank rank_r_expand handles itself; above it, a copy or fill and a GEMM (measured
/// at N = 2048, d = 768 on AVX-512: 0.277 against 0.295 ms at r = 16, 1.065 against 0.925 at 64).
template <class T>
inline constexpr Index max_expand_rank = max_project_rank<T>;

/// Y [N, d] = X [N, d] + 1 b^T + U [N, r] Bt [r, d], overwriting Y. X (row stride ldx) and b
/// may be null; X may equal Y (in place). Y's rows are `ldy` apart; U, Bt and b are contiguous.
/// One pass over Y (and X): tiles of four rows by four SIMD registers (two with 16 registers),
/// the rank loop inside.
/// Above max_expand_rank it writes X + b and lets a GEMM add U Bt.
template <class T>
void rank_r_expand(T* Y, Index ldy, const T* X, Index ldx, const T* b, const T* U, const T* Bt,
                   Index n, Index d, Index r) {
  if (r > max_expand_rank<T>) {  // wide enough for a GEMM to run well: Y = X + b, then Y += U Bt
    Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>> y(Y, n, d, Eigen::OuterStride<>(ldy));
    if (X != nullptr && X != Y)
      y = Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>>(X, n, d, Eigen::OuterStride<>(ldx));
    if (X == nullptr) y.setZero();
    if (b != nullptr) y.rowwise() += ConstVectorMap<T>(b, d).transpose();
    y.noalias() += ConstMatrixMap<T>(U, n, r) * ConstMatrixMap<T>(Bt, r, d);
    return;
  }
  detail::expand_range(Y, ldy, X, ldx, b, U, r, Bt, n, d, r, detail::kernel_threads(n * d));
}

/// The largest rank the fused kernels take; above it rank_r_pass uses Eigen products.
inline constexpr Index kMaxFusedRank = 64;

/// Up to this rank (8 with 32 vector registers, else 4) rank_r_pass runs as rank_r_project +
/// rank_r_reduce instead of one fused pass (measured: 0.31 instead of 0.52 ms at r = 8, N = 2048,
/// d = 768 on AVX-512; with AVX2 the split wins only up to r = 4).
template <class T>
inline constexpr Index max_split_rank = max_project_rank<T> / 2;

namespace detail {

/// Rows per block of split_backward: a block of Y and of X stays in L2 across its products.
inline Index split_block(Index d_out, Index d_in) {
  return std::clamp<Index>((Index(1) << 16) / std::max<Index>(std::max(d_out, d_in), 1) / 8 * 8, 16,
                           512);
}
/// Threads split_backward uses on its own.
inline int split_threads(Index n, Index d_out, Index d_in) {
  const Index block = split_block(d_out, d_in);
  return static_cast<int>(
      std::min<Index>(kernel_threads(n * std::max(d_out, d_in)), (n + block - 1) / block));
}

/// The driver of a call that runs its rows itself (parts = 0 tells split_backward so).
struct OwnRows {
  template <class F>
  void operator()(F&&) const {}
};

/// rank_r_backward's kernel path (r <= max_split_rank), shared with rank_r_pass, which passes no
/// H, X, Z or C: g = Y M, G += Y^T U and, when given, H += g^T X and Z = g C, on blocks of rows
/// of Y and X small enough to stay in L2 across the products, split over the kernel threads.
template <class T, class Drive>
void split_backward(T* g, T* G, T* H, T* Z, Index ldz, const T* Y, Index ldy, const T* M,
                    const T* U, const T* X, Index ldx, const T* C, Index n, Index d_out, Index d_in,
                    Index r, int parts, Drive&& drive) {
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  with_padded_rank<T>(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
    T* mt = scratch<T>(Scratch::left, R * d_out, true);
    T* up = scratch<T>(Scratch::input, n * R, true);
    T* cp = scratch<T>(Scratch::right, R * d_in, true);
    T* gp = scratch<T>(Scratch::rows_out, n * R, false);
    for (Index o = 0; o < d_out; ++o)
      for (Index k = 0; k < r; ++k) mt[k * d_out + o] = M[o * r + k];
    for (Index i = 0; i < n; ++i) std::copy(U + i * r, U + (i + 1) * r, up + i * R);
    if (Z != nullptr) std::copy(C, C + r * d_in, cp);
    const Index block = split_block(d_out, d_in);
    const int threads = parts > 0 ? parts : split_threads(n, d_out, d_in);
    // per thread: an [R, d_out] sum for G (transposed) and an [R, d_in] sum for H
    T* Gt = scratch<T>(Scratch::sums_g, threads * R * d_out, true);
    T* Ht = scratch<T>(Scratch::sums_h, H != nullptr ? threads * R * d_in : 0, true);
    auto rows = [&](Index t, Index begin, Index end) {
      for (Index i0 = begin; i0 < end; i0 += block) {
        const Index len = std::min(block, end - i0);
        T* gb = gp + i0 * R;
        project_padded<T, Packet, R>(gb, Y + i0 * ldy, ldy, mt, len, d_out, 1);
        reduce_padded<T, Packet, R>(Gt + t * R * d_out, up + i0 * R, Y + i0 * ldy, ldy, len, d_out,
                                    1);
        if (H != nullptr)
          reduce_padded<T, Packet, R>(Ht + t * R * d_in, gb, X + i0 * ldx, ldx, len, d_in, 1);
        if (Z != nullptr)
          expand_range(Z + i0 * ldz, ldz, static_cast<const T*>(nullptr), 0,
                       static_cast<const T*>(nullptr), gb, Index(R), cp, len, d_in, Index(R), 1);
      }
    };
    if (parts > 0)
      drive(rows);
    else if (threads > 1)
      for_each_part(n, block, threads, rows);
    else
      rows(0, 0, n);
    for (Index i = 0; i < n; ++i) std::copy(gp + i * R, gp + i * R + r, g + i * r);
    for (int t = 0; t < threads; ++t) {
      for (Index o = 0; o < d_out; ++o)
        for (Index k = 0; k < r; ++k) G[o * r + k] += Gt[(t * R + k) * d_out + o];
      if (H != nullptr)
        for (Index k = 0; k < r; ++k)
          for (Index c = 0; c < d_in; ++c) H[k * d_in + c] += Ht[(t * R + k) * d_in + c];
    }
  });
}

}  // namespace detail

/// g [N, r] = Y [N, d] M [d, r] (overwritten) and G [d, r] += Y^T U [N, r], in one pass over Y.
/// All row-major; Y's rows are `ldy` apart (a view into a wider matrix), everything else is
/// contiguous.
template <class T>
void rank_r_pass(T* g, T* G, const T* Y, const T* M, const T* U, Index n, Index d, Index r,
                 Index ldy) {
  using Full = typename Eigen::internal::packet_traits<T>::type;
  using Half = typename Eigen::internal::packet_traits<T>::half;
  constexpr Index LF = detail::packet_size<Full>, LH = detail::packet_size<Half>;
  // Pad the rank to whole full packets (a packet count the switch below instantiates), except
  // that a rank that fits a half packet uses one (r = 8 runs on 8-wide registers, not half-empty
  // 16-wide ones).
  constexpr int counts[] = {1, 2, 3, 4, 6, 8, 12, 16};
  const Index need = (r + LF - 1) / LF;
  if (r > kMaxFusedRank || need > 16 || n == 0) {
    const Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> y(Y, n, d,
                                                                 Eigen::OuterStride<>(ldy));
    MatrixMap<T>(g, n, r).noalias() = y * ConstMatrixMap<T>(M, d, r);
    MatrixMap<T>(G, d, r).noalias() += y.transpose() * ConstMatrixMap<T>(U, n, r);
    return;
  }
  if (r <= max_split_rank<T>) {
    // Small ranks: the projection and reduction kernels, each at full vector width, beat one
    // fused pass whose rank-wide registers are mostly empty. They take Y in blocks of rows small
    // enough to stay in L2 between the two, so Y still comes from memory once.
    detail::split_backward<T>(g, G, nullptr, nullptr, 0, Y, ldy, M, U, nullptr, 0, nullptr, n, d, 0,
                              r, 0, detail::OwnRows{});
    return;
  }
  const int np = r <= LH ? 0 : *std::find_if(std::begin(counts), std::end(counts), [&](int c) {
    return c >= need;
  });
  const Index rp = np == 0 ? LH : np * LF;
  T* mp = detail::scratch<T>(detail::Scratch::left, d * rp, true);
  T* up = detail::scratch<T>(detail::Scratch::input, n * rp, true);
  T* gp = detail::scratch<T>(detail::Scratch::rows_out, n * rp, false);
  T* Gp = detail::scratch<T>(detail::Scratch::sums_g, d * rp, true);
  for (Index o = 0; o < d; ++o) std::copy(M + o * r, M + (o + 1) * r, mp + o * rp);
  for (Index i = 0; i < n; ++i) std::copy(U + i * r, U + (i + 1) * r, up + i * rp);
  auto run = [&](auto packet, auto count) {
    detail::rank_r_padded<T, decltype(packet), decltype(count)::value>(gp, Gp, Y, mp, up, n, d,
                                                                       ldy);
  };
  switch (np) {
    case 0:
      run(Half{}, std::integral_constant<int, 1>{});
      break;
    case 1:
      run(Full{}, std::integral_constant<int, 1>{});
      break;
    case 2:
      run(Full{}, std::integral_constant<int, 2>{});
      break;
    case 3:
      run(Full{}, std::integral_constant<int, 3>{});
      break;
    case 4:
      run(Full{}, std::integral_constant<int, 4>{});
      break;
    case 6:
      run(Full{}, std::integral_constant<int, 6>{});
      break;
    case 8:
      run(Full{}, std::integral_constant<int, 8>{});
      break;
    case 12:
      run(Full{}, std::integral_constant<int, 12>{});
      break;
    default:
      run(Full{}, std::integral_constant<int, 16>{});
      break;
  }
  for (Index i = 0; i < n; ++i) std::copy(gp + i * rp, gp + i * rp + r, g + i * r);
  for (Index o = 0; o < d; ++o)
    for (Index k = 0; k < r; ++k) G[o * r + k] += Gp[o * rp + k];
}

// An adapter step's rank-r side products in one threaded region each. Under
// OMP_WAIT_POLICY=passive every OpenMP region wakes a sleeping team (35-62 us on a 2-vCPU VM), so
// the forward's two kernels and the backward's three run as one row-parallel region each; on one
// thread they are the same loops as the separate calls.

/// u [N, r] = X A^T and Y [N, d_out] = 1 b^T + u Bt (b may be null), overwriting both; X is
/// [N, d_in] with rows `ldx` apart, Y's rows are `ldy` apart, A [r, d_in] and Bt [r, d_out]
/// contiguous. The forward of a rank-r adapter before its frozen GEMM accumulates onto Y.
///
/// With a driver (`parts` > 0): drive(rows) must call rows(part, i0, i1), part < parts, on blocks
/// of rows covering [0, N) once each, the blocks of one part in one thread, and may do more
/// around each call; a frozen product in bf16 that runs its own blocks of rows is such a driver
/// (FrozenLinear::accumulate_forward_around), so each block of X is read from memory once for both
/// products and each block of Y is written just before the GEMM accumulates onto it. drive is
/// called exactly once; where the kernels do not take the rank, every row is done before it, and
/// rows does nothing.
template <class T, class Drive>
void rank_r_project_expand(T* u, const T* X, Index ldx, const T* A, Index d_in, T* Y, Index ldy,
                           const T* b, const T* Bt, Index d_out, Index n, Index r, int parts,
                           Drive&& drive) {
  auto nothing = [](int, Index, Index) {};
  if (r > std::min(max_project_rank<T>, max_expand_rank<T>) || n == 0) {
    rank_r_project(u, X, ldx, A, n, d_in, r);
    rank_r_expand(Y, ldy, static_cast<const T*>(nullptr), 0, b, u, Bt, n, d_out, r);
    if (parts > 0) drive(nothing);
    return;
  }
  using Packet = typename Eigen::internal::packet_traits<T>::type;
  detail::with_padded_rank<T>(r, [&](auto rank) {
    constexpr int R = decltype(rank)::value;
    T* ap = detail::scratch<T>(detail::Scratch::left, R * d_in, true);
    T* btp = detail::scratch<T>(detail::Scratch::right, R * d_out, true);
    T* up = detail::scratch<T>(detail::Scratch::rows_out, n * R, false);
    std::copy(A, A + r * d_in, ap);
    std::copy(Bt, Bt + r * d_out, btp);  // zero rows beyond r: the padded ranks add nothing
    auto rows = [&](int, Index begin, Index end) {
      detail::project_padded<T, Packet, R>(up + begin * R, X + begin * ldx, ldx, ap, end - begin,
                                           d_in, 1);
      detail::expand_range(Y + begin * ldy, ldy, static_cast<const T*>(nullptr), 0, b,
                           up + begin * R, Index(R), btp, end - begin, d_out, Index(R), 1);
    };
    const int threads = detail::kernel_threads(n * std::max(d_in, d_out));
    if (parts > 0)
      drive(rows);
    else if (threads > 1)
      detail::for_each_part(n, 16, threads, rows);
    else
      rows(0, 0, n);
    for (Index i = 0; i < n; ++i) std::copy(up + i * R, up + i * R + r, u + i * r);
  });
}

template <class T>
void rank_r_project_expand(T* u, const T* X, Index ldx, const T* A, Index d_in, T* Y, Index ldy,
                           const T* b, const T* Bt, Index d_out, Index n, Index r) {
  rank_r_project_expand(u, X, ldx, A, d_in, Y, ldy, b, Bt, d_out, n, r, 0, detail::OwnRows{});
}

/// The backward of a rank-r adapter, given the output gradient Y = dy [N, d_out] (rows `ldy`
/// apart) and the input X = x [N, d_in] (rows `ldx` apart):
///   g [N, r] = Y M (overwritten),  G [d_out, r] += Y^T U,  H [r, d_in] += g^T X,
///   Z [N, d_in] = g C (overwritten; Z may be null, rows `ldz` apart),
/// with M [d_out, r], U [N, r], C [r, d_in] contiguous. Up to max_split_rank, one row-parallel
/// region over blocks of rows small enough for a block of Y and of X to stay in L2 while all
/// four products use them; above it, rank_r_pass, rank_r_reduce and rank_r_expand.
///
/// With a driver (`parts` > 0), as for rank_r_project_expand: drive(rows) runs the blocks of
/// rows (FrozenLinear::accumulate_backward_input_around, whose dy W then accumulates onto each
/// block of Z just written); G and H are summed per part and added once drive returns.
template <class T, class Drive>
void rank_r_backward(T* g, T* G, T* H, T* Z, Index ldz, const T* Y, Index ldy, const T* M,
                     const T* U, const T* X, Index ldx, const T* C, Index n, Index d_out,
                     Index d_in, Index r, int parts, Drive&& drive) {
  if (r > max_split_rank<T> || n == 0) {
    rank_r_pass(g, G, Y, M, U, n, d_out, r, ldy);
    rank_r_reduce(H, g, X, ldx, n, d_in, r);
    if (Z != nullptr)
      rank_r_expand(Z, ldz, static_cast<const T*>(nullptr), 0, static_cast<const T*>(nullptr), g, C,
                    n, d_in, r);
    if (parts > 0) drive([](int, Index, Index) {});
    return;
  }
  detail::split_backward(g, G, H, Z, ldz, Y, ldy, M, U, X, ldx, C, n, d_out, d_in, r, parts, drive);
}

template <class T>
void rank_r_backward(T* g, T* G, T* H, T* Z, Index ldz, const T* Y, Index ldy, const T* M,
                     const T* U, const T* X, Index ldx, const T* C, Index n, Index d_out,
                     Index d_in, Index r) {
  rank_r_backward(g, G, H, Z, ldz, Y, ldy, M, U, X, ldx, C, n, d_out, d_in, r, 0,
                  detail::OwnRows{});
}

}  // namespace wegeft

#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

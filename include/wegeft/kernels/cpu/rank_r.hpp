// Fused kernels for the rank-r side products of the adapters.
//
// rank_r_pass streams a large row-major [N, d] tensor Y once and, for a rank r, computes both
//   g[N, r]  = Y M          (M [d, r]: the gradient of the r-dimensional bottleneck)
//   G[d, r] += Y^T U        (U [N, r]: the gradient of a [d, r] adapter factor)
// Rows are taken four at a time so each element of Y is loaded once; the rank is a compile-time
// constant (r is padded up to a multiple of 16, at most 64), so the r-wide inner loops become
// whole vector registers. Two skinny GEMMs would stream Y twice and run at a fraction of the
// vector width. Larger ranks fall back to Eigen products. The scalar oracle is
// reference::rank_r_pass (kernels/cpu/reference.hpp).
#pragma once

#include <algorithm>
#include <vector>

#include "wegeft/core/parameters.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

namespace detail {

/// Rows [0, n) of Y (row stride ldy), n a multiple of 4, rank R (padded): g = Y M and
/// G += Y^T U in one pass.
template <class T, int R>
void rank_r_rows(T* __restrict g, T* __restrict G, const T* __restrict Y, const T* __restrict M,
                 const T* __restrict U, Index n, Index d, Index ldy) {
  for (Index i = 0; i < n; i += 4) {
    T a0[R] = {}, a1[R] = {}, a2[R] = {}, a3[R] = {};
    T u0[R], u1[R], u2[R], u3[R];
    for (int k = 0; k < R; ++k) {
      u0[k] = U[(i + 0) * R + k];
      u1[k] = U[(i + 1) * R + k];
      u2[k] = U[(i + 2) * R + k];
      u3[k] = U[(i + 3) * R + k];
    }
    const T* y0 = Y + i * ldy;
    const T* y1 = y0 + ldy;
    const T* y2 = y1 + ldy;
    const T* y3 = y2 + ldy;
    for (Index o = 0; o < d; ++o) {
      const T v0 = y0[o], v1 = y1[o], v2 = y2[o], v3 = y3[o];
      const T* m = M + o * R;
      T* gr = G + o * R;
      for (int k = 0; k < R; ++k) {
        a0[k] += v0 * m[k];
        a1[k] += v1 * m[k];
        a2[k] += v2 * m[k];
        a3[k] += v3 * m[k];
        gr[k] += v0 * u0[k] + v1 * u1[k] + v2 * u2[k] + v3 * u3[k];
      }
    }
    for (int k = 0; k < R; ++k) {
      g[(i + 0) * R + k] = a0[k];
      g[(i + 1) * R + k] = a1[k];
      g[(i + 2) * R + k] = a2[k];
      g[(i + 3) * R + k] = a3[k];
    }
  }
}

template <class T, int R>
void rank_r_padded(T* g, T* G, const T* Y, const T* M, const T* U, Index n, Index d, Index ldy) {
  const Index whole = n / 4 * 4;
  rank_r_rows<T, R>(g, G, Y, M, U, whole, d, ldy);
  if (whole == n) return;
  // The last 1-3 rows go through the same code on a zero-padded copy (zero rows add nothing).
  std::vector<T, AlignedAllocator<T, 64>> y(static_cast<std::size_t>(4 * d), T(0)),
      u(static_cast<std::size_t>(4 * R), T(0)), gt(static_cast<std::size_t>(4 * R));
  for (Index i = whole; i < n; ++i) std::copy(Y + i * ldy, Y + i * ldy + d, y.begin() + (i - whole) * d);
  std::copy(U + whole * R, U + n * R, u.begin());
  rank_r_rows<T, R>(gt.data(), G, y.data(), M, u.data(), 4, d, d);
  std::copy(gt.begin(), gt.begin() + (n - whole) * R, g + whole * R);
}

}  // namespace detail

/// The largest rank the fused kernels take; above it rank_r_pass uses Eigen products.
inline constexpr Index kMaxFusedRank = 64;

/// g [N, r] = Y [N, d] M [d, r] (overwritten) and G [d, r] += Y^T U [N, r], in one pass over Y.
/// All row-major; Y's rows are `ldy` apart (a view into a wider matrix), everything else is
/// contiguous.
template <class T>
void rank_r_pass(T* g, T* G, const T* Y, const T* M, const T* U, Index n, Index d, Index r, Index ldy) {
  if (r > kMaxFusedRank || n == 0) {
    const Eigen::Map<const Matrix<T>, 0, Eigen::OuterStride<>> y(Y, n, d, Eigen::OuterStride<>(ldy));
    MatrixMap<T>(g, n, r).noalias() = y * ConstMatrixMap<T>(M, d, r);
    MatrixMap<T>(G, d, r).noalias() += y.transpose() * ConstMatrixMap<T>(U, n, r);
    return;
  }
  const Index rp = (r + 15) / 16 * 16;  // padded rank; the padding columns are zero and dropped
  // 64-byte aligned, so each padded row of 16 floats is one cache line (and one AVX-512 register).
  using Buffer = std::vector<T, AlignedAllocator<T, 64>>;
  Buffer mp(static_cast<std::size_t>(d * rp), T(0)), up(static_cast<std::size_t>(n * rp), T(0));
  Buffer gp(static_cast<std::size_t>(n * rp)), Gp(static_cast<std::size_t>(d * rp), T(0));
  for (Index o = 0; o < d; ++o) std::copy(M + o * r, M + (o + 1) * r, mp.begin() + o * rp);
  for (Index i = 0; i < n; ++i) std::copy(U + i * r, U + (i + 1) * r, up.begin() + i * rp);
  switch (rp) {
    case 16: detail::rank_r_padded<T, 16>(gp.data(), Gp.data(), Y, mp.data(), up.data(), n, d, ldy); break;
    case 32: detail::rank_r_padded<T, 32>(gp.data(), Gp.data(), Y, mp.data(), up.data(), n, d, ldy); break;
    case 48: detail::rank_r_padded<T, 48>(gp.data(), Gp.data(), Y, mp.data(), up.data(), n, d, ldy); break;
    default: detail::rank_r_padded<T, 64>(gp.data(), Gp.data(), Y, mp.data(), up.data(), n, d, ldy); break;
  }
  for (Index i = 0; i < n; ++i) std::copy(gp.begin() + i * rp, gp.begin() + i * rp + r, g + i * r);
  for (Index o = 0; o < d; ++o)
    for (Index k = 0; k < r; ++k) G[o * r + k] += Gp[static_cast<std::size_t>(o * rp + k)];
}

}  // namespace wegeft

// Deterministic, seedable random numbers that are the same on every platform.
//
// The generator is Philox4x32-10 (Salmon et al., SC'11), a counter-based generator: block i of a
// stream is a pure function of (seed, stream, i), so a dropout mask can be regenerated in the
// backward pass, skipped ahead, or produced in parallel without storing it. Only integer
// arithmetic defines the bits, so every platform gets the same stream.
//
//   wegeft::Rng rng(42);            // seed 42, stream 0
//   double u = rng.uniform();       // [0, 1), 53 random bits
//   float a = rng.uniform(-1.f, 1.f);
//   double z = rng.normal();        // Box-Muller; see docs/core.md on its portability
//   auto saved = rng.state();  ...  rng.set_state(saved);   // exact replay
#pragma once

#include <array>
#include <cmath>
#include <cstdint>
#include <numbers>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// One Philox4x32-10 block: 4 random 32-bit words from a 128-bit counter and a 64-bit key.
inline std::array<std::uint32_t, 4> philox4x32_10(std::array<std::uint32_t, 4> ctr,
                                                  std::array<std::uint32_t, 2> key) {
  constexpr std::uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr std::uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
  for (int round = 0; round < 10; ++round) {
    const std::uint64_t p0 = std::uint64_t{kMul0} * ctr[0];
    const std::uint64_t p1 = std::uint64_t{kMul1} * ctr[2];
    ctr = {static_cast<std::uint32_t>(p1 >> 32) ^ ctr[1] ^ key[0], static_cast<std::uint32_t>(p1),
           static_cast<std::uint32_t>(p0 >> 32) ^ ctr[3] ^ key[1], static_cast<std::uint32_t>(p0)};
    key[0] += kWeyl0;
    key[1] += kWeyl1;
  }
  return ctr;
}

/// Block `block` of stream `stream` under `seed`.
inline std::array<std::uint32_t, 4> philox_block(std::uint64_t seed, std::uint64_t stream,
                                                 std::uint64_t block) {
  return philox4x32_10(
      {static_cast<std::uint32_t>(block), static_cast<std::uint32_t>(block >> 32),
       static_cast<std::uint32_t>(stream), static_cast<std::uint32_t>(stream >> 32)},
      {static_cast<std::uint32_t>(seed), static_cast<std::uint32_t>(seed >> 32)});
}

/// A sequential generator over one Philox stream. Copyable; its state is four integers.
class Rng {
 public:
  struct State {
    std::uint64_t seed = 0, stream = 0, block = 0;
    std::uint32_t word = 4;  // next word of the current block; 4 means "fetch a new block"
    bool operator==(const State&) const = default;
  };

  explicit Rng(std::uint64_t seed = 0, std::uint64_t stream = 0) : m_state{seed, stream, 0, 4} {}

  std::uint32_t next_u32() {
    if (m_state.word == 4) {
      m_words = philox_block(m_state.seed, m_state.stream, m_state.block++);
      m_state.word = 0;
    }
    return m_words[m_state.word++];
  }
  /// Two consecutive words, the first in the low half.
  std::uint64_t next_u64() {
    const std::uint64_t lo = next_u32();
    return lo | (std::uint64_t{next_u32()} << 32);
  }
  /// Uniform on [0, 1) with 53 random bits (exact: no rounding).
  double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
  /// Uniform on [lo, hi), computed in double and rounded once to T.
  template <class T>
  T uniform(T lo, T hi) {
    return static_cast<T>(static_cast<double>(lo) +
                          (static_cast<double>(hi) - static_cast<double>(lo)) * uniform());
  }
  /// Standard normal by Box-Muller (one value per two uniforms).
  double normal() {
    const double u1 = 1.0 - uniform();  // (0, 1]
    const double u2 = uniform();
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * std::numbers::pi * u2);
  }

  State state() const { return m_state; }
  void set_state(const State& s) {
    WEGEFT_CHECK(s.word <= 4, "Rng state word index " << s.word << " is out of range [0, 4]");
    m_state = s;
    if (m_state.word < 4) m_words = philox_block(s.seed, s.stream, s.block - 1);
  }

 private:
  State m_state;
  std::array<std::uint32_t, 4> m_words{};
};

/// Fill `m` (a matrix or a view) with U(lo, hi) in row-major order.
template <class T, class M>
void fill_uniform(M&& m, Rng& rng, T lo, T hi) {
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j) m(i, j) = rng.uniform(lo, hi);
}
/// Fill `m` (a matrix or a view) with N(0, std^2) in row-major order.
template <class T, class M>
void fill_normal(M&& m, Rng& rng, T std) {
  for (Index i = 0; i < m.rows(); ++i)
    for (Index j = 0; j < m.cols(); ++j)
      m(i, j) = static_cast<T>(static_cast<double>(std) * rng.normal());
}

/// Inverted dropout with a mask that is a pure function of (seed, element index): element i is
/// kept when word i of stream 0 under `seed` is >= p * 2^32, and kept values are scaled by
/// 1 / (1 - p). out = in * mask; out may alias in. Calling it twice with the same seed
/// reproduces the same mask, which is how backward passes regenerate it instead of storing it.
/// With `offset`, out and in hold elements [offset, offset + n) of the masked tensor, so a tensor
/// can be masked a piece at a time with the mask of the whole.
template <class T>
void dropout_apply(T* out, const T* in, Index n, double p, std::uint64_t seed, Index offset = 0) {
  WEGEFT_CHECK(p >= 0.0 && p < 1.0, "dropout probability " << p << " is outside [0, 1)");
  const auto threshold = static_cast<std::uint64_t>(std::ldexp(p, 32));
  const T scale = static_cast<T>(1.0 / (1.0 - p));
  for (Index i = 0; i < n;) {
    const Index g = offset + i;
    const auto words = philox_block(seed, 0, static_cast<std::uint64_t>(g / 4));
    for (Index k = g % 4; k < 4 && i < n; ++k, ++i)
      out[i] = words[k] >= threshold ? in[i] * scale : T(0);
  }
}

}  // namespace wegeft

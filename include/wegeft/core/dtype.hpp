// Storage dtypes of tensor files and their conversion to and from the compute types.
//
// Half (IEEE binary16), bfloat16 and the two 8-bit float formats are decoded exactly into float;
// float is encoded to half and bfloat16 with round-to-nearest-even (NaN stays NaN, overflow
// becomes infinity), as PyTorch's .to(dtype) does.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <string>
#include <string_view>

#include "wegeft/core/error.hpp"

namespace wegeft {

enum class DType {
  F64,
  F32,
  F16,
  BF16,
  F8_E4M3,
  F8_E5M2,
  I64,
  I32,
  I16,
  I8,
  U64,
  U32,
  U16,
  U8,
  BOOL
};

inline constexpr DType kAllDTypes[] = {DType::F64,     DType::F32,     DType::F16, DType::BF16,
                                       DType::F8_E4M3, DType::F8_E5M2, DType::I64, DType::I32,
                                       DType::I16,     DType::I8,      DType::U64, DType::U32,
                                       DType::U16,     DType::U8,      DType::BOOL};

/// The safetensors name of a dtype ("F32", "BF16", ...).
inline const char* dtype_name(DType t) {
  static const char* names[] = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "I64", "I32",
                                "I16", "I8",  "U64", "U32",  "U16",     "U8",      "BOOL"};
  return names[static_cast<int>(t)];
}

/// Parses a safetensors dtype name; false for an unknown one.
inline bool parse_dtype(std::string_view name, DType& out) {
  for (DType t : kAllDTypes)
    if (name == dtype_name(t)) {
      out = t;
      return true;
    }
  return false;
}

inline std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64:
    case DType::I64:
    case DType::U64:
      return 8;
    case DType::F32:
    case DType::I32:
    case DType::U32:
      return 4;
    case DType::F16:
    case DType::BF16:
    case DType::I16:
    case DType::U16:
      return 2;
    default:
      return 1;
  }
}

inline bool dtype_is_float(DType t) {
  return t == DType::F64 || t == DType::F32 || t == DType::F16 || t == DType::BF16 ||
         t == DType::F8_E4M3 || t == DType::F8_E5M2;
}

inline float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h & 0x8000) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0x1F) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));  // inf / nan
  if (exp != 0) return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
  const float sub = std::ldexp(static_cast<float>(mant), -24);  // subnormal or zero
  return sign ? -sub : sub;
}

inline float bf16_to_float(std::uint16_t b) {
  return std::bit_cast<float>(static_cast<std::uint32_t>(b) << 16);
}

/// float -> bfloat16, round to nearest even.
inline std::uint16_t float_to_bf16(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  if (std::isnan(f)) return static_cast<std::uint16_t>((u >> 16) | 0x40);
  const std::uint32_t rounding = 0x7FFF + ((u >> 16) & 1);
  return static_cast<std::uint16_t>((u + rounding) >> 16);
}

/// float -> IEEE half, round to nearest even.
inline std::uint16_t float_to_half(float f) {
  const std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  const std::uint16_t sign = static_cast<std::uint16_t>((u >> 16) & 0x8000);
  const std::uint32_t abs = u & 0x7FFFFFFF;
  if (abs > 0x7F800000) return static_cast<std::uint16_t>(sign | 0x7E00);  // nan
  if (abs >= 0x477FF000)
    return static_cast<std::uint16_t>(sign | 0x7C00);  // rounds to >= 65520: inf
  if (abs < 0x38800000) {                              // below 2^-14: subnormal half (or zero)
    const float scaled = std::bit_cast<float>(abs) * 16777216.0f;  // exact: times 2^24
    return static_cast<std::uint16_t>(sign | static_cast<std::uint16_t>(std::nearbyint(scaled)));
  }
  const std::uint32_t mant_rounded =
      abs + 0xFFF + ((abs >> 13) & 1);  // round to nearest even at bit 13
  return static_cast<std::uint16_t>(sign | ((mant_rounded - 0x38000000) >> 13));
}

/// OCP FP8 E4M3 (fn variant: no infinities, 0x7F / 0xFF are NaN, max 448).
inline float f8_e4m3_to_float(std::uint8_t v) {
  const float sign = (v & 0x80) ? -1.0f : 1.0f;
  const int exp = (v >> 3) & 0xF, mant = v & 0x7;
  if (exp == 0xF && mant == 0x7) return std::numeric_limits<float>::quiet_NaN();
  if (exp == 0) return sign * std::ldexp(static_cast<float>(mant), -9);
  return sign * std::ldexp(1.0f + mant / 8.0f, exp - 7);
}

/// OCP FP8 E5M2 (IEEE-like: infinities and NaNs).
inline float f8_e5m2_to_float(std::uint8_t v) {
  return half_to_float(static_cast<std::uint16_t>(v) << 8);
}

/// Element i of raw little-endian data of dtype t, as double.
inline double dtype_load(const unsigned char* data, DType t, std::size_t i) {
  const unsigned char* p = data + i * dtype_size(t);
  auto read = [p](auto zero) {
    decltype(zero) v;
    std::memcpy(&v, p, sizeof v);
    return v;
  };
  switch (t) {
    case DType::F64:
      return read(0.0);
    case DType::F32:
      return read(0.0f);
    case DType::F16:
      return half_to_float(read(std::uint16_t{}));
    case DType::BF16:
      return bf16_to_float(read(std::uint16_t{}));
    case DType::F8_E4M3:
      return f8_e4m3_to_float(*p);
    case DType::F8_E5M2:
      return f8_e5m2_to_float(*p);
    case DType::I64:
      return static_cast<double>(read(std::int64_t{}));
    case DType::I32:
      return read(std::int32_t{});
    case DType::I16:
      return read(std::int16_t{});
    case DType::I8:
      return static_cast<std::int8_t>(*p);
    case DType::U64:
      return static_cast<double>(read(std::uint64_t{}));
    case DType::U32:
      return read(std::uint32_t{});
    case DType::U16:
      return read(std::uint16_t{});
    case DType::U8:
      return *p;
    case DType::BOOL:
      return *p != 0;
  }
  return 0;
}

/// Stores v as element i of raw little-endian data of dtype t (floats round to nearest even;
/// integers must be representable: the caller checks).
inline void dtype_store(unsigned char* data, DType t, std::size_t i, double v) {
  unsigned char* p = data + i * dtype_size(t);
  auto write = [p](auto x) { std::memcpy(p, &x, sizeof x); };
  // An integer store of a value outside the type's range (or not finite) would be undefined
  // behaviour; it is an error instead.
  auto integer = [&](auto zero) {
    using I = decltype(zero);
    const double lo = static_cast<double>(std::numeric_limits<I>::min()),
                 hi = static_cast<double>(std::numeric_limits<I>::max()) + 1.0;
    WEGEFT_CHECK(v >= lo && v < hi, "value " << v << " does not fit " << dtype_name(t));
    return static_cast<I>(v);
  };
  switch (t) {
    case DType::F64:
      write(v);
      break;
    case DType::F32:
      write(static_cast<float>(v));
      break;
    case DType::F16:
      write(float_to_half(static_cast<float>(v)));
      break;
    case DType::BF16:
      write(float_to_bf16(static_cast<float>(v)));
      break;
    case DType::I64:
      write(integer(std::int64_t{}));
      break;
    case DType::I32:
      write(integer(std::int32_t{}));
      break;
    case DType::I16:
      write(integer(std::int16_t{}));
      break;
    case DType::I8:
      write(integer(std::int8_t{}));
      break;
    case DType::U64:
      write(integer(std::uint64_t{}));
      break;
    case DType::U32:
      write(integer(std::uint32_t{}));
      break;
    case DType::U16:
      write(integer(std::uint16_t{}));
      break;
    case DType::U8:
      write(integer(std::uint8_t{}));
      break;
    case DType::BOOL:
      write(static_cast<std::uint8_t>(v != 0));
      break;
    default:
      WEGEFT_CHECK(false, "writing dtype " << dtype_name(t) << " is not supported");
  }
}

}  // namespace wegeft

// IDX files, the format of MNIST and Fashion-MNIST (uncompressed): two zero bytes, a type byte,
// the number of dimensions, each dimension as a big-endian 32-bit count, then the values in
// row-major order. Only unsigned bytes (type 0x08) are read, which is what the image and label
// files hold.
//
//   const wegeft::IdxArray images = wegeft::read_idx("train-images-idx3-ubyte");  // [60000, 28, 28]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/io/file.hpp"

namespace wegeft {

struct IdxArray {
  std::vector<std::int64_t> shape;
  std::vector<std::uint8_t> values;  // row-major, prod(shape) of them
};

/// Reads an unsigned-byte IDX file. Throws wegeft::Error naming the file and the problem for a
/// wrong magic, another value type, 0 or more than 4 dimensions, a zero dimension, or a size that
/// differs from what the header describes (truncated or trailing bytes).
inline IdxArray read_idx(const std::string& path) {
  const MappedFile f(path);
  const unsigned char* p = f.data();
  WEGEFT_CHECK(f.size() >= 4, path << ": " << f.size() << " bytes, too short for an IDX header");
  WEGEFT_CHECK(p[0] == 0 && p[1] == 0,
               path << ": not an IDX file (the first two bytes are not zero; a .gz file must be "
                       "uncompressed first)");
  WEGEFT_CHECK(p[2] == 0x08, path << ": IDX value type 0x" << std::hex << int(p[2]) << std::dec
                                  << " is not supported (only unsigned bytes, 0x08)");
  const int dims = p[3];
  WEGEFT_CHECK(dims >= 1 && dims <= 4, path << ": " << dims << " dimensions (1 to 4 supported)");
  const std::size_t header = 4 + 4 * static_cast<std::size_t>(dims);
  WEGEFT_CHECK(f.size() >= header, path << ": " << f.size() << " bytes, the header of " << dims
                                        << " dimensions needs " << header);
  IdxArray out;
  std::uint64_t count = 1;
  for (int i = 0; i < dims; ++i) {
    const unsigned char* q = p + 4 + 4 * i;
    const std::uint64_t n = (std::uint64_t(q[0]) << 24) | (std::uint64_t(q[1]) << 16) |
                            (std::uint64_t(q[2]) << 8) | std::uint64_t(q[3]);
    WEGEFT_CHECK(n > 0, path << ": dimension " << i << " is zero");
    WEGEFT_CHECK(n <= f.size() / count, path << ": the header describes more values than the "
                                             << "file's " << f.size() << " bytes");
    count *= n;
    out.shape.push_back(static_cast<std::int64_t>(n));
  }
  WEGEFT_CHECK(header + count == f.size(),
               path << ": the header describes " << count << " values, the file holds "
                    << (f.size() - header) << " ("
                    << (f.size() - header < count ? "truncated" : "trailing bytes") << ")");
  out.values.assign(p + header, p + header + count);
  return out;
}

}  // namespace wegeft

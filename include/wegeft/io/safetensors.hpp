// safetensors files: a memory-mapped reader that validates everything before touching data, and
// an atomic writer. Format: 8-byte little-endian header length N, N bytes of JSON
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ..., "__metadata__":
// {"key": "value"}}, then the data; offsets are relative to the end of the header.
//
//   wegeft::SafetensorsReader file("model.safetensors");
//   for (const auto& t : file.tensors()) ...                    // name, dtype, shape
//   wegeft::Matrix<float> w = file.matrix<float>("lm_head.weight");   // converted, checked finite
//
//   wegeft::SafetensorsBuilder out;
//   out.add("a", wegeft::DType::BF16, {2, 3}, matrix.data(), 6);   // converted from T
//   out.write("out.safetensors", {{"format", "pt"}});            // temp file + fsync + rename
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/core/dtype.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/json.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/io/file.hpp"

namespace wegeft {

struct TensorInfo {
  std::string name;
  DType dtype = DType::F32;
  std::vector<std::int64_t> shape;
  std::size_t offset = 0;  // from the start of the file
  std::size_t nbytes = 0;
  std::size_t numel = 1;
};

namespace detail {

inline constexpr std::size_t kMaxHeaderBytes = 100u << 20;

/// numel of a shape; throws on a negative dimension or an overflow of 2^63.
inline std::size_t checked_numel(const std::vector<std::int64_t>& shape, const std::string& where) {
  std::uint64_t n = 1;
  for (const std::int64_t d : shape) {
    WEGEFT_CHECK(d >= 0, where << ": negative dimension " << d);
    WEGEFT_CHECK(!__builtin_mul_overflow(n, static_cast<std::uint64_t>(d), &n) && n < (1ull << 62),
                 where << ": shape's element count overflows");
  }
  return static_cast<std::size_t>(n);
}

inline std::vector<std::int64_t> shape_of_json(const nlohmann::json& j, const std::string& where) {
  WEGEFT_CHECK(j.is_array(), where << ": \"shape\" is not an array");
  std::vector<std::int64_t> shape;
  for (const auto& d : j) {
    WEGEFT_CHECK(d.is_number_unsigned() || (d.is_number_integer() && d.get<std::int64_t>() >= 0),
                 where << ": shape entry " << d.dump() << " is not a non-negative integer");
    shape.push_back(d.get<std::int64_t>());
  }
  return shape;
}

/// Throws unless the byte ranges [offset, offset + nbytes) of `items` (anything with name, offset
/// and nbytes) are pairwise disjoint.
template <class Item>
void check_no_overlap(const std::vector<Item>& items, const std::string& path) {
  std::vector<const Item*> order;
  for (const auto& t : items) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->offset < b->offset; });
  for (std::size_t i = 1; i < order.size(); ++i)
    WEGEFT_CHECK(
        order[i]->offset >= order[i - 1]->offset + order[i - 1]->nbytes,
        path << ": tensors '" << order[i - 1]->name << "' and '" << order[i]->name << "' overlap");
}

/// CRC-32 over every tensor in name order (its name, a zero byte, its bytes as stored) and every
/// metadata entry but "checksum" in key order (key, zero byte, value, zero byte).
inline std::uint32_t content_crc32(
    const std::map<std::string, std::pair<const unsigned char*, std::size_t>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::uint32_t crc = 0;
  const char zero = 0;
  for (const auto& [name, b] : tensors) {
    crc = crc32(name.data(), name.size(), crc);
    crc = crc32(&zero, 1, crc);
    crc = crc32(b.first, b.second, crc);
  }
  for (const auto& [k, v] : metadata) {
    if (k == "checksum") continue;
    crc = crc32(k.data(), k.size(), crc);
    crc = crc32(&zero, 1, crc);
    crc = crc32(v.data(), v.size(), crc);
    crc = crc32(&zero, 1, crc);
  }
  return crc;
}

}  // namespace detail

class SafetensorsReader {
 public:
  explicit SafetensorsReader(const std::string& path) : m_file(std::make_unique<MappedFile>(path)) {
    parse();
  }

  const std::string& path() const { return m_file->path(); }
  const std::vector<TensorInfo>& tensors() const { return m_tensors; }
  const std::map<std::string, std::string>& metadata() const { return m_metadata; }
  bool contains(const std::string& name) const { return m_index.count(name) > 0; }
  const TensorInfo& info(const std::string& name) const {
    const auto it = m_index.find(name);
    WEGEFT_CHECK(it != m_index.end(), path() << ": no tensor named '" << name << "'");
    return m_tensors[it->second];
  }
  const unsigned char* data(const TensorInfo& t) const { return m_file->data() + t.offset; }

  /// CRC-32 of the content (see detail::content_crc32); compare with a stored "checksum".
  std::uint32_t content_crc32() const {
    std::map<std::string, std::pair<const unsigned char*, std::size_t>> bytes;
    for (const auto& t : m_tensors) bytes[t.name] = {data(t), t.nbytes};
    return detail::content_crc32(bytes, m_metadata);
  }

  /// Element values converted to T. With `require_finite` a NaN or infinity is an error that
  /// names the tensor and the element.
  template <class T>
  std::vector<T> values(const std::string& name, bool require_finite = true) const {
    const TensorInfo& t = info(name);
    std::vector<T> out(t.numel);
    const unsigned char* p = data(t);
    for (std::size_t i = 0; i < t.numel; ++i) {
      const double v = dtype_load(p, t.dtype, i);
      WEGEFT_CHECK(!require_finite || std::isfinite(v), path() << ": tensor '" << name
                                                               << "' has a non-finite value (" << v
                                                               << ") at element " << i);
      out[i] = static_cast<T>(v);
    }
    return out;
  }

  /// The tensor as a matrix: a [d0, d1, ..., dk] tensor becomes [d0, d1 * ... * dk]; 1-D tensors
  /// become [1, n], scalars [1, 1].
  template <class T>
  Matrix<T> matrix(const std::string& name, bool require_finite = true) const {
    const TensorInfo& t = info(name);
    const auto v = values<T>(name, require_finite);
    Index rows = 1, cols = 1;
    if (t.shape.size() == 1) cols = t.shape[0];
    if (t.shape.size() >= 2) {
      rows = t.shape[0];
      cols = rows == 0 ? 0 : static_cast<Index>(t.numel) / rows;
    }
    Matrix<T> m(rows, cols);
    std::copy(v.begin(), v.end(), m.data());
    return m;
  }

 private:
  void parse() {
    const std::string& p = path();
    const std::size_t size = m_file->size();
    WEGEFT_CHECK(size >= 8,
                 p << ": file is " << size << " bytes, too short for the 8-byte header length");
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | m_file->data()[i];
    WEGEFT_CHECK(n <= size - 8, p << ": header length " << n << " exceeds the " << size - 8
                                  << " bytes that follow it (truncated or not a safetensors file)");
    WEGEFT_CHECK(n <= detail::kMaxHeaderBytes,
                 p << ": header length " << n << " exceeds the 100 MiB limit");
    WEGEFT_CHECK(n >= 2 && m_file->data()[8] == '{', p << ": header does not start with '{'");
    const std::string text(reinterpret_cast<const char*>(m_file->data() + 8), n);
    const nlohmann::json header = detail::parse_json_strict(text, p + " header");
    WEGEFT_CHECK(header.is_object(), p << ": header is not a JSON object");
    const std::size_t data_start = 8 + static_cast<std::size_t>(n), data_size = size - data_start;
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") {
        WEGEFT_CHECK(entry.is_object(), p << ": __metadata__ is not an object");
        for (const auto& [k, v] : entry.items()) {
          WEGEFT_CHECK(v.is_string(),
                       p << ": __metadata__ value of \"" << k << "\" is not a string");
          m_metadata[k] = v.get<std::string>();
        }
        continue;
      }
      const std::string where = p + ": tensor '" + name + "'";
      WEGEFT_CHECK(entry.is_object(), where << " is not an object");
      WEGEFT_CHECK(entry.contains("dtype") && entry["dtype"].is_string(),
                   where << " has no string \"dtype\"");
      TensorInfo t;
      t.name = name;
      const std::string dtype = entry["dtype"].get<std::string>();
      WEGEFT_CHECK(parse_dtype(dtype, t.dtype), where << " has unknown dtype \"" << dtype << "\"");
      WEGEFT_CHECK(entry.contains("shape"), where << " has no \"shape\"");
      t.shape = detail::shape_of_json(entry["shape"], where);
      t.numel = detail::checked_numel(t.shape, where);
      std::uint64_t nbytes = 0;
      WEGEFT_CHECK(!__builtin_mul_overflow(static_cast<std::uint64_t>(t.numel), dtype_size(t.dtype),
                                           &nbytes),
                   where << ": byte size overflows");
      const auto& off = entry.contains("data_offsets") ? entry["data_offsets"] : nlohmann::json();
      WEGEFT_CHECK(off.is_array() && off.size() == 2 && off[0].is_number_unsigned() &&
                       off[1].is_number_unsigned(),
                   where << ": \"data_offsets\" must be two non-negative integers");
      const std::uint64_t begin = off[0].get<std::uint64_t>(), end = off[1].get<std::uint64_t>();
      WEGEFT_CHECK(begin <= end && end <= data_size, where << ": data_offsets [" << begin << ", "
                                                           << end << "] are outside the "
                                                           << data_size << " data bytes");
      WEGEFT_CHECK(end - begin == nbytes, where << ": " << dtype << " shape "
                                                << shape_string(t.shape) << " needs " << nbytes
                                                << " bytes but data_offsets span " << end - begin);
      t.offset = data_start + static_cast<std::size_t>(begin);
      t.nbytes = static_cast<std::size_t>(nbytes);
      m_index[name] = m_tensors.size();
      m_tensors.push_back(std::move(t));
    }
    detail::check_no_overlap(m_tensors, p);
  }

  static std::string shape_string(const std::vector<std::int64_t>& s) {
    std::string out = "[";
    for (std::size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
  }

  std::unique_ptr<MappedFile> m_file;
  std::vector<TensorInfo> m_tensors;
  std::map<std::string, std::size_t> m_index;
  std::map<std::string, std::string> m_metadata;
};

/// Collects tensors (converted to their storage dtype on add) and writes them atomically.
class SafetensorsBuilder {
 public:
  /// Adds `n` values of `values` as a tensor of `dtype` and `shape` (whose product must be n).
  template <class T>
  void add(const std::string& name, DType dtype, std::vector<std::int64_t> shape, const T* values,
           std::size_t n) {
    WEGEFT_CHECK(name != "__metadata__" && !name.empty(), "invalid tensor name '" << name << "'");
    WEGEFT_CHECK(m_names.insert(name).second, "tensor '" << name << "' added twice");
    WEGEFT_CHECK(detail::checked_numel(shape, name) == n,
                 "tensor '" << name << "': shape does not hold " << n << " values");
    Entry e{name, dtype, std::move(shape), std::vector<unsigned char>(n * dtype_size(dtype))};
    for (std::size_t i = 0; i < n; ++i)
      dtype_store(e.bytes.data(), dtype, i, static_cast<double>(values[i]));
    m_entries.push_back(std::move(e));
  }
  /// Adds a matrix with its own [rows, cols] shape, or `shape` if given.
  template <class T>
  void add(const std::string& name, DType dtype, const Matrix<T>& m,
           std::vector<std::int64_t> shape = {}) {
    if (shape.empty()) shape = {m.rows(), m.cols()};
    add(name, dtype, std::move(shape), m.data(), static_cast<std::size_t>(m.size()));
  }
  /// Adds raw bytes already in `dtype`'s little-endian layout.
  void add_raw(const std::string& name, DType dtype, std::vector<std::int64_t> shape,
               const unsigned char* bytes, std::size_t nbytes) {
    WEGEFT_CHECK(m_names.insert(name).second, "tensor '" << name << "' added twice");
    WEGEFT_CHECK(
        detail::checked_numel(shape, name) * dtype_size(dtype) == nbytes,
        "tensor '" << name << "': " << nbytes << " bytes do not match its shape and dtype");
    m_entries.push_back(
        Entry{name, dtype, std::move(shape), std::vector<unsigned char>(bytes, bytes + nbytes)});
  }

  /// CRC-32 of what write(path, metadata) stores (see detail::content_crc32).
  std::uint32_t content_crc32(const std::map<std::string, std::string>& metadata) const {
    std::map<std::string, std::pair<const unsigned char*, std::size_t>> bytes;
    for (const auto& e : m_entries) bytes[e.name] = {e.bytes.data(), e.bytes.size()};
    return detail::content_crc32(bytes, metadata);
  }

  void write(const std::string& path,
             const std::map<std::string, std::string>& metadata = {}) const {
    nlohmann::ordered_json header = nlohmann::ordered_json::object();
    if (!metadata.empty()) header["__metadata__"] = metadata;
    std::size_t offset = 0;
    for (const auto& e : m_entries) {
      header[e.name] = {{"dtype", dtype_name(e.dtype)},
                        {"shape", e.shape},
                        {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text = header.dump();
    text.append((8 - text.size() % 8) % 8, ' ');
    unsigned char len[8];
    for (int i = 0; i < 8; ++i)
      len[i] = static_cast<unsigned char>(static_cast<std::uint64_t>(text.size()) >> (8 * i));
    AtomicWriter w(path);
    w.write(len, 8);
    w.write(text);
    for (const auto& e : m_entries) w.write(e.bytes.data(), e.bytes.size());
    w.commit();
  }

 private:
  struct Entry {
    std::string name;
    DType dtype;
    std::vector<std::int64_t> shape;
    std::vector<unsigned char> bytes;
  };
  std::vector<Entry> m_entries;
  std::set<std::string> m_names;
};

}  // namespace wegeft

// GGUF (llama.cpp's format, versions 2 and 3): a validating memory-mapped reader with
// dequantization of F32, F16, BF16, Q8_0, Q4_0 and Q4_1 tensors, a writer for F32/F16 tensors, and
// the Llama name map (with llama.cpp's q/k row permutation undone).
//
// Layout: "GGUF", u32 version, u64 tensor count, u64 metadata count, metadata (key string, u32
// type, value), tensor infos (name, u32 n_dims, u64 ne[n_dims] with ne[0] the fastest axis, u32
// ggml type, u64 offset), padding to general.alignment (default 32), tensor data.
//
//   wegeft::GgufReader f("model.gguf");
//   f.metadata()["llama.block_count"];                 // nlohmann::json
//   wegeft::Matrix<float> w = f.matrix<float>("blk.0.attn_q.weight");   // [ne1, ne0], dequantized
#pragma once

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
#include "wegeft/core/tensor.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/io/safetensors.hpp"

namespace wegeft {

enum class GgmlType : std::uint32_t { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, BF16 = 30 };

inline const char* ggml_type_name(std::uint32_t t) {
  switch (t) {
    case 0:
      return "F32";
    case 1:
      return "F16";
    case 2:
      return "Q4_0";
    case 3:
      return "Q4_1";
    case 8:
      return "Q8_0";
    case 30:
      return "BF16";
    default:
      return nullptr;
  }
}

/// Elements per block and bytes per block of a supported ggml type.
inline std::pair<std::size_t, std::size_t> ggml_block(std::uint32_t t) {
  switch (t) {
    case 0:
      return {1, 4};
    case 1:
      return {1, 2};
    case 30:
      return {1, 2};
    case 2:
      return {32, 18};
    case 3:
      return {32, 20};
    case 8:
      return {32, 34};
    default:
      return {0, 0};
  }
}

struct GgufTensorInfo {
  std::string name;
  std::vector<std::uint64_t> ne;  // ggml order: ne[0] is contiguous
  std::uint32_t type = 0;
  std::size_t offset = 0;  // from the start of the file
  std::size_t nbytes = 0;
  std::size_t numel = 1;
};

namespace detail {

/// Bounds-checked little-endian reads over a mapped file.
class GgufCursor {
 public:
  GgufCursor(const unsigned char* data, std::size_t size, const std::string& path)
      : m_data(data), m_size(size), m_path(path) {}
  void need(std::size_t n, const char* what) const {
    WEGEFT_CHECK(n <= m_size - m_pos, m_path << ": truncated at byte " << m_pos << " reading "
                                             << what << " (" << n << " bytes needed, "
                                             << m_size - m_pos << " left)");
  }
  template <class U>
  U read(const char* what) {
    need(sizeof(U), what);
    U v;
    std::memcpy(&v, m_data + m_pos, sizeof(U));
    m_pos += sizeof(U);
    return v;
  }
  std::string string(const char* what) {
    const auto n = read<std::uint64_t>(what);
    WEGEFT_CHECK(n <= m_size - m_pos,
                 m_path << ": " << what << " of length " << n << " runs past the end of the file");
    std::string s(reinterpret_cast<const char*>(m_data + m_pos), static_cast<std::size_t>(n));
    m_pos += static_cast<std::size_t>(n);
    return s;
  }
  std::size_t pos() const { return m_pos; }
  std::size_t left() const { return m_size - m_pos; }

 private:
  const unsigned char* m_data;
  std::size_t m_size, m_pos = 0;
  const std::string& m_path;
};

/// Metadata values a file may hold in all (arrays included): a Llama-3 tokenizer holds about 700,000.
inline constexpr std::size_t kGgufMaxMetadataValues = std::size_t(1) << 23;

/// One metadata value; `budget` is what is left of kGgufMaxMetadataValues.
inline nlohmann::json gguf_value(GgufCursor& c, std::uint32_t type, const std::string& key,
                                 const std::string& path, int depth, std::size_t& budget) {
  WEGEFT_CHECK(budget > 0, path << ": metadata '" << key << "' exceeds the limit of "
                                << kGgufMaxMetadataValues << " metadata values in a file");
  --budget;
  switch (type) {
    case 0:
      return c.read<std::uint8_t>("u8");
    case 1:
      return c.read<std::int8_t>("i8");
    case 2:
      return c.read<std::uint16_t>("u16");
    case 3:
      return c.read<std::int16_t>("i16");
    case 4:
      return c.read<std::uint32_t>("u32");
    case 5:
      return c.read<std::int32_t>("i32");
    case 6:
      return c.read<float>("f32");
    case 7: {
      const auto b = c.read<std::uint8_t>("bool");
      WEGEFT_CHECK(b <= 1, path << ": metadata '" << key << "' has bool value " << int(b));
      return b == 1;
    }
    case 8: {
      nlohmann::json s = c.string("string");
      try {
        (void)s.dump();  // dump() rejects invalid UTF-8
      } catch (const nlohmann::json::exception&) {
        WEGEFT_CHECK(false, path << ": metadata '" << key << "' is not valid UTF-8");
      }
      return s;
    }
    case 9: {
      WEGEFT_CHECK(depth < 4, path << ": metadata '" << key << "' nests arrays too deeply");
      const auto elem = c.read<std::uint32_t>("array type");
      const auto n = c.read<std::uint64_t>("array length");
      WEGEFT_CHECK(n <= c.left(), path << ": metadata '" << key << "' claims " << n
                                       << " elements, more than the file holds");
      WEGEFT_CHECK(n <= budget, path << ": metadata '" << key << "' has " << n
                                     << " elements, beyond the limit of " << kGgufMaxMetadataValues
                                     << " metadata values in a file");
      nlohmann::json arr = nlohmann::json::array();
      arr.get_ref<nlohmann::json::array_t&>().reserve(static_cast<std::size_t>(n));
      for (std::uint64_t i = 0; i < n; ++i)
        arr.push_back(gguf_value(c, elem, key, path, depth + 1, budget));
      return arr;
    }
    case 10:
      return c.read<std::uint64_t>("u64");
    case 11:
      return c.read<std::int64_t>("i64");
    case 12:
      return c.read<double>("f64");
    default:
      WEGEFT_CHECK(false, path << ": metadata '" << key << "' has unknown value type " << type);
  }
  return {};
}

}  // namespace detail

class GgufReader {
 public:
  explicit GgufReader(const std::string& path) : m_file(std::make_unique<MappedFile>(path)) {
    parse();
  }

  const std::string& path() const { return m_file->path(); }
  std::uint32_t version() const { return m_version; }
  const nlohmann::json& metadata() const { return m_meta; }
  const std::vector<GgufTensorInfo>& tensors() const { return m_tensors; }
  bool contains(const std::string& name) const { return m_index.count(name) > 0; }
  const GgufTensorInfo& info(const std::string& name) const {
    const auto it = m_index.find(name);
    WEGEFT_CHECK(it != m_index.end(), path() << ": no tensor named '" << name << "'");
    return m_tensors[it->second];
  }

  /// Dequantized values in ggml order (ne[0] fastest), checked finite.
  template <class T>
  std::vector<T> values(const std::string& name) const {
    const GgufTensorInfo& t = info(name);
    WEGEFT_CHECK(ggml_block(t.type).first > 0,
                 path() << ": tensor '" << name << "' has ggml type " << t.type
                        << ", which wegeft cannot dequantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
    const unsigned char* p = m_file->data() + t.offset;
    std::vector<T> out(t.numel);
    auto half = [&](std::size_t at) {
      std::uint16_t h;
      std::memcpy(&h, p + at, 2);
      return half_to_float(h);
    };
    switch (t.type) {
      case 0:
        for (std::size_t i = 0; i < t.numel; ++i)
          out[i] = static_cast<T>(dtype_load(p, DType::F32, i));
        break;
      case 1:
        for (std::size_t i = 0; i < t.numel; ++i)
          out[i] = static_cast<T>(dtype_load(p, DType::F16, i));
        break;
      case 30:
        for (std::size_t i = 0; i < t.numel; ++i)
          out[i] = static_cast<T>(dtype_load(p, DType::BF16, i));
        break;
      case 8:
        for (std::size_t b = 0; b < t.numel / 32; ++b) {
          const float d = half(b * 34);
          for (int j = 0; j < 32; ++j)
            out[b * 32 + j] = static_cast<T>(d * static_cast<std::int8_t>(p[b * 34 + 2 + j]));
        }
        break;
      case 2:
        for (std::size_t b = 0; b < t.numel / 32; ++b) {
          const float d = half(b * 18);
          const unsigned char* q = p + b * 18 + 2;
          for (int j = 0; j < 16; ++j) {
            out[b * 32 + j] = static_cast<T>(d * ((q[j] & 0x0F) - 8));
            out[b * 32 + j + 16] = static_cast<T>(d * ((q[j] >> 4) - 8));
          }
        }
        break;
      case 3:
        for (std::size_t b = 0; b < t.numel / 32; ++b) {
          const float d = half(b * 20), m = half(b * 20 + 2);
          const unsigned char* q = p + b * 20 + 4;
          for (int j = 0; j < 16; ++j) {
            out[b * 32 + j] = static_cast<T>(d * (q[j] & 0x0F) + m);
            out[b * 32 + j + 16] = static_cast<T>(d * (q[j] >> 4) + m);
          }
        }
        break;
      default:
        WEGEFT_CHECK(
            false, path() << ": tensor '" << name << "' has ggml type " << t.type
                          << ", which wegeft cannot dequantize (F32, F16, BF16, Q8_0, Q4_0, Q4_1)");
    }
    for (std::size_t i = 0; i < out.size(); ++i)
      WEGEFT_CHECK(std::isfinite(static_cast<double>(out[i])),
                   path() << ": tensor '" << name << "' has a non-finite value at element " << i);
    return out;
  }

  /// A 1-D tensor as [1, ne0], a 2-D one as [ne1, ne0] (torch's [d_out, d_in] for weights).
  template <class T>
  Matrix<T> matrix(const std::string& name) const {
    const GgufTensorInfo& t = info(name);
    WEGEFT_CHECK(t.ne.size() <= 2, path() << ": tensor '" << name << "' has " << t.ne.size()
                                          << " dimensions, expected 1 or 2");
    const auto v = values<T>(name);
    const Index cols = static_cast<Index>(t.ne[0]),
                rows = t.ne.size() == 2 ? static_cast<Index>(t.ne[1]) : 1;
    Matrix<T> m(rows, cols);
    std::copy(v.begin(), v.end(), m.data());
    return m;
  }

 private:
  void parse() {
    const std::string& p = path();
    detail::GgufCursor c(m_file->data(), m_file->size(), p);
    const auto magic = c.read<std::uint32_t>("magic");
    WEGEFT_CHECK(magic == 0x46554747u, p << ": not a GGUF file (bad magic)");
    m_version = c.read<std::uint32_t>("version");
    WEGEFT_CHECK(m_version == 2 || m_version == 3,
                 p << ": GGUF version " << m_version << " is not supported (2 or 3)");
    const auto n_tensors = c.read<std::uint64_t>("tensor count");
    const auto n_kv = c.read<std::uint64_t>("metadata count");
    WEGEFT_CHECK(n_tensors <= c.left() / 24 && n_kv <= c.left() / 12,
                 p << ": tensor count " << n_tensors << " or metadata count " << n_kv
                   << " is more than the file can hold");
    m_meta = nlohmann::json::object();
    std::size_t budget = detail::kGgufMaxMetadataValues;
    for (std::uint64_t i = 0; i < n_kv; ++i) {
      const std::string key = c.string("metadata key");
      WEGEFT_CHECK(!m_meta.contains(key), p << ": duplicate metadata key '" << key << "'");
      const auto type = c.read<std::uint32_t>("metadata type");
      m_meta[key] = detail::gguf_value(c, type, key, p, 0, budget);
    }
    std::uint64_t alignment = 32;
    if (m_meta.contains("general.alignment")) {
      WEGEFT_CHECK(m_meta["general.alignment"].is_number_unsigned(),
                   p << ": general.alignment is not an unsigned integer");
      alignment = m_meta["general.alignment"].get<std::uint64_t>();
      WEGEFT_CHECK(alignment > 0 && (alignment & (alignment - 1)) == 0 && alignment <= 1u << 20,
                   p << ": general.alignment " << alignment << " is not a power of two");
    }
    std::vector<std::uint64_t> rel_offsets;
    for (std::uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensorInfo t;
      t.name = c.string("tensor name");
      WEGEFT_CHECK(!m_index.count(t.name), p << ": duplicate tensor name '" << t.name << "'");
      const auto n_dims = c.read<std::uint32_t>("tensor dimension count");
      WEGEFT_CHECK(n_dims >= 1 && n_dims <= 4,
                   p << ": tensor '" << t.name << "' has " << n_dims << " dimensions (1 to 4)");
      std::uint64_t numel = 1;
      for (std::uint32_t d = 0; d < n_dims; ++d) {
        t.ne.push_back(c.read<std::uint64_t>("tensor dimension"));
        WEGEFT_CHECK(!__builtin_mul_overflow(numel, t.ne.back(), &numel) && numel < (1ull << 50),
                     p << ": tensor '" << t.name << "' has an element count that overflows");
      }
      t.numel = static_cast<std::size_t>(numel);
      t.type = c.read<std::uint32_t>("tensor type");
      const auto [block, block_bytes] = ggml_block(t.type);
      if (block > 0) {
        WEGEFT_CHECK(t.ne[0] % block == 0, p << ": tensor '" << t.name << "' of type "
                                             << ggml_type_name(t.type) << " has ne[0] = " << t.ne[0]
                                             << ", not a multiple of its block size " << block);
        t.nbytes = t.numel / block * block_bytes;
      }
      const auto off = c.read<std::uint64_t>("tensor offset");
      WEGEFT_CHECK(off % alignment == 0, p << ": tensor '" << t.name << "' offset " << off
                                           << " is not aligned to " << alignment);
      rel_offsets.push_back(off);
      m_index[t.name] = m_tensors.size();
      m_tensors.push_back(std::move(t));
    }
    const std::size_t data_start = (c.pos() + alignment - 1) / alignment * alignment;
    WEGEFT_CHECK(data_start <= m_file->size(),
                 p << ": tensor data section starts past the end of the file");
    const std::size_t data_size = m_file->size() - data_start;
    for (std::size_t i = 0; i < m_tensors.size(); ++i) {
      GgufTensorInfo& t = m_tensors[i];
      WEGEFT_CHECK(rel_offsets[i] <= data_size && t.nbytes <= data_size - rel_offsets[i],
                   p << ": tensor '" << t.name << "' at offset " << rel_offsets[i] << " with "
                     << t.nbytes << " bytes runs past the end of the " << data_size
                     << " data bytes");
      t.offset = data_start + static_cast<std::size_t>(rel_offsets[i]);
    }
    detail::check_no_overlap(m_tensors, p);
  }

  std::unique_ptr<MappedFile> m_file;
  std::uint32_t m_version = 0;
  nlohmann::json m_meta;
  std::vector<GgufTensorInfo> m_tensors;
  std::map<std::string, std::size_t> m_index;
};

/// Writes a GGUF v3 file atomically: metadata (strings, u32, f32, string arrays) and F32 or F16
/// tensors given in torch order ([d_out, d_in] becomes ne = [d_in, d_out]).
class GgufWriter {
 public:
  void set(const std::string& key, const std::string& v) { kv(key, 8, str(v)); }
  void set_u32(const std::string& key, std::uint32_t v) { kv(key, 4, bytes(v)); }
  void set_f32(const std::string& key, float v) { kv(key, 6, bytes(v)); }
  void set_strings(const std::string& key, const std::vector<std::string>& v) {
    std::string b = bytes(std::uint32_t{8}) + bytes(static_cast<std::uint64_t>(v.size()));
    for (const auto& s : v) b += str(s);
    kv(key, 9, b);
  }
  /// Adds a [rows, cols] (or 1-D: rows = 1 and `one_dim`) tensor stored as F32 or F16.
  template <class T>
  void add(const std::string& name, const Matrix<T>& m, GgmlType type = GgmlType::F32,
           bool one_dim = false) {
    WEGEFT_CHECK(type == GgmlType::F32 || type == GgmlType::F16,
                 "GGUF writer stores F32 or F16 only");
    WEGEFT_CHECK(m_names.insert(name).second, "GGUF tensor '" << name << "' added twice");
    std::string data;
    for (Index i = 0; i < m.size(); ++i) {
      const float v = static_cast<float>(m.data()[i]);
      data += type == GgmlType::F32 ? bytes(v) : bytes(float_to_half(v));
    }
    std::vector<std::uint64_t> ne{static_cast<std::uint64_t>(m.cols())};
    if (!one_dim) ne.push_back(static_cast<std::uint64_t>(m.rows()));
    m_tensors.push_back({name, ne, static_cast<std::uint32_t>(type), std::move(data)});
  }
  void write(const std::string& path) const {
    constexpr std::size_t align = 32;
    std::string head = bytes(std::uint32_t{0x46554747u}) + bytes(std::uint32_t{3}) +
                       bytes(static_cast<std::uint64_t>(m_tensors.size())) +
                       bytes(static_cast<std::uint64_t>(m_kv.size()));
    for (const auto& e : m_kv) head += e;
    std::size_t offset = 0;
    for (const auto& t : m_tensors) {
      head += str(t.name) + bytes(static_cast<std::uint32_t>(t.ne.size()));
      for (auto d : t.ne) head += bytes(d);
      head += bytes(t.type) + bytes(static_cast<std::uint64_t>(offset));
      offset += (t.data.size() + align - 1) / align * align;
    }
    head.append((align - head.size() % align) % align, '\0');
    AtomicWriter w(path);
    w.write(head);
    for (const auto& t : m_tensors) {
      w.write(t.data);
      w.write(std::string((align - t.data.size() % align) % align, '\0'));
    }
    w.commit();
  }

 private:
  struct Tensor {
    std::string name;
    std::vector<std::uint64_t> ne;
    std::uint32_t type;
    std::string data;
  };
  template <class U>
  static std::string bytes(U v) {
    return std::string(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static std::string str(const std::string& s) {
    return bytes(static_cast<std::uint64_t>(s.size())) + s;
  }
  void kv(const std::string& key, std::uint32_t type, const std::string& value) {
    WEGEFT_CHECK(m_keys.insert(key).second, "GGUF metadata key '" << key << "' set twice");
    m_kv.push_back(str(key) + bytes(type) + value);
  }
  std::vector<std::string> m_kv;
  std::set<std::string> m_keys, m_names;
  std::vector<Tensor> m_tensors;
};

/// llama.cpp's GGUF tensor name for a Llama module path ("model.layers.3.self_attn.q_proj" ->
/// "blk.3.attn_q"), or "" when it has none.
inline std::string gguf_llama_name(const std::string& hf) {
  static const std::pair<const char*, const char*> block[] = {
      {"self_attn.q_proj", "attn_q"},          {"self_attn.k_proj", "attn_k"},
      {"self_attn.v_proj", "attn_v"},          {"self_attn.o_proj", "attn_output"},
      {"mlp.gate_proj", "ffn_gate"},           {"mlp.up_proj", "ffn_up"},
      {"mlp.down_proj", "ffn_down"},           {"input_layernorm", "attn_norm"},
      {"post_attention_layernorm", "ffn_norm"}};
  if (hf == "model.embed_tokens") return "token_embd";
  if (hf == "model.norm") return "output_norm";
  if (hf == "lm_head") return "output";
  const std::string prefix = "model.layers.";
  if (hf.rfind(prefix, 0) != 0) return "";
  const auto dot = hf.find('.', prefix.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf.substr(prefix.size(), dot - prefix.size()),
                    rest = hf.substr(dot + 1);
  for (const auto& [from, to] : block)
    if (rest == from) return "blk." + layer + "." + to;
  return "";
}

/// llama.cpp stores q and k projections with the rows of each head reordered so that the two
/// rotated halves interleave: GGUF row h*d + 2i + s holds Hugging Face row h*d + s*d/2 + i.
/// `to_gguf` applies that permutation to the rows of `m`, otherwise undoes it.
template <class T>
Matrix<T> llama_permute_rows(const Matrix<T>& m, Index heads, bool to_gguf) {
  WEGEFT_CHECK(heads > 0 && m.rows() % (2 * heads) == 0,
               "cannot permute " << m.rows() << " rows over " << heads << " heads");
  const Index d = m.rows() / heads, half = d / 2;
  Matrix<T> out(m.rows(), m.cols());
  for (Index h = 0; h < heads; ++h)
    for (Index s = 0; s < 2; ++s)
      for (Index i = 0; i < half; ++i) {
        const Index hf = h * d + s * half + i, gg = h * d + 2 * i + s;
        if (to_gguf)
          out.row(gg) = m.row(hf);
        else
          out.row(hf) = m.row(gg);
      }
  return out;
}

}  // namespace wegeft

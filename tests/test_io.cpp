// Files: safetensors against files written by the official Python library, round trips through
// our writer, and hostile files.
#include "support.hpp"

#include <filesystem>
#include <fstream>

#include <wegeft/io/idx.hpp>
#include <wegeft/io/safetensors.hpp>

#include <sys/wait.h>
#include <unistd.h>

using namespace wegeft;
namespace fs = std::filesystem;

namespace {

std::string golden_path(const std::string& name) {
  return std::string(WEGEFT_GOLDEN_DIR) + "/" + name;
}

/// A fresh empty directory under the system temp dir, removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("wegeft-test-" + std::to_string(Rng(std::random_device{}()).next_u64()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
}
/// A safetensors file from a header string and a data section.
std::string make_file(const std::string& header, const std::string& data) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i)
    out[std::size_t(i)] = static_cast<char>((header.size() >> (8 * i)) & 0xFF);
  return out + header + data;
}

}  // namespace

TEST_CASE("safetensors reader decodes every dtype exactly as PyTorch stored it",
          "[io][safetensors]") {
  const SafetensorsReader f(golden_path("io/dtypes.safetensors"));
  const wt::Golden g("io/dtypes.txt");
  CHECK(f.metadata().at("note") == "every dtype");
  for (const auto& t : f.tensors()) {
    INFO("tensor " << t.name << " dtype " << dtype_name(t.dtype));
    const Matrix<double> got = f.matrix<double>(t.name, false);  // f16 holds an overflowed inf
    const Matrix<double> want = g.get(t.name);
    REQUIRE(got.rows() == want.rows());
    REQUIRE(got.cols() == want.cols());
    CHECK(got == want);  // exact: every stored value is representable in double
  }
  CHECK(f.tensors().size() == 17);
  CHECK(f.info("cube").shape == std::vector<std::int64_t>{2, 3, 4});
  CHECK(f.info("scalar").shape.empty());
  CHECK(f.info("u16").dtype == DType::U16);
}

TEST_CASE("float to F16 and BF16 encoding rounds exactly as PyTorch", "[io][safetensors]") {
  const SafetensorsReader f(golden_path("io/dtypes.safetensors"));
  const wt::Golden g("io/dtypes.txt");
  const Matrix<double> source = g.get("source");
  for (const char* name : {"f16", "bf16"}) {
    const TensorInfo& t = f.info(name);
    for (Index i = 0; i < source.size(); ++i) {
      std::uint16_t stored;
      std::memcpy(&stored, f.data(t) + 2 * i, 2);
      // PyTorch converts float64 -> half directly; our encoders take float, so compare on values
      // whose float rounding cannot change the result (all of them here but the overflow case).
      const float v = static_cast<float>(source.data()[i]);
      const std::uint16_t ours = t.dtype == DType::F16 ? float_to_half(v) : float_to_bf16(v);
      INFO(name << " element " << i << " value " << source.data()[i]);
      CHECK(ours == stored);
    }
  }
}

TEST_CASE("safetensors written by wegeft read back with shapes, dtypes, metadata and values",
          "[io][safetensors]") {
  TempDir dir;
  Rng rng(3);
  const Matrix<double> m = wt::random_matrix<double>(3, 5, rng);
  SafetensorsBuilder b;
  for (DType t : kAllDTypes) {
    if (t == DType::F8_E4M3 || t == DType::F8_E5M2) continue;  // decode-only formats
    Matrix<double> v = dtype_is_float(t) ? m : Matrix<double>((m.array() * 50).round().abs());
    if (t == DType::BOOL) v = (m.array() > 0).cast<double>();
    b.add(std::string("t_") + dtype_name(t), t, v);
  }
  b.add("cube", DType::F32, std::vector<std::int64_t>{2, 2, 3}, std::vector<float>(12, 1.5f).data(),
        12);
  CHECK_THROWS_WITH(b.add("cube", DType::F32, m), Catch::Contains("added twice"));
  b.write(dir / "out.safetensors", {{"format", "pt"}});
  const SafetensorsReader f(dir / "out.safetensors");
  CHECK(f.metadata().at("format") == "pt");
  CHECK(f.tensors().size() == 14);
  CHECK(f.matrix<double>("t_F64") == m);
  CHECK(wt::rel_diff(f.matrix<double>("t_F32"), m) < 1e-7);
  CHECK(wt::rel_diff(f.matrix<double>("t_F16"), m) < 1e-3);
  CHECK(wt::rel_diff(f.matrix<double>("t_BF16"), m) < 1e-2);
  CHECK(f.matrix<double>("t_I16") == Matrix<double>((m.array() * 50).round().abs()));
  CHECK(f.matrix<double>("t_BOOL") == Matrix<double>((m.array() > 0).cast<double>()));
  CHECK(f.info("cube").shape == std::vector<std::int64_t>{2, 2, 3});
  CHECK(f.matrix<float>("cube").rows() == 2);
  CHECK(f.matrix<float>("cube").cols() == 6);
  // 8-byte aligned data section
  CHECK((f.info("t_F64").offset % 8) == 0);
}

TEST_CASE("a failed atomic write leaves the previous file and no temporary behind",
          "[io][safetensors]") {
  TempDir dir;
  SafetensorsBuilder b;
  b.add("x", DType::F32, Matrix<float>(Matrix<float>::Ones(2, 2)));
  b.write(dir / "a.safetensors");
  const std::string before = read_bytes(dir / "a.safetensors");
  fs::create_directory(dir.path / "is_a_dir");
  fs::create_directory(dir.path / "is_a_dir" / "child");
  CHECK_THROWS_WITH(b.write(dir / "is_a_dir"),
                    Catch::Contains("is not a regular file (a directory)"));
  CHECK_THROWS_WITH(b.write(dir / "missing/x.safetensors"),
                    Catch::Contains("cannot create a temporary file"));
  CHECK(read_bytes(dir / "a.safetensors") == before);
  std::size_t entries = 0;
  for (const auto& e : fs::directory_iterator(dir.path)) {
    INFO(e.path().string());
    CHECK(e.path().string().find("wegeft-tmp-") == std::string::npos);
    ++entries;
  }
  CHECK(entries == 2);
}

TEST_CASE("hostile safetensors files get clear errors naming the file and the problem",
          "[io][safetensors][hostile]") {
  TempDir dir;
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data(8, '\0');
  struct Case {
    const char* what;
    std::string bytes;
    const char* message;
  };
  std::string huge_len = make_file(ok_header, data);
  huge_len[6] = 1;  // header length of 2^48 + ...
  std::string utf8 =
      R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"__metadata__":{"k":"\xff"}})";
  float nan_data[2] = {1.0f, NAN};
  const std::vector<Case> cases = {
      {"empty file", "", "too short for the 8-byte header length"},
      {"truncated header", make_file(ok_header, data).substr(0, 30), "exceeds the"},
      {"header length past the end", huge_len, "exceeds the"},
      {"truncated data", make_file(ok_header, data).substr(0, 8 + ok_header.size() + 5),
       "outside the 5 data bytes"},
      {"not an object", make_file("[1, 2]", ""), "does not start with '{'"},
      {"invalid JSON", make_file(R"({"a": )", ""), "invalid JSON"},
      {"invalid UTF-8", make_file(utf8, data), "invalid JSON"},
      {"duplicate names",
       make_file(
           R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           data),
       "duplicate key \"a\""},
      {"unknown dtype",
       make_file(R"({"a":{"dtype":"F128","shape":[1],"data_offsets":[0,8]}})", data),
       "unknown dtype \"F128\""},
      {"negative dimension",
       make_file(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data),
       "not a non-negative integer"},
      {"overflowing shape",
       make_file(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                 data),
       "overflows"},
      {"byte count mismatch",
       make_file(R"({"a":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", data),
       "needs 16 bytes but data_offsets span 8"},
      {"offsets reversed",
       make_file(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", data),
       "outside the 8 data bytes"},
      {"offsets past the end",
       make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data),
       "outside the 8 data bytes"},
      {"overlapping tensors",
       make_file(
           R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           data),
       "overlap"},
      {"missing offsets", make_file(R"({"a":{"dtype":"F32","shape":[2]}})", data), "data_offsets"},
      {"float offsets",
       make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0.0,8.5]}})", data),
       "data_offsets"},
      {"metadata not strings", make_file(R"({"__metadata__":{"k":1}})", ""), "is not a string"},
      {"entry not an object", make_file(R"({"a":5})", ""), "is not an object"},
      // 100,000 levels in a field the reader would otherwise recurse through, in shape and in an
      // unused field; 65 levels is one past the limit, and brackets inside strings do not count.
      {"deeply nested shape",
       make_file(R"({"a":{"dtype":"F32","shape":)" + std::string(100000, '[') +
                     std::string(100000, ']') + "}}",
                 data),
       "JSON nests deeper than 64 levels"},
      {"deeply nested unused field",
       make_file(R"({"x":)" + std::string(65, '[') + std::string(65, ']') + "}", ""),
       "JSON nests deeper than 64 levels"},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const std::string path = dir / "bad.safetensors";
    write_bytes(path, c.bytes);
    CHECK_THROWS_WITH(SafetensorsReader(path),
                      Catch::Contains(c.message) && Catch::Contains("bad.safetensors"));
  }
  write_bytes(dir / "nan.safetensors",
              make_file(ok_header, std::string(reinterpret_cast<char*>(nan_data), 8)));
  const SafetensorsReader f(dir / "nan.safetensors");
  CHECK_THROWS_WITH(f.matrix<float>("a"),
                    Catch::Contains("tensor 'a' has a non-finite value (nan) at element 1"));
  CHECK(std::isnan(f.matrix<float>("a", false)(0, 1)));
  CHECK_THROWS_WITH(f.info("b"), Catch::Contains("no tensor named 'b'"));
  CHECK_THROWS_WITH(SafetensorsReader(dir / "does-not-exist"), Catch::Contains("cannot open"));
  // 64 levels parse (here inside metadata a reader does not use: refused as not a string), and
  // brackets inside strings are text.
  write_bytes(
      dir / "deep-ok.safetensors",
      make_file(R"({"__metadata__":{"k":)" + std::string(62, '[') + std::string(62, ']') + "}}",
                ""));
  CHECK_THROWS_WITH(SafetensorsReader(dir / "deep-ok.safetensors"),
                    Catch::Contains("is not a string"));
  write_bytes(dir / "brackets.safetensors",
              make_file(R"({"__metadata__":{"k":")" + std::string(500, '[') + R"("}})", ""));
  CHECK(SafetensorsReader(dir / "brackets.safetensors").metadata().at("k") ==
        std::string(500, '['));
}

TEST_CASE("crc32 gives zlib's check value and continues across pieces", "[io]") {
  const std::string s = "123456789";
  CHECK(crc32(s.data(), s.size()) == 0xCBF43926u);
  CHECK(crc32(s.data() + 4, 5, crc32(s.data(), 4)) == 0xCBF43926u);
  CHECK(crc32(nullptr, 0) == 0u);
}

TEST_CASE(
    "the atomic writer keeps modes, refuses links and devices, fits long names and clears dead "
    "temporaries",
    "[io][hostile]") {
  TempDir dir;
  const auto write = [](const std::string& path, const std::string& text) {
    write_file_atomic(path, text);
  };
  // A replaced file keeps its permission bits.
  write((dir / "secret"), "a");
  fs::permissions(dir.path / "secret", fs::perms::owner_read | fs::perms::owner_write);
  write((dir / "secret"), "b");
  CHECK(fs::status(dir.path / "secret").permissions() ==
        (fs::perms::owner_read | fs::perms::owner_write));
  CHECK(read_bytes((dir / "secret")) == "b");
  // A symbolic link is not written through, and the file it points at is unchanged.
  fs::create_symlink(dir.path / "secret", dir.path / "link");
  CHECK_THROWS_WITH(write((dir / "link"), "c"), Catch::Contains("link: is a symbolic link"));
  CHECK(read_bytes((dir / "secret")) == "b");
  CHECK(fs::is_symlink(dir.path / "link"));
  // A device node is refused, not replaced (the writer would need rights to /dev, but the check comes first).
  CHECK_THROWS_WITH(write("/dev/null", "x"),
                    Catch::Contains("/dev/null: exists and is not a regular file"));
  // A 250-byte file name: the temporary's name is shortened, not the target's.
  const std::string long_name(250, 'n');
  write((dir / long_name), "long");
  CHECK(read_bytes((dir / long_name)) == "long");
  // Temporaries of a killed write (a process that no longer exists) go on the next write of that
  // file; a temporary of a live process stays.
  const pid_t child = ::fork();
  if (child == 0) ::_exit(0);
  ::waitpid(child, nullptr, 0);
  const std::string dead = dir / (".secret.wegeft-tmp-" + std::to_string(child) + "-123");
  const std::string live = dir / (".secret.wegeft-tmp-" + std::to_string(::getppid()) + "-456");
  std::ofstream(dead) << "half";
  std::ofstream(live) << "busy";
  write((dir / "secret"), "d");
  CHECK(!fs::exists(dead));
  CHECK(fs::exists(live));
  CHECK(read_bytes((dir / "secret")) == "d");
}

TEST_CASE("IDX files read with their shape and values; malformed ones are refused by name",
          "[io][idx]") {
  TempDir dir;
  // [2, 3] unsigned bytes, as MNIST's files lay them out: 00 00 08 02, 00 00 00 02, 00 00 00 03
  const std::string header("\0\0\x08\x02\0\0\0\x02\0\0\0\x03", 12);
  const std::string values("\x01\x02\x03\xfd\xfe\xff", 6);
  write_bytes(dir / "ok", header + values);
  const IdxArray a = read_idx(dir / "ok");
  CHECK(a.shape == std::vector<std::int64_t>{2, 3});
  CHECK(a.values == std::vector<std::uint8_t>{1, 2, 3, 253, 254, 255});

  const auto refused = [&](const std::string& bytes, const std::string& why) {
    write_bytes(dir / "bad", bytes);
    CHECK_THROWS_WITH(read_idx(dir / "bad"), Catch::Contains(dir / "bad") && Catch::Contains(why));
  };
  refused("", "too short");
  refused(std::string("\x1f\x8b\x08\x00", 4) + values, "uncompressed first");    // gzip magic
  refused(std::string("\0\0\x0d\x01\0\0\0\x01", 8) + "abcd", "value type 0xd");  // floats
  refused(std::string("\0\0\x08\x05", 4) + std::string(20, '\0'), "5 dimensions");
  refused(std::string("\0\0\x08\x02\0\0\0\x02", 8), "needs 12");
  refused(header + values.substr(0, 5), "truncated");
  refused(header + values + "x", "trailing bytes");
  refused(std::string("\0\0\x08\x02\0\0\0\x00\0\0\0\x03", 12), "dimension 0 is zero");
  // 2^32 - 1 in every dimension: the product overflows 64 bits unless checked against the size
  refused(std::string("\0\0\x08\x04", 4) + std::string(16, '\xff') + values, "more values");
}

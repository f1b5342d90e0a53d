#include "support.hpp"

#include <random>
#include <regex>

using namespace wegeft;

TEST_CASE("WEGEFT_CHECK throws wegeft::Error naming file, line, expression and values", "[core]") {
  const int got = 3, want = 5;
  try {
    WEGEFT_CHECK(got == want, "got " << got << " columns, want " << want);
    FAIL("WEGEFT_CHECK did not throw");
  } catch (const Error& e) {
    const std::string msg = e.what();
    CHECK_THAT(msg, Catch::Contains("got 3 columns, want 5"));
    CHECK_THAT(msg, Catch::Contains("got == want"));
    CHECK_THAT(msg, Catch::Contains("test_core.cpp:"));
  }
  CHECK_NOTHROW([&] { WEGEFT_CHECK(got != want, "unused"); }());
}

TEST_CASE("WEGEFT_ASSERT is active in the test build and throws wegeft::Error", "[core]") {
  CHECK_THROWS_AS([] { WEGEFT_ASSERT(1 + 1 == 3); }(), Error);
}

TEST_CASE("philox4x32_10 matches Random123's published known-answer vectors", "[core][rng]") {
  using W = std::array<std::uint32_t, 4>;
  CHECK(philox4x32_10({0, 0, 0, 0}, {0, 0}) == W{0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8});
  CHECK(philox4x32_10({0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff}, {0xffffffff, 0xffffffff}) ==
        W{0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd});
  CHECK(philox4x32_10({0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344}, {0xa4093822, 0x299f31d0}) ==
        W{0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1});
}

TEST_CASE("Rng stream and uniforms equal an independent Python implementation", "[core][rng]") {
  const wt::Golden g("rng.txt");
  const auto meta = g.get("stream.seed_stream_words");
  const std::uint64_t seed =
      (static_cast<std::uint64_t>(meta(0, 0)) << 32) | static_cast<std::uint64_t>(meta(0, 1));
  const auto stream = static_cast<std::uint64_t>(meta(0, 2));
  const auto words = g.get("stream.words");
  Rng rng(seed, stream);
  for (Index i = 0; i < words.cols(); ++i)
    CHECK(rng.next_u32() == static_cast<std::uint32_t>(words(0, i)));
  const auto uniforms = g.get("stream.uniform");
  Rng again(seed, stream);
  for (Index i = 0; i < uniforms.cols(); ++i) CHECK(again.uniform() == uniforms(0, i));
}

TEST_CASE("dropout mask equals an independent Python implementation and scales by 1/(1-p)",
          "[core][rng]") {
  const wt::Golden g("rng.txt");
  const auto meta = g.get("mask.seed_p");
  const std::uint64_t seed =
      (static_cast<std::uint64_t>(meta(0, 0)) << 32) | static_cast<std::uint64_t>(meta(0, 1));
  const double p = meta(0, 2);
  const auto keep = g.get("mask.keep");
  const Index n = keep.cols();
  std::vector<double> in(static_cast<std::size_t>(n)), out(in.size());
  Rng rng(99);
  for (auto& v : in) v = rng.uniform(0.5, 2.0);
  dropout_apply(out.data(), in.data(), n, p, seed);
  Index kept = 0;
  for (Index i = 0; i < n; ++i) {
    const auto k = static_cast<std::size_t>(i);
    CHECK(out[k] == (keep(0, i) != 0.0 ? in[k] * (1.0 / (1.0 - p)) : 0.0));
    kept += keep(0, i) != 0.0;
  }
  CHECK(kept > 0);
  CHECK(kept < n);
}

TEST_CASE("dropout keeps about 1 - p of a large tensor", "[core][rng]") {
  const Index n = 200001;
  std::vector<float> ones(static_cast<std::size_t>(n), 1.0f), out(ones.size());
  for (double p : {0.1, 0.5}) {
    dropout_apply(out.data(), ones.data(), n, p, 12345);
    Index kept = 0;
    for (float v : out) kept += v != 0.0f;
    const double frac = static_cast<double>(kept) / static_cast<double>(n);
    CHECK(std::abs(frac - (1.0 - p)) < 5e-3);  // ~ 4.5 standard deviations
  }
  CHECK_THROWS_AS(dropout_apply(out.data(), ones.data(), n, 1.0, 1), Error);
}

TEST_CASE("Rng state save and restore replays the stream exactly", "[core][rng]") {
  Rng rng(5, 1);
  for (int i = 0; i < 7; ++i) rng.next_u32();  // mid-block
  const auto saved = rng.state();
  std::vector<std::uint32_t> first;
  for (int i = 0; i < 10; ++i) first.push_back(rng.next_u32());
  Rng other(123);
  other.set_state(saved);
  for (int i = 0; i < 10; ++i) CHECK(other.next_u32() == first[static_cast<std::size_t>(i)]);
  Rng stream2(5, 2);
  CHECK(Rng(5, 1).next_u64() != stream2.next_u64());
}

TEST_CASE("Rng uniform and normal have the right range and moments", "[core][rng]") {
  Rng rng(2024);
  const int n = 200000;
  double sum = 0, sum2 = 0, lo = 1, hi = -1;
  for (int i = 0; i < n; ++i) {
    const float u = rng.uniform(-0.25f, 0.25f);
    lo = std::min(lo, double(u));
    hi = std::max(hi, double(u));
    const double z = rng.normal();
    sum += z;
    sum2 += z * z;
  }
  CHECK(lo >= -0.25);
  CHECK(hi <= 0.25);
  CHECK(hi - lo > 0.49);
  CHECK(std::abs(sum / n) < 0.015);
  CHECK(std::abs(sum2 / n - 1.0) < 0.02);
}

TEMPLATE_TEST_CASE("ParameterStore gives aligned, zeroed, independent slices", "[core]", float,
                   double) {
  ParameterStore<TestType> store;
  const auto a = store.add("a", 3, 5);
  const auto b = store.add("b", 7, 2);
  CHECK(store.parameter_count() == 29);
  CHECK(store.size() >= 29);
  CHECK(reinterpret_cast<std::uintptr_t>(store.value(a).data()) % 64 == 0);
  CHECK(reinterpret_cast<std::uintptr_t>(store.value(b).data()) % 64 == 0);
  CHECK(store.value(b).isZero(0));
  CHECK(store.grad(b).isZero(0));
  store.value(a).setConstant(TestType(2));
  store.grad(b).setConstant(TestType(3));
  CHECK(store.value(b).isZero(0));
  CHECK(store.grad(a).isZero(0));
  TestType flat_sum = 0;
  for (auto v : store.values()) flat_sum += v;
  CHECK(flat_sum == TestType(30));
  store.zero_grad();
  CHECK(store.grad(b).isZero(0));
  CHECK(store.entry(b).name == "b");
  CHECK_THROWS_AS(store.value(ParamId{9}), Error);
  CHECK_THROWS_AS(store.add("empty", 0, 4), Error);
}

TEST_CASE("FrozenLinear matches a scalar reference and rejects wrong shapes", "[core]") {
  Rng rng(3);
  auto w = wt::random_matrix<double>(5, 9, rng);
  auto x = wt::random_matrix<double>(4, 9, rng);
  auto dy = wt::random_matrix<double>(4, 5, rng);
  Vector<double> b = wt::random_matrix<double>(5, 1, rng);
  FrozenLinear<double> lin(w, &b);
  Matrix<double> y(4, 5), dx(4, 9);
  lin.forward(y, x);
  CHECK(wt::rel_diff(y, wt::reference_linear<double>(x, w, b.data())) < 1e-14);
  lin.backward_input(dx, dy);
  CHECK(wt::rel_diff(dx, wt::reference_matmul<double>(dy, w)) < 1e-14);
  Matrix<double> bad_x(4, 8), bad_y(4, 6);
  CHECK_THROWS_WITH(lin.forward(y, bad_x),
                    Catch::Contains("[4, 8]") && Catch::Contains("9 columns"));
  CHECK_THROWS_WITH(lin.forward(bad_y, x), Catch::Contains("[4, 6]") && Catch::Contains("[4, 5]"));
  Vector<double> short_bias(4);
  CHECK_THROWS_WITH(FrozenLinear<double>(w, &short_bias), Catch::Contains("4 entries"));
}

namespace {
// Random patterns over a small alphabet with every construct Pattern shares with ECMAScript, kept
// shallow so that std::regex (a backtracking matcher) stays fast enough to act as the oracle.
std::string random_pattern(std::mt19937& g, int depth) {
  const char* literals[] = {"a", "b", "_", "\\.", "0"};
  const unsigned k = static_cast<unsigned>(g() % 10) % (depth > 2 ? 4u : 10u);
  switch (k) {
    case 0:
    case 1:
    case 2:
      return literals[g() % 5];
    case 3:
      return std::string("[") + (g() % 2 ? "^" : "") + "a0-9]";
    case 4:
      return random_pattern(g, depth + 1) + random_pattern(g, depth + 1);
    case 5:
      return "(" + random_pattern(g, depth + 1) + "|" + random_pattern(g, depth + 1) + ")";
    case 6:
      return "(?:" + random_pattern(g, depth + 1) + ")*";
    case 7:
      return "(" + random_pattern(g, depth + 1) + ")+";
    case 8:
      return "(" + random_pattern(g, depth + 1) + ")?";
    default: {
      const unsigned lo = g() % 3, hi = lo + g() % 3;
      return "(" + random_pattern(g, depth + 1) + "){" + std::to_string(lo) + "," +
             std::to_string(hi) + "}";
    }
  }
}
}  // namespace

TEST_CASE("Pattern's full, prefix and search matches equal std::regex on 20,000 random cases",
          "[core][pattern]") {
  std::mt19937 g(7);
  const char alphabet[] = "ab_.0x";
  int mismatches = 0;
  for (int i = 0; i < 1000; ++i) {
    std::string source = random_pattern(g, 0);
    if (g() % 4 == 0) source = ".*" + source;
    if (g() % 5 == 0) source += "\\b";
    if (g() % 7 == 0) source = "^" + source + "$";
    const Pattern p(source);
    const std::regex oracle(source);
    for (int j = 0; j < 20; ++j) {
      std::string s;
      for (unsigned n = g() % 8; n > 0; --n) s += alphabet[g() % 6];
      const bool full = std::regex_match(s, oracle),
                 prefix = std::regex_search(s, oracle, std::regex_constants::match_continuous),
                 any = std::regex_search(s, oracle);
      if (p.full_match(s) != full || p.prefix_match(s) != prefix || p.search(s) != any) {
        UNSCOPED_INFO("pattern '" << source << "' on '" << s << "': oracle " << full << prefix
                                  << any);
        ++mismatches;
      }
    }
  }
  CHECK(mismatches == 0);
}

TEST_CASE("Pattern follows Python re on PEFT-style patterns, classes, counts and anchors",
          "[core][pattern]") {
  const std::string q = "model.layers.11.self_attn.q_proj";
  CHECK(Pattern(R"(.*\.(q|v)_proj)").full_match(q));
  CHECK(Pattern(R"(model\.layers\.\d+\.self_attn\.(?:q|k)_proj)").full_match(q));
  CHECK(!Pattern(R"(model\.layers\.\d\.self_attn\.q_proj)").full_match(q));
  CHECK(Pattern(R"(model\.layers\.\d{2}\.)").prefix_match(q));
  CHECK(!Pattern(R"(model\.layers\.\d{2}\.)").full_match(q));
  CHECK(Pattern(R"((?P<block>\d+)\.self)").search(q));
  CHECK(Pattern(R"(\bq_proj$)").search(q));
  CHECK(!Pattern(R"(\Bq_proj$)").search(q));
  CHECK(Pattern("a$").prefix_match("a\n"));  // $ matches before a final newline, as in Python
  CHECK(!Pattern("a$").full_match("a\n"));
  CHECK(!Pattern(R"(a\Z)").prefix_match("a\n"));
  CHECK(Pattern("a{,2}b").full_match("aab"));
  CHECK(Pattern("a{,}b").full_match("aaaab"));
  CHECK(Pattern("a{x}").full_match("a{x}"));  // not a count: literal braces, as in Python
  CHECK(Pattern("[]a]+").full_match("]a]"));
  CHECK(Pattern(R"([^\d.]+)").full_match("q_proj"));
  CHECK(!Pattern(R"([^\d.]+)").full_match("q.proj"));
  CHECK(Pattern(R"(\x41+?)").full_match("AAA"));
  CHECK(Pattern(".").full_match("x"));
  CHECK(!Pattern(".").full_match("\n"));
  CHECK(Pattern("").full_match(""));
  CHECK(Pattern("(a|)+").full_match("aa"));
}

TEST_CASE("Pattern refuses what it cannot match in linear time and bounds its size",
          "[core][pattern][hostile]") {
  const auto refuses = [](const std::string& source, const char* why) {
    INFO(source.substr(0, 60));
    CHECK_THROWS_WITH(Pattern(source), Catch::Contains(why));
  };
  refuses("(a)\\1", "backreferences");
  refuses("(?=a)", "lookaround");
  refuses("(?i)a", "lookaround, inline flags");
  refuses("a*+", "possessive");
  refuses("a**", "multiple repeat");
  refuses("*a", "nothing to repeat");
  refuses("^*", "nothing to repeat");
  refuses("(a", "missing ')'");
  refuses("a)", "unbalanced parenthesis");
  refuses("[a", "unterminated character set");
  refuses("[z-a]", "bad character range");
  refuses("a{3,2}", "min repeat greater than max repeat");
  refuses("a{1001}", "counts above 1000");
  refuses("\\q", "unknown or unsupported escape");
  refuses(std::string(100, '(') + std::string(100, ')'), "nest deeper than 64");
  refuses(std::string(20000, '(') + std::string(20000, ')'), "at most 4096");
  refuses("(a{1000}){1000}", "more than 20000 instructions");
}

TEST_CASE("Pattern matching takes linear time on patterns that make backtracking engines explode",
          "[core][pattern][hostile]") {
  // (.*.*.*)*X and (a|a)*b against 100,000 bytes: a backtracking matcher takes minutes or overflows
  // its stack; a Thompson simulation visits each (position, instruction) pair once.
  const std::string text(100000, 'a');
  CHECK(!Pattern("(.*.*.*)*X").full_match(text));
  CHECK(!Pattern("(a|a)*b").full_match(text));
  CHECK(!Pattern("(a*)*b").search(text));
  CHECK(Pattern("(a|aa)*").full_match(text));
}

// Regular expressions over module names (PEFT's target_modules as a string, rank_pattern and
// alpha_pattern keys, tied-module patterns, norm selections), in Python `re` syntax and matched
// in time linear in the text: the pattern is compiled to a Thompson NFA and simulated one byte at
// a time, so no pattern makes matching backtrack (`(.*.*.*)*X` costs what `.*X` costs).
//
// Syntax (Python's, minus what a linear-time matcher cannot do): literals and `\`-escapes of
// punctuation, `.` (any byte but a newline), classes `[a-z_]` / `[^.]` with `\d \w \s \D \W \S`,
// groups `(...)`, `(?:...)`, `(?P<name>...)`, alternation `|`, repetition `* + ? {n} {n,} {,m}
// {n,m}` (and their lazy forms, which match the same strings), anchors `^ $ \A \Z \b \B`, escapes
// `\t \n \r \f \v \xHH`. Backreferences, lookaround, inline flags and possessive repetition are
// refused with an error naming the pattern. Matching works on bytes (a `.` or a class matches one
// byte of a UTF-8 name).
//
// Limits, each refused with an error naming the pattern: 4096 bytes of pattern, groups nested 64
// deep, counts up to 1000, 20,000 NFA instructions after repetition is expanded.
//
//   wegeft::Pattern p(R"(.*\.(q|v)_proj)");
//   p.full_match("model.layers.0.self_attn.q_proj");   // re.fullmatch -> true
//   p.prefix_match("model.layers.0.self_attn.q_proj.x"); // re.match: some prefix matches
#pragma once

#include <bitset>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "wegeft/core/error.hpp"

namespace wegeft {

class Pattern {
 public:
  static constexpr std::size_t kMaxBytes = 4096;
  static constexpr int kMaxDepth = 64;
  static constexpr int kMaxCount = 1000;
  static constexpr std::size_t kMaxInstructions = 20000;

  Pattern() : Pattern(std::string_view{}) {}
  explicit Pattern(std::string_view pattern) : m_source(pattern) {
    WEGEFT_CHECK(pattern.size() <= kMaxBytes, "regular expression of "
                                                  << pattern.size() << " bytes: at most "
                                                  << kMaxBytes << " are accepted");
    Parser p{pattern, m_source, m_sets};
    Node root = p.alternation(0);
    if (p.pos < pattern.size()) p.fail("unbalanced parenthesis");
    emit(root);
    m_prog.push_back({Op::match, 0, 0});
  }

  const std::string& source() const { return m_source; }

  /// Whether the whole of `s` matches (Python's re.fullmatch).
  bool full_match(std::string_view s) const { return run(s, Mode::full); }
  /// Whether some prefix of `s` matches (Python's re.match).
  bool prefix_match(std::string_view s) const { return run(s, Mode::prefix); }
  /// Whether some substring of `s` matches (Python's re.search).
  bool search(std::string_view s) const { return run(s, Mode::search); }

 private:
  enum class Op : std::uint8_t {
    byte_set,
    split,
    jump,
    match,
    begin,
    end,
    end_or_newline,
    word_boundary,
    not_word_boundary
  };
  struct Inst {
    Op op;
    int x, y;  // byte_set: set index; split: the two targets; jump: target
  };
  using ByteSet = std::bitset<256>;

  // The parse tree. Children are owned; depth is bounded by the parser.
  struct Node {
    enum Kind { empty, set, assert_op, concat, alternate, repeat } kind = empty;
    int value = 0;         // set: index; assert_op: the Op
    int min = 0, max = 0;  // repeat: bounds, max = -1 for unbounded
    std::vector<Node> kids;
  };

  struct Parser {
    std::string_view s;
    const std::string& source;
    std::vector<ByteSet>& sets;
    std::size_t pos = 0;

    [[noreturn]] void fail(const std::string& why) const {
      detail::raise(__FILE__, __LINE__, "Pattern",
                    "invalid regular expression '" + source + "' at offset " + std::to_string(pos) +
                        ": " + why);
    }
    bool at(char c) const { return pos < s.size() && s[pos] == c; }
    int add_set(const ByteSet& b) {
      sets.push_back(b);
      return static_cast<int>(sets.size()) - 1;
    }
    static ByteSet digits() {
      ByteSet b;
      for (int c = '0'; c <= '9'; ++c) b.set(static_cast<std::size_t>(c));
      return b;
    }
    static ByteSet word() {
      ByteSet b = digits();
      for (int c = 'a'; c <= 'z'; ++c) {
        const int upper = c - 'a' + 'A';
        b.set(static_cast<std::size_t>(c)).set(static_cast<std::size_t>(upper));
      }
      b.set('_');
      return b;
    }
    static ByteSet space() {
      ByteSet b;
      for (char c : {' ', '\t', '\n', '\r', '\f', '\v'}) b.set(static_cast<unsigned char>(c));
      return b;
    }
    static int hex(char c) {
      if (c >= '0' && c <= '9') return c - '0';
      if (c >= 'a' && c <= 'f') return c - 'a' + 10;
      if (c >= 'A' && c <= 'F') return c - 'A' + 10;
      return -1;
    }

    // An escape after the backslash at pos - 1: a class (\d ...) sets `set`, a byte returns it.
    // Anchors are handled by the caller.
    int escape(ByteSet* set) {
      if (pos >= s.size()) fail("a pattern cannot end with a backslash");
      const char c = s[pos++];
      switch (c) {
        case 'd':
          *set = digits();
          return -1;
        case 'D':
          *set = ~digits();
          return -1;
        case 'w':
          *set = word();
          return -1;
        case 'W':
          *set = ~word();
          return -1;
        case 's':
          *set = space();
          return -1;
        case 'S':
          *set = ~space();
          return -1;
        case 't':
          return '\t';
        case 'n':
          return '\n';
        case 'r':
          return '\r';
        case 'f':
          return '\f';
        case 'v':
          return '\v';
        case 'a':
          return '\a';
        case 'x': {
          if (pos + 2 > s.size() || hex(s[pos]) < 0 || hex(s[pos + 1]) < 0)
            fail("\\x needs two hexadecimal digits");
          const int v = hex(s[pos]) * 16 + hex(s[pos + 1]);
          pos += 2;
          return v;
        }
        default:
          break;
      }
      if (c >= '0' && c <= '9') fail("backreferences and octal escapes are not supported");
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        fail(std::string("unknown or unsupported escape \\") + c);
      return static_cast<unsigned char>(c);
    }

    Node set_node(const ByteSet& b) {
      Node n;
      n.kind = Node::set;
      n.value = add_set(b);
      return n;
    }

    Node alternation(int depth) {
      if (depth > kMaxDepth)
        fail("groups nest deeper than " + std::to_string(kMaxDepth) + " levels");
      Node first = concatenation(depth);
      if (!at('|')) return first;
      Node alt;
      alt.kind = Node::alternate;
      alt.kids.push_back(std::move(first));
      while (at('|')) {
        ++pos;
        alt.kids.push_back(concatenation(depth));
      }
      return alt;
    }

    Node concatenation(int depth) {
      Node cat;
      cat.kind = Node::concat;
      while (pos < s.size() && !at('|') && !at(')')) {
        Node atom_node;
        const bool repeatable = atom(depth, atom_node);
        quantifiers(atom_node, repeatable);
        cat.kids.push_back(std::move(atom_node));
      }
      return cat;
    }

    // One atom at pos into `out`; returns whether a quantifier may follow it.
    bool atom(int depth, Node& out) {
      const char c = s[pos++];
      switch (c) {
        case '(': {
          if (at('?')) {
            ++pos;
            if (at(':')) {
              ++pos;
            } else if (at('P') && pos + 1 < s.size() && s[pos + 1] == '<') {
              const std::size_t close = s.find('>', pos + 2);
              if (close == std::string_view::npos || close == pos + 2)
                fail("a named group needs a name and '>'");
              pos = close + 1;
            } else {
              fail("lookaround, inline flags and other (? groups are not supported");
            }
          }
          out = alternation(depth + 1);
          if (!at(')')) fail("missing ')'");
          ++pos;
          return true;
        }
        case ')':
          fail("unbalanced parenthesis");
        case '*':
        case '+':
        case '?':
          fail("nothing to repeat");
        case '{':
          if (count_form()) fail("nothing to repeat");
          out = literal('{');
          return true;
        case '[':
          out = set_node(bracket());
          return true;
        case '.': {
          ByteSet b;
          b.set();
          b.reset('\n');
          out = set_node(b);
          return true;
        }
        case '^':
          out = assertion(Op::begin);
          return false;
        case '$':
          out = assertion(Op::end_or_newline);
          return false;
        case '\\': {
          if (at('A')) return ++pos, out = assertion(Op::begin), false;
          if (at('Z')) return ++pos, out = assertion(Op::end), false;
          if (at('b')) return ++pos, out = assertion(Op::word_boundary), false;
          if (at('B')) return ++pos, out = assertion(Op::not_word_boundary), false;
          ByteSet b;
          const int v = escape(&b);
          out = v >= 0 ? literal(static_cast<char>(v)) : set_node(b);
          return true;
        }
        default:
          out = literal(c);
          return true;
      }
    }

    Node literal(char c) {
      ByteSet b;
      b.set(static_cast<unsigned char>(c));
      return set_node(b);
    }
    static Node assertion(Op op) {
      Node n;
      n.kind = Node::assert_op;
      n.value = static_cast<int>(op);
      return n;
    }

    // Whether a {n}, {n,}, {,m} or {n,m} count starts at pos (the '{' just consumed is at pos - 1).
    bool count_form() const {
      std::size_t i = pos;
      bool digits_seen = false, comma = false;
      for (; i < s.size() && s[i] != '}'; ++i) {
        if (s[i] == ',' && !comma)
          comma = true;
        else if (s[i] >= '0' && s[i] <= '9')
          digits_seen = true;
        else
          return false;
      }
      return i < s.size() && (digits_seen || comma);
    }
    int number() {
      long v = 0;
      const std::size_t start = pos;
      while (pos < s.size() && s[pos] >= '0' && s[pos] <= '9') {
        v = v * 10 + (s[pos++] - '0');
        if (v > kMaxCount)
          fail("repetition counts above " + std::to_string(kMaxCount) + " are not supported");
      }
      return pos == start ? -1 : static_cast<int>(v);
    }

    void quantifiers(Node& n, bool repeatable) {
      bool quantified = false;
      while (pos < s.size()) {
        int lo = 0, hi = 0;
        const char c = s[pos];
        if (c == '*')
          lo = 0, hi = -1, ++pos;
        else if (c == '+')
          lo = 1, hi = -1, ++pos;
        else if (c == '?')
          lo = 0, hi = 1, ++pos;
        else if (c == '{') {
          ++pos;
          if (!count_form()) {
            --pos;
            return;  // a literal '{', read by the next atom
          }
          lo = number();
          hi = lo;
          if (at(',')) {
            ++pos;
            hi = number();
            if (lo < 0) lo = 0;
          }
          if (lo < 0) fail("a count needs a number");
          ++pos;  // '}'
          if (hi >= 0 && hi < lo) fail("min repeat greater than max repeat");
        } else {
          return;
        }
        if (!repeatable) fail("nothing to repeat");
        if (quantified) fail("multiple repeat");
        quantified = true;
        if (at('?'))
          ++pos;  // lazy: the same strings match
        else if (at('+'))
          fail("possessive repetition is not supported");
        Node r;
        r.kind = Node::repeat;
        r.min = lo;
        r.max = hi;
        r.kids.push_back(std::move(n));
        n = std::move(r);
      }
    }

    ByteSet bracket() {
      ByteSet b;
      const bool negate = at('^');
      if (negate) ++pos;
      bool first = true;
      while (true) {
        if (pos >= s.size()) fail("unterminated character set");
        if (s[pos] == ']' && !first) {
          ++pos;
          break;
        }
        first = false;
        int lo;
        ByteSet cls;
        if (s[pos] == '\\') {
          ++pos;
          if (at('b')) {
            ++pos;
            lo = '\b';
          } else {
            lo = escape(&cls);
          }
        } else {
          if (static_cast<unsigned char>(s[pos]) >= 0x80)
            fail("non-ASCII characters in a character set are not supported");
          lo = static_cast<unsigned char>(s[pos++]);
        }
        if (lo < 0) {
          b |= cls;
          continue;
        }
        if (at('-') && pos + 1 < s.size() && s[pos + 1] != ']') {
          ++pos;
          int hi;
          if (s[pos] == '\\') {
            ++pos;
            hi = escape(&cls);
            if (hi < 0) fail("a class cannot end a range");
          } else {
            if (static_cast<unsigned char>(s[pos]) >= 0x80)
              fail("non-ASCII characters in a character set are not supported");
            hi = static_cast<unsigned char>(s[pos++]);
          }
          if (hi < lo) fail("bad character range");
          for (int v = lo; v <= hi; ++v) b.set(static_cast<std::size_t>(v));
        } else {
          b.set(static_cast<std::size_t>(lo));
        }
      }
      return negate ? ~b : b;
    }
  };

  void push(Inst i) {
    WEGEFT_CHECK(m_prog.size() < kMaxInstructions,
                 "regular expression '" << m_source << "' expands to more than " << kMaxInstructions
                                        << " instructions; use smaller repetition counts");
    m_prog.push_back(i);
  }
  int here() const { return static_cast<int>(m_prog.size()); }

  // Thompson's construction; recursion depth follows the (bounded) nesting of the tree.
  void emit(const Node& n) {
    switch (n.kind) {
      case Node::empty:
        return;
      case Node::set:
        push({Op::byte_set, n.value, 0});
        return;
      case Node::assert_op:
        push({static_cast<Op>(n.value), 0, 0});
        return;
      case Node::concat:
        for (const auto& k : n.kids) emit(k);
        return;
      case Node::alternate: {
        std::vector<int> jumps;
        for (std::size_t i = 0; i < n.kids.size(); ++i) {
          if (i + 1 < n.kids.size()) {
            const int split = here();
            push({Op::split, split + 1, 0});
            emit(n.kids[i]);
            jumps.push_back(here());
            push({Op::jump, 0, 0});
            m_prog[static_cast<std::size_t>(split)].y = here();
          } else {
            emit(n.kids[i]);
          }
        }
        for (int j : jumps) m_prog[static_cast<std::size_t>(j)].x = here();
        return;
      }
      case Node::repeat: {
        const Node& k = n.kids.front();
        for (int i = 0; i < n.min; ++i) emit(k);
        if (n.max < 0) {  // k*
          const int split = here();
          push({Op::split, split + 1, 0});
          emit(k);
          push({Op::jump, split, 0});
          m_prog[static_cast<std::size_t>(split)].y = here();
        } else {  // (k(k(k)?)?)? for the optional copies
          std::vector<int> splits;
          for (int i = n.min; i < n.max; ++i) {
            splits.push_back(here());
            push({Op::split, here() + 1, 0});
            emit(k);
          }
          for (int sp : splits) m_prog[static_cast<std::size_t>(sp)].y = here();
        }
        return;
      }
    }
  }

  enum class Mode { full, prefix, search };

  static bool is_word(unsigned char c) {
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
  }

  // The set of live instructions (byte_set and match only) after following every epsilon edge.
  struct ThreadList {
    std::vector<int> pcs;
    std::vector<std::uint32_t> mark;
    std::uint32_t generation = 0;
  };

  void add(ThreadList& list, std::vector<int>& stack, int start, std::string_view s,
           std::size_t at) const {
    stack.clear();
    stack.push_back(start);
    while (!stack.empty()) {
      const int pc = stack.back();
      stack.pop_back();
      auto& m = list.mark[static_cast<std::size_t>(pc)];
      if (m == list.generation) continue;
      m = list.generation;
      const Inst& i = m_prog[static_cast<std::size_t>(pc)];
      const bool before_word = at > 0 && is_word(static_cast<unsigned char>(s[at - 1]));
      const bool after_word = at < s.size() && is_word(static_cast<unsigned char>(s[at]));
      switch (i.op) {
        case Op::byte_set:
        case Op::match:
          list.pcs.push_back(pc);
          break;
        case Op::jump:
          stack.push_back(i.x);
          break;
        case Op::split:
          stack.push_back(i.y);
          stack.push_back(i.x);
          break;
        case Op::begin:
          if (at == 0) stack.push_back(pc + 1);
          break;
        case Op::end:
          if (at == s.size()) stack.push_back(pc + 1);
          break;
        case Op::end_or_newline:
          if (at == s.size() || (at + 1 == s.size() && s[at] == '\n')) stack.push_back(pc + 1);
          break;
        case Op::word_boundary:
          if (before_word != after_word) stack.push_back(pc + 1);
          break;
        case Op::not_word_boundary:
          if (before_word == after_word) stack.push_back(pc + 1);
          break;
      }
    }
  }

  bool run(std::string_view s, Mode mode) const {
    ThreadList cur, next;
    cur.mark.assign(m_prog.size(), 0);
    next.mark.assign(m_prog.size(), 0);
    std::vector<int> stack;
    cur.generation = 1;
    add(cur, stack, 0, s, 0);
    for (std::size_t at = 0;; ++at) {
      for (int pc : cur.pcs)
        if (m_prog[static_cast<std::size_t>(pc)].op == Op::match &&
            (mode != Mode::full || at == s.size()))
          return true;
      if (at == s.size()) return false;
      next.pcs.clear();
      next.generation = cur.generation + 1;
      const auto c = static_cast<unsigned char>(s[at]);
      for (int pc : cur.pcs) {
        const Inst& i = m_prog[static_cast<std::size_t>(pc)];
        if (i.op == Op::byte_set && m_sets[static_cast<std::size_t>(i.x)].test(c))
          add(next, stack, pc + 1, s, at + 1);
      }
      if (mode == Mode::search) add(next, stack, 0, s, at + 1);
      std::swap(cur, next);
      if (cur.pcs.empty() && mode != Mode::search) return false;
    }
  }

  std::string m_source;
  std::vector<ByteSet> m_sets;
  std::vector<Inst> m_prog;
};

}  // namespace wegeft

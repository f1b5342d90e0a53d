// Errors and checks.
//
// WEGEFT_CHECK(cond, msg) is always on: it guards everything a user can get wrong (shapes, ranks,
// hyper-parameters, file contents) and throws wegeft::Error whose message names the file, the
// line, the failed expression and the message, which should carry the actual sizes or values.
// The message is a stream expression, so it can mix text and numbers:
//
//   WEGEFT_CHECK(x.cols() == d_in, "x has " << x.cols() << " columns, the layer wants " << d_in);
//
// WEGEFT_ASSERT(cond) guards internal invariants. It is compiled only when NDEBUG is not defined
// or WEGEFT_ENABLE_ASSERTS is; it throws the same wegeft::Error so tests can observe it.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace wegeft {

/// The one exception type the library throws for bad input or a broken invariant. what() is
/// the whole text ("wegeft: MESSAGE [check `EXPR` failed at FILE:LINE]"); message() is MESSAGE
/// alone, for showing to a person.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what), m_message(what) {}
  Error(const std::string& what, std::string message)
      : std::runtime_error(what), m_message(std::move(message)) {}
  const std::string& message() const { return m_message; }

 private:
  std::string m_message;
};

namespace detail {

[[noreturn]] inline void raise(const char* file, int line, const char* expr,
                               const std::string& message) {
  std::ostringstream out;
  out << "wegeft: " << message << " [check `" << expr << "` failed at " << file << ":" << line
      << "]";
  throw Error(out.str(), message);
}

}  // namespace detail
}  // namespace wegeft

#define WEGEFT_CHECK(cond, msg)                                                       \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::ostringstream wegeft_check_stream_;                                        \
      wegeft_check_stream_ << msg;                                                    \
      ::wegeft::detail::raise(__FILE__, __LINE__, #cond, wegeft_check_stream_.str()); \
    }                                                                                 \
  } while (false)

#if !defined(NDEBUG) || defined(WEGEFT_ENABLE_ASSERTS)
#define WEGEFT_ASSERT(cond)                                                                       \
  do {                                                                                            \
    if (!(cond)) ::wegeft::detail::raise(__FILE__, __LINE__, #cond, "internal invariant broken"); \
  } while (false)
#else
// Not evaluated, but still compiled: its variables count as used.
#define WEGEFT_ASSERT(cond)   \
  do {                        \
    (void)sizeof(bool(cond)); \
  } while (false)
#endif

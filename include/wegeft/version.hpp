// The wegeft version: the one place it is written (CMake's project() reads it from here).
#pragma once

#define WEGEFT_VERSION_MAJOR 0
#define WEGEFT_VERSION_MINOR 1
#define WEGEFT_VERSION_PATCH 0

#define WEGEFT_STRINGIFY_(x) #x
#define WEGEFT_STRINGIFY(x) WEGEFT_STRINGIFY_(x)

namespace wegeft {
inline constexpr const char* version = WEGEFT_STRINGIFY(WEGEFT_VERSION_MAJOR) "." WEGEFT_STRINGIFY(
    WEGEFT_VERSION_MINOR) "." WEGEFT_STRINGIFY(WEGEFT_VERSION_PATCH);
}  // namespace wegeft

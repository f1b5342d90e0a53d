#pragma once

#define WEGEFT_VERSION_MAJOR 0
#define WEGEFT_VERSION_MINOR 1
#define WEGEFT_VERSION_PATCH 0

namespace wegeft {
inline constexpr const char* version = "0.1.0";
}

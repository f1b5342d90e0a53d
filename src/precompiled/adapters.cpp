// wegeft::precompiled: the adapters for float and double (see wegeft/core/precompiled.hpp).
#include <wegeft/adapters/dora.hpp>
#include <wegeft/adapters/lora.hpp>
#include <wegeft/adapters/wegeft.hpp>

namespace wegeft {
WEGEFT_LORA_TEMPLATES(, float)
WEGEFT_LORA_TEMPLATES(, double)
WEGEFT_WEGEFT_TEMPLATES(, float)
WEGEFT_WEGEFT_TEMPLATES(, double)
WEGEFT_DORA_TEMPLATES(, float)
WEGEFT_DORA_TEMPLATES(, double)
}  // namespace wegeft

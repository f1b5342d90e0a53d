// wegeft::precompiled: Transformer for float and double (see wegeft/core/precompiled.hpp), and
// the symbol that names the configuration the library was compiled with.
#include <wegeft/nn/model.hpp>

extern "C" const int WEGEFT_PRECOMPILED_CONFIG = 1;

namespace wegeft {
WEGEFT_MODEL_TEMPLATES(, float)
WEGEFT_MODEL_TEMPLATES(, double)
}  // namespace wegeft

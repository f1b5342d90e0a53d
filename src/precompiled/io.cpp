// wegeft::precompiled: loading models, adapter directories and checkpoints for float and double
// (see wegeft/core/precompiled.hpp).
#include <wegeft/io.hpp>

namespace wegeft {
WEGEFT_HF_MODEL_TEMPLATES(, float)
WEGEFT_HF_MODEL_TEMPLATES(, double)
WEGEFT_GGUF_MODEL_TEMPLATES(, float)
WEGEFT_GGUF_MODEL_TEMPLATES(, double)
WEGEFT_PEFT_TEMPLATES(, float)
WEGEFT_PEFT_TEMPLATES(, double)
WEGEFT_CHECKPOINT_TEMPLATES(, float)
WEGEFT_CHECKPOINT_TEMPLATES(, double)
}  // namespace wegeft

// wegeft file formats: safetensors, Hugging Face checkpoints, PEFT / WeGeFT adapter directories,
// GGUF, IDX (MNIST) arrays, training checkpoints and the merge / convert operations behind the
// wegeft tool.
#pragma once

#include "wegeft/core/json.hpp"
#include "wegeft/io/checkpoint.hpp"
#include "wegeft/io/file.hpp"
#include "wegeft/io/gguf.hpp"
#include "wegeft/io/gguf_model.hpp"
#include "wegeft/io/hf_model.hpp"
#include "wegeft/io/idx.hpp"
#include "wegeft/io/merge.hpp"
#include "wegeft/io/peft.hpp"
#include "wegeft/io/safetensors.hpp"

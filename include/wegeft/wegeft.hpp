// wegeft: parameter-efficient fine-tuning (WeGeFT and LoRA) for transformers, header-only, CPU.
// This umbrella never pulls in CUDA.
#pragma once

#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/nn/linear.hpp"
#include "wegeft/adapters/lora.hpp"
#include "wegeft/adapters/wegeft.hpp"
#include "wegeft/version.hpp"

// wegeft: parameter-efficient fine-tuning (WeGeFT and LoRA) for transformers, header-only, CPU.
// This umbrella never pulls in CUDA.
#pragma once

#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/nn/activations.hpp"
#include "wegeft/nn/attention.hpp"
#include "wegeft/nn/embedding.hpp"
#include "wegeft/nn/linear.hpp"
#include "wegeft/nn/loss.hpp"
#include "wegeft/nn/norms.hpp"
#include "wegeft/nn/pooling.hpp"
#include "wegeft/nn/rope.hpp"
#include "wegeft/optim/adamw.hpp"
#include "wegeft/optim/clip.hpp"
#include "wegeft/optim/schedule.hpp"
#include "wegeft/optim/sgd.hpp"
#include "wegeft/adapters/lora.hpp"
#include "wegeft/adapters/wegeft.hpp"
#include "wegeft/version.hpp"

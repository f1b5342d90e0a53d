// wegeft: parameter-efficient fine-tuning (WeGeFT, LoRA, DoRA) for transformers, header-only, CPU.
// This umbrella holds the library without the file formats (those are <wegeft/io.hpp>) and never
// pulls in CUDA. docs/architecture.md lists the layers.
#pragma once

#include "wegeft/adapters/registry.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/pattern.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/attention.hpp"
#include "wegeft/kernels/cpu/threads.hpp"
#include "wegeft/nn/activations.hpp"
#include "wegeft/nn/config.hpp"
#include "wegeft/nn/embedding.hpp"
#include "wegeft/nn/loss.hpp"
#include "wegeft/nn/model.hpp"
#include "wegeft/nn/norms.hpp"
#include "wegeft/nn/pooling.hpp"
#include "wegeft/nn/rope.hpp"
#include "wegeft/optim/adamw.hpp"
#include "wegeft/optim/clip.hpp"
#include "wegeft/optim/schedule.hpp"
#include "wegeft/optim/sgd.hpp"
#include "wegeft/train/metrics.hpp"
#include "wegeft/train/trainer.hpp"
#include "wegeft/version.hpp"

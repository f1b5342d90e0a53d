// The opt-in CUDA backend (link wegeft::cuda, built with -DWEGEFT_ENABLE_CUDA=ON): device
// memory and streams, the GPU ops, parameters and AdamW on the device, and the frozen and adapted
// linear layers. Its headers name no CUDA type, so a program that includes this compiles with the
// C++ compiler alone; see docs/cuda.md.
#pragma once

#include "wegeft/core/view.hpp"
#include "wegeft/cuda/classifier.hpp"
#include "wegeft/cuda/linear.hpp"
#include "wegeft/cuda/model.hpp"
#include "wegeft/cuda/nn.hpp"
#include "wegeft/cuda/ops.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/cuda/store.hpp"

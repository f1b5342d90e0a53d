// The synthetic model shapes of the GPU benchmarks (random weights: the times do not depend on
// them): `smollm2`, SmolLM2-135M's; `llama-block`, one Llama block of d = 2048 (16 heads of 128,
// MLP 5632) between a 256-word embedding and a tied head.
#pragma once

#include <wegeft/nn/model.hpp>

#include <algorithm>
#include <string>

// The synthetic shapes' configuration (shape is smollm2 or llama-block).
inline wegeft::ModelConfig shape_config(const std::string& shape, wegeft::Index seq) {
  wegeft::ModelConfig c = wegeft::ModelConfig::tiny(wegeft::Family::llama);
  if (shape == "smollm2") {
    c.vocab_size = 49152;
    c.hidden = 576;
    c.intermediate = 1536;
    c.layers = 30;
    c.heads = 9;
    c.kv_heads = 3;
    c.rope_theta = 100000.0;
  } else {
    c.vocab_size = 256;
    c.hidden = 2048;
    c.intermediate = 5632;
    c.layers = 1;
    c.heads = 16;
    c.kv_heads = 16;
    c.rope_theta = 10000.0;
  }
  c.max_positions = std::max<wegeft::Index>(8192, seq);
  c.norm_eps = 1e-5;
  c.tied_lm_head = true;
  return c;
}

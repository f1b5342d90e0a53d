// The pieces both GPU models (model.cpp, classifier.cpp) build their steps from: activations
// with spare columns, row-statistics views, and a linear that is frozen or adapted.
#pragma once

#include <algorithm>
#include <memory>

#include <variant>

#include "check.hpp"
#include "wegeft/cuda/linear.hpp"
#include "wegeft/cuda/runtime.hpp"
#include "wegeft/nn/model.hpp"

namespace wegeft::cuda::detail {

/// A device activation of up to `rows` rows: [rows, cols] and `spare` more columns per row.
struct Act {
  Tensor t;
  Index cols = 0;
  void alloc(DType dtype, Index rows, Index cols_, Index spare) {
    t = Tensor(dtype, rows, cols_ + spare);
    cols = cols_;
  }
  TensorView v(Index n) const { return t.block(0, 0, n, cols); }
};

/// A contiguous F32 [rows, cols] view of a buffer (row statistics: rstd, lse, delta, losses).
inline TensorView stats(const Buffer& b, Index rows, Index cols) {
  WEGEFT_ASSERT(static_cast<std::size_t>(rows * cols) * sizeof(float) <= b.bytes());
  return {b.data(), DType::F32, Device::cuda, rows, cols, cols};
}
inline Buffer floats(Index n) {
  return Buffer(static_cast<std::size_t>(std::max<Index>(n, 1)) * sizeof(float));
}

/// Every token id of ids [n] in [0, vocab): checked on the host before the ids are uploaded,
/// naming the first one outside.
inline void check_token_ids(const std::int32_t* ids, Index n, Index vocab) {
  for (Index i = 0; i < n; ++i)
    WEGEFT_CHECK(ids[i] >= 0 && ids[i] < vocab, "token id " << ids[i] << " at position " << i
                                                            << " is outside the vocabulary of "
                                                            << vocab);
}

/// One linear of a block, frozen or adapted, and its adapter's cache from the last forward.
struct Lin {
  std::unique_ptr<Linear> frozen;
  std::unique_ptr<AdaptedLinear> adapted;
  AdaptedLinear::Cache cache;

  void forward(Context& ctx, const TensorView& y, const TensorView& x) {
    if (adapted)
      cache = adapted->forward(ctx, y, x);
    else
      frozen->forward(ctx, y, x);
  }
  /// dx (overwritten; skipped when dx is empty) and the adapter's gradients (+=) from dy (which
  /// has the spare columns).
  void backward(Context& ctx, const TensorView& dx, const TensorView& dy) {
    if (adapted)
      adapted->backward(ctx, dx, cache, dy);
    else if (dx.rows != 0)
      frozen->backward_input(ctx, dx, dy);
  }
  Index padded_rank() const { return adapted ? adapted->padded_rank() : 0; }

  /// The GPU layer of host module m over `base` (its frozen weight): frozen when m has no
  /// adapter or its adapter is merged into the weight, else its LoRA or WeGeFT adapter over
  /// `store` (other methods are refused).
  void build(Context& ctx, DeviceStore& store, const Transformer<float>::ModuleView& m,
             const FrozenLinear<float>& base, DType dtype) {
    const bool merged =
        m.adapter && std::visit([](const auto& a) { return a.merged(); }, *m.adapter);
    if (!m.adapter || merged) {
      frozen = std::make_unique<Linear>(ctx, base, dtype);
    } else if (const auto* lora = std::get_if<LoraAdapter<float>>(m.adapter)) {
      adapted = std::make_unique<AdaptedLinear>(ctx, store, *lora, dtype);
    } else if (const auto* wg = std::get_if<WeGeFTAdapter<float>>(m.adapter)) {
      adapted = std::make_unique<AdaptedLinear>(ctx, store, *wg, dtype);
    } else {
      WEGEFT_CHECK(false, m.name << ": its adapter's method has no GPU layer (LoRA and WeGeFT do)");
    }
  }
};

}  // namespace wegeft::cuda::detail

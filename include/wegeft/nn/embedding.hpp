// Input embeddings: token lookup, learned absolute positions, and ViT's patch embedding with a
// class token. Outputs first; parameter gradients accumulate (+=), activation gradients are
// overwritten (=).
#pragma once

#include <cstdint>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// out [N, d] = table [vocab, d] rows at ids [N]. An id outside [0, vocab) throws, naming the
/// position and the id.
template <class T>
void embedding_forward(T* out, const std::int32_t* ids, const T* table, Index n, Index vocab,
                       Index d) {
  for (Index i = 0; i < n; ++i) {
    WEGEFT_CHECK(ids[i] >= 0 && ids[i] < vocab, "token id " << ids[i] << " at position " << i
                                                            << " is outside the vocabulary [0, "
                                                            << vocab << ")");
    const T* row = table + static_cast<Index>(ids[i]) * d;
    std::copy(row, row + d, out + i * d);
  }
}

/// grad_table [vocab, d] += dout [N, d] scattered to the rows at ids [N] (ids already checked by
/// the forward).
template <class T>
void embedding_backward(T* grad_table, const T* dout, const std::int32_t* ids, Index n, Index d) {
  for (Index i = 0; i < n; ++i) {
    T* row = grad_table + static_cast<Index>(ids[i]) * d;
    for (Index j = 0; j < d; ++j) row[j] += dout[i * d + j];
  }
}

/// out [B*T, d] += positions [max_positions, d] row t for the token at row b*T + t.
template <class T>
void position_embedding_forward(T* out, const T* positions, Index batch, Index seq, Index d,
                                Index max_positions) {
  WEGEFT_CHECK(seq <= max_positions, "sequence length " << seq << " exceeds the position table's "
                                                        << max_positions << " positions");
  for (Index b = 0; b < batch; ++b)
    for (Index t = 0; t < seq; ++t)
      for (Index j = 0; j < d; ++j) out[(b * seq + t) * d + j] += positions[t * d + j];
}

/// grad_positions [max_positions, d] += sum over the batch of dout [B*T, d] row b*T + t.
template <class T>
void position_embedding_backward(T* grad_positions, const T* dout, Index batch, Index seq,
                                 Index d) {
  for (Index b = 0; b < batch; ++b)
    for (Index t = 0; t < seq; ++t)
      for (Index j = 0; j < d; ++j) grad_positions[t * d + j] += dout[(b * seq + t) * d + j];
}

/// patches [B * P, C * p * p] from images [B, C, H, W] with P = (H / p) (W / p) in row-major
/// patch order; each row is flattened as (c, i, j), matching a Conv2d weight [d, C, p, p] viewed
/// as [d, C * p * p]. A linear layer over the rows is then the stride-p patch convolution.
template <class T>
void patchify(T* patches, const T* images, Index batch, Index channels, Index height, Index width,
              Index patch) {
  WEGEFT_CHECK(patch > 0 && height % patch == 0 && width % patch == 0,
               "image " << height << "x" << width << " is not divisible into " << patch << "x"
                        << patch << " patches");
  const Index ph = height / patch, pw = width / patch, row = channels * patch * patch;
  for (Index b = 0; b < batch; ++b)
    for (Index py = 0; py < ph; ++py)
      for (Index px = 0; px < pw; ++px) {
        T* dst = patches + ((b * ph + py) * pw + px) * row;
        for (Index c = 0; c < channels; ++c)
          for (Index i = 0; i < patch; ++i)
            for (Index j = 0; j < patch; ++j)
              *dst++ =
                  images[((b * channels + c) * height + py * patch + i) * width + px * patch + j];
      }
}

/// tokens [B * (P + 1), d]: per image, the class token cls [d] followed by its P patch rows of
/// patch_embeddings [B * P, d].
template <class T>
void class_token_forward(T* tokens, const T* patch_embeddings, const T* cls, Index batch,
                         Index patches, Index d) {
  for (Index b = 0; b < batch; ++b) {
    T* dst = tokens + b * (patches + 1) * d;
    std::copy(cls, cls + d, dst);
    std::copy(patch_embeddings + b * patches * d, patch_embeddings + (b + 1) * patches * d,
              dst + d);
  }
}

/// dpatch_embeddings [B * P, d] (overwritten) and dcls [d] (+=, may be null) from dtokens.
template <class T>
void class_token_backward(T* dpatch_embeddings, T* dcls, const T* dtokens, Index batch,
                          Index patches, Index d) {
  for (Index b = 0; b < batch; ++b) {
    const T* src = dtokens + b * (patches + 1) * d;
    if (dcls)
      for (Index j = 0; j < d; ++j) dcls[j] += src[j];
    std::copy(src + d, src + (patches + 1) * d, dpatch_embeddings + b * patches * d);
  }
}

}  // namespace wegeft

// wegeft::cuda's transformer ops (cuda/nn.hpp): shape and dtype checks naming the op and the
// views, then the launchers of transformer.cu.
#include "wegeft/cuda/nn.hpp"

#include <algorithm>
#include <cmath>

#include "check.hpp"
#include "launch.hpp"

namespace wegeft::cuda {

using detail::check_view;

namespace {

void check_shape(const TensorView& v, Index rows, Index cols, const char* op, const char* what) {
  WEGEFT_CHECK(v.rows == rows && v.cols == cols, op << ": " << what << " is " << v.describe()
                                                    << "; wanted [" << rows << ", " << cols << "]");
}
void check_same_dtype(const TensorView& v, const TensorView& ref, const char* op,
                      const char* what) {
  WEGEFT_CHECK(v.dtype == ref.dtype, op << ": " << what << " is " << v.describe()
                                        << "; every matrix of this op must be "
                                        << dtype_name(ref.dtype));
}
/// An F32 view of row statistics: [rows, cols], contiguous.
void check_stats(const TensorView& v, Index rows, Index cols, const char* op, const char* what) {
  check_view(v, op, what);
  WEGEFT_CHECK(v.dtype == DType::F32 && v.rows == rows && v.cols == cols && v.ld == cols,
               op << ": " << what << " is " << v.describe() << "; wanted a contiguous [" << rows
                  << ", " << cols << "] F32 view");
}
detail::Mat mat(const TensorView& v) {
  return {v.data, v.dtype == DType::BF16, v.rows, v.cols, v.ld};
}
float* floats(const TensorView& v) {
  return static_cast<float*>(v.data);
}

}  // namespace

void rmsnorm_forward(Context& ctx, const TensorView& out, const TensorView& rstd,
                     const TensorView& x, const TensorView& weight, float eps) {
  const char* op = "rmsnorm_forward";
  check_view(x, op, "x");
  check_view(out, op, "out");
  check_view(weight, op, "weight");
  check_shape(out, x.rows, x.cols, op, "out");
  check_shape(weight, 1, x.cols, op, "weight");
  check_same_dtype(out, x, op, "out");
  check_same_dtype(weight, x, op, "weight");
  check_stats(rstd, x.rows, 1, op, "rstd");
  WEGEFT_CHECK(eps >= 0 && std::isfinite(eps), op << ": eps " << eps);
  detail::launch_rmsnorm_forward(ctx.stream(), mat(out), floats(rstd), mat(x), mat(weight), eps);
  detail::check_launch(op);
}

void layernorm_forward(Context& ctx, const TensorView& out, const TensorView& mean,
                       const TensorView& rstd, const TensorView& x, const TensorView& weight,
                       const TensorView& bias, float eps) {
  const char* op = "layernorm_forward";
  check_view(x, op, "x");
  check_view(out, op, "out");
  check_view(weight, op, "weight");
  check_view(bias, op, "bias");
  check_shape(out, x.rows, x.cols, op, "out");
  check_shape(weight, 1, x.cols, op, "weight");
  check_shape(bias, 1, x.cols, op, "bias");
  check_same_dtype(out, x, op, "out");
  check_same_dtype(weight, x, op, "weight");
  check_same_dtype(bias, x, op, "bias");
  check_stats(mean, x.rows, 1, op, "mean");
  check_stats(rstd, x.rows, 1, op, "rstd");
  WEGEFT_CHECK(eps >= 0 && std::isfinite(eps), op << ": eps " << eps);
  detail::launch_layernorm_forward(ctx.stream(), mat(out), floats(mean), floats(rstd), mat(x),
                                   mat(weight), mat(bias), eps);
  detail::check_launch(op);
}

void layernorm_backward(Context& ctx, const TensorView& dx, const TensorView& dout,
                        const TensorView& x, const TensorView& weight, const TensorView& mean,
                        const TensorView& rstd) {
  const char* op = "layernorm_backward";
  check_view(x, op, "x");
  check_view(dx, op, "dx");
  check_view(dout, op, "dout");
  check_view(weight, op, "weight");
  check_shape(dx, x.rows, x.cols, op, "dx");
  check_shape(dout, x.rows, x.cols, op, "dout");
  check_shape(weight, 1, x.cols, op, "weight");
  check_same_dtype(dx, x, op, "dx");
  check_same_dtype(dout, x, op, "dout");
  check_same_dtype(weight, x, op, "weight");
  check_stats(mean, x.rows, 1, op, "mean");
  check_stats(rstd, x.rows, 1, op, "rstd");
  detail::launch_layernorm_backward(ctx.stream(), mat(dx), mat(dout), mat(x), mat(weight),
                                    floats(mean), floats(rstd));
  detail::check_launch(op);
}

namespace {
void activation(Context& ctx, const TensorView& out, const TensorView& in, const char* op,
                int kind) {
  check_view(in, op, "x");
  check_view(out, op, "out");
  check_shape(out, in.rows, in.cols, op, "out");
  check_same_dtype(out, in, op, "out");
  detail::launch_activation_forward(ctx.stream(), mat(out), mat(in), kind);
  detail::check_launch(op);
}
void activation_grad(Context& ctx, const TensorView& dx, const TensorView& dout,
                     const TensorView& in, const char* op, int kind) {
  check_view(in, op, "the saved input");
  check_view(dx, op, "dx");
  check_view(dout, op, "dout");
  check_shape(dx, in.rows, in.cols, op, "dx");
  check_shape(dout, in.rows, in.cols, op, "dout");
  check_same_dtype(dx, in, op, "dx");
  check_same_dtype(dout, in, op, "dout");
  detail::launch_activation_backward(ctx.stream(), mat(dx), mat(dout), mat(in), kind);
  detail::check_launch(op);
}
}  // namespace

void gelu_forward(Context& ctx, const TensorView& out, const TensorView& x, GeluKind kind) {
  activation(ctx, out, x, "gelu_forward", kind == GeluKind::erf ? 0 : 1);
}
void gelu_backward(Context& ctx, const TensorView& dx, const TensorView& dout, const TensorView& x,
                   GeluKind kind) {
  activation_grad(ctx, dx, dout, x, "gelu_backward", kind == GeluKind::erf ? 0 : 1);
}
void tanh_forward(Context& ctx, const TensorView& out, const TensorView& x) {
  activation(ctx, out, x, "tanh_forward", 2);
}
void tanh_backward(Context& ctx, const TensorView& dx, const TensorView& dout,
                   const TensorView& out) {
  activation_grad(ctx, dx, dout, out, "tanh_backward", 2);
}

void add_positions(Context& ctx, const TensorView& x, const TensorView& positions,
                   const TensorView* type_row, Index seq, const std::int32_t* first_at) {
  const char* op = "add_positions";
  check_view(x, op, "x");
  check_view(positions, op, "positions");
  WEGEFT_CHECK(seq > 0 && x.rows % seq == 0 && seq <= positions.rows && positions.cols == x.cols,
               op << ": x " << x.describe() << " in sequences of " << seq << " with positions "
                  << positions.describe());
  check_same_dtype(positions, x, op, "positions");
  if (type_row) {
    check_view(*type_row, op, "type_row");
    check_shape(*type_row, 1, x.cols, op, "type_row");
    check_same_dtype(*type_row, x, op, "type_row");
  }
  detail::launch_add_positions(ctx.stream(), mat(x), mat(positions),
                               type_row ? type_row->data : nullptr, seq, first_at);
  detail::check_launch(op);
}

void add_column_sums(Context& ctx, const TensorView& sums, const TensorView& x) {
  const char* op = "add_column_sums";
  check_view(x, op, "x");
  check_stats(sums, 1, x.cols, op, "sums");
  detail::launch_add_column_sums(ctx.stream(), floats(sums), mat(x));
  detail::check_launch(op);
}

void rmsnorm_backward(Context& ctx, const TensorView& dx, const TensorView& dout,
                      const TensorView& x, const TensorView& weight, const TensorView& rstd) {
  const char* op = "rmsnorm_backward";
  check_view(x, op, "x");
  check_view(dx, op, "dx");
  check_view(dout, op, "dout");
  check_view(weight, op, "weight");
  check_shape(dx, x.rows, x.cols, op, "dx");
  check_shape(dout, x.rows, x.cols, op, "dout");
  check_shape(weight, 1, x.cols, op, "weight");
  check_same_dtype(dx, x, op, "dx");
  check_same_dtype(dout, x, op, "dout");
  check_same_dtype(weight, x, op, "weight");
  check_stats(rstd, x.rows, 1, op, "rstd");
  detail::launch_rmsnorm_backward(ctx.stream(), mat(dx), mat(dout), mat(x), mat(weight),
                                  floats(rstd));
  detail::check_launch(op);
}

Rope::Rope(Context& ctx, const RopeTable<float>& host) : m_head_dim(host.head_dim) {
  const Index half = host.head_dim / 2;
  m_cos = Tensor::from_host(ctx, ConstMatrixMap<float>(host.cos.data(), host.max_positions, half),
                            DType::F32);
  m_sin = Tensor::from_host(ctx, ConstMatrixMap<float>(host.sin.data(), host.max_positions, half),
                            DType::F32);
}

namespace {
void rope(Context& ctx, const TensorView& x, const Rope& r, Index batch, Index seq, Index heads,
          float direction, const char* op, Index first = 0,
          const std::int32_t* first_at = nullptr) {
  check_view(x, op, "x");
  WEGEFT_CHECK(
      batch >= 0 && seq > 0 && heads > 0 && first >= 0,
      op << ": batch " << batch << ", seq " << seq << ", heads " << heads << ", first " << first);
  check_shape(x, batch * seq, heads * r.head_dim(), op, "x");
  WEGEFT_CHECK(first + seq <= r.max_positions(), op << ": sequence length " << first + seq
                                                    << " exceeds the RoPE table's "
                                                    << r.max_positions() << " positions");
  WEGEFT_CHECK(first_at == nullptr || first == 0,
               op << ": a position on the device and first " << first << " both given");
  const Index half = r.head_dim() / 2;
  detail::launch_rope(ctx.stream(), mat(x), r.cos() + first * half, r.sin() + first * half, seq,
                      heads, half, direction, first_at);
  detail::check_launch(op);
}
}  // namespace

void rope_forward(Context& ctx, const TensorView& x, const Rope& r, Index batch, Index seq,
                  Index heads, Index first, const std::int32_t* first_at) {
  rope(ctx, x, r, batch, seq, heads, 1.0f, "rope_forward", first, first_at);
}
void rope_backward(Context& ctx, const TensorView& dx, const Rope& r, Index batch, Index seq,
                   Index heads) {
  rope(ctx, dx, r, batch, seq, heads, -1.0f, "rope_backward");
}

void swiglu_forward(Context& ctx, const TensorView& out, const TensorView& gate,
                    const TensorView& up) {
  const char* op = "swiglu_forward";
  check_view(out, op, "out");
  check_view(gate, op, "gate");
  check_view(up, op, "up");
  check_shape(gate, out.rows, out.cols, op, "gate");
  check_shape(up, out.rows, out.cols, op, "up");
  check_same_dtype(gate, out, op, "gate");
  check_same_dtype(up, out, op, "up");
  detail::launch_swiglu_forward(ctx.stream(), mat(out), mat(gate), mat(up));
  detail::check_launch(op);
}

void swiglu_backward(Context& ctx, const TensorView& dgate, const TensorView& dup,
                     const TensorView& dout, const TensorView& gate, const TensorView& up) {
  const char* op = "swiglu_backward";
  for (const auto* v : {&dgate, &dup, &dout, &gate, &up}) check_view(*v, op, "an argument");
  check_shape(dgate, dout.rows, dout.cols, op, "dgate");
  check_shape(dup, dout.rows, dout.cols, op, "dup");
  check_shape(gate, dout.rows, dout.cols, op, "gate");
  check_shape(up, dout.rows, dout.cols, op, "up");
  check_same_dtype(dgate, dout, op, "dgate");
  check_same_dtype(dup, dout, op, "dup");
  check_same_dtype(gate, dout, op, "gate");
  check_same_dtype(up, dout, op, "up");
  detail::launch_swiglu_backward(ctx.stream(), mat(dgate), mat(dup), mat(dout), mat(gate), mat(up));
  detail::check_launch(op);
}

void copy_rows_at(Context& ctx, const TensorView& dst, const TensorView& src,
                  const std::int32_t* first_at) {
  const char* op = "copy_rows_at";
  check_view(dst, op, "dst");
  check_view(src, op, "src");
  WEGEFT_CHECK(first_at != nullptr, op << ": no device position");
  WEGEFT_CHECK(src.cols == dst.cols && src.rows <= dst.rows,
               op << ": src " << src.describe() << " into dst " << dst.describe());
  check_same_dtype(src, dst, op, "src");
  detail::launch_copy_rows_at(ctx.stream(), mat(dst), mat(src), first_at);
  detail::check_launch(op);
}

void patchify(Context& ctx, const TensorView& patches, const float* images, Index channels,
              Index height, Index width, Index patch) {
  const char* op = "patchify";
  check_view(patches, op, "patches");
  WEGEFT_CHECK(images != nullptr, op << ": no images");
  WEGEFT_CHECK(patch > 0 && height % patch == 0 && width % patch == 0,
               op << ": images of " << height << " x " << width << " are not divisible into "
                  << patch << " x " << patch << " patches");
  const Index per_image = (height / patch) * (width / patch);
  WEGEFT_CHECK(patches.cols == channels * patch * patch && patches.rows % per_image == 0,
               op << ": patches " << patches.describe() << " for " << channels << "-channel "
                  << height << " x " << width << " images in patches of " << patch);
  detail::launch_patchify(ctx.stream(), mat(patches), images, channels, height, width, patch);
  detail::check_launch(op);
}

namespace {
/// The checks of a pooling op: pooled [B, d] and tokens [B seq, d] of one dtype; the mask null or
/// B seq values, returned as a device pointer.
const std::uint8_t* check_pool(const char* op, const TensorView& pooled, const char* pooled_name,
                               const TensorView& tokens, const char* tokens_name,
                               const DeviceArray* key_mask, Index seq) {
  check_view(pooled, op, pooled_name);
  check_view(tokens, op, tokens_name);
  WEGEFT_CHECK(seq > 0, op << ": sequences of " << seq << " tokens");
  check_shape(tokens, pooled.rows * seq, pooled.cols, op, tokens_name);
  check_same_dtype(tokens, pooled, op, tokens_name);
  if (!key_mask) return nullptr;
  WEGEFT_CHECK(key_mask->size() == static_cast<std::size_t>(pooled.rows * seq),
               op << ": the mask holds " << key_mask->size() << " values for " << pooled.rows
                  << " sequences of " << seq << " tokens");
  return key_mask->data<std::uint8_t>();
}
}  // namespace

void mean_pool_forward(Context& ctx, const TensorView& out, const TensorView& hidden,
                       const DeviceArray* key_mask, Index seq) {
  const char* op = "mean_pool_forward";
  const std::uint8_t* mask = check_pool(op, out, "out", hidden, "hidden", key_mask, seq);
  detail::launch_mean_pool_forward(ctx.stream(), mat(out), mat(hidden), mask, seq);
  detail::check_launch(op);
}

void mean_pool_backward(Context& ctx, const TensorView& dhidden, const TensorView& dout,
                        const DeviceArray* key_mask, Index seq) {
  const char* op = "mean_pool_backward";
  const std::uint8_t* mask = check_pool(op, dout, "dout", dhidden, "dhidden", key_mask, seq);
  detail::launch_mean_pool_backward(ctx.stream(), mat(dhidden), mat(dout), mask, seq);
  detail::check_launch(op);
}

void add(Context& ctx, const TensorView& y, const TensorView& x, float alpha) {
  const char* op = "add";
  check_view(y, op, "y");
  check_view(x, op, "x");
  check_shape(x, y.rows, y.cols, op, "x");
  check_same_dtype(x, y, op, "x");
  detail::launch_add(ctx.stream(), mat(y), mat(x), alpha);
  detail::check_launch(op);
}

void embedding_forward(Context& ctx, const TensorView& x, const DeviceArray& ids,
                       const TensorView& table) {
  const char* op = "embedding_forward";
  check_view(x, op, "x");
  check_view(table, op, "table");
  check_same_dtype(table, x, op, "table");
  WEGEFT_CHECK(table.cols == x.cols,
               op << ": table " << table.describe() << " for x " << x.describe());
  WEGEFT_CHECK(ids.size() == static_cast<std::size_t>(x.rows),
               op << ": " << ids.size() << " ids for x " << x.describe());
  detail::launch_embedding(ctx.stream(), mat(x), ids.data<std::int32_t>(), mat(table));
  detail::check_launch(op);
}

void cross_entropy(Context& ctx, const TensorView* dlogits, const TensorView& losses,
                   const TensorView& logits, const DeviceArray& targets, float scale,
                   std::int32_t ignore_index) {
  const char* op = "cross_entropy";
  check_view(logits, op, "logits");
  check_stats(losses, logits.rows, 1, op, "losses");
  detail::Mat d{nullptr, logits.dtype == DType::BF16, 0, 0, 0};
  if (dlogits) {
    check_view(*dlogits, op, "dlogits");
    check_shape(*dlogits, logits.rows, logits.cols, op, "dlogits");
    check_same_dtype(*dlogits, logits, op, "dlogits");
    d = mat(*dlogits);
  }
  WEGEFT_CHECK(targets.size() == static_cast<std::size_t>(logits.rows),
               op << ": " << targets.size() << " targets for logits " << logits.describe());
  WEGEFT_CHECK(std::isfinite(scale), op << ": scale " << scale);
  detail::launch_cross_entropy(ctx.stream(), d, floats(losses), mat(logits),
                               targets.data<std::int32_t>(), ignore_index, scale);
  detail::check_launch(op);
}

void argmax_rows(Context& ctx, const TensorView& ids, const TensorView& x) {
  const char* op = "argmax_rows";
  check_view(x, op, "x");
  WEGEFT_CHECK(ids.device == Device::cuda && ids.dtype == DType::I32 && ids.rows == x.rows &&
                   ids.cols == 1 && (ids.ld == 1 || ids.rows <= 1) && (ids.data || !ids.rows),
               op << ": ids is " << ids.describe() << "; wanted a contiguous [" << x.rows
                  << ", 1] I32 cuda view");
  WEGEFT_CHECK(x.cols < (Index(1) << 31), op << ": " << x.cols << " columns do not fit an int32");
  detail::launch_argmax_rows(ctx.stream(), static_cast<std::int32_t*>(ids.data), mat(x));
  detail::check_launch(op);
}

namespace {
// first: the cached tokens before each sequence's queries (k and v hold first + seq rows per
// sequence); 0 in training.
detail::AttentionLaunch attention_launch(const TensorView& out, const TensorView& lse,
                                         const TensorView& q, const TensorView& k,
                                         const TensorView& v, const DeviceArray* key_mask,
                                         const AttentionShape& s, const char* op, Index first = 0) {
  s.check();
  WEGEFT_CHECK(s.head_dim <= 256, op << ": head_dim " << s.head_dim << " (at most 256 on the GPU)");
  const Index n = s.batch * s.seq, nk = s.batch * (first + s.seq);
  for (const auto* t : {&out, &q, &k, &v}) check_view(*t, op, "an input or output");
  check_shape(q, n, s.q_width(), op, "q");
  check_shape(out, n, s.q_width(), op, "out");
  check_shape(k, nk, s.kv_width(), op, "k");
  check_shape(v, nk, s.kv_width(), op, "v");
  check_same_dtype(k, q, op, "k");
  check_same_dtype(v, q, op, "v");
  check_same_dtype(out, q, op, "out");
  check_stats(lse, s.batch * s.heads, s.seq, op, "lse");
  if (key_mask)
    WEGEFT_CHECK(key_mask->size() == static_cast<std::size_t>(n),
                 op << ": a key mask of " << key_mask->size() << " values for " << s.batch << " x "
                    << s.seq << " tokens");
  return {s.batch,
          s.seq,
          s.heads,
          s.kv_heads,
          s.head_dim,
          q.ld,
          k.ld,
          v.ld,
          out.ld,
          s.causal,
          q.dtype == DType::BF16,
          key_mask ? key_mask->data<std::uint8_t>() : nullptr,
          first};
}
void check_like(const TensorView& g, const TensorView& ref, const char* op, const char* what) {
  check_view(g, op, what);
  WEGEFT_CHECK(g.rows == ref.rows && g.cols == ref.cols && g.ld == ref.ld && g.dtype == ref.dtype,
               op << ": " << what << " is " << g.describe() << "; wanted " << ref.describe()
                  << " (the same shape, row stride and dtype)");
}
}  // namespace

void attention_forward(Context& ctx, const TensorView& out, const TensorView& lse,
                       const TensorView& q, const TensorView& k, const TensorView& v,
                       const DeviceArray* key_mask, const AttentionShape& shape) {
  const char* op = "attention_forward";
  const auto a = attention_launch(out, lse, q, k, v, key_mask, shape, op);
  detail::launch_attention_forward(ctx.stream(), a, out.data, floats(lse), q.data, k.data, v.data);
  detail::check_launch(op);
}

void cached_attention_forward(Context& ctx, const TensorView& out, const TensorView& lse,
                              const TensorView& q, const TensorView& k, const TensorView& v,
                              Index first, const AttentionShape& shape) {
  const char* op = "cached_attention_forward";
  WEGEFT_CHECK(first >= 0 && q.rows > 0,
               op << ": " << q.rows << " queries after " << first << " cached tokens");
  AttentionShape s = shape;
  s.batch = 1;
  s.seq = q.rows;
  s.causal = true;
  const auto a = attention_launch(out, lse, q, k, v, nullptr, s, op, first);
  detail::launch_attention_forward(ctx.stream(), a, out.data, floats(lse), q.data, k.data, v.data);
  detail::check_launch(op);
}

void cached_attention_forward(Context& ctx, const TensorView& out, const TensorView& lse,
                              const TensorView& q, const TensorView& k, const TensorView& v,
                              const std::int32_t* first_at, const AttentionShape& shape,
                              const TensorView& scratch) {
  const char* op = "cached_attention_forward";
  WEGEFT_CHECK(first_at != nullptr, op << ": no device position");
  check_view(scratch, op, "scratch");
  WEGEFT_CHECK(scratch.dtype == DType::F32 && scratch.ld == scratch.cols &&
                   scratch.cols == shape.head_dim + 2 &&
                   scratch.rows >= q.rows * shape.heads * kDecodeSplits,
               op << ": scratch " << scratch.describe() << " for " << q.rows << " queries of "
                  << shape.heads << " heads (F32 [" << q.rows * shape.heads * kDecodeSplits << ", "
                  << shape.head_dim + 2 << "] wanted)");
  WEGEFT_CHECK(q.rows > 0 && k.rows > q.rows,
               op << ": " << q.rows << " queries after a cache of " << k.rows << " rows");
  AttentionShape s = shape;
  s.batch = 1;
  s.seq = q.rows;
  s.causal = true;
  // checked as queries after capacity - m cached rows; the kernel reads the real count
  auto a = attention_launch(out, lse, q, k, v, nullptr, s, op, k.rows - q.rows);
  a.first_at = first_at;
  a.splits =
      std::clamp<Index>((k.rows + kDecodeSplitRows - 1) / kDecodeSplitRows, 1, kDecodeSplits);
  a.chunk = (k.rows + a.splits - 1) / a.splits;
  a.part = static_cast<float*>(scratch.data);
  detail::launch_attention_forward(ctx.stream(), a, out.data, floats(lse), q.data, k.data, v.data);
  detail::check_launch(op);
}

void attention_backward(Context& ctx, const TensorView& dq, const TensorView& dk,
                        const TensorView& dv, const TensorView& delta, const TensorView& dout,
                        const TensorView& out, const TensorView& lse, const TensorView& q,
                        const TensorView& k, const TensorView& v, const DeviceArray* key_mask,
                        const AttentionShape& shape) {
  const char* op = "attention_backward";
  const auto a = attention_launch(out, lse, q, k, v, key_mask, shape, op);
  check_like(dq, q, op, "dq");
  check_like(dk, k, op, "dk");
  check_like(dv, v, op, "dv");
  check_like(dout, out, op, "dout");
  check_stats(delta, shape.batch * shape.heads, shape.seq, op, "delta");
  detail::launch_attention_backward(ctx.stream(), a, dq.data, dk.data, dv.data, floats(delta),
                                    dout.data, out.data, floats(lse), q.data, k.data, v.data);
  detail::check_launch(op);
}

}  // namespace wegeft::cuda

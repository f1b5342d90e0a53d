// LoRA (Hu et al. 2021) on a frozen linear layer, with Hugging Face PEFT's conventions.
//
//   y = x W^T + b + s * (drop(x) A^T) B^T,   A: [r, d_in], B: [d_out, r],
//   s = alpha / r  (rsLoRA: alpha / sqrt(r)).
//
// A and B live in a ParameterStore (flat buffers); W and b stay frozen in the FrozenLinear view.
// forward() fills a Cache that backward() consumes. Parameter gradients accumulate into the store
// (+=); the input gradient, when asked for, is overwritten (=) and includes the base term dy W.
//
//   wegeft::ParameterStore<float> store;
//   wegeft::Rng rng(0);
//   wegeft::LoraAdapter<float> lora(store, wegeft::FrozenLinear<float>(w, &b),
//                                   {.rank = 8, .alpha = 16}, rng, "layers.0.q_proj");
//   wegeft::LoraAdapter<float>::Cache cache;
//   lora.forward(y, cache, x);
//   lora.backward(dx, cache, x, dy);    // or lora.backward(cache, x, dy) without dx
//
// Dropout (on the adapter's input only) is applied in training mode. Its mask is regenerated in
// backward from a per-call seed kept in the cache, so the cache holds only u = drop(x) A^T [N, r].
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "wegeft/adapters/frozen_linear.hpp"
#include "wegeft/adapters/method.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/json.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/precompiled.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/rank_r.hpp"

namespace wegeft {

enum class LoraInit {
  kaiming_uniform,  ///< A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), B = 0 (PEFT's default)
  gaussian,         ///< A ~ N(0, (1/r)^2), B = 0 (PEFT's init_lora_weights="gaussian")
};

struct LoraConfig {
  Index rank = 8;
  double alpha = 8.0;
  bool use_rslora = false;
  double dropout = 0.0;
  LoraInit init = LoraInit::kaiming_uniform;
  bool operator==(const LoraConfig&) const = default;
};

/// s = alpha / r, or alpha / sqrt(r) with rsLoRA.
inline double lora_scale(const LoraConfig& c) {
  return c.use_rslora ? c.alpha / std::sqrt(static_cast<double>(c.rank))
                      : c.alpha / static_cast<double>(c.rank);
}

namespace detail {
/// Checks a LoRA-style config for `kind` ("LoRA", "DoRA") on a [d_out, d_in] layer, registers
/// `<name>.lora_A.weight` [r, d_in] and `<name>.lora_B.weight` [d_out, r] in `store` and
/// initialises A by `config.init` from `rng` (B stays 0). Returns their ids.
template <class T>
std::pair<ParamId, ParamId> add_lora_pair(ParameterStore<T>& store, const LoraConfig& config,
                                          Index d_in, Index d_out, Rng& rng,
                                          const std::string& name, const char* kind) {
  const Index r = config.rank;
  WEGEFT_CHECK(r >= 1, kind << " rank must be at least 1, got " << r << " for '" << name << "'");
  WEGEFT_CHECK(r <= std::min(d_in, d_out), kind << " rank " << r
                                                << " exceeds min(d_in, d_out) = min(" << d_in
                                                << ", " << d_out << ") for '" << name << "'");
  WEGEFT_CHECK(std::isfinite(config.alpha) && config.alpha != 0.0,
               kind << " alpha must be finite and non-zero, got " << config.alpha << " for '"
                    << name << "'");
  WEGEFT_CHECK(std::isfinite(static_cast<T>(lora_scale(config))),
               kind << " scale alpha / r = " << lora_scale(config)
                    << " overflows the compute type for '" << name << "'");
  WEGEFT_CHECK(
      config.dropout >= 0.0 && config.dropout < 1.0,
      kind << " dropout must be in [0, 1), got " << config.dropout << " for '" << name << "'");
  const ParamId a = store.add(name + ".lora_A.weight", r, d_in);
  const ParamId b = store.add(name + ".lora_B.weight", d_out, r);
  auto av = store.value(a);
  if (config.init == LoraInit::kaiming_uniform) {
    const T bound = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d_in)));
    fill_uniform(av, rng, -bound, bound);
  } else {
    fill_normal(av, rng, static_cast<T>(1.0 / static_cast<double>(r)));
  }
  return {a, b};
}
}  // namespace detail

template <class T>
class LoraAdapter : public AdapterBase<LoraAdapter<T>, T> {
  using Base = AdapterBase<LoraAdapter<T>, T>;
  friend Base;

 public:
  using Config = LoraConfig;
  /// What forward() leaves for backward(): u = drop(x) A^T (and, in CacheBase, the dropout seed).
  struct Cache : CacheBase {
    Matrix<T> u;                    // [N, r]
    Matrix<T> sbt;                  // [r, d_out]  s B^T
    mutable Matrix<T> sb, su, g_u;  // backward scratch: [d_out, r] s B, [N, r] s u, [N, r] dy s B
  };

  /// Registers `<name>.lora_A.weight` [r, d_in] and `<name>.lora_B.weight` [d_out, r] in `store` and
  /// initialises them from `rng`. The adapter keeps a pointer to `store` and the view `base`.
  LoraAdapter(ParameterStore<T>& store, FrozenLinear<T> base, const LoraConfig& config, Rng& rng,
              const std::string& name = "lora");

  using Base::d_in;
  using Base::d_out;
  Index rank() const { return m_config.rank; }
  T scale() const { return m_scale; }
  const LoraConfig& config() const { return m_config; }
  Index parameter_count() const { return rank() * (d_in() + d_out()); }

  MatrixMap<T> lora_A() { return m_store->value(m_a); }  // [r, d_in]
  MatrixMap<T> lora_B() { return m_store->value(m_b); }  // [d_out, r]
  MatrixMap<T> grad_A() { return m_store->grad(m_a); }
  MatrixMap<T> grad_B() { return m_store->grad(m_b); }
  ParamId id_A() const { return m_a; }
  ParamId id_B() const { return m_b; }
  std::vector<AdapterParam> parameters() const {
    return {{"lora_A.weight", m_a}, {"lora_B.weight", m_b}};
  }

  /// y [N, d_out] = x W^T + b + s (drop(x) A^T) B^T. Overwrites y, fills cache.
  void forward(MatRef<T> y, Cache& cache, CMatRef<T> x);

  /// s B A [d_out, d_in], the update that merge() adds to W.
  Matrix<T> delta();

 private:
  void merge_weights();
  void unmerge_weights();

  /// grad_A, grad_B += ...; dx (when not null) = dy W + (s dy B) A, masked.
  void backward_impl(MatRef<T>* dx, const Cache& cache, CMatRef<T> x, CMatRef<T> dy);

  ParameterStore<T>* m_store;
  LoraConfig m_config;
  T m_scale;
  ParamId m_a, m_b;
};

template <class T>
LoraAdapter<T>::LoraAdapter(ParameterStore<T>& store, FrozenLinear<T> base,
                            const LoraConfig& config, Rng& rng, const std::string& name)
    : Base(base, "LoRA", Rng()), m_store(&store), m_config(config) {
  std::tie(m_a, m_b) =
      detail::add_lora_pair(store, config, base.d_in(), base.d_out(), rng, name, "LoRA");
  m_scale = static_cast<T>(lora_scale(config));
  this->dropout_rng() = Rng(rng.next_u64());
}

template <class T>
void LoraAdapter<T>::forward(MatRef<T> y, Cache& cache, CMatRef<T> x) {
  if (this->begin_forward(y, cache, x)) return;
  const auto a = lora_A();
  const Index n = x.rows();
  cache.u.resize(n, rank());
  if (this->begin_dropout(cache, m_config.dropout)) {
    WEGEFT_CHECK(x.outerStride() == x.cols(),
                 "LoRA dropout needs a contiguous input x; got a view with row stride "
                     << x.outerStride() << " for " << x.cols() << " columns");
    auto xd = workspace<T>(1, n, x.cols());
    dropout_apply(xd.data(), x.data(), x.size(), m_config.dropout, cache.dropout_seed);
    rank_r_project(cache.u.data(), xd.data(), xd.outerStride(), a.data(), n, d_in(), rank());
  }
  // Scale factors go on the small operands, never on an [N, d] one (that would copy it).
  Matrix<T>& sbt = cache.sbt;
  sbt.noalias() = m_scale * lora_B().transpose();  // [r, d_out]
  if (cache.dropped) {
    rank_r_expand(y.data(), y.outerStride(), static_cast<const T*>(nullptr), 0, this->m_base.bias(),
                  cache.u.data(), sbt.data(), n, d_out(), rank());
    this->m_base.accumulate_forward(y, x);
    return;
  }
  // u = x A^T and y = b + u (s B)^T in one pass each, then the frozen GEMM accumulates x W^T (in
  // bf16, block by block of rows inside the GEMM's own loop).
  this->m_base.accumulate_forward_around(y, x, [&](int parts, auto&& drive) {
    rank_r_project_expand(cache.u.data(), x.data(), x.outerStride(), a.data(), d_in(), y.data(),
                          y.outerStride(), this->m_base.bias(), sbt.data(), d_out(), n, rank(),
                          parts, drive);
  });
}

template <class T>
Matrix<T> LoraAdapter<T>::delta() {
  return (m_scale * lora_B()) * lora_A();
}

template <class T>
void LoraAdapter<T>::merge_weights() {
  this->m_base.weight() += delta();
}

template <class T>
void LoraAdapter<T>::unmerge_weights() {
  this->m_base.weight() -= delta();
}

template <class T>
void LoraAdapter<T>::backward_impl(MatRef<T>* dx, const Cache& cache, CMatRef<T> x, CMatRef<T> dy) {
  const auto a = lora_A();
  const auto b = lora_B();
  Matrix<T>& sb = cache.sb;
  Matrix<T>& su = cache.su;
  Matrix<T>& g_u = cache.g_u;
  sb.noalias() = m_scale * b;        // [d_out, r]
  su.noalias() = m_scale * cache.u;  // [N, r]
  g_u.resize(x.rows(), rank());      // [N, r] = dy (s B)
  const Index n = x.rows();
  if (!cache.dropped) {
    // g_u, dB += s dy^T u, dA += g_u^T x and dx = g_u A together; then dx += dy W (in bf16, block
    // by block of rows inside the GEMM's own loop).
    const auto side = [&](MatRef<T>* z, int parts, auto&& drive) {
      rank_r_backward(g_u.data(), grad_B().data(), grad_A().data(),
                      z != nullptr ? z->data() : nullptr, z != nullptr ? z->outerStride() : 0,
                      dy.data(), dy.outerStride(), sb.data(), su.data(), x.data(), x.outerStride(),
                      a.data(), n, d_out(), d_in(), rank(), parts, drive);
    };
    if (dx == nullptr)
      side(nullptr, 0, detail::OwnRows{});
    else
      this->m_base.accumulate_backward_input_around(
          *dx, dy, [&](int parts, auto&& drive) { side(dx, parts, drive); });
    return;
  }
  // one pass over dy for both g_u and dB += s dy^T u
  rank_r_pass(g_u.data(), grad_B().data(), dy.data(), sb.data(), su.data(), n, d_out(), rank(),
              dy.outerStride());
  auto xd = workspace<T>(1, n, x.cols());
  dropout_apply(xd.data(), x.data(), x.size(), m_config.dropout, cache.dropout_seed);
  rank_r_reduce(grad_A().data(), g_u.data(), xd.data(), xd.outerStride(), n, d_in(), rank());
  if (dx == nullptr) return;
  // The adapter's share of dx passes the dropout mask: written (masked) first where dx is one
  // block of memory, then the GEMM accumulates dy W onto it.
  const bool contiguous = dx->outerStride() == dx->cols();
  auto share = contiguous ? MatrixMap<T>(dx->data(), n, d_in()) : xd;
  rank_r_expand(share.data(), d_in(), static_cast<const T*>(nullptr), 0,
                static_cast<const T*>(nullptr), g_u.data(), a.data(), n, d_in(), rank());
  dropout_apply(share.data(), share.data(), share.size(), m_config.dropout, cache.dropout_seed);
  if (contiguous) {
    this->m_base.accumulate_backward_input(*dx, dy);
  } else {
    this->m_base.backward_input(*dx, dy);
    *dx += xd;
  }
}

namespace detail {
/// The adapter_config.json fields LoRA and DoRA share (PEFT's LoraConfig).
inline LoraConfig lora_config_from_json(const nlohmann::json& j, Index r, const std::string& path) {
  LoraConfig c;
  c.rank = r;
  c.alpha = json_number(j, "lora_alpha", 8.0, path);
  c.dropout = json_number(j, "lora_dropout", 0.0, path);
  c.use_rslora = json_bool(j, "use_rslora", false, path);
  json_bool(j, "use_dora", false,
            path);  // its type is checked; the registry chose the method by it
  if (j.contains("init_lora_weights") && j["init_lora_weights"] == "gaussian")
    c.init = LoraInit::gaussian;
  const std::string bias = json_string(j, "bias", "none", path);
  WEGEFT_CHECK(bias == "none",
               path << ": bias \"" << bias << "\" is not supported (only \"none\")");
  WEGEFT_CHECK(!json_bool(j, "lora_bias", false, path), path << ": lora_bias is not supported");
  WEGEFT_CHECK(!j.contains("layer_replication") || j["layer_replication"].is_null(),
               path << ": layer_replication is not supported");
  return c;
}
inline void lora_config_to_json(nlohmann::ordered_json& j, const LoraConfig& c, bool dora) {
  j["peft_type"] = "LORA";
  j["lora_alpha"] = c.alpha;
  j["lora_dropout"] = c.dropout;
  j["use_rslora"] = c.use_rslora;
  j["init_lora_weights"] = c.init == LoraInit::gaussian ? nlohmann::ordered_json("gaussian")
                                                        : nlohmann::ordered_json(true);
  j["use_dora"] = dora;
}
}  // namespace detail

/// LoRA's entry in the method registry (adapters/registry.hpp).
struct LoraMethod {
  static constexpr const char* name = "lora";
  using Config = LoraConfig;
  template <class T>
  using Adapter = LoraAdapter<T>;

  static bool claims(const nlohmann::json& j) {
    return j.value("peft_type", "") == "LORA" &&
           !(j.contains("use_dora") && j["use_dora"].is_boolean() && j["use_dora"].get<bool>());
  }
  static Config config_from_json(const nlohmann::json& j, Index r, const std::string& path) {
    return detail::lora_config_from_json(j, r, path);
  }
  static void config_to_json(nlohmann::ordered_json& j, const Config& c) {
    detail::lora_config_to_json(j, c, false);
  }
  template <class T>
  static Adapter<T> attach(AttachContext<T>& ctx, const AdapterSite<T>& site, const Config& c) {
    return Adapter<T>(ctx.store, site.base, c, ctx.rng, site.name);
  }
};

#define WEGEFT_LORA_TEMPLATES(EXTERN, T) EXTERN template class LoraAdapter<T>;
WEGEFT_EXTERN_TEMPLATES(WEGEFT_LORA_TEMPLATES)

}  // namespace wegeft

// DoRA (Liu et al. 2024, "Weight-Decomposed Low-Rank Adaptation") on a frozen linear layer, with
// Hugging Face PEFT's conventions (LoraConfig(use_dora=True)).
//
//   W' = diag(m / n) (W + s B A),   n = ||W + s B A|| per output row,   s = alpha / r (or / sqrt(r))
//   y  = x W^T + b + (g - 1) * (drop(x) W^T) + g * s (drop(x) A^T) B^T,   g = m / n  (per column)
//
// A: [r, d_in], B: [d_out, r] as in LoRA; the magnitude m: [d_out] is initialised to the row norms
// of W, so the adapted layer starts as the base layer. As in PEFT (and the paper's section 4.3), n
// is a constant for the gradient: it is recomputed at every forward and not differentiated. Without
// dropout the output is y = g * (x W^T + s x A^T B^T) + b.
//
//   wegeft::ParameterStore<float> store;
//   wegeft::Rng rng(0);
//   wegeft::DoraAdapter<float> dora(store, wegeft::FrozenLinear<float>(w, &b), {.rank = 8, .alpha = 16},
//                                   rng, "layers.0.q_proj");
//   wegeft::DoraAdapter<float>::Cache cache;
//   dora.forward(y, cache, x);
//   dora.backward(dx, cache, x, dy);   // grad A, B, m += ...; dx overwritten
//
// Files: PEFT's layout, `<module>.lora_A.weight`, `<module>.lora_B.weight` and
// `<module>.lora_magnitude_vector` [d_out], with "use_dora": true in adapter_config.json.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "wegeft/adapters/frozen_linear.hpp"
#include "wegeft/adapters/lora.hpp"
#include "wegeft/adapters/method.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/precompiled.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

struct DoraConfig {
  Index rank = 8;
  double alpha = 8.0;
  bool use_rslora = false;
  double dropout = 0.0;
  LoraInit init = LoraInit::kaiming_uniform;
  bool operator==(const DoraConfig&) const = default;
  LoraConfig lora() const {
    return {
        .rank = rank, .alpha = alpha, .use_rslora = use_rslora, .dropout = dropout, .init = init};
  }
};

template <class T>
class DoraAdapter : public AdapterBase<DoraAdapter<T>, T> {
  using Base = AdapterBase<DoraAdapter<T>, T>;
  friend Base;

 public:
  using Config = DoraConfig;
  struct Cache : CacheBase {
    Matrix<T> u;                     // [N, r]      drop(x) A^T
    Matrix<T> z;                     // [N, d_out]  drop(x) W^T + s u B^T
    Matrix<T> g;                     // [1, d_out]  m / n
    Matrix<T> inv_n;                 // [1, d_out]  1 / n
    Matrix<T> sbt, wa, aat, bq, zb;  // forward scratch: s B^T, W A^T, A A^T, B A A^T, drop(x) W^T
    mutable Matrix<T> dyg, g_u, dym, share;  // backward scratch
  };

  /// Registers `<name>.lora_A.weight` [r, d_in], `<name>.lora_B.weight` [d_out, r] and
  /// `<name>.lora_magnitude_vector` [1, d_out] in `store`; A from `rng` as LoRA's init, B = 0,
  /// m = the row norms of W.
  DoraAdapter(ParameterStore<T>& store, FrozenLinear<T> base, const DoraConfig& config, Rng& rng,
              const std::string& name = "dora");

  using Base::d_in;
  using Base::d_out;
  Index rank() const { return m_config.rank; }
  T scale() const { return m_scale; }
  const DoraConfig& config() const { return m_config; }

  MatrixMap<T> lora_A() { return m_store->value(m_a); }     // [r, d_in]
  MatrixMap<T> lora_B() { return m_store->value(m_b); }     // [d_out, r]
  MatrixMap<T> magnitude() { return m_store->value(m_m); }  // [1, d_out]
  MatrixMap<T> grad_A() { return m_store->grad(m_a); }
  MatrixMap<T> grad_B() { return m_store->grad(m_b); }
  MatrixMap<T> grad_magnitude() { return m_store->grad(m_m); }
  std::vector<AdapterParam> parameters() const {
    return {{"lora_A.weight", m_a},
            {"lora_B.weight", m_b},
            {"lora_magnitude_vector", m_m, nullptr, true}};
  }

  /// n = ||W + s B A|| per output row [1, d_out] (the pretrained W: not while merged).
  Matrix<T> weight_norm();

  /// y [N, d_out] as above. Overwrites y, fills cache.
  void forward(MatRef<T> y, Cache& cache, CMatRef<T> x);

  /// W' - W = diag(m / n) (W + s B A) - W [d_out, d_in], the change merge() makes.
  Matrix<T> delta();

 private:
  /// merge(): W = diag(m / n) (W + s B A); keeps n so unmerge() can invert it.
  void merge_weights();
  /// unmerge(): W = diag(n / m) W' - s B A (exact up to rounding if A, B and m did not change).
  void unmerge_weights();

  /// grad_A, grad_B, grad_magnitude += ...; dx (when not null) overwritten.
  void backward_impl(MatRef<T>* dx, const Cache& cache, CMatRef<T> x, CMatRef<T> dy);

  /// cache.inv_n = 1 / ||W + s B A|| per row, without forming W + s B A:
  /// n_j^2 = ||W_j||^2 + 2 s B_j (W A^T)_j^T + s^2 B_j (A A^T) B_j^T.
  void inverse_weight_norm(Cache& cache) {
    const auto w = this->m_base.weight();
    const auto a = lora_A();
    const auto b = lora_B();
    cache.wa.resize(d_out(), rank());
    rank_r_project(cache.wa.data(), w.data(), w.outerStride(), a.data(), d_out(), d_in(), rank());
    cache.aat.noalias() = a * a.transpose();
    cache.bq.noalias() = b * cache.aat;
    const T s = m_scale;
    cache.inv_n.resize(1, d_out());
    for (Index j = 0; j < d_out(); ++j) {
      const T n2 = w.row(j).squaredNorm() + 2 * s * b.row(j).dot(cache.wa.row(j)) +
                   s * s * b.row(j).dot(cache.bq.row(j));
      cache.inv_n(0, j) = T(1) / std::sqrt(std::max(n2, T(0)));
    }
  }

  ParameterStore<T>* m_store;
  DoraConfig m_config;
  T m_scale;
  ParamId m_a, m_b, m_m;
  Matrix<T> m_merge_norm;
};

template <class T>
DoraAdapter<T>::DoraAdapter(ParameterStore<T>& store, FrozenLinear<T> base,
                            const DoraConfig& config, Rng& rng, const std::string& name)
    : Base(base, "DoRA", Rng()), m_store(&store), m_config(config) {
  // alpha 0 would make s B A vanish and the magnitude's direction that of W alone, forever.
  WEGEFT_CHECK(config.alpha != 0.0, "DoRA alpha must be non-zero for '" << name << "'");
  std::tie(m_a, m_b) =
      detail::add_lora_pair(store, config.lora(), base.d_in(), base.d_out(), rng, name, "DoRA");
  m_m = store.add(name + ".lora_magnitude_vector", 1, base.d_out());
  m_scale = static_cast<T>(lora_scale(config.lora()));
  magnitude() = this->m_base.weight().rowwise().norm().transpose();
  this->dropout_rng() = Rng(rng.next_u64());
}

template <class T>
Matrix<T> DoraAdapter<T>::weight_norm() {
  WEGEFT_CHECK(!this->merged(), "DoRA weight_norm() needs the pretrained W; unmerge first");
  const Matrix<T> sb = m_scale * lora_B();
  return (this->m_base.weight() + sb * lora_A()).rowwise().norm().transpose();
}

template <class T>
void DoraAdapter<T>::forward(MatRef<T> y, Cache& cache, CMatRef<T> x) {
  if (this->begin_forward(y, cache, x)) return;
  const Index n = x.rows();
  inverse_weight_norm(cache);
  WEGEFT_CHECK(cache.inv_n.allFinite(),
               "DoRA: a row of W + s B A has zero norm; its direction is undefined");
  cache.g = magnitude().cwiseProduct(cache.inv_n);
  const auto w = this->m_base.weight();
  Matrix<T>& sbt = cache.sbt;
  sbt.noalias() = m_scale * lora_B().transpose();  // [r, d_out]
  if (!this->begin_dropout(cache, m_config.dropout)) {
    cache.u.noalias() = x * lora_A().transpose();
    cache.z.noalias() = x * w.transpose();
    cache.z.noalias() += cache.u * sbt;
    y = cache.z * cache.g.row(0).asDiagonal();
  } else {
    WEGEFT_CHECK(x.outerStride() == x.cols(),
                 "DoRA dropout needs a contiguous input x; got a view with row stride "
                     << x.outerStride() << " for " << x.cols() << " columns");
    auto xd = workspace<T>(1, n, x.cols());
    dropout_apply(xd.data(), x.data(), x.size(), m_config.dropout, cache.dropout_seed);
    cache.u.noalias() = xd * lora_A().transpose();
    Matrix<T>& zb = cache.zb;
    zb.noalias() = xd * w.transpose();  // drop(x) W^T
    cache.z = zb;
    cache.z.noalias() += cache.u * sbt;
    y.noalias() = x * w.transpose();
    y += cache.z * cache.g.row(0).asDiagonal() - zb;  // (g - 1) zb + g s u B^T
  }
  if (this->m_base.bias() != nullptr)
    y.rowwise() += ConstVectorMap<T>(this->m_base.bias(), d_out()).transpose();
}

template <class T>
Matrix<T> DoraAdapter<T>::delta() {
  const Matrix<T> sb = m_scale * lora_B();
  const Matrix<T> adapted = this->m_base.weight() + sb * lora_A();
  const Matrix<T> g = magnitude().cwiseQuotient(adapted.rowwise().norm().transpose());
  return g.row(0).asDiagonal() * adapted - Matrix<T>(this->m_base.weight());
}

template <class T>
void DoraAdapter<T>::merge_weights() {
  m_merge_norm = weight_norm();
  WEGEFT_CHECK((m_merge_norm.array() > T(0)).all() && (magnitude().array() != T(0)).all(),
               "DoRA merge: a zero row norm or magnitude cannot be merged invertibly");
  this->m_base.weight() += delta();
}

template <class T>
void DoraAdapter<T>::unmerge_weights() {
  const Matrix<T> ratio = m_merge_norm.cwiseQuotient(magnitude());
  const Matrix<T> sb = m_scale * lora_B();
  this->m_base.weight() = ratio.row(0).asDiagonal() * Matrix<T>(this->m_base.weight());
  this->m_base.weight() -= sb * lora_A();
}

template <class T>
void DoraAdapter<T>::backward_impl(MatRef<T>* dx, const Cache& cache, CMatRef<T> x, CMatRef<T> dy) {
  const Index n = x.rows();
  // dm_j += sum_i dy_ij z_ij / n_j
  grad_magnitude() += (dy.cwiseProduct(cache.z).colwise().sum()).cwiseProduct(cache.inv_n);
  Matrix<T>& dyg = cache.dyg;
  Matrix<T>& g_u = cache.g_u;
  dyg.noalias() = dy * cache.g.row(0).asDiagonal();  // [N, d_out]
  g_u.noalias() = dyg * lora_B();                    // [N, r]
  g_u *= m_scale;
  grad_B().noalias() += m_scale * (dyg.transpose() * cache.u);
  const auto w = this->m_base.weight();
  if (!cache.dropped) {
    grad_A().noalias() += g_u.transpose() * x;
    if (dx == nullptr) return;
    dx->noalias() = dyg * w;
    dx->noalias() += g_u * lora_A();
    return;
  }
  auto xd = workspace<T>(1, n, x.cols());
  dropout_apply(xd.data(), x.data(), x.size(), m_config.dropout, cache.dropout_seed);
  grad_A().noalias() += g_u.transpose() * xd;
  if (dx == nullptr) return;
  // dx = dy W + mask(((g - 1) * dy) W + g_u A)
  Matrix<T>& dym = cache.dym;
  Matrix<T>& share = cache.share;
  dym = dyg - dy;
  share.noalias() = dym * w;
  share.noalias() += g_u * lora_A();
  dropout_apply(share.data(), share.data(), share.size(), m_config.dropout, cache.dropout_seed);
  dx->noalias() = dy * w;
  *dx += share;
}

/// DoRA's entry in the method registry (adapters/registry.hpp): a PEFT LoRA config with use_dora.
struct DoraMethod {
  static constexpr const char* name = "dora";
  using Config = DoraConfig;
  template <class T>
  using Adapter = DoraAdapter<T>;

  static bool claims(const nlohmann::json& j) {
    return j.value("peft_type", "") == "LORA" && j.contains("use_dora") &&
           j["use_dora"].is_boolean() && j["use_dora"].get<bool>();
  }
  static Config config_from_json(const nlohmann::json& j, Index r, const std::string& path) {
    const LoraConfig l = detail::lora_config_from_json(j, r, path);
    return {.rank = l.rank,
            .alpha = l.alpha,
            .use_rslora = l.use_rslora,
            .dropout = l.dropout,
            .init = l.init};
  }
  static void config_to_json(nlohmann::ordered_json& j, const Config& c) {
    detail::lora_config_to_json(j, c.lora(), true);
  }
  template <class T>
  static Adapter<T> attach(AttachContext<T>& ctx, const AdapterSite<T>& site, const Config& c) {
    return Adapter<T>(ctx.store, site.base, c, ctx.rng, site.name);
  }
};

#define WEGEFT_DORA_TEMPLATES(EXTERN, T) EXTERN template class DoraAdapter<T>;
WEGEFT_EXTERN_TEMPLATES(WEGEFT_DORA_TEMPLATES)

}  // namespace wegeft

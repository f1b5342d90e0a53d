// WeGeFT (Savadikar, Song and Wu, ICML 2025): the weight update of a frozen linear layer is
// generated from the layer's own pretrained weight by a small linear generator shared by a group
// of layers,
//
//   dW = s (W Phi^T) Psi,   Phi, Psi: [r, d_in],   s = alpha / r,
//   y  = x W^T + b + s (x Psi^T) (D(W) Phi^T)^T,
//
// where D is optional inverted weight dropout applied inside the generator path only.
//
// A WeGeFTGenerator holds (Phi, Psi) in a ParameterStore; any number of WeGeFTAdapter layers with
// the same d_in attach to it (d_out may differ) and their gradients are summed into it. Each layer
// computes its step in one of two exact contraction orders (DESIGN.md §1):
//   weight_side (i):  P = D(W) Phi^T [d_out, r], u = x Psi^T, y += s u P^T;
//   input_edit (iv):  u = x Psi^T, x_hat = x + s u Phi, y = x_hat W^T + b.
// `automatic` picks the cheaper one for the call's N (wegeft_order_cost: multiply-adds plus extra
// memory passes), and weight_side whenever weight dropout is active (input_edit cannot express it).
//
//   wegeft::ParameterStore<float> store;
//   wegeft::Rng rng(0);
//   wegeft::WeGeFTGenerator<float> q_gen(store, 768, {.rank = 64, .alpha = 128}, rng, "q");
//   wegeft::WeGeFTAdapter<float> q0(q_gen, wegeft::FrozenLinear<float>(w0, &b0), rng);
//   wegeft::WeGeFTAdapter<float> q1(q_gen, wegeft::FrozenLinear<float>(w1, &b1), rng);
//   wegeft::WeGeFTAdapter<float>::Cache c0;
//   q0.forward(y, c0, x);  q0.backward(dx, c0, x, dy);   // dPhi, dPsi += this layer's share
#pragma once

#include <Eigen/LU>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "wegeft/adapters/frozen_linear.hpp"
#include "wegeft/adapters/method.hpp"
#include "wegeft/adapters/targets.hpp"
#include "wegeft/core/error.hpp"
#include "wegeft/core/json.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/precompiled.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/kernels/cpu/rank_r.hpp"

namespace wegeft {

enum class WeGeFTOrder { automatic, weight_side, input_edit };

/// How WeGeFT generators are shared when attached by pattern: one per role across all depths (the
/// default: all q projections share one generator, all v projections another, ...), one per
/// layer, or the explicit groups of `tied_modules` (the WeGeFT adapter format's rule: each group
/// is a list of regexes matched from the start of a module's name, as Python's re.match; a
/// targeted module in no group gets its own generator).
enum class WeGeFTSharing { per_role, per_layer, tied };

struct WeGeFTConfig {
  Index rank = 64;
  double alpha = 128.0;
  double dropout = 0.0;  ///< weight dropout inside the generator path
  WeGeFTSharing sharing = WeGeFTSharing::per_role;
  WeGeFTOrder order = WeGeFTOrder::automatic;
  std::vector<std::vector<std::string>> tied_modules;  ///< groups, for WeGeFTSharing::tied
  bool operator==(const WeGeFTConfig&) const = default;
};

inline const char* to_string(WeGeFTOrder o) {
  switch (o) {
    case WeGeFTOrder::weight_side:
      return "weight_side";
    case WeGeFTOrder::input_edit:
      return "input_edit";
    default:
      return "automatic";
  }
}

/// Extra multiply-adds of one training step (forward + backward with input gradient) beyond the
/// frozen layer, for N tokens: weight side 3 N r (d_in + d_out) + 2 r d_in d_out, input edit
/// 6 N r d_in.
inline double wegeft_extra_macs(WeGeFTOrder order, Index n, Index r, Index d_in, Index d_out) {
  const double N = static_cast<double>(n), R = static_cast<double>(r);
  const double di = static_cast<double>(d_in), d_o = static_cast<double>(d_out);
  if (order == WeGeFTOrder::input_edit) return 6.0 * N * R * di;
  return 3.0 * N * R * (di + d_o) + 2.0 * R * di * d_o;
}

/// What `automatic` compares: the extra multiply-adds plus the extra passes over [N, d_in]
/// tensors that the order makes beyond its products, each costed as kWeGeFTPassMacs multiply-adds
/// per element. input_edit writes x_hat = x + s u Phi and updates dx in place (two passes); the
/// weight-side order adds its rank-r terms while initialising the outputs the GEMMs accumulate
/// into (no pass). The constant is measured (scripts/bench, N = 2048, d = 768, one thread): one
/// such pass costs about as much as 11 multiply-adds per element of the layer's GEMM, and with it
/// the model picks the faster order at r = 8, 16 (weight side) and 64 (input edit).
inline constexpr double kWeGeFTPassMacs = 11.0;
inline double wegeft_order_cost(WeGeFTOrder order, Index n, Index r, Index d_in, Index d_out) {
  const double passes = order == WeGeFTOrder::input_edit ? 2.0 : 0.0;
  return wegeft_extra_macs(order, n, r, d_in, d_out) +
         passes * kWeGeFTPassMacs * static_cast<double>(n) * static_cast<double>(d_in);
}

/// The shared generator (Phi, Psi), both [r, d_in]. Init (authors' LLM code): Phi = 0,
/// Psi ~ U(-1/sqrt(d_in), 1/sqrt(d_in)), so every generated update starts at exactly zero.
template <class T>
class WeGeFTGenerator {
 public:
  /// Registers `<name>.wegeft_phi.weight` and `<name>.wegeft_psi.weight` [r, d_in] in `store`.
  WeGeFTGenerator(ParameterStore<T>& store, Index d_in, const WeGeFTConfig& config, Rng& rng,
                  const std::string& name = "wegeft");

  Index rank() const { return m_config.rank; }
  Index d_in() const { return m_d_in; }
  T scale() const { return m_scale; }
  const WeGeFTConfig& config() const { return m_config; }
  const std::string& name() const { return m_name; }
  Index parameter_count() const { return 2 * rank() * d_in(); }
  /// Number of layers attached so far.
  Index layer_count() const { return m_layers; }

  MatrixMap<T> phi() { return m_store->value(m_phi); }  // [r, d_in]
  MatrixMap<T> psi() { return m_store->value(m_psi); }  // [r, d_in]
  MatrixMap<T> grad_phi() { return m_store->grad(m_phi); }
  MatrixMap<T> grad_psi() { return m_store->grad(m_psi); }
  ParamId id_phi() const { return m_phi; }
  ParamId id_psi() const { return m_psi; }

  /// Called by WeGeFTAdapter's constructor: a group member must share d_in.
  void attach(const FrozenLinear<T>& base);

 private:
  ParameterStore<T>* m_store;
  WeGeFTConfig m_config;
  Index m_d_in;
  std::string m_name;
  T m_scale;
  ParamId m_phi, m_psi;
  Index m_layers = 0;
};

template <class T>
WeGeFTGenerator<T>::WeGeFTGenerator(ParameterStore<T>& store, Index d_in,
                                    const WeGeFTConfig& config, Rng& rng, const std::string& name)
    : m_store(&store), m_config(config), m_d_in(d_in), m_name(name) {
  const Index r = config.rank;
  WEGEFT_CHECK(d_in >= 1, "WeGeFT generator '" << name << "' needs d_in >= 1, got " << d_in);
  WEGEFT_CHECK(r >= 1, "WeGeFT rank must be at least 1, got " << r << " for '" << name << "'");
  WEGEFT_CHECK(r <= d_in,
               "WeGeFT rank " << r << " exceeds d_in = " << d_in << " for '" << name << "'");
  WEGEFT_CHECK(
      std::isfinite(config.alpha) && config.alpha != 0.0,
      "WeGeFT alpha must be finite and non-zero, got " << config.alpha << " for '" << name << "'");
  WEGEFT_CHECK(std::isfinite(static_cast<T>(config.alpha / static_cast<double>(r))),
               "WeGeFT scale alpha / r = " << config.alpha / static_cast<double>(r)
                                           << " overflows the compute type for '" << name << "'");
  WEGEFT_CHECK(
      config.dropout >= 0.0 && config.dropout < 1.0,
      "WeGeFT dropout must be in [0, 1), got " << config.dropout << " for '" << name << "'");
  m_scale = static_cast<T>(config.alpha / static_cast<double>(r));
  m_phi = store.add(name + ".wegeft_phi.weight", r, d_in);
  m_psi = store.add(name + ".wegeft_psi.weight", r, d_in);
  const T bound = static_cast<T>(1.0 / std::sqrt(static_cast<double>(d_in)));
  auto psi_value = psi();
  fill_uniform(psi_value, rng, -bound, bound);
}

template <class T>
void WeGeFTGenerator<T>::attach(const FrozenLinear<T>& base) {
  WEGEFT_CHECK(base.d_in() == m_d_in, "WeGeFT group '" << m_name << "' has d_in = " << m_d_in
                                                       << " but a layer with W [" << base.d_out()
                                                       << ", " << base.d_in()
                                                       << "] was attached; every layer of a "
                                                       << "group must have the same d_in");
  ++m_layers;
}

/// One frozen linear layer adapted by a (possibly shared) WeGeFTGenerator.
template <class T>
class WeGeFTAdapter : public AdapterBase<WeGeFTAdapter<T>, T> {
  using Base = AdapterBase<WeGeFTAdapter<T>, T>;
  friend Base;

 public:
  using Config = WeGeFTConfig;
  struct Cache : CacheBase {
    WeGeFTOrder order = WeGeFTOrder::automatic;  // the order this call used
    Matrix<T> u;                                 // [N, r]  x Psi^T
    Matrix<T> p;                                 // [d_out, r]  D(W) Phi^T (weight side only)
    Matrix<T> scaled;                            // s Phi [r, d_in] (input edit) or s P^T [r, d_out]
    // backward scratch, reused across steps
    mutable Matrix<T> s_small, su, g_u, g_p;  // s Phi^T or s P, s u, [N, r], [d_out or d_in, r]
  };

  /// Attaches `base` to `generator` (checks d_in); `rng` seeds this layer's dropout stream.
  WeGeFTAdapter(WeGeFTGenerator<T>& generator, FrozenLinear<T> base, Rng& rng,
                WeGeFTOrder order = WeGeFTOrder::automatic);

  using Base::d_in;
  using Base::d_out;
  WeGeFTGenerator<T>& generator() { return *m_gen; }
  const WeGeFTGenerator<T>& generator() const { return *m_gen; }
  const WeGeFTConfig& config() const { return m_gen->config(); }
  /// Phi and Psi, shared with every layer of the generator's group.
  std::vector<AdapterParam> parameters() const {
    return {{"wegeft_phi.weight", m_gen->id_phi(), m_gen},
            {"wegeft_psi.weight", m_gen->id_psi(), m_gen}};
  }
  void set_order(WeGeFTOrder order) { m_order = order; }
  WeGeFTOrder order() const { return m_order; }

  /// The order a call with N tokens will use.
  WeGeFTOrder resolve_order(Index n) const;

  /// y [N, d_out] = x W^T + b + s (x Psi^T)(D(W) Phi^T)^T. Overwrites y, fills cache.
  void forward(MatRef<T> y, Cache& cache, CMatRef<T> x);

  /// C = W Phi^T [d_out, r]: its columns score tokens by the r generated directions
  /// (the interpretability maps of the paper). Uses the pretrained W, so not while merged.
  Matrix<T> projected_weight();
  /// dW = s (W Phi^T) Psi [d_out, d_in], the update merge() adds to W.
  Matrix<T> delta();

 private:
  /// merge(): W += s (W Phi^T) Psi.
  void merge_weights();
  /// unmerge(): recovers W from W' = W (I + s Phi^T Psi) exactly by the Woodbury identity:
  /// W = W' - s (W' Phi^T) (I_r + s Psi Phi^T)^{-1} Psi. Needs the generator unchanged since
  /// merge() and I_r + s Psi Phi^T invertible.
  void unmerge_weights();

  bool dropout_active() const { return this->training() && m_gen->config().dropout > 0.0; }

  /// f(first row, rows, D(W) of those rows) over blocks of rows of the dropped weight, each built
  /// in a per-thread buffer of at most 64 rows with the mask of the whole weight (no [d_out, d_in]
  /// copy).
  template <class F>
  void for_dropped_rows(std::uint64_t seed, F&& f) const {
    const auto& w = this->m_base.weight();
    constexpr Index kRows = 64;
    auto block = workspace<T>(2, std::min(kRows, d_out()), d_in());
    for (Index i0 = 0; i0 < d_out(); i0 += kRows) {
      const Index rows = std::min(kRows, d_out() - i0);
      dropout_apply(block.data(), w.data() + i0 * d_in(), rows * d_in(), m_gen->config().dropout,
                    seed, i0 * d_in());
      f(i0, rows, block.data());
    }
  }

  /// grad_phi, grad_psi += this layer's share; dx (when not null) overwritten.
  void backward_impl(MatRef<T>* dx, const Cache& cache, CMatRef<T> x, CMatRef<T> dy);

  WeGeFTGenerator<T>* m_gen;
  WeGeFTOrder m_order;
};

template <class T>
WeGeFTAdapter<T>::WeGeFTAdapter(WeGeFTGenerator<T>& generator, FrozenLinear<T> base, Rng& rng,
                                WeGeFTOrder order)
    : Base(base, "WeGeFT", Rng(rng.next_u64())), m_gen(&generator), m_order(order) {
  generator.attach(base);
}

template <class T>
WeGeFTOrder WeGeFTAdapter<T>::resolve_order(Index n) const {
  const bool drop = dropout_active();
  if (m_order == WeGeFTOrder::input_edit) {
    WEGEFT_CHECK(!drop, "WeGeFT input_edit order cannot apply weight dropout (p = "
                            << m_gen->config().dropout
                            << "); use weight_side or automatic, or set_training(false)");
    return m_order;
  }
  if (m_order == WeGeFTOrder::weight_side || drop) return WeGeFTOrder::weight_side;
  const Index r = m_gen->rank();
  return wegeft_order_cost(WeGeFTOrder::input_edit, n, r, d_in(), d_out()) <=
                 wegeft_order_cost(WeGeFTOrder::weight_side, n, r, d_in(), d_out())
             ? WeGeFTOrder::input_edit
             : WeGeFTOrder::weight_side;
}

template <class T>
void WeGeFTAdapter<T>::forward(MatRef<T> y, Cache& cache, CMatRef<T> x) {
  if (this->begin_forward(y, cache, x)) return;
  const auto& w = this->m_base.weight();
  const T s = m_gen->scale();
  cache.order = resolve_order(x.rows());
  const Index n = x.rows(), r = m_gen->rank();
  cache.u.resize(n, r);
  if (cache.order == WeGeFTOrder::input_edit) {
    rank_r_project(cache.u.data(), x.data(), x.outerStride(), m_gen->psi().data(), n, d_in(), r);
    // x_hat = x + s u Phi in one pass (scale on the small operand, not an [N, d] one)
    auto x_hat = workspace<T>(0, n, x.cols());
    cache.scaled.noalias() = s * m_gen->phi();
    rank_r_expand(x_hat.data(), x_hat.outerStride(), x.data(), x.outerStride(),
                  static_cast<const T*>(nullptr), cache.u.data(), cache.scaled.data(), n, d_in(),
                  r);
    this->m_base.forward(y, x_hat);
    return;
  }
  if (this->begin_dropout(cache, m_gen->config().dropout)) {
    cache.p.resize(d_out(), m_gen->rank());
    for_dropped_rows(cache.dropout_seed, [&](Index i0, Index rows, const T* wd) {  // P = D(W) Phi^T
      rank_r_project(cache.p.data() + i0 * m_gen->rank(), wd, d_in(), m_gen->phi().data(), rows,
                     d_in(), m_gen->rank());
    });
  } else {  // P = W Phi^T: r dot products per row of W
    cache.p.resize(d_out(), m_gen->rank());
    rank_r_project(cache.p.data(), w.data(), w.outerStride(), m_gen->phi().data(), d_out(), d_in(),
                   m_gen->rank());
  }
  Matrix<T>& s_pt = cache.scaled;
  s_pt.noalias() = s * cache.p.transpose();  // [r, d_out]
  // u = x Psi^T and y = b + u (s P)^T in one pass each, then the frozen GEMM accumulates x W^T (in
  // bf16, block by block of rows inside the GEMM's own loop).
  this->m_base.accumulate_forward_around(y, x, [&](int parts, auto&& drive) {
    rank_r_project_expand(cache.u.data(), x.data(), x.outerStride(), m_gen->psi().data(), d_in(),
                          y.data(), y.outerStride(), this->m_base.bias(), s_pt.data(), d_out(), n,
                          r, parts, drive);
  });
}

template <class T>
Matrix<T> WeGeFTAdapter<T>::projected_weight() {
  WEGEFT_CHECK(!this->merged(), "projected_weight() needs the pretrained W; unmerge first");
  return this->m_base.weight() * m_gen->phi().transpose();
}

template <class T>
Matrix<T> WeGeFTAdapter<T>::delta() {
  return (m_gen->scale() * projected_weight()) * m_gen->psi();
}

template <class T>
void WeGeFTAdapter<T>::merge_weights() {
  this->m_base.weight() += delta();
}

template <class T>
void WeGeFTAdapter<T>::unmerge_weights() {
  const T s = m_gen->scale();
  const auto phi = m_gen->phi();
  const auto psi = m_gen->psi();
  const Index r = m_gen->rank();
  const Matrix<T> core = Matrix<T>::Identity(r, r) + s * (psi * phi.transpose());
  Eigen::FullPivLU<Matrix<T>> lu(core);
  WEGEFT_CHECK(lu.isInvertible(), "WeGeFT unmerge: I + s Psi Phi^T is singular (rank "
                                      << lu.rank() << " of " << r
                                      << "), the merged weight cannot be inverted exactly");
  const Matrix<T> wp = this->m_base.weight() * phi.transpose();  // [d_out, r]
  this->m_base.weight() -= (s * wp) * lu.solve(Matrix<T>(psi));
}

template <class T>
void WeGeFTAdapter<T>::backward_impl(MatRef<T>* dx, const Cache& cache, CMatRef<T> x,
                                     CMatRef<T> dy) {
  const T s = m_gen->scale();
  const auto& w = this->m_base.weight();
  const auto phi = m_gen->phi();
  const auto psi = m_gen->psi();
  auto g_phi = m_gen->grad_phi();
  auto g_psi = m_gen->grad_psi();
  if (cache.order == WeGeFTOrder::input_edit) {
    // h = dL/dx_hat = dy W [N, d_in]: computed straight into dx when it is wanted.
    using View = Eigen::Map<Matrix<T>, 0, Eigen::OuterStride<>>;
    View h = dx != nullptr
                 ? View(dx->data(), x.rows(), x.cols(), Eigen::OuterStride<>(dx->outerStride()))
                 : View(workspace<T>(0, x.rows(), x.cols()).data(), x.rows(), x.cols(),
                        Eigen::OuterStride<>(x.cols()));
    this->m_base.backward_input(h, dy);
    // One pass over h: t = s h Phi^T [N, r] (dL/du) and G = s h^T u = dPhi^T [d_in, r].
    Matrix<T>& s_phi_t = cache.s_small;
    Matrix<T>& su = cache.su;
    Matrix<T>& t = cache.g_u;
    Matrix<T>& G = cache.g_p;
    s_phi_t.noalias() = s * phi.transpose();
    su.noalias() = s * cache.u;
    t.resize(x.rows(), m_gen->rank());
    G.setZero(d_in(), m_gen->rank());
    rank_r_pass(t.data(), G.data(), h.data(), s_phi_t.data(), su.data(), x.rows(), d_in(),
                m_gen->rank(), h.outerStride());
    rank_r_reduce(g_psi.data(), t.data(), x.data(), x.outerStride(), x.rows(), d_in(),
                  m_gen->rank());
    g_phi += G.transpose();
    if (dx != nullptr)  // dx = h + t Psi, in place
      rank_r_expand(dx->data(), dx->outerStride(), dx->data(), dx->outerStride(),
                    static_cast<const T*>(nullptr), t.data(), psi.data(), x.rows(), d_in(),
                    m_gen->rank());
    return;
  }
  Matrix<T>& s_p = cache.s_small;
  Matrix<T>& g_u = cache.g_u;  // [N, r] = s dy P
  Matrix<T>& g_p = cache.g_p;  // [d_out, r] = s dy^T u
  Matrix<T>& su = cache.su;
  s_p.noalias() = s * cache.p;
  g_u.resize(x.rows(), m_gen->rank());
  g_p.setZero(d_out(), m_gen->rank());
  su.noalias() = s * cache.u;
  // g_u, g_p, dPsi += g_u^T x and dx = g_u Psi together, then dx += dy W (in bf16, block by block
  // of rows inside the GEMM's own loop).
  const auto side = [&](MatRef<T>* z, int parts, auto&& drive) {
    rank_r_backward(g_u.data(), g_p.data(), g_psi.data(), z != nullptr ? z->data() : nullptr,
                    z != nullptr ? z->outerStride() : 0, dy.data(), dy.outerStride(), s_p.data(),
                    su.data(), x.data(), x.outerStride(), psi.data(), x.rows(), d_out(), d_in(),
                    m_gen->rank(), parts, drive);
  };
  if (dx == nullptr)
    side(nullptr, 0, detail::OwnRows{});
  else
    this->m_base.accumulate_backward_input_around(
        *dx, dy, [&](int parts, auto&& drive) { side(dx, parts, drive); });
  if (cache.dropped) {
    for_dropped_rows(cache.dropout_seed,
                     [&](Index i0, Index rows, const T* wd) {  // dPhi += g_p^T D(W)
                       rank_r_reduce(g_phi.data(), g_p.data() + i0 * m_gen->rank(), wd, d_in(),
                                     rows, d_in(), m_gen->rank());
                     });
  } else {  // dPhi += g_p^T W
    rank_r_reduce(g_phi.data(), g_p.data(), w.data(), w.outerStride(), d_out(), d_in(),
                  m_gen->rank());
  }
}

/// WeGeFT's entry in the method registry (adapters/registry.hpp). attach() finds or creates the
/// generator of the site's group (by `sharing`) among the set's shared objects.
struct WeGeFTMethod {
  static constexpr const char* name = "wegeft";
  using Config = WeGeFTConfig;
  template <class T>
  using Adapter = WeGeFTAdapter<T>;

  static bool claims(const nlohmann::json& j) { return j.value("peft_type", "") == "WEGEFT"; }
  static Config config_from_json(const nlohmann::json& j, Index r, const std::string& path) {
    Config c;
    c.rank = r;
    c.alpha = detail::json_number(j, "wegeft_alpha", 2.0 * static_cast<double>(r), path);
    c.dropout = detail::json_number(j, "wegeft_dropout", 0.0, path);
    c.sharing = WeGeFTSharing::tied;
    if (j.contains("tied_modules") && !j["tied_modules"].is_null()) {
      WEGEFT_CHECK(j["tied_modules"].is_array(),
                   path << ": \"tied_modules\" must be a list of groups");
      for (const auto& group : j["tied_modules"])
        c.tied_modules.push_back(
            detail::json_string_list(group, path + ": a \"tied_modules\" group"));
    }
    for (const auto& group : c.tied_modules)
      for (const auto& p : group) {
        try {
          (void)Pattern(p);
        } catch (const Error& e) {
          WEGEFT_CHECK(false, path << ": " << e.message());
        }
      }
    return c;
  }
  static void config_to_json(nlohmann::ordered_json& j, const Config& c) {
    j["peft_type"] = "WEGEFT";
    j["wegeft_alpha"] = c.alpha;
    j["wegeft_dropout"] = c.dropout;
  }
  template <class T>
  static Adapter<T> attach(AttachContext<T>& ctx, const AdapterSite<T>& site, const Config& c) {
    const std::string tag =
        "wegeft#" + std::to_string(ctx.call) + "@r" + std::to_string(c.rank) + ":";
    std::string key = tag + site.name;
    if (c.sharing == WeGeFTSharing::per_role && !site.role.empty()) key = tag + "role:" + site.role;
    if (c.sharing == WeGeFTSharing::tied) {
      const int g = tied_group_of(c.tied_modules, site.name);
      if (g >= 0) key = tag + "tied:" + std::to_string(g);
    }
    auto& slot = ctx.shared[key];
    if (!slot)
      slot =
          std::make_shared<WeGeFTGenerator<T>>(ctx.store, site.base.d_in(), c, ctx.rng, site.name);
    return Adapter<T>(*std::static_pointer_cast<WeGeFTGenerator<T>>(slot), site.base, ctx.rng,
                      c.order);
  }
};

#define WEGEFT_WEGEFT_TEMPLATES(EXTERN, T)  \
  EXTERN template class WeGeFTGenerator<T>; \
  EXTERN template class WeGeFTAdapter<T>;
WEGEFT_EXTERN_TEMPLATES(WEGEFT_WEGEFT_TEMPLATES)

}  // namespace wegeft

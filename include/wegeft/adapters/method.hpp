// The adapter contract: what every fine-tuning method (LoRA, WeGeFT, DoRA, ...) provides, so that
// the model, the file formats and the tool handle all of them through one code path.
//
// A method is a descriptor type M (see LoraMethod in lora.hpp for the smallest one) with
//   M::name                               "lora", "wegeft", "dora": the method's short name
//   M::Config                             its settings; every Config has `rank` and `alpha`, which
//                                         rank_pattern / alpha_pattern override per module
//   M::Adapter<T>                         the adapted layer (satisfies AdapterOf<A, T> below)
//   M::claims(json)                       whether an adapter_config.json describes this method
//   M::config_from_json(json, r, path)    its Config from adapter_config.json (r already read)
//   M::config_to_json(json&, config)      the method's own fields of adapter_config.json
//   M::attach<T>(context, site, config)   a new Adapter<T> on one frozen linear
// and registers once, in registry.hpp's AdapterMethods list.
//
// AdapterBase holds what every adapter shares (the frozen layer, dropout mode and stream, merge
// state and guards, the backward overloads and their checks); an adapter class derives from it.
//
// An adapter keeps its trainable tensors in a ParameterStore and names them relative to its
// module ("lora_A.weight"); a tensor shared by a group of modules (a WeGeFT generator) carries the
// group's identity, and files store it once, under one member of the group.
#pragma once

#include <concepts>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/adapters/frozen_linear.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// A linear module an adapter can attach to: its full name ("model.layers.0.self_attn.q_proj"),
/// its role's short name ("q"; empty when the host has none), its block index (-1 when none) and
/// the frozen weights.
template <class T>
struct AdapterSite {
  std::string name;
  std::string role;
  Index layer = -1;
  FrozenLinear<T> base;
};

/// One trainable tensor of an adapter. `suffix` names it relative to the module
/// ("<module>.lora_A.weight"); `group` is null for the module's own tensors and identifies the
/// group for a tensor shared by several modules. `vector`: a [1, n] parameter stored 1-D in files.
struct AdapterParam {
  const char* suffix;
  ParamId id;
  const void* group = nullptr;
  bool vector = false;
};

/// Objects that adapters of one AdapterSet share (WeGeFT's generators), by key.
using SharedObjects = std::map<std::string, std::shared_ptr<void>>;

/// What a method's attach() receives besides the site.
template <class T>
struct AttachContext {
  ParameterStore<T>& store;
  Rng& rng;
  SharedObjects& shared;
  Index call = 0;  ///< which attach() call of the set this is: groups never span two calls
};

/// What every adapter's forward leaves in its cache besides its own tensors.
struct CacheBase {
  Index n = 0;  // tokens of the call
  std::uint64_t dropout_seed = 0;
  bool dropped = false;         // dropout was applied in this call
  bool merged = false;          // forward ran on merged weights (backward is then refused)
  const void* owner = nullptr;  // the adapter that filled it
};

/// The scaffolding every adapter shares: the frozen layer, the training flag and dropout stream,
/// merge state with its guards, and the two backward overloads with their checks. Derived
/// implements merge_weights(), unmerge_weights() and backward_impl(dx or null, cache, x, dy).
template <class Derived, class T>
class AdapterBase {
 public:
  Index d_in() const { return m_base.d_in(); }
  Index d_out() const { return m_base.d_out(); }
  FrozenLinear<T>& base() { return m_base; }
  const FrozenLinear<T>& base() const { return m_base; }
  /// Dropout is applied only in training mode (the default).
  void set_training(bool training) { m_training = training; }
  bool training() const { return m_training; }
  /// The stream of per-call dropout seeds; save and restore it to replay a call exactly.
  Rng& dropout_rng() { return m_dropout_rng; }
  bool merged() const { return m_merged; }

  /// Parameter gradients only (+=).
  template <class Cache>
  void backward(const Cache& cache, CMatRef<T> x, CMatRef<T> dy) {
    check_backward(cache, x, dy);
    self().backward_impl(nullptr, cache, x, dy);
  }
  /// Parameter gradients (+=) and the input gradient dx [N, d_in] (overwritten).
  template <class Cache>
  void backward(MatRef<T> dx, const Cache& cache, CMatRef<T> x, CMatRef<T> dy) {
    check_backward(cache, x, dy);
    check_shape(dx, x.rows(), d_in(), m_kind, "input gradient dx");
    self().backward_impl(&dx, cache, x, dy);
  }
  /// W += delta(). Afterwards forward() is the plain base layer and backward() is refused.
  void merge() {
    WEGEFT_CHECK(!m_merged, m_kind << " adapter is already merged");
    self().merge_weights();
    m_merged = true;
  }
  /// Restores W from the merged weight.
  void unmerge() {
    WEGEFT_CHECK(m_merged, m_kind << " adapter is not merged");
    self().unmerge_weights();
    m_merged = false;
  }

 protected:
  AdapterBase(FrozenLinear<T> base, const char* kind, Rng dropout_rng)
      : m_base(base), m_kind(kind), m_dropout_rng(dropout_rng) {}

  /// Checks a forward's shapes and stamps the cache. When merged, computes the plain layer into
  /// y and returns true (the forward is done).
  bool begin_forward(MatRef<T> y, CacheBase& cache, CMatRef<T> x) {
    m_base.check_input(x);
    check_shape(y, x.rows(), d_out(), m_kind, "output y");
    cache.owner = this;
    cache.merged = m_merged;
    cache.n = x.rows();
    cache.dropped = false;
    if (m_merged) linear_forward<T>(y, x, m_base.weight(), m_base.bias());
    return m_merged;
  }
  /// Whether this call applies dropout of probability p; if so, draws its seed into the cache.
  bool begin_dropout(CacheBase& cache, double p) {
    cache.dropped = m_training && p > 0.0;
    if (cache.dropped) cache.dropout_seed = m_dropout_rng.next_u64();
    return cache.dropped;
  }

  FrozenLinear<T> m_base;

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  void check_backward(const CacheBase& cache, CMatRef<T> x, CMatRef<T> dy) const {
    WEGEFT_CHECK(cache.owner == this, m_kind << " backward got a cache filled by another layer");
    WEGEFT_CHECK(!cache.merged,
                 m_kind << " backward after a forward on merged weights; unmerge first");
    check_shape(x, cache.n, d_in(), m_kind, "backward input x");
    check_shape(dy, cache.n, d_out(), m_kind, "output gradient dy");
  }

  const char* m_kind;
  Rng m_dropout_rng;
  bool m_training = true;
  bool m_merged = false;
};

/// The adapted-layer half of the contract.
///   forward(y, cache, x)          y [N, d_out] = the adapted layer on x [N, d_in]; overwrites y
///   backward(cache, x, dy)        parameter gradients += ...
///   backward(dx, cache, x, dy)    and dx [N, d_in] = dL/dx (overwritten)
///   delta()                       the [d_out, d_in] change merge() makes to W
///   merge() / unmerge() / merged()
///   set_training(on), dropout_rng()  the dropout mode and the stream of per-call seeds
///   parameters()                  the trainable tensors, named (AdapterParam)
///   config(), base()
template <class A, class T>
concept AdapterOf = requires(A& a, const A& ca, typename A::Cache& cache,
                             const typename A::Cache& ccache, MatRef<T> y, CMatRef<T> x, bool on) {
  typename A::Config;
  { ca.config() } -> std::convertible_to<const typename A::Config&>;
  a.forward(y, cache, x);
  a.backward(ccache, x, x);
  a.backward(y, ccache, x, x);
  { a.delta() } -> std::convertible_to<Matrix<T>>;
  a.merge();
  a.unmerge();
  { ca.merged() } -> std::same_as<bool>;
  a.set_training(on);
  { a.dropout_rng() } -> std::same_as<Rng&>;
  { ca.parameters() } -> std::same_as<std::vector<AdapterParam>>;
  { a.base() } -> std::same_as<FrozenLinear<T>&>;
};

/// The method-descriptor half of the contract.
template <class M>
concept AdapterMethod = requires(const nlohmann::json& j, nlohmann::ordered_json& out,
                                 const typename M::Config& c, typename M::Config& mc,
                                 const std::string& path, Index r, AttachContext<float>& ctx,
                                 const AdapterSite<float>& site) {
  { M::name } -> std::convertible_to<std::string_view>;
  { M::claims(j) } -> std::same_as<bool>;
  { M::config_from_json(j, r, path) } -> std::same_as<typename M::Config>;
  M::config_to_json(out, c);
  { mc.rank } -> std::convertible_to<Index>;
  { mc.alpha } -> std::convertible_to<double>;
  { M::template attach<float>(ctx, site, c) } -> std::same_as<typename M::template Adapter<float>>;
  requires AdapterOf < typename M::template Adapter<float>,
  float > ;
  requires AdapterOf < typename M::template Adapter<double>,
  double > ;
};

}  // namespace wegeft

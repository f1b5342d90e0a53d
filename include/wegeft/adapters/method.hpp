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
// An adapter keeps its trainable tensors in a ParameterStore and names them relative to its
// module ("lora_A.weight"); a tensor shared by a group of modules (a WeGeFT generator) carries the
// group's identity, and files store it once, under one member of the group.
#pragma once

#include <concepts>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "wegeft/core/parameters.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/core/tensor.hpp"
#include "wegeft/nn/linear.hpp"

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
concept AdapterOf = requires(A& a, const A& ca, typename A::Cache& cache, const typename A::Cache& ccache, MatRef<T> y,
                             CMatRef<T> x, bool on) {
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
concept AdapterMethod = requires(const nlohmann::json& j, nlohmann::ordered_json& out, const typename M::Config& c,
                                 typename M::Config& mc, const std::string& path, Index r,
                                 AttachContext<float>& ctx, const AdapterSite<float>& site) {
  { M::name } -> std::convertible_to<std::string_view>;
  { M::claims(j) } -> std::same_as<bool>;
  { M::config_from_json(j, r, path) } -> std::same_as<typename M::Config>;
  M::config_to_json(out, c);
  { mc.rank } -> std::convertible_to<Index>;
  { mc.alpha } -> std::convertible_to<double>;
  { M::template attach<float>(ctx, site, c) } -> std::same_as<typename M::template Adapter<float>>;
  requires AdapterOf<typename M::template Adapter<float>, float>;
  requires AdapterOf<typename M::template Adapter<double>, double>;
};

}  // namespace wegeft

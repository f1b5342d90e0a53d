// The registered adapter methods, the types built from them, and AdapterSet: named adapters on
// named frozen linears, the one thing the model, the file formats and the tool hold adapters in.
//
// Adding a method: write adapters/<method>.hpp with an adapter class and a descriptor that
// satisfy adapters/method.hpp's contract, include it here and add it to AdapterMethods.
//
//   wegeft::ParameterStore<float> store;
//   wegeft::AdapterSet<float> adapters(store);
//   std::vector<wegeft::AdapterSite<float>> sites = {{"layer0.q", "q", 0, wegeft::FrozenLinear<float>(w0, &b0)},
//                                                    {"layer1.q", "q", 1, wegeft::FrozenLinear<float>(w1, &b1)}};
//   adapters.attach({.target_modules = {"q"}, .method = wegeft::WeGeFTConfig{.rank = 4, .alpha = 8}}, sites);
//   wegeft::AnyAdapter<float>& a = *adapters.find("layer0.q");
//   wegeft::save_adapter(adapters, "out-dir");   // io/peft.hpp: a PEFT-style directory
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "wegeft/adapters/dora.hpp"
#include "wegeft/adapters/lora.hpp"
#include "wegeft/adapters/method.hpp"
#include "wegeft/adapters/targets.hpp"
#include "wegeft/adapters/wegeft.hpp"
#include "wegeft/core/error.hpp"

namespace wegeft {

template <AdapterMethod... M>
struct MethodList {
  using Configs = std::variant<typename M::Config...>;
  template <class T>
  using Adapters = std::variant<typename M::template Adapter<T>...>;
  template <class T>
  using Caches = std::variant<std::monostate, typename M::template Adapter<T>::Cache...>;
  using Tuple = std::tuple<M...>;
};

/// The registry: every method the model, the formats and the tool know.
using AdapterMethods = MethodList<LoraMethod, WeGeFTMethod, DoraMethod>;

/// One method's settings (LoraConfig, WeGeFTConfig, DoraConfig, ...).
using MethodConfig = AdapterMethods::Configs;
/// An adapter of any registered method.
template <class T>
using AnyAdapter = AdapterMethods::Adapters<T>;
/// What forward() of any registered adapter leaves for backward() (monostate: no adapter).
template <class T>
using AnyCache = AdapterMethods::Caches<T>;

namespace detail {
template <class Config, class Methods>
struct find_method {
  using type = void;
};
template <class Config, class M0, class... M>
struct find_method<Config, std::tuple<M0, M...>> {
  using type = std::conditional_t<std::is_same_v<typename M0::Config, Config>, M0,
                                  typename find_method<Config, std::tuple<M...>>::type>;
};
template <class X>
struct config_type {
  using type = X;
};
template <class X>
requires requires {
  typename X::Config;
}
struct config_type<X> {
  using type = typename X::Config;
};
}  // namespace detail

/// The registered method descriptor of a method config or adapter type.
template <class X>
using method_of = typename detail::find_method<typename detail::config_type<X>::type,
                                               AdapterMethods::Tuple>::type;

/// The short name ("lora", "wegeft", "dora") of a method config or adapter.
inline const char* method_name(const MethodConfig& c) {
  return std::visit([](const auto& cfg) { return method_of<std::decay_t<decltype(cfg)>>::name; },
                    c);
}
template <class T>
const char* method_name(const AnyAdapter<T>& a) {
  return std::visit([](const auto& ad) { return method_of<std::decay_t<decltype(ad)>>::name; }, a);
}

/// Which modules get which adapter: targets (adapters/targets.hpp), the method and its settings,
/// per-module rank and alpha overrides, and the seed of initialisation and dropout streams.
struct AdapterSpec {
  std::vector<std::string> target_modules;
  std::string target_regex;
  std::vector<Index> layers;
  MethodConfig method = LoraConfig{};
  std::vector<std::pair<std::string, Index>> rank_pattern;
  std::vector<std::pair<std::string, double>> alpha_pattern;
  std::uint64_t seed = 0;
};

/// The registered method that claims an adapter_config.json, with its settings (`r` read by the
/// caller). Throws, naming `path`, when no method claims it.
inline MethodConfig method_config_from_json(const nlohmann::json& j, Index r,
                                            const std::string& path) {
  std::optional<MethodConfig> out;
  std::apply(
      [&](auto... m) {
        ((!out && decltype(m)::claims(j)
              ? void(out.emplace(decltype(m)::config_from_json(j, r, path)))
              : void()),
         ...);
      },
      AdapterMethods::Tuple{});
  WEGEFT_CHECK(out.has_value(),
               path << ": no adapter method of wegeft reads peft_type \""
                    << j.value("peft_type", "") << "\""
                    << (j.value("peft_type", "") == "LORA" ? " with these options" : "")
                    << " (LORA, LORA with use_dora, WEGEFT)");
  return *out;
}
/// The method's own fields of adapter_config.json.
inline void method_config_to_json(nlohmann::ordered_json& j, const MethodConfig& c) {
  std::visit(
      [&](const auto& cfg) { method_of<std::decay_t<decltype(cfg)>>::config_to_json(j, cfg); }, c);
}

/// Named adapters on named frozen linears, in attach order, with the objects their groups share.
/// Parameters go into the store given at construction, which must outlive the set.
template <class T>
class AdapterSet {
 public:
  struct Entry {
    std::string name;
    std::unique_ptr<AnyAdapter<T>> adapter;  // stable address
  };

  explicit AdapterSet(ParameterStore<T>& store) : m_store(&store) {}
  AdapterSet(const AdapterSet&) = delete;
  AdapterSet& operator=(const AdapterSet&) = delete;
  AdapterSet(AdapterSet&&) noexcept = default;
  AdapterSet& operator=(AdapterSet&&) noexcept = default;

  ParameterStore<T>& store() const { return *m_store; }
  const std::vector<Entry>& entries() const { return m_entries; }
  bool empty() const { return m_entries.empty(); }
  /// Counts successful attach() calls: a holder of pointers into the set re-resolves them when it changes.
  Index version() const { return m_calls; }
  Index size() const { return static_cast<Index>(m_entries.size()); }

  /// The adapter of module `name`, or null.
  AnyAdapter<T>* find(const std::string& name) const {
    for (const auto& e : m_entries)
      if (e.name == name) return e.adapter.get();
    return nullptr;
  }

  /// Attaches spec's method to every site that the spec targets and returns how many, all or
  /// nothing: on an error no adapter is added and the store is as it was. Throws if the spec
  /// matches no site or a targeted site already has an adapter. Sites' weights must outlive the set.
  Index attach(const AdapterSpec& spec, std::span<const AdapterSite<T>> sites) {
    Rng rng(spec.seed, 1);
    std::vector<Entry> added;
    SharedObjects shared = m_shared;
    const std::size_t mark = m_store->entries().size();
    try {
      for (const auto& site : sites) {
        if (!targets_module(spec, site.name, site.role.c_str(), site.layer)) continue;
        WEGEFT_CHECK(find(site.name) == nullptr,
                     "module '" << site.name << "' already has an adapter");
        AttachContext<T> ctx{*m_store, rng, shared, m_calls};
        added.push_back(
            Entry{site.name, std::visit(
                                 [&](const auto& base_config) {
                                   auto c = base_config;
                                   c.rank = rank_for(spec, site.name, site.role.c_str(), c.rank);
                                   c.alpha = alpha_for(spec, site.name, site.role.c_str(), c.alpha);
                                   using M = method_of<std::decay_t<decltype(c)>>;
                                   return std::make_unique<AnyAdapter<T>>(
                                       M::template attach<T>(ctx, site, c));
                                 },
                                 spec.method)});
      }
      WEGEFT_CHECK(!added.empty(),
                   "adapter targets "
                       << describe(spec) << " match no module"
                       << (sites.empty()
                               ? std::string()
                               : "; the linear modules are e.g. '" + sites.front().name +
                                     "' (short names: q k v qkv o gate up down, or all-linear)"));
    } catch (...) {
      m_store->truncate(mark);
      throw;
    }
    for (auto& e : added) m_entries.push_back(std::move(e));
    m_shared = std::move(shared);
    ++m_calls;
    return static_cast<Index>(added.size());
  }

  /// Dropout in every adapter (training mode, the default) or none.
  void set_training(bool on) {
    for (auto& e : m_entries) std::visit([&](auto& a) { a.set_training(on); }, *e.adapter);
  }

 private:
  static std::string describe(const AdapterSpec& spec) {
    if (!spec.target_regex.empty()) return "regex '" + spec.target_regex + "'";
    std::string out = "[";
    for (const auto& t : spec.target_modules) out += (out.size() > 1 ? ", " : "") + t;
    return out + "]";
  }

  ParameterStore<T>* m_store;
  std::vector<Entry> m_entries;
  SharedObjects m_shared;
  Index m_calls = 0;
};

}  // namespace wegeft

// Training checkpoints: the trainable parameters, the AdamW state, the optimizer step, every
// adapter's dropout stream and any caller RNGs (a data sampler's), in one safetensors file written
// atomically. Values are stored in the compute type, so resuming is bit-identical to an
// uninterrupted run. Save at optimizer-step boundaries (no gradient accumulation in flight).
//
//   wegeft::save_checkpoint("ckpt.safetensors", model, store, trainer.optimizer(), {{"data", data_rng.state()}});
//   wegeft::load_checkpoint("ckpt.safetensors", model, store, trainer.optimizer(), &rngs);
#pragma once

#include <cstdint>
#include <map>
#include <sstream>
#include <string>
#include <type_traits>

#include "wegeft/core/error.hpp"
#include "wegeft/core/parameters.hpp"
#include "wegeft/core/precompiled.hpp"
#include "wegeft/core/rng.hpp"
#include "wegeft/io/safetensors.hpp"
#include "wegeft/nn/model.hpp"
#include "wegeft/optim/adamw.hpp"

namespace wegeft {

namespace detail {
inline std::string rng_to_string(const Rng::State& s) {
  return std::to_string(s.seed) + " " + std::to_string(s.stream) + " " + std::to_string(s.block) +
         " " + std::to_string(s.word);
}
inline Rng::State rng_from_string(const std::string& text, const std::string& where) {
  std::istringstream in(text);
  Rng::State s;
  in >> s.seed >> s.stream >> s.block >> s.word;
  WEGEFT_CHECK(in && s.word <= 4, where << ": malformed RNG state \"" << text << "\"");
  return s;
}
template <class T>
constexpr DType dtype_of() {
  return std::is_same_v<T, double> ? DType::F64 : DType::F32;
}
template <class T, class F>
void for_each_dropout_rng(Transformer<T>& model, F&& f) {
  for (const auto& m : model.modules())
    if (m.adapter)
      f(m.name, std::visit([](auto& a) -> Rng& { return a.dropout_rng(); }, *m.adapter));
}
}  // namespace detail

template <class T>
void save_checkpoint(const std::string& path, Transformer<T>& model, ParameterStore<T>& store,
                     const AdamW<T>& opt, const std::map<std::string, Rng::State>& rngs = {}) {
  SafetensorsBuilder out;
  std::map<std::string, std::string> meta{{"format", "wegeft-checkpoint"},
                                          {"version", "2"},
                                          {"adamw.step", std::to_string(opt.state().step)}};
  for (std::size_t i = 0; i < store.entries().size(); ++i)
    out.add("param." + store.entries()[i].name, detail::dtype_of<T>(),
            Matrix<T>(store.value(ParamId{i})));
  if (!opt.state().m.empty()) {
    const auto n = static_cast<std::int64_t>(opt.state().m.size());
    out.add("adamw.m", detail::dtype_of<T>(), {n}, opt.state().m.data(), opt.state().m.size());
    out.add("adamw.v", detail::dtype_of<T>(), {n}, opt.state().v.data(), opt.state().v.size());
  }
  detail::for_each_dropout_rng(model, [&](const std::string& name, Rng& r) {
    meta["rng.dropout." + name] = detail::rng_to_string(r.state());
  });
  for (const auto& [k, s] : rngs) meta["rng.user." + k] = detail::rng_to_string(s);
  meta["checksum"] = "crc32:" + std::to_string(out.content_crc32(meta));
  out.write(path, meta);
}

/// Restores what save_checkpoint wrote into a model and store set up the same way (same
/// adapters and heads), all or nothing: every parameter must be present with its shape, and
/// nothing changes unless the whole file checks out. `rngs`, if given, receives the caller RNG states.
template <class T>
void load_checkpoint(const std::string& path, Transformer<T>& model, ParameterStore<T>& store,
                     AdamW<T>& opt, std::map<std::string, Rng::State>* rngs = nullptr) {
  const SafetensorsReader f(path);
  const auto& meta = f.metadata();
  WEGEFT_CHECK(meta.count("format") && meta.at("format") == "wegeft-checkpoint",
               path << ": not a wegeft checkpoint");
  // Version 2 carries a CRC-32 of its tensors and metadata; version 1 (no checksum) still loads.
  const auto file_version = meta.find("version");
  WEGEFT_CHECK(
      file_version != meta.end() && (file_version->second == "1" || file_version->second == "2"),
      path << ": checkpoint version \"" << (file_version == meta.end() ? "" : file_version->second)
           << "\" is not 1 or 2");
  if (file_version->second == "2") {
    const auto sum = meta.find("checksum");
    WEGEFT_CHECK(sum != meta.end(), path << ": no checksum in a version 2 checkpoint");
    const std::string want = "crc32:" + std::to_string(f.content_crc32());
    WEGEFT_CHECK(sum->second == want, path << ": checksum mismatch (stored " << sum->second
                                           << ", content " << want << "): the file is damaged");
  }
  // Everything is read and checked first; the model, store and optimizer change only after.
  std::vector<Matrix<T>> values;
  for (std::size_t i = 0; i < store.entries().size(); ++i) {
    const std::string key = "param." + store.entries()[i].name;
    WEGEFT_CHECK(f.contains(key),
                 path << ": no saved value for parameter '" << store.entries()[i].name << "'");
    WEGEFT_CHECK(f.info(key).dtype == detail::dtype_of<T>(),
                 path << ": '" << key << "' is " << dtype_name(f.info(key).dtype)
                      << ", the model computes in " << dtype_name(detail::dtype_of<T>()));
    values.push_back(f.matrix<T>(key));
    const auto dst = store.value(ParamId{i});
    WEGEFT_CHECK(values.back().rows() == dst.rows() && values.back().cols() == dst.cols(),
                 path << ": '" << key << "' has shape " << shape_of(values.back())
                      << ", the model's parameter is " << shape_of(dst));
  }
  Index params = static_cast<Index>(values.size());
  for (const auto& t : f.tensors())
    WEGEFT_CHECK(t.name.rfind("param.", 0) != 0 || params-- > 0,
                 path << ": has more parameters than the model");
  typename AdamW<T>::State state;
  const auto step = meta.find("adamw.step");
  WEGEFT_CHECK(step != meta.end(), path << ": no optimizer step in the metadata");
  std::istringstream step_text(step->second);
  WEGEFT_CHECK(step_text >> state.step && state.step >= 0,
               path << ": optimizer step \"" << step->second << "\" is not a count");
  if (f.contains("adamw.m")) {
    state.m = f.values<T>("adamw.m");
    state.v = f.values<T>("adamw.v");
    WEGEFT_CHECK(state.m.size() == static_cast<std::size_t>(store.size()) &&
                     state.v.size() == state.m.size(),
                 path << ": optimizer state holds " << state.m.size() << " values, the store "
                      << store.size());
  }
  std::vector<std::pair<Rng*, Rng::State>> streams;
  detail::for_each_dropout_rng(model, [&](const std::string& name, Rng& r) {
    const auto it = meta.find("rng.dropout." + name);
    WEGEFT_CHECK(it != meta.end(), path << ": no dropout stream for '" << name << "'");
    streams.emplace_back(&r, detail::rng_from_string(it->second, path));
  });
  std::map<std::string, Rng::State> user;
  for (const auto& [k, v] : meta)
    if (k.rfind("rng.user.", 0) == 0) user[k.substr(9)] = detail::rng_from_string(v, path);
  for (std::size_t i = 0; i < values.size(); ++i) store.value(ParamId{i}) = values[i];
  opt.set_state(std::move(state));
  for (auto& [r, st] : streams) r->set_state(st);
  if (rngs)
    for (auto& [k, v] : user) (*rngs)[k] = v;
}

#define WEGEFT_CHECKPOINT_TEMPLATES(EXTERN, T)                                                     \
  EXTERN template void save_checkpoint<T>(const std::string&, Transformer<T>&, ParameterStore<T>&, \
                                          const AdamW<T>&,                                         \
                                          const std::map<std::string, Rng::State>&);               \
  EXTERN template void load_checkpoint<T>(const std::string&, Transformer<T>&, ParameterStore<T>&, \
                                          AdamW<T>&, std::map<std::string, Rng::State>*);
WEGEFT_EXTERN_TEMPLATES(WEGEFT_CHECKPOINT_TEMPLATES)

}  // namespace wegeft

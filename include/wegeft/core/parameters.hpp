// Flat trainable-parameter and gradient buffers with views.
//
// A ParameterStore owns two flat arrays of the same length: the trainable values and their
// gradients. Each parameter is a [rows, cols] row-major slice of both, found by a ParamId. An
// optimizer sees one contiguous vector; adapters and layers see matrices. Frozen weights never
// live here, so they never get a gradient buffer.
//
//   wegeft::ParameterStore<float> store;
//   auto a = store.add("layer0.lora_A", 8, 768);   // zero-initialised value and gradient
//   store.value(a).setRandom();
//   store.grad(a) += ...;                           // parameter gradients accumulate
//   store.zero_grad();                              // once per optimizer step
//
// Slices start on 64-byte boundaries (SIMD-friendly). Views returned by value()/grad() stay valid
// until the next add(); a ParamId stays valid for the store's lifetime.
#pragma once

#include <cstddef>
#include <new>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "wegeft/core/error.hpp"
#include "wegeft/core/tensor.hpp"

namespace wegeft {

/// Minimal allocator giving `Alignment`-byte aligned storage.
template <class T, std::size_t Alignment = 64>
struct AlignedAllocator {
  using value_type = T;
  template <class U>
  struct rebind {
    using other = AlignedAllocator<U, Alignment>;
  };
  AlignedAllocator() = default;
  template <class U>
  AlignedAllocator(const AlignedAllocator<U, Alignment>&) {}
  T* allocate(std::size_t n) {
    return static_cast<T*>(::operator new (n * sizeof(T), std::align_val_t{Alignment}));
  }
  void deallocate(T* p, std::size_t) { ::operator delete (p, std::align_val_t{Alignment}); }
  template <class U>
  bool operator==(const AlignedAllocator<U, Alignment>&) const {
    return true;
  }
};

/// Handle to one parameter of a ParameterStore.
struct ParamId {
  std::size_t index = static_cast<std::size_t>(-1);
};

template <class T>
class ParameterStore {
 public:
  struct Entry {
    std::string name;
    Index offset, rows, cols;
  };

  ParameterStore() = default;
  /// Move-only: adapters and models point into a store, so a copy would silently detach them.
  ParameterStore(const ParameterStore&) = delete;
  ParameterStore& operator=(const ParameterStore&) = delete;
  ParameterStore(ParameterStore&&) noexcept = default;
  ParameterStore& operator=(ParameterStore&&) noexcept = default;

  /// Register a [rows, cols] parameter; its value and gradient start at zero.
  ParamId add(std::string name, Index rows, Index cols) {
    WEGEFT_CHECK(rows > 0 && cols > 0,
                 "parameter '" << name << "' has empty shape [" << rows << ", " << cols << "]");
    WEGEFT_CHECK(m_names.insert(name).second, "parameter '"
                                                  << name
                                                  << "' is already in this store (two adapters or "
                                                     "heads with one name)");
    constexpr Index align = static_cast<Index>(64 / sizeof(T));
    const Index offset = (size() + align - 1) / align * align;
    m_entries.push_back(Entry{std::move(name), offset, rows, cols});
    m_values.resize(static_cast<std::size_t>(offset + rows * cols), T(0));
    m_grads.resize(m_values.size(), T(0));
    return ParamId{m_entries.size() - 1};
  }

  MatrixMap<T> value(ParamId id) { return slice(m_values, id); }
  ConstMatrixMap<T> value(ParamId id) const { return slice(m_values, id); }
  MatrixMap<T> grad(ParamId id) { return slice(m_grads, id); }
  ConstMatrixMap<T> grad(ParamId id) const { return slice(m_grads, id); }
  const Entry& entry(ParamId id) const { return m_entries.at(id.index); }
  const std::vector<Entry>& entries() const { return m_entries; }

  /// The flat buffers, padding included (padding stays zero in both).
  std::span<T> values() { return m_values; }
  std::span<T> grads() { return m_grads; }
  std::span<const T> values() const { return m_values; }
  std::span<const T> grads() const { return m_grads; }
  Index size() const { return static_cast<Index>(m_values.size()); }
  /// Number of trainable scalars, padding excluded.
  Index parameter_count() const {
    Index n = 0;
    for (const auto& e : m_entries) n += e.rows * e.cols;
    return n;
  }
  void zero_grad() { std::fill(m_grads.begin(), m_grads.end(), T(0)); }

  /// Removes every parameter registered after the first `count` (undoes a failed set-up). ParamIds
  /// below `count` stay valid.
  void truncate(std::size_t count) {
    WEGEFT_CHECK(count <= m_entries.size(),
                 "cannot truncate a store of " << m_entries.size() << " parameters to " << count);
    if (count == m_entries.size()) return;
    const Index end = count == 0 ? 0
                                 : m_entries[count - 1].offset +
                                       m_entries[count - 1].rows * m_entries[count - 1].cols;
    for (std::size_t i = count; i < m_entries.size(); ++i) m_names.erase(m_entries[i].name);
    m_entries.resize(count);
    m_values.resize(static_cast<std::size_t>(end));
    m_grads.resize(static_cast<std::size_t>(end));
  }

 private:
  template <class Buffer>
  auto slice(Buffer& buffer, ParamId id) const {
    WEGEFT_CHECK(id.index < m_entries.size(), "ParamId " << id.index << " does not belong to this "
                                                         << "store of " << m_entries.size()
                                                         << " parameters");
    const Entry& e = m_entries[id.index];
    using Map = std::conditional_t<std::is_const_v<Buffer>, ConstMatrixMap<T>, MatrixMap<T>>;
    return Map(buffer.data() + e.offset, e.rows, e.cols);
  }

  std::vector<Entry> m_entries;
  std::set<std::string> m_names;
  std::vector<T, AlignedAllocator<T>> m_values, m_grads;
};

}  // namespace wegeft

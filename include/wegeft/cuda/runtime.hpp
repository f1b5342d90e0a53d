// The CUDA runtime behind wegeft::cuda, with no CUDA type in a signature: a Context (one device,
// one stream, the cuBLASLt handle and its workspace), device memory (Buffer, Tensor) and captured
// CUDA graphs (Graph). Everything a Context launches goes to its stream, in order; host calls
// that return data (download) wait for it.
//
//   wegeft::cuda::Context ctx;                              // device 0
//   auto w = wegeft::cuda::Tensor::from_host(ctx, w_host, wegeft::DType::BF16);
//   wegeft::Matrix<float> back = w.to_host(ctx);            // bf16-rounded copy of w_host
//
// Errors of the CUDA runtime or cuBLASLt throw wegeft::Error naming the call and the CUDA error.
#pragma once

#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "wegeft/core/tensor.hpp"
#include "wegeft/core/view.hpp"

namespace wegeft::cuda {

/// Number of CUDA devices the driver reports (0 without a driver or device; never throws).
int device_count();

class Context {
 public:
  /// With `autotune`, the first product of each shape times cuBLASLt's best few candidate
  /// algorithms on it and keeps the fastest (a few milliseconds once per shape); without, it
  /// takes the heuristic's first.
  explicit Context(int device = 0, bool autotune = true);
  ~Context();
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;

  int device() const;
  /// "NVIDIA H200, sm_90, 132 SMs, 139.8 GiB"
  std::string description() const;
  /// Waits until everything launched on this context's stream has finished.
  void synchronize();
  /// The cudaStream_t, as an opaque pointer (for code that mixes in its own kernels).
  void* stream() const;

  struct Impl;
  Impl& impl() { return *m_impl; }

 private:
  std::unique_ptr<Impl> m_impl;
};

/// Bytes of device memory wegeft::cuda holds now (every Buffer, Tensor and DeviceArray, and the
/// contexts' cuBLASLt workspaces; not the CUDA runtime's or cuBLASLt's own), and the most it has
/// held at once since the start or the last reset_peak_device_bytes(). Thread-safe.
std::size_t device_bytes_in_use();
std::size_t peak_device_bytes();
void reset_peak_device_bytes();
/// How many device allocations (cudaMalloc calls) wegeft::cuda has made since the start: a
/// steady-state training step makes none. Thread-safe.
std::size_t device_allocations();

/// Device memory, freed on destruction; move-only.
class Buffer {
 public:
  Buffer() = default;
  explicit Buffer(std::size_t bytes);
  ~Buffer();
  Buffer(Buffer&& other) noexcept;
  Buffer& operator=(Buffer&& other) noexcept;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() const { return m_data; }
  std::size_t bytes() const { return m_bytes; }

 private:
  void* m_data = nullptr;
  std::size_t m_bytes = 0;
};

/// An owned rows x cols row-major device tensor of F32 or BF16 with row stride ld >= cols.
class Tensor {
 public:
  Tensor() = default;
  /// Uninitialised device memory.
  Tensor(DType dtype, Index rows, Index cols, Index ld = 0);
  /// A device copy of `host`, converted to `dtype` (round to nearest even), row stride ld.
  static Tensor from_host(Context& ctx, CMatRef<float> host, DType dtype, Index ld = 0);

  TensorView view() const { return {m_buffer.data(), m_dtype, Device::cuda, m_rows, m_cols, m_ld}; }
  TensorView block(Index r0, Index c0, Index nr, Index nc) const {
    return view().block(r0, c0, nr, nc);
  }
  DType dtype() const { return m_dtype; }
  Index rows() const { return m_rows; }
  Index cols() const { return m_cols; }
  Index ld() const { return m_ld; }

 private:
  Buffer m_buffer;
  DType m_dtype = DType::F32;
  Index m_rows = 0, m_cols = 0, m_ld = 0;
};

/// Copies host [v.rows, v.cols] into the device view v, converting to its dtype. Waits for the copy.
void upload(Context& ctx, const TensorView& v, CMatRef<float> host);
/// The device view v as float on the host, after the stream's earlier work.
Matrix<float> download(Context& ctx, const TensorView& v);
/// Host float copies of device float memory (count values), after the stream's earlier work.
void upload_floats(Context& ctx, float* device, const float* host, std::size_t count);
void download_floats(Context& ctx, float* host, const float* device, std::size_t count);
/// Copies `bytes` bytes of host memory to device memory, or back (after the stream's earlier
/// work). Both wait for the copy.
void upload_bytes(Context& ctx, void* device, const void* host, std::size_t bytes);
void download_bytes(Context& ctx, void* host, const void* device, std::size_t bytes);

/// A CUDA graph of the work `body` launches on ctx's stream, captured once and replayed with
/// launch(). Shapes and pointers are frozen at capture: recapture after changing them.
class Graph {
 public:
  Graph() = default;
  Graph(Context& ctx, const std::function<void()>& body);
  ~Graph();
  Graph(Graph&& other) noexcept;
  Graph& operator=(Graph&& other) noexcept;
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;
  void launch(Context& ctx);

 private:
  void* m_exec = nullptr;  // cudaGraphExec_t
};

/// Times `body` on ctx's stream with CUDA events: the median over `repeats` runs, in ms.
double time_ms(Context& ctx, const std::function<void()>& body, int repeats);

}  // namespace wegeft::cuda

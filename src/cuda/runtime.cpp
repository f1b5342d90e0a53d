// wegeft::cuda runtime: contexts, device memory, host transfers, graphs and event timing.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <sstream>
#include <utility>
#include <vector>

#include "check.hpp"
#include "context_impl.hpp"
#include "launch.hpp"
#include "wegeft/core/dtype.hpp"
#include "wegeft/cuda/runtime.hpp"

namespace wegeft::cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

namespace {
std::atomic<std::size_t> g_in_use{0}, g_peak{0}, g_allocations{0};

void* allocate(std::size_t bytes) {
  void* p = nullptr;
  if (bytes == 0) return p;
  WEGEFT_CUDA_CHECK(cudaMalloc(&p, bytes));
  g_allocations.fetch_add(1);
  const std::size_t now = g_in_use.fetch_add(bytes) + bytes;
  std::size_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
  }
  return p;
}
void release(void* p, std::size_t bytes) {
  if (!p) return;
  cudaFree(p);
  g_in_use.fetch_sub(bytes);
}
}  // namespace

std::size_t device_bytes_in_use() {
  return g_in_use.load();
}
std::size_t peak_device_bytes() {
  return g_peak.load();
}
void reset_peak_device_bytes() {
  g_peak.store(g_in_use.load());
}
std::size_t device_allocations() {
  return g_allocations.load();
}

Context::Context(int device, bool autotune) : m_impl(std::make_unique<Impl>()) {
  const int n = device_count();
  WEGEFT_CHECK(device >= 0 && device < n,
               "CUDA device " << device << " requested, the driver reports " << n << " device(s)");
  m_impl->device = device;
  m_impl->autotune = autotune;
  WEGEFT_CUDA_CHECK(cudaSetDevice(device));
  // cuBLAS's own guidance for Hopper: 32 MiB lets every kernel (split-K included) run.
  m_impl->workspace_bytes = std::size_t(32) << 20;
  for (int lane = 0; lane < kLanes; ++lane) {
    WEGEFT_CUDA_CHECK(cudaStreamCreateWithFlags(&m_impl->lanes[lane], cudaStreamNonBlocking));
    m_impl->workspaces[lane] = allocate(m_impl->workspace_bytes);
  }
  m_impl->stream = m_impl->lanes[0];
  WEGEFT_CUDA_CHECK(cudaEventCreateWithFlags(&m_impl->fork_event, cudaEventDisableTiming));
  WEGEFT_CUDA_CHECK(cudaEventCreateWithFlags(&m_impl->join_event, cudaEventDisableTiming));
  WEGEFT_CUBLAS_CHECK(cublasLtCreate(&m_impl->lt));
}

Context::~Context() {
  if (!m_impl) return;
  cudaDeviceSynchronize();
  for (auto& [key, plan] : m_impl->plans) {
    cublasLtMatrixLayoutDestroy(plan.a);
    cublasLtMatrixLayoutDestroy(plan.b);
    cublasLtMatrixLayoutDestroy(plan.c);
    cublasLtMatmulDescDestroy(plan.desc);
  }
  cublasLtDestroy(m_impl->lt);
  cudaEventDestroy(m_impl->fork_event);
  cudaEventDestroy(m_impl->join_event);
  for (int lane = 0; lane < kLanes; ++lane) {
    release(m_impl->workspaces[lane], m_impl->workspace_bytes);
    cudaStreamDestroy(m_impl->lanes[lane]);
  }
}

int Context::device() const {
  return m_impl->device;
}

std::string Context::description() const {
  cudaDeviceProp p{};
  WEGEFT_CUDA_CHECK(cudaGetDeviceProperties(&p, m_impl->device));
  std::ostringstream out;
  out << p.name << ", sm_" << p.major << p.minor << ", " << p.multiProcessorCount << " SMs, "
      << static_cast<double>(p.totalGlobalMem) / double(1 << 30) << " GiB";
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  out << ", driver " << driver / 1000 << "." << driver % 1000 / 10 << ", runtime " << runtime / 1000
      << "." << runtime % 1000 / 10 << ", cuBLASLt " << cublasLtGetVersion();
  return out.str();
}

void Context::synchronize() {
  for (int lane = 0; lane < kLanes; ++lane)
    WEGEFT_CUDA_CHECK(cudaStreamSynchronize(m_impl->lanes[lane]));
}

namespace detail {
void fork(Context& ctx) {
  auto& impl = ctx.impl();
  WEGEFT_CUDA_CHECK(cudaEventRecord(impl.fork_event, impl.lanes[0]));
  WEGEFT_CUDA_CHECK(cudaStreamWaitEvent(impl.lanes[1], impl.fork_event, 0));
}
void join(Context& ctx) {
  auto& impl = ctx.impl();
  WEGEFT_CUDA_CHECK(cudaEventRecord(impl.join_event, impl.lanes[1]));
  WEGEFT_CUDA_CHECK(cudaStreamWaitEvent(impl.lanes[0], impl.join_event, 0));
}
}  // namespace detail

void* Context::stream() const {
  return m_impl->stream;
}

Buffer::Buffer(std::size_t bytes) : m_data(allocate(bytes)), m_bytes(bytes) {}
Buffer::~Buffer() {
  release(m_data, m_bytes);
}
Buffer::Buffer(Buffer&& other) noexcept
    : m_data(std::exchange(other.m_data, nullptr)), m_bytes(std::exchange(other.m_bytes, 0)) {}
Buffer& Buffer::operator=(Buffer&& other) noexcept {
  if (this != &other) {
    release(m_data, m_bytes);
    m_data = std::exchange(other.m_data, nullptr);
    m_bytes = std::exchange(other.m_bytes, 0);
  }
  return *this;
}

namespace {
void check_device_view(const TensorView& v, const char* what) {
  WEGEFT_CHECK(v.device == Device::cuda, what << " is " << v.describe() << ", not on the GPU");
  WEGEFT_CHECK(v.dtype == DType::F32 || v.dtype == DType::BF16,
               what << " is " << v.describe() << "; the CUDA backend holds F32 or BF16");
  WEGEFT_CHECK(v.rows >= 0 && v.cols >= 0 && v.ld >= v.cols,
               what << " has a row stride below its width: " << v.describe());
}
}  // namespace

Tensor::Tensor(DType dtype, Index rows, Index cols, Index ld)
    : m_dtype(dtype), m_rows(rows), m_cols(cols), m_ld(ld ? ld : cols) {
  WEGEFT_CHECK(dtype == DType::F32 || dtype == DType::BF16,
               "a CUDA tensor holds F32 or BF16, not " << dtype_name(dtype));
  WEGEFT_CHECK(rows >= 0 && cols >= 0 && m_ld >= cols,
               "CUDA tensor [" << rows << ", " << cols << "] with row stride " << m_ld);
  m_buffer = Buffer(static_cast<std::size_t>(rows * m_ld) * dtype_size(dtype));
}

Tensor Tensor::from_host(Context& ctx, CMatRef<float> host, DType dtype, Index ld) {
  Tensor t(dtype, host.rows(), host.cols(), ld);
  upload(ctx, t.view(), host);
  return t;
}

void upload(Context& ctx, const TensorView& v, CMatRef<float> host) {
  check_device_view(v, "upload target");
  WEGEFT_CHECK(host.rows() == v.rows && host.cols() == v.cols,
               "upload of a host " << shape_of(host) << " into " << v.describe());
  const std::size_t es = dtype_size(v.dtype);
  std::vector<unsigned char> packed(static_cast<std::size_t>(v.rows * v.cols) * es);
  for (Index i = 0; i < v.rows; ++i)
    for (Index j = 0; j < v.cols; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * v.cols + j);
      if (v.dtype == DType::F32) {
        const float f = host(i, j);
        std::memcpy(&packed[at * 4], &f, 4);
      } else {
        const std::uint16_t b = float_to_bf16(host(i, j));
        std::memcpy(&packed[at * 2], &b, 2);
      }
    }
  if (v.rows && v.cols)
    WEGEFT_CUDA_CHECK(cudaMemcpy2DAsync(
        v.data, static_cast<std::size_t>(v.ld) * es, packed.data(),
        static_cast<std::size_t>(v.cols) * es, static_cast<std::size_t>(v.cols) * es,
        static_cast<std::size_t>(v.rows), cudaMemcpyHostToDevice, ctx.impl().stream));
  ctx.synchronize();  // `packed` must outlive the copy
}

Matrix<float> download(Context& ctx, const TensorView& v) {
  check_device_view(v, "download source");
  const std::size_t es = dtype_size(v.dtype);
  std::vector<unsigned char> packed(static_cast<std::size_t>(v.rows * v.cols) * es);
  if (v.rows && v.cols)
    WEGEFT_CUDA_CHECK(cudaMemcpy2DAsync(
        packed.data(), static_cast<std::size_t>(v.cols) * es, v.data,
        static_cast<std::size_t>(v.ld) * es, static_cast<std::size_t>(v.cols) * es,
        static_cast<std::size_t>(v.rows), cudaMemcpyDeviceToHost, ctx.impl().stream));
  ctx.synchronize();
  Matrix<float> out(v.rows, v.cols);
  for (Index i = 0; i < v.rows; ++i)
    for (Index j = 0; j < v.cols; ++j) {
      const std::size_t at = static_cast<std::size_t>(i * v.cols + j);
      if (v.dtype == DType::F32) {
        std::memcpy(&out(i, j), &packed[at * 4], 4);
      } else {
        std::uint16_t b = 0;
        std::memcpy(&b, &packed[at * 2], 2);
        out(i, j) = bf16_to_float(b);
      }
    }
  return out;
}

void upload_floats(Context& ctx, float* device, const float* host, std::size_t count) {
  if (count)
    WEGEFT_CUDA_CHECK(cudaMemcpyAsync(device, host, count * sizeof(float), cudaMemcpyHostToDevice,
                                      ctx.impl().stream));
  ctx.synchronize();
}

void download_floats(Context& ctx, float* host, const float* device, std::size_t count) {
  if (count)
    WEGEFT_CUDA_CHECK(cudaMemcpyAsync(host, device, count * sizeof(float), cudaMemcpyDeviceToHost,
                                      ctx.impl().stream));
  ctx.synchronize();
}

void upload_bytes(Context& ctx, void* device, const void* host, std::size_t bytes) {
  if (bytes)
    WEGEFT_CUDA_CHECK(
        cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, ctx.impl().stream));
  ctx.synchronize();
}

void download_bytes(Context& ctx, void* host, const void* device, std::size_t bytes) {
  if (bytes)
    WEGEFT_CUDA_CHECK(
        cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, ctx.impl().stream));
  ctx.synchronize();
}

Graph::Graph(Context& ctx, const std::function<void()>& body) {
  cudaStream_t s = ctx.impl().stream;
  detail::prepare_kernels();
  WEGEFT_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  try {
    body();
  } catch (...) {
    cudaGraph_t broken = nullptr;
    cudaStreamEndCapture(s, &broken);
    if (broken) cudaGraphDestroy(broken);
    throw;
  }
  cudaGraph_t graph = nullptr;
  WEGEFT_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec = nullptr;
  const cudaError_t status = cudaGraphInstantiate(&exec, graph, 0);
  cudaGraphDestroy(graph);
  WEGEFT_CUDA_CHECK(status);
  m_exec = exec;
}
Graph::~Graph() {
  if (m_exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(m_exec));
}
Graph::Graph(Graph&& other) noexcept : m_exec(std::exchange(other.m_exec, nullptr)) {}
Graph& Graph::operator=(Graph&& other) noexcept {
  if (this != &other) {
    if (m_exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(m_exec));
    m_exec = std::exchange(other.m_exec, nullptr);
  }
  return *this;
}
void Graph::launch(Context& ctx) {
  WEGEFT_CHECK(m_exec != nullptr, "launch of an empty CUDA graph");
  WEGEFT_CUDA_CHECK(cudaGraphLaunch(static_cast<cudaGraphExec_t>(m_exec), ctx.impl().stream));
}

double time_ms(Context& ctx, const std::function<void()>& body, int repeats) {
  cudaStream_t s = ctx.impl().stream;
  cudaEvent_t start = nullptr, stop = nullptr;
  WEGEFT_CUDA_CHECK(cudaEventCreate(&start));
  WEGEFT_CUDA_CHECK(cudaEventCreate(&stop));
  std::vector<float> times;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    WEGEFT_CUDA_CHECK(cudaEventRecord(start, s));
    body();
    WEGEFT_CUDA_CHECK(cudaEventRecord(stop, s));
    WEGEFT_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    WEGEFT_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace wegeft::cuda

// What a wegeft::cuda::Context holds (internal to src/cuda/): the device, its stream, the
// cuBLASLt handle with its workspace, and the matmul plans already chosen, by shape.
#pragma once

#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <cstdint>
#include <map>

#include "wegeft/cuda/ops.hpp"
#include "wegeft/cuda/runtime.hpp"

namespace wegeft::cuda {

/// A chosen cuBLASLt matmul: its descriptors and algorithm, for one key.
struct MatmulPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

/// The context's streams: lane 0 is the stream everything is ordered on (Context::stream());
/// lane 1 runs work that may overlap it between a fork() and a join() (each lane has its own
/// cuBLASLt workspace, so products on both can run at once).
inline constexpr int kLanes = 2;

struct Context::Impl {
  int device = 0;
  bool autotune = true;
  cudaStream_t stream = nullptr;  // lane 0
  cudaStream_t lanes[kLanes] = {};
  cudaEvent_t fork_event = nullptr, join_event = nullptr;
  cublasLtHandle_t lt = nullptr;
  void* workspaces[kLanes] = {};
  std::size_t workspace_bytes = 0;
  // key: op_a, op_b, m, n, k, dtypes of a/b and c, lda, ldb, ldc, the alignment of each
  // pointer, bias or not
  std::map<std::array<std::int64_t, 14>, MatmulPlan> plans;
};

namespace detail {
/// Lane 1 waits for everything launched on lane 0 so far.
void fork(Context& ctx);
/// Lane 0 waits for everything launched on lane 1 so far.
void join(Context& ctx);
/// gemm() on one lane.
void gemm_on(Context& ctx, int lane, const TensorView& c, const TensorView& a, Op op_a,
             const TensorView& b, Op op_b, float alpha, float beta,
             const TensorView* bias = nullptr);
}  // namespace detail

}  // namespace wegeft::cuda

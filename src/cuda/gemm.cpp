// wegeft::cuda::gemm through cuBLASLt. Row-major views are column-major views of their
// transposes, so the row-major c = op(a) op(b) is the column-major c^T = op(b)^T op(a)^T: the
// operands swap places and keep their own transposition flags. A plan (descriptors and the
// heuristic's first algorithm) is chosen once per shape, dtypes, strides and pointer alignment.
#include <algorithm>
#include <cstdint>

#include "check.hpp"
#include "context_impl.hpp"
#include "wegeft/cuda/ops.hpp"

namespace wegeft::cuda {

namespace {

cudaDataType_t cuda_type(DType t) {
  return t == DType::BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

/// The largest power of two up to 256 that divides the address.
std::int64_t alignment(const void* p) {
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  std::int64_t align = 256;
  while (align > 1 && a % static_cast<std::uintptr_t>(align) != 0) align /= 2;
  return align;
}

void check_operand(const TensorView& v, const char* what) {
  WEGEFT_CHECK(v.device == Device::cuda,
               "gemm " << what << " is " << v.describe() << ", not on the GPU");
  WEGEFT_CHECK(v.dtype == DType::F32 || v.dtype == DType::BF16,
               "gemm " << what << " is " << v.describe() << "; F32 or BF16 only");
  WEGEFT_CHECK(v.rows > 0 && v.cols > 0 && v.ld >= v.cols,
               "gemm " << what << " is " << v.describe());
}

/// Times `algo` on the plan's operands into `out` (beta = 0): the median of three runs, in ms,
/// or a negative value when cuBLASLt refuses it.
float time_algo(Context::Impl& impl, int lane, MatmulPlan& plan, const cublasLtMatmulAlgo_t& algo,
                const void* a, const void* b, void* out) {
  const float one = 1.0f, zero = 0.0f;
  cudaStream_t s = impl.lanes[lane];
  auto run = [&] {
    return cublasLtMatmul(impl.lt, plan.desc, &one, a, plan.a, b, plan.b, &zero, out, plan.c, out,
                          plan.c, &algo, impl.workspaces[lane], impl.workspace_bytes, s);
  };
  if (run() != CUBLAS_STATUS_SUCCESS) return -1.0f;
  cudaEvent_t start = nullptr, stop = nullptr;
  WEGEFT_CUDA_CHECK(cudaEventCreate(&start));
  WEGEFT_CUDA_CHECK(cudaEventCreate(&stop));
  float times[3] = {};
  for (float& t : times) {
    WEGEFT_CUDA_CHECK(cudaEventRecord(start, s));
    run();
    WEGEFT_CUDA_CHECK(cudaEventRecord(stop, s));
    WEGEFT_CUDA_CHECK(cudaEventSynchronize(stop));
    WEGEFT_CUDA_CHECK(cudaEventElapsedTime(&t, start, stop));
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times, times + 3);
  return times[1];
}

MatmulPlan make_plan(Context::Impl& impl, int lane, cublasOperation_t ta, cublasOperation_t tb,
                     const TensorView& ca, const TensorView& cb, const TensorView& c,
                     const void* bias, std::int64_t m, std::int64_t n, std::int64_t k) {
  MatmulPlan plan;
  WEGEFT_CUBLAS_CHECK(cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  WEGEFT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
  WEGEFT_CUBLAS_CHECK(
      cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
  if (bias) {
    WEGEFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &bias, sizeof(bias)));
    const cublasLtEpilogue_t epi = CUBLASLT_EPILOGUE_BIAS;
    WEGEFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                       &epi, sizeof(epi)));
    const cudaDataType_t bt = cuda_type(c.dtype);
    WEGEFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(
        plan.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof(bt)));
  }
  // column-major layouts: a row-major [rows, cols] view is a column-major [cols, rows] one
  WEGEFT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.a, cuda_type(ca.dtype), ca.cols, ca.rows, ca.ld));
  WEGEFT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.b, cuda_type(cb.dtype), cb.cols, cb.rows, cb.ld));
  WEGEFT_CUBLAS_CHECK(
      cublasLtMatrixLayoutCreate(&plan.c, cuda_type(c.dtype), c.cols, c.rows, c.ld));
  cublasLtMatmulPreference_t pref = nullptr;
  WEGEFT_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  WEGEFT_CUBLAS_CHECK(
      cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                           &impl.workspace_bytes, sizeof(impl.workspace_bytes)));
  const std::uint32_t aa = static_cast<std::uint32_t>(alignment(ca.data));
  const std::uint32_t ab = static_cast<std::uint32_t>(alignment(cb.data));
  const std::uint32_t ac = static_cast<std::uint32_t>(alignment(c.data));
  WEGEFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
  WEGEFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
  WEGEFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
  WEGEFT_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
  constexpr int kCandidates = 8;
  cublasLtMatmulHeuristicResult_t results[kCandidates] = {};
  int found = 0;
  cudaStreamCaptureStatus capturing = cudaStreamCaptureStatusNone;
  WEGEFT_CUDA_CHECK(cudaStreamIsCapturing(impl.lanes[lane], &capturing));
  const std::size_t out_bytes = static_cast<std::size_t>(c.rows * c.ld) * dtype_size(c.dtype);
  // tuning allocates a scratch output, which a graph capture cannot do: the first product of a
  // shape inside a capture takes the heuristic's first algorithm
  const bool tune = impl.autotune && capturing == cudaStreamCaptureStatusNone &&
                    out_bytes <= (std::size_t(1) << 30);
  const cublasStatus_t status =
      cublasLtMatmulAlgoGetHeuristic(impl.lt, plan.desc, plan.a, plan.b, plan.c, plan.c, pref,
                                     tune ? kCandidates : 1, results, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  WEGEFT_CHECK(status == CUBLAS_STATUS_SUCCESS && found > 0,
               "cuBLASLt has no algorithm for a [" << m << ", " << k << "] x [" << k << ", " << n
                                                   << "] product of " << dtype_name(ca.dtype)
                                                   << " into " << dtype_name(c.dtype) << " ("
                                                   << cublasLtGetStatusName(status) << ")");
  plan.algo = results[0].algo;
  if (tune && found > 1) {
    WEGEFT_CUDA_CHECK(cudaStreamSynchronize(impl.lanes[lane]));
    Buffer scratch(out_bytes);
    float best = -1.0f;
    for (int i = 0; i < found; ++i) {
      const float t =
          time_algo(impl, lane, plan, results[i].algo, ca.data, cb.data, scratch.data());
      if (t >= 0 && (best < 0 || t < best)) {
        best = t;
        plan.algo = results[i].algo;
      }
    }
    (void)cudaGetLastError();
  }
  return plan;
}

}  // namespace

void gemm(Context& ctx, const TensorView& c, const TensorView& a, Op op_a, const TensorView& b,
          Op op_b, float alpha, float beta, const TensorView* bias) {
  detail::gemm_on(ctx, 0, c, a, op_a, b, op_b, alpha, beta, bias);
}

void detail::gemm_on(Context& ctx, int lane, const TensorView& c, const TensorView& a, Op op_a,
                     const TensorView& b, Op op_b, float alpha, float beta,
                     const TensorView* bias) {
  check_operand(a, "input a");
  check_operand(b, "input b");
  check_operand(c, "output c");
  const Index m = op_a == Op::N ? a.rows : a.cols, k = op_a == Op::N ? a.cols : a.rows;
  const Index kb = op_b == Op::N ? b.rows : b.cols, n = op_b == Op::N ? b.cols : b.rows;
  WEGEFT_CHECK(k == kb && c.rows == m && c.cols == n,
               "gemm shapes disagree: op(a) [" << m << ", " << k << "] x op(b) [" << kb << ", " << n
                                               << "] into c " << c.describe());
  WEGEFT_CHECK(a.dtype == b.dtype,
               "gemm inputs differ in dtype: a " << a.describe() << ", b " << b.describe());
  WEGEFT_CHECK(c.dtype == DType::F32 || a.dtype == DType::BF16,
               "gemm of F32 inputs into a BF16 output " << c.describe() << "; use an F32 output");
  if (bias) {
    WEGEFT_CHECK(bias->device == Device::cuda && bias->dtype == c.dtype && bias->rows == 1 &&
                     bias->cols == n,
                 "gemm bias is " << bias->describe() << ", expected [1, " << n << "] "
                                 << dtype_name(c.dtype) << " on the GPU");
  }
  auto& impl = ctx.impl();
  // column-major: c^T [n, m] = op(b)^T [n, k] op(a)^T [k, m]
  const cublasOperation_t ta = op_b == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T;
  const cublasOperation_t tb = op_a == Op::N ? CUBLAS_OP_N : CUBLAS_OP_T;
  const std::array<std::int64_t, 14> key{static_cast<std::int64_t>(ta),
                                         static_cast<std::int64_t>(tb),
                                         n,
                                         m,
                                         k,
                                         static_cast<std::int64_t>(a.dtype),
                                         static_cast<std::int64_t>(c.dtype),
                                         b.ld,
                                         a.ld,
                                         c.ld,
                                         alignment(b.data),
                                         alignment(a.data),
                                         alignment(c.data),
                                         bias ? 1 : 0};
  auto it = impl.plans.find(key);
  if (it == impl.plans.end())
    it = impl.plans
             .emplace(key,
                      make_plan(impl, lane, ta, tb, b, a, c, bias ? bias->data : nullptr, m, n, k))
             .first;
  MatmulPlan& plan = it->second;
  if (bias) {
    const void* ptr = bias->data;
    WEGEFT_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                       &ptr, sizeof(ptr)));
  }
  WEGEFT_CUBLAS_CHECK(cublasLtMatmul(
      impl.lt, plan.desc, &alpha, b.data, plan.a, a.data, plan.b, &beta, c.data, plan.c, c.data,
      plan.c, &plan.algo, impl.workspaces[lane], impl.workspace_bytes, impl.lanes[lane]));
}

}  // namespace wegeft::cuda

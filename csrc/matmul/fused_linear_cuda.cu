// fused_linear on CUDA: cuBLASLt GEMMs with fused epilogues.
// Forward: BIAS, RELU_BIAS, GELU_BIAS (cuBLASLt's GELU is the tanh form, so it
// serves gelu_tanh) and GELU_AUX_BIAS, which also writes the pre-activation the
// backward needs; erf gelu and silu, which have no epilogue, take the BIAS
// GEMM plus one vectorized elementwise kernel. Backward: grad * act'(pre) in
// one elementwise pass, then grad_weight with the BGRADB epilogue (the bias
// gradient is reduced inside that GEMM, from the operand it already reads) and
// grad_x. The DRELU/DGELU epilogues multiply a GEMM's *output* by act'(aux):
// inside one layer's backward the tensor to multiply is the incoming gradient,
// which no GEMM of this layer produces, so they do not apply here (they fuse
// across two layers). Bound: the GEMMs' FLOPs (6 M N K per forward+backward);
// float32 uses TF32 when torch.backends.cuda.matmul.allow_tf32 is set.
// Shapes cuBLASLt cannot take (a heuristic with no algorithm) fall back to
// at::mm plus the same elementwise kernels. relu: cuBLASLt's RELU epilogue is
// max(x, 0), which may turn NaN into 0 where torch.relu keeps NaN; until a GPU
// run shows it keeps NaN, relu takes the BIAS epilogue and the elementwise
// kernel (TEACHCOMPUTE_EXT_LT_RELU_EPILOGUE=1 selects the epilogue, for that
// check: benchmarks/gpu_check.sh).
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <cublasLt.h>

#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/activation.cuh"
#include "common/cuda_utils.cuh"
#include "matmul/matmul.h"

namespace teachcompute_ext::cuda_kernels {
namespace {

bool relu_epilogue_enabled() {
  static const bool on = [] {
    const char* v = std::getenv("TEACHCOMPUTE_EXT_LT_RELU_EPILOGUE");
    return v != nullptr && std::strcmp(v, "1") == 0;
  }();
  return on;
}

using cuda::acc_type;

#define TCE_CUBLAS_CHECK(expr)                                                           \
  do {                                                                                   \
    cublasStatus_t _st = (expr);                                                         \
    TORCH_CHECK(_st == CUBLAS_STATUS_SUCCESS, "teachcompute_ext: cuBLASLt call ", #expr, \
                " failed: ", cublasGetStatusString(_st));                                \
  } while (0)

// ---- elementwise epilogues ---------------------------------------------------------------------

// out = act(y + bias) over an [M, N] row-major matrix, pre = y + bias when
// pre is not null. y may be out itself (inference: the GEMM wrote there). 16-byte packs when the row length keeps them
// aligned.
template <typename T>
__global__ void __launch_bounds__(256)
    forward_epilogue_kernel(const T* y, const T* __restrict__ bias, T* pre, T* out, int64_t total, int64_t n, Act act) {
  using A = acc_type<T>;
  constexpr int P = cuda::kPack16<T>;
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  const bool packed = n % P == 0 && cuda::aligned16(y) && cuda::aligned16(out) && (!pre || cuda::aligned16(pre));
  if (packed) {
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < total / P; j += stride) {
      const auto v = reinterpret_cast<const cuda::Pack<T, P>*>(y)[j];
      const int64_t col = (j * P) % n;
      cuda::Pack<T, P> p, o;
#pragma unroll
      for (int q = 0; q < P; ++q) {
        A a = static_cast<A>(v.v[q]) + (bias ? static_cast<A>(bias[col + q]) : A(0));
        p.v[q] = static_cast<T>(a);
        o.v[q] = static_cast<T>(act_fwd(a, act));
      }
      if (pre) reinterpret_cast<cuda::Pack<T, P>*>(pre)[j] = p;
      reinterpret_cast<cuda::Pack<T, P>*>(out)[j] = o;
    }
    return;
  }
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += stride) {
    const A a = static_cast<A>(y[i]) + (bias ? static_cast<A>(bias[i % n]) : A(0));
    if (pre) pre[i] = static_cast<T>(a);
    out[i] = static_cast<T>(act_fwd(a, act));
  }
}

// dpre = grad * act'(aux), one read of each input and one write.
template <typename T>
__global__ void __launch_bounds__(256) backward_epilogue_kernel(const T* __restrict__ g, const T* __restrict__ aux,
                                                                T* __restrict__ dpre, int64_t total, Act act) {
  using A = acc_type<T>;
  const int nthreads = gridDim.x * blockDim.x;
  const int tid = blockIdx.x * blockDim.x + threadIdx.x;
  cuda::map_packed(g, aux, dpre, total, tid, nthreads,
                   [act](T gv, T av) { return static_cast<T>(act_bwd(static_cast<A>(gv), static_cast<A>(av), act)); });
}

int elementwise_blocks(int64_t total) {
  const int64_t want = (total + 4 * 256 - 1) / (4 * 256);
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(want, int64_t(cuda::sm_count()) * 8)));
}

// ---- cuBLASLt ----------------------------------------------------------------------------------

template <typename T, cublasStatus_t (*Destroy)(T)>
struct LtHandle {
  T h = nullptr;
  ~LtHandle() {
    if (h) Destroy(h);
  }
};

cudaDataType_t cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return CUDA_R_32F;
    case at::kDouble: return CUDA_R_64F;
    case at::kHalf: return CUDA_R_16F;
    default: return CUDA_R_16BF;
  }
}

// The largest power of two (at most 256) dividing the address.
uint32_t alignment(const void* p) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  uint32_t a = 256;
  while (a > 1 && addr % a != 0) a /= 2;
  return a;
}

// One column-major GEMM D[m, n] = op(A) op(B) (ld* are column strides) with an
// epilogue; returns false when cuBLASLt has no algorithm for it, so the caller
// can fall back.
struct LtGemm {
  bool trans_a = false, trans_b = false;
  int64_t m = 0, n = 0, k = 0;
  const void* a = nullptr;
  int64_t lda = 0;
  const void* b = nullptr;
  int64_t ldb = 0;
  void* d = nullptr;
  int64_t ldd = 0;
  cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
  const void* bias = nullptr;  // BIAS epilogues: read; BGRAD epilogues: written
  void* aux = nullptr;
  int64_t ldaux = 0;

  bool run(at::ScalarType st, const at::Device& device) const {
    const cudaDataType_t dt = cuda_dtype(st);
    const bool dbl = st == at::kDouble;
    const cublasComputeType_t compute =
        dbl ? CUBLAS_COMPUTE_64F
            : (st == at::kFloat && at::globalContext().allowTF32CuBLAS() ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                         : CUBLAS_COMPUTE_32F);
    const cudaDataType_t scale_t = dbl ? CUDA_R_64F : CUDA_R_32F;
    LtHandle<cublasLtMatmulDesc_t, cublasLtMatmulDescDestroy> desc;
    TCE_CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc.h, compute, scale_t));
    const cublasOperation_t ta = trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, tb = trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    TCE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)));
    TCE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)));
    TCE_CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    if (bias) {
      TCE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
      TCE_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &dt, sizeof(dt)));
    }
    if (aux) {
      TCE_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_POINTER, &aux, sizeof(aux)));
      TCE_CUBLAS_CHECK(
          cublasLtMatmulDescSetAttribute(desc.h, CUBLASLT_MATMUL_DESC_EPILOGUE_AUX_LD, &ldaux, sizeof(ldaux)));
    }
    LtHandle<cublasLtMatrixLayout_t, cublasLtMatrixLayoutDestroy> la, lb, ld;
    TCE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&la.h, dt, trans_a ? k : m, trans_a ? m : k, lda));
    TCE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&lb.h, dt, trans_b ? n : k, trans_b ? k : n, ldb));
    TCE_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&ld.h, dt, m, n, ldd));

    // Workspace from the caching allocator: reused across calls, no cudaMalloc.
    constexpr size_t kWorkspace = 32u << 20;
    const at::Tensor ws = at::empty({static_cast<int64_t>(kWorkspace)}, at::TensorOptions(device).dtype(at::kByte));
    LtHandle<cublasLtMatmulPreference_t, cublasLtMatmulPreferenceDestroy> pref;
    TCE_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.h));
    TCE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &kWorkspace,
                                                          sizeof(kWorkspace)));
    // Without these cuBLASLt assumes 256-byte aligned operands and may pick a
    // kernel that fails on a view with a storage offset (PyTorch hit this in
    // F.linear; its gemm_and_bias sets the same preferences).
    const uint32_t align_a = alignment(a), align_b = alignment(b), align_d = alignment(d);
    TCE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_a,
                                                          sizeof(align_a)));
    TCE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_b,
                                                          sizeof(align_b)));
    TCE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_d,
                                                          sizeof(align_d)));
    TCE_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.h, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_d,
                                                          sizeof(align_d)));
    cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(handle, desc.h, la.h, lb.h, ld.h, ld.h, pref.h, 1, &result, &found) !=
            CUBLAS_STATUS_SUCCESS ||
        found == 0)
      return false;
    const float one_f = 1.f, zero_f = 0.f;
    const double one_d = 1., zero_d = 0.;
    const void* alpha = dbl ? static_cast<const void*>(&one_d) : static_cast<const void*>(&one_f);
    const void* beta = dbl ? static_cast<const void*>(&zero_d) : static_cast<const void*>(&zero_f);
    // A refusal here leaves D untouched: the caller's fallback recomputes everything.
    return cublasLtMatmul(handle, desc.h, alpha, a, la.h, b, lb.h, beta, d, ld.h, d, ld.h, &result.algo, ws.data_ptr(),
                          kWorkspace, at::cuda::getCurrentCUDAStream()) == CUBLAS_STATUS_SUCCESS;
  }
};

}  // namespace

void fused_linear_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Act act,
                         at::Tensor& out, at::Tensor& pre) {
  const LinearShape s{out.size(0), out.size(1), x.size(1)};
  const at::Tensor x2 = x.contiguous();
  const at::Tensor w = weight.contiguous();
  at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  // The bias epilogue reads the bias with 16-byte loads (no alignment
  // preference covers it); a slice of a larger bias is copied to fresh memory.
  if (b.defined() && !cuda::aligned16(b.data_ptr())) b = b.clone();
  const bool keep_pre = pre.numel() > 0;

  // Row-major out [M, N] is column-major [N, M] = W (stored [N, K], i.e.
  // column-major K x N, transposed) times x^T (column-major K x M).
  LtGemm g;
  g.trans_a = true;
  g.m = s.n, g.n = s.m, g.k = s.k;
  g.a = w.data_ptr(), g.lda = s.k;
  g.b = x2.data_ptr(), g.ldb = s.k;
  g.d = out.data_ptr(), g.ldd = s.n;
  g.bias = b.defined() ? b.data_ptr() : nullptr;
  // Which part of the activation the GEMM can finish itself.
  bool epilogue_does_act = false;
  if (act == Act::None) {
    g.epilogue = b.defined() ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    epilogue_does_act = true;
  } else if (act == Act::Relu && relu_epilogue_enabled()) {
    g.epilogue = b.defined() ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_RELU;
    epilogue_does_act = true;
  } else if (act == Act::GeluTanh && x.scalar_type() != at::kDouble && (!keep_pre || s.n % 8 == 0)) {
    // The aux matrix's leading dimension must be a multiple of 8. float64
    // takes the elementwise kernel: the first GPU run (H200, CUDA 13) measured
    // cuBLASLt's GELU epilogue at 4.6e-9 relative error in float64 (a float
    // tanh), against 1e-10 for the test's float64 reference.
    if (keep_pre) {
      g.epilogue = b.defined() ? CUBLASLT_EPILOGUE_GELU_AUX_BIAS : CUBLASLT_EPILOGUE_GELU_AUX;
      g.aux = pre.data_ptr(), g.ldaux = s.n;
    } else {
      g.epilogue = b.defined() ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU;
    }
    epilogue_does_act = true;
  } else {
    g.epilogue = b.defined() ? CUBLASLT_EPILOGUE_BIAS : CUBLASLT_EPILOGUE_DEFAULT;
    if (keep_pre) g.d = pre.data_ptr();
  }
  bool bias_done = true;
  if (s.k == 0 || !g.run(x.scalar_type(), x.device())) {
    // No cuBLASLt algorithm (alignment, dtype): plain GEMM, bias and
    // activation in the elementwise kernel.
    at::Tensor y = keep_pre ? pre : out;
    at::mm_out(y, x2, w.t());
    epilogue_does_act = false;
    bias_done = false;
  }
  if (!epilogue_does_act) {
    const at::Tensor y = keep_pre ? pre : out;
    const int64_t total = s.m * s.n;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_forward_cuda", [&] {
      forward_epilogue_kernel<scalar_t><<<elementwise_blocks(total), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
          y.const_data_ptr<scalar_t>(), (!bias_done && b.defined()) ? b.const_data_ptr<scalar_t>() : nullptr,
          // pre already holds x W^T + b when the GEMM added the bias: not rewritten.
          keep_pre && !bias_done ? pre.mutable_data_ptr<scalar_t>() : nullptr, out.mutable_data_ptr<scalar_t>(), total,
          s.n, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

void fused_linear_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& aux, LinearBackward& bw) {
  const LinearShape s = bw.s;
  const Act act = bw.act;
  const bool want_x = bw.want_x, want_w = bw.want_w, want_b = bw.want_b;
  at::Tensor &gx = bw.gx, &gw = bw.gw, &gb = bw.gb;
  const at::Tensor g2 = grad.contiguous();
  at::Tensor dpre = g2;
  if (act != Act::None) {
    const at::Tensor a2 = aux.contiguous();
    dpre = at::empty({s.m, s.n}, x.options());
    const int64_t total = s.m * s.n;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_backward_cuda", [&] {
      backward_epilogue_kernel<scalar_t><<<elementwise_blocks(total), 256, 0, at::cuda::getCurrentCUDAStream()>>>(
          g2.const_data_ptr<scalar_t>(), a2.const_data_ptr<scalar_t>(), dpre.mutable_data_ptr<scalar_t>(), total, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  const at::Tensor w = weight.contiguous();
  bool bias_done = !want_b;
  if (want_w && s.k > 0) {
    const at::Tensor x2 = x.contiguous();
    // Row-major gW [N, K] is column-major [K, N] = x^T (column-major K x M)
    // times dpre (column-major N x M, transposed); BGRADB sums op(B) over k = M.
    LtGemm g;
    g.trans_b = true;
    g.m = s.k, g.n = s.n, g.k = s.m;
    g.a = x2.data_ptr(), g.lda = s.k;
    g.b = dpre.data_ptr(), g.ldb = s.n;
    g.d = gw.data_ptr(), g.ldd = s.k;
    // BGRADB with a reduction of length 1 gave wrong bias gradients in some
    // cuBLASLt versions (OneFlow avoids it too): one row is summed separately.
    const bool bgradb = want_b && s.m > 1;
    if (bgradb) {
      g.epilogue = CUBLASLT_EPILOGUE_BGRADB;
      g.bias = gb.data_ptr();
    }
    if (g.run(x.scalar_type(), x.device())) {
      // Only a GEMM that was asked for the bias gradient computed it: with one
      // row (1-D x, batch 1) the bias gradient was left uninitialized.
      bias_done = bias_done || bgradb;
    } else {
      at::mm_out(gw, dpre.t(), x2);
    }
  }
  if (!bias_done) at::sum_out(gb, dpre, {0});
  if (want_w && s.k == 0) gw.zero_();
  if (want_x && s.k > 0) {
    // Row-major gx [M, K] is column-major [K, M] = W^T (column-major K x N) times dpre^T.
    LtGemm g;
    g.m = s.k, g.n = s.m, g.k = s.n;
    g.a = w.data_ptr(), g.lda = s.k;
    g.b = dpre.data_ptr(), g.ldb = s.n;
    g.d = gx.data_ptr(), g.ldd = s.k;
    if (!g.run(x.scalar_type(), x.device())) at::mm_out(gx, dpre, w);
  }
}

}  // namespace teachcompute_ext::cuda_kernels

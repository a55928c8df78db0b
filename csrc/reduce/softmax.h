// softmax / log_softmax: semantics shared by the CPU and CUDA paths (the fake
// kernels in teachcompute_ext/ops/reduce.py mirror them). x is viewed as
// (outer, n, inner) around `dim`: n is the normalized length, inner the
// contiguous stride between two of its elements. The result is contiguous, of
// x's dtype; half types compute in float32.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/checks.h"
#include "common/cpu_isa.h"

namespace teachcompute_ext {

struct SoftmaxShape {
  int64_t outer;
  int64_t n;
  int64_t inner;
};

// Wraps a negative dim; a 0-dim tensor accepts dim 0 and -1 (as torch does).
inline SoftmaxShape softmax_shape(const char* op, const at::Tensor& x, int64_t dim) {
  const int64_t ndim = std::max<int64_t>(x.dim(), 1);
  TORCH_CHECK_INDEX(dim >= -ndim && dim < ndim, "teachcompute_ext.", op, ": dim ", dim,
                    " out of range for argument 'dim' of a ", x.dim(), "-d tensor (expected in [", -ndim,
                    ", ", ndim - 1, "])");
  if (dim < 0) dim += ndim;
  SoftmaxShape s{1, 1, 1};
  if (x.dim() == 0) return s;
  for (int64_t d = 0; d < dim; ++d) s.outer *= x.size(d);
  s.n = x.size(dim);
  for (int64_t d = dim + 1; d < x.dim(); ++d) s.inner *= x.size(d);
  return s;
}

inline void check_softmax_backward(const char* op, const at::Tensor& grad, const at::Tensor& out) {
  check_float_dtype(op, "grad", grad);
  TORCH_CHECK(grad.sizes() == out.sizes(), "teachcompute_ext.", op, ": argument 'grad' has shape ",
              grad.sizes(), " but 'out' has shape ", out.sizes());
  TORCH_CHECK(grad.scalar_type() == out.scalar_type(), "teachcompute_ext.", op, ": argument 'grad' has dtype ",
              dtype_name(grad.scalar_type()), " but 'out' has dtype ", dtype_name(out.scalar_type()));
}

// Columns handled together when inner > 1: a tile of 64 contiguous elements
// per row (256 bytes of float32: four AVX512 or eight AVX2 vectors).
constexpr int64_t kSoftmaxColTile = 64;

// Outputs past this size cannot stay in the caches for the next op: the row
// kernels then stream them to memory (non-temporal stores, no read-for-ownership).
constexpr int64_t kSoftmaxStreamBytes = 32LL << 20;

// CPU kernels, one table per ISA (softmax_cpu_kernel.cpp). `rows` work on
// inner == 1 (rows r0..r1 of an (rows, n) matrix); `cols` on inner > 1 (units
// u0..u1, a unit being one tile of kSoftmaxColTile columns of one outer index).
template <typename scalar_t>
struct SoftmaxFns {
  // stream: write y with non-temporal stores (an output larger than the caches).
  void (*fwd_rows)(const scalar_t* x, scalar_t* y, int64_t n, int64_t r0, int64_t r1, bool log, bool stream);
  void (*fwd_cols)(const scalar_t* x, scalar_t* y, int64_t n, int64_t inner, int64_t u0, int64_t u1, bool log);
  void (*bwd_rows)(const scalar_t* g, const scalar_t* y, scalar_t* gx, int64_t n, int64_t r0, int64_t r1, bool log,
                   bool stream);
  void (*bwd_cols)(const scalar_t* g, const scalar_t* y, scalar_t* gx, int64_t n, int64_t inner, int64_t u0,
                   int64_t u1, bool log);
};

using SoftmaxKernels = PerDtype<SoftmaxFns>;
TCE_DECLARE_ISA_TABLE(SoftmaxKernels, kSoftmaxKernels)

}  // namespace teachcompute_ext

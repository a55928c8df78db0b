// fused_matmul: alpha * op(a) @ op(b), batch dims broadcast as in torch.matmul.
// Device-generic (registered for CPU and CUDA): alpha and the transposes are
// folded into the one GEMM call (BLAS / cuBLAS take alpha and transpose flags),
// so neither the scaled product nor a transposed copy is ever written. Bound:
// the GEMM's FLOPs (2 m n k per batch).
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/empty.h>

#include "matmul/fused_linear.h"
#include "ops.h"

namespace teachcompute_ext {

at::Tensor fused_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a, bool trans_b) {
  const MatmulShape s = check_matmul("fused_matmul", a, b, trans_a, trans_b);
  // Transposed views: BLAS reads them through its transpose flag, no copy.
  const at::Tensor A = trans_a ? a.mT() : a;
  const at::Tensor B = trans_b ? b.mT() : b;
  std::vector<int64_t> out_shape = s.batch;
  out_shape.push_back(s.m);
  out_shape.push_back(s.n);
  if (s.batch.empty()) {
    at::Tensor out = at::empty({s.m, s.n}, a.options());
    // beta = 0: the uninitialized out is never read (BLAS semantics), and a
    // k = 0 product gives zeros.
    return at::addmm_out(out, out, A, B, /*beta=*/0, alpha);
  }
  if (b.dim() == 2 && !trans_a) {
    // A batch of a against one matrix is a single GEMM with m * batch rows:
    // one large call instead of many small ones (torch.matmul folds the same way).
    at::Tensor out = at::empty({c10::multiply_integers(s.batch) * s.m, s.n}, a.options());
    at::addmm_out(out, out, A.reshape({-1, s.k}), B, 0, alpha);
    return out.view(out_shape);
  }
  auto batched = [&](const at::Tensor& t, int64_t r, int64_t c) {
    std::vector<int64_t> shape = s.batch;
    shape.push_back(r);
    shape.push_back(c);
    return t.expand(shape).reshape({-1, r, c});
  };
  const at::Tensor A3 = batched(A, s.m, s.k), B3 = batched(B, s.k, s.n);
  at::Tensor out = at::empty({A3.size(0), s.m, s.n}, a.options());
  at::baddbmm_out(out, out, A3, B3, 0, alpha);
  return out.view(out_shape);
}

}  // namespace teachcompute_ext

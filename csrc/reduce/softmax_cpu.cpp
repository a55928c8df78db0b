// softmax / log_softmax on the CPU: shape checks (softmax.h), then the per-ISA
// kernels run in parallel (at::parallel_for) over rows (inner == 1) or over
// tiles of 64 columns (inner > 1). A non-contiguous x is made contiguous once:
// the kernels read the (outer, n, inner) layout of a contiguous tensor.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include "ops.h"
#include "reduce/softmax.h"

namespace teachcompute_ext {
namespace {

template <typename scalar_t>
const SoftmaxFns<scalar_t>& softmax_fns() {
  static const SoftmaxKernels& k = TCE_ISA_TABLE(kSoftmaxKernels);
  return for_dtype<scalar_t>(k);
}

// About 32K elements of work per task: enough to amortize the scheduling.
int64_t grain_for(int64_t work_per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_item));
}

at::Tensor softmax_forward(const char* op, const at::Tensor& x, int64_t dim, bool log) {
  check_float_dtype(op, "x", x);
  const SoftmaxShape sh = softmax_shape(op, x, dim);
  const at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax", [&] {
    const auto& f = softmax_fns<scalar_t>();
    const scalar_t* xp = xc.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (sh.inner == 1) {
      const bool stream = static_cast<int64_t>(y.nbytes()) > kSoftmaxStreamBytes;
      at::parallel_for(0, sh.outer, grain_for(sh.n),
                       [&](int64_t r0, int64_t r1) { f.fwd_rows(xp, yp, sh.n, r0, r1, log, stream); });
    } else {
      const int64_t units = sh.outer * ((sh.inner + kSoftmaxColTile - 1) / kSoftmaxColTile);
      at::parallel_for(0, units, grain_for(sh.n * kSoftmaxColTile), [&](int64_t u0, int64_t u1) {
        f.fwd_cols(xp, yp, sh.n, sh.inner, u0, u1, log);
      });
    }
  });
  return y;
}

at::Tensor softmax_backward(const char* op, const at::Tensor& grad, const at::Tensor& out, int64_t dim,
                            bool log) {
  check_softmax_backward(op, grad, out);
  check_float_dtype(op, "out", out);
  const SoftmaxShape sh = softmax_shape(op, out, dim);
  const at::Tensor gc = grad.contiguous(), yc = out.contiguous();
  at::Tensor gx = at::empty(out.sizes(), out.options());
  if (out.numel() == 0) return gx;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "softmax_backward", [&] {
    const auto& f = softmax_fns<scalar_t>();
    const scalar_t* gp = gc.const_data_ptr<scalar_t>();
    const scalar_t* yp = yc.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    if (sh.inner == 1) {
      const bool stream = static_cast<int64_t>(gx.nbytes()) > kSoftmaxStreamBytes;
      at::parallel_for(0, sh.outer, grain_for(sh.n),
                       [&](int64_t r0, int64_t r1) { f.bwd_rows(gp, yp, gxp, sh.n, r0, r1, log, stream); });
    } else {
      const int64_t units = sh.outer * ((sh.inner + kSoftmaxColTile - 1) / kSoftmaxColTile);
      at::parallel_for(0, units, grain_for(sh.n * kSoftmaxColTile), [&](int64_t u0, int64_t u1) {
        f.bwd_cols(gp, yp, gxp, sh.n, sh.inner, u0, u1, log);
      });
    }
  });
  return gx;
}

}  // namespace

at::Tensor softmax_cpu(const at::Tensor& x, int64_t dim) {
  return softmax_forward("softmax", x, dim, false);
}
at::Tensor log_softmax_cpu(const at::Tensor& x, int64_t dim) {
  return softmax_forward("log_softmax", x, dim, true);
}
at::Tensor softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  return softmax_backward("softmax_backward", grad, out, dim, false);
}
at::Tensor log_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  return softmax_backward("log_softmax_backward", grad, out, dim, true);
}

}  // namespace teachcompute_ext

// The matmul family's frontends, one per op for every device.
// fused_matmul: alpha * op(a) @ op(b), batch dims broadcast as in torch.matmul.
// Device-generic all through: alpha and the transposes are folded into the one
// GEMM call (BLAS / cuBLAS take alpha and transpose flags), so neither the
// scaled product nor a transposed copy is ever written. Bound: the GEMM's
// FLOPs (2 m n k per batch).
// fused_linear_forward / _backward: checks, outputs and empty cases here, the
// fused GEMMs in the device's kernel through its stub (matmul.h).
#include <ATen/DeviceGuard.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include "common/autograd.h"
#include "matmul/matmul.h"
#include "ops.h"

namespace teachcompute_ext {

TCE_DEFINE_STUB(fused_linear_stub, fused_linear_kernel);
TCE_DEFINE_STUB(fused_linear_backward_stub, fused_linear_backward_kernel);

namespace {

at::Tensor matmul_scaled(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a, bool trans_b,
                         const MatmulShape& s) {
  // Empty outputs, and k = 0 (a sum of no products: zeros), never reach the
  // GEMM: its reshapes cannot infer a dim from 0 elements.
  if (c10::multiply_integers(s.out) == 0) return at::empty(s.out, a.options());
  if (s.k == 0) return at::zeros(s.out, a.options());
  // Vectors as [1, k] and [k, 1] views; transposed views: BLAS reads them
  // through its transpose flag, no copy.
  const at::Tensor A = s.a_vec ? a.unsqueeze(0) : (trans_a ? a.mT() : a);
  const at::Tensor B = s.b_vec ? b.unsqueeze(1) : (trans_b ? b.mT() : b);
  if (s.batch.empty()) {
    at::Tensor out;
    if (alpha == 1.0) {
      // Plain mm: 0.3 us a call less than addmm_out's out= and beta handling (4x8 @ 8x6).
      out = at::mm(A, B);
    } else {
      out = at::empty({s.m, s.n}, a.options());
      // beta = 0: the uninitialized out is never read (BLAS semantics).
      at::addmm_out(out, out, A, B, /*beta=*/0, alpha);
    }
    return s.a_vec || s.b_vec ? out.view(s.out) : out;  // no view op when none is needed: 0.4 us a call
  }
  if (B.dim() == 2 && !trans_a) {
    // A batch of a against one matrix is a single GEMM with m * batch rows:
    // one large call instead of many small ones (torch.matmul folds the same way).
    at::Tensor out = at::empty({c10::multiply_integers(s.batch) * s.m, s.n}, a.options());
    at::addmm_out(out, out, A.reshape({-1, s.k}), B, 0, alpha);
    return out.view(s.out);
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
  return out.view(s.out);
}

}  // namespace

at::Tensor fused_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a, bool trans_b) {
  const MatmulShape s = check_matmul("fused_matmul", a, b, trans_a, trans_b);
  const at::OptionalDeviceGuard guard(at::device_of(a));
  // alpha = 0 is 0 * (a @ b), as torch computes it (NaN where the product is
  // inf or NaN): GEMM libraries may skip the product and leave out unwritten
  // when alpha and beta are both 0 (the CPU's 16-bit batched GEMMs did).
  if (alpha == 0.0) return matmul_scaled(a, b, 1.0, trans_a, trans_b, s).mul_(0);
  return matmul_scaled(a, b, alpha, trans_a, trans_b, s);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        c10::string_view activation, bool save_pre) {
  const char* op = "fused_linear";
  const LinearShape s = check_linear(op, x, weight, bias);
  const Act act = parse_activation(op, activation);
  const at::OptionalDeviceGuard guard(at::device_of(x));
  at::Tensor out = at::empty({s.m, s.n}, x.options());
  const bool keep_pre = save_pre && act_needs_pre(act);
  at::Tensor pre = at::empty({keep_pre ? s.m : 0, keep_pre ? s.n : 0}, x.options());
  const auto out_shape = linear_out_shape(x, s);
  if (s.m > 0 && s.n > 0) {
    // A 1-D weight is one output feature: [1, k] and its 0-d bias [1], views.
    const at::Tensor w2 = s.vector_weight ? weight.unsqueeze(0) : weight;
    const at::Tensor b2 = !bias.has_value() ? at::Tensor() : (s.vector_weight ? bias->reshape({1}) : *bias);
    fused_linear_stub(x.device().type(), x.reshape({s.m, s.k}), w2, b2, act, out, pre);
  }
  return {out.view(out_shape), keep_pre ? pre.view(out_shape) : pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                     const at::Tensor& weight, const at::Tensor& aux,
                                                                     c10::string_view activation, bool has_bias,
                                                                     std::array<bool, 3> output_mask) {
  LinearBackward bw("fused_linear_backward", grad, x, weight, aux, activation, has_bias, output_mask);
  if (bw.done()) return bw.result();
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const LinearShape s = bw.s;
  const at::Tensor aux2 = bw.act == Act::None ? at::Tensor() : aux.reshape({s.m, s.n});
  fused_linear_backward_stub(x.device().type(), grad.reshape({s.m, s.n}), x.reshape({s.m, s.k}), weight, aux2, bw);
  return bw.result();
}

at::Tensor fused_linear_composite(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  c10::string_view activation) {
  static auto op =
      find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                                 c10::string_view, bool)>("teachcompute_ext::fused_linear_forward");
  // The pre-activation is kept only when a backward can follow: inference
  // writes one [M, N] tensor, not two.
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || weight.requires_grad() || (bias.has_value() && bias->requires_grad()));
  return std::get<0>(op.call(x, weight, bias, activation, grad));
}

}  // namespace teachcompute_ext

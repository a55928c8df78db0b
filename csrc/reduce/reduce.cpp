// The reduce family's frontends, one per op for every device: checks, the
// plan, the empty cases and the output, then the device's kernel through its
// stub (reduce.h). Registered for CPU and CUDA alike (registration.cpp).
#include <ATen/DeviceGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <limits>

#include "ops.h"
#include "reduce/reduce.h"

namespace teachcompute_ext {

TCE_DEFINE_STUB(vector_sum_stub, vector_sum_kernel);
TCE_DEFINE_STUB(reduce_stub, reduce_kernel);
TCE_DEFINE_STUB(softmax_stub, softmax_kernel);
TCE_DEFINE_STUB(softmax_backward_stub, softmax_backward_kernel);

namespace {

// sum, mean and logsumexp: one value per output.
at::Tensor reduce_values(const char* op, const at::Tensor& input, at::OptionalIntArrayRef dim, bool keepdim,
                         ReduceOp rop) {
  // Integer and bool sums are int64, as torch.sum's; mean and logsumexp stay floating-only.
  if (rop == ReduceOp::SUM) {
    check_float_or_int_dtype(op, "x", input);
  } else {
    check_float_dtype(op, "x", input);
  }
  const at::OptionalDeviceGuard guard(at::device_of(input));
  at::Tensor x = input;
  const ReducePlan p = plan_reduction(op, x, dim, keepdim);
  const at::TensorOptions out_options = is_supported_int(x.scalar_type()) ? x.options().dtype(at::kLong) : x.options();
  if (p.count == 0) {
    // torch: 0 for an empty sum, NaN for an empty mean, -inf for an empty logsumexp.
    const double empty = rop == ReduceOp::SUM    ? 0.0
                         : rop == ReduceOp::MEAN ? std::numeric_limits<double>::quiet_NaN()
                                                 : -std::numeric_limits<double>::infinity();
    return at::full(p.out_shape, empty, out_options);
  }
  at::Tensor out = at::empty(p.out_shape, out_options);
  if (p.nout == 0) return out;
  at::Tensor no_indices;
  reduce_stub(x.device().type(), x, p, rop, out, no_indices);
  return out;
}

std::tuple<at::Tensor, at::Tensor> max_or_min(const char* op, const at::Tensor& input, int64_t dim, bool keepdim,
                                              ReduceOp rop) {
  check_maxmin(op, input, dim);
  const at::OptionalDeviceGuard guard(at::device_of(input));
  at::Tensor x = input;
  const ReducePlan p = plan_reduction(op, x, at::IntArrayRef{dim}, keepdim);
  at::Tensor values = at::empty(p.out_shape, x.options());
  at::Tensor indices = at::empty(p.out_shape, x.options().dtype(at::kLong));
  if (p.nout == 0) return {values, indices};
  reduce_stub(x.device().type(), x, p, rop, values, indices);
  return {values, indices};
}

at::Tensor softmax_forward(const char* op, const at::Tensor& x, int64_t dim, bool log) {
  check_float_dtype(op, "x", x);
  const SoftmaxShape sh = softmax_shape(op, x, dim);
  const at::OptionalDeviceGuard guard(at::device_of(x));
  at::Tensor y = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return y;
  // The kernels read the (outer, n, inner) layout of a contiguous tensor.
  softmax_stub(x.device().type(), x.contiguous(), y, sh, log);
  return y;
}

at::Tensor softmax_backward_impl(const char* op, const at::Tensor& grad, const at::Tensor& out, int64_t dim, bool log) {
  check_softmax_backward(op, grad, out);
  const SoftmaxShape sh = softmax_shape(op, out, dim);
  const at::OptionalDeviceGuard guard(at::device_of(out));
  at::Tensor gx = at::empty(out.sizes(), out.options());
  if (out.numel() == 0) return gx;
  softmax_backward_stub(out.device().type(), grad.contiguous(), out.contiguous(), gx, sh, log);
  return gx;
}

}  // namespace

at::Tensor vector_sum(const at::Tensor& x) {
  // Integer and bool: torch.sum's int64 result, through the reduction kernels.
  check_float_or_int_dtype("vector_sum", "x", x);
  if (is_supported_int(x.scalar_type())) return reduce_values("vector_sum", x, std::nullopt, false, ReduceOp::SUM);
  const at::OptionalDeviceGuard guard(at::device_of(x));
  at::Tensor out = at::empty({}, x.options());
  if (x.numel() == 0) return out.zero_();
  vector_sum_stub(x.device().type(), x, out);
  return out;
}

at::Tensor reduce_sum(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return reduce_values("reduce_sum", x, dim, keepdim, ReduceOp::SUM);
}
at::Tensor reduce_mean(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return reduce_values("reduce_mean", x, dim, keepdim, ReduceOp::MEAN);
}
at::Tensor logsumexp(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  return reduce_values("logsumexp", x, dim, keepdim, ReduceOp::LOGSUMEXP);
}
std::tuple<at::Tensor, at::Tensor> reduce_max(const at::Tensor& x, int64_t dim, bool keepdim) {
  return max_or_min("reduce_max", x, dim, keepdim, ReduceOp::MAX);
}
std::tuple<at::Tensor, at::Tensor> reduce_min(const at::Tensor& x, int64_t dim, bool keepdim) {
  return max_or_min("reduce_min", x, dim, keepdim, ReduceOp::MIN);
}
at::Tensor softmax(const at::Tensor& x, int64_t dim) { return softmax_forward("softmax", x, dim, false); }
at::Tensor log_softmax(const at::Tensor& x, int64_t dim) { return softmax_forward("log_softmax", x, dim, true); }
at::Tensor softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  return softmax_backward_impl("softmax_backward", grad, out, dim, false);
}
at::Tensor log_softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim) {
  return softmax_backward_impl("log_softmax_backward", grad, out, dim, true);
}

}  // namespace teachcompute_ext

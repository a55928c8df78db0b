// The embedding family's frontends, one per op for every device: checks
// (devices, dtypes, shapes, padding_idx), the outputs, the empty cases, then
// the device's kernel through its stub (embedding.h). Registered for CPU and
// CUDA alike.
#include <ATen/DeviceGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <vector>

#include "common/autograd.h"
#include "embedding/embedding.h"
#include "ops.h"

namespace teachcompute_ext {

TCE_DEFINE_STUB(embedding_stub, embedding_kernel);
TCE_DEFINE_STUB(embedding_backward_stub, embedding_backward_kernel);
TCE_DEFINE_STUB(embedding_bag_stub, embedding_bag_kernel);
TCE_DEFINE_STUB(embedding_bag_backward_stub, embedding_bag_backward_kernel);
TCE_DEFINE_STUB(embedding_update_stub, embedding_update_kernel);
TCE_DEFINE_STUB(embedding_bag_update_stub, embedding_bag_update_kernel);

namespace {

// The bags' gradient, one row per bag, and in max mode the forward's argmax
// that routes it: what the backward and the fused update both read.
void check_bag_grad(const char* op, const BagArgs& args, const at::Tensor& grad, const at::Tensor& weight,
                    const at::Tensor& max_indices) {
  const int64_t dim = weight.size(1);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == args.bags && grad.size(1) == dim, "teachcompute_ext.", op,
              ": argument 'grad' has shape ", grad.sizes(), " but the bags have shape [", args.bags, ", ", dim, "]");
  if (args.mode == BagMode::MAX) {
    check_same_device(op, "max_indices", max_indices, "weight", weight);
    TORCH_CHECK(max_indices.scalar_type() == at::kLong && max_indices.sizes() == grad.sizes(), "teachcompute_ext.", op,
                ": argument 'max_indices' must be int64 of shape ", grad.sizes(), " (the forward's argmax), got ",
                dtype_name(max_indices.scalar_type()), " of shape ", max_indices.sizes());
  }
}

// The fused updates write grad's values into weight: same device, same dtype.
void check_update_grad(const char* op, const at::Tensor& grad, const at::Tensor& weight) {
  check_same_device(op, "grad", grad, "weight", weight);
  TORCH_CHECK_TYPE(grad.scalar_type() == weight.scalar_type(), "teachcompute_ext.", op, ": argument 'grad' has dtype ",
                   dtype_name(grad.scalar_type()), " but 'weight' has dtype ", dtype_name(weight.scalar_type()));
}

}  // namespace

at::Tensor embedding(const at::Tensor& weight, const at::Tensor& indices, std::optional<int64_t> padding_idx) {
  const char* op = "embedding";
  check_weight(op, weight);
  check_indices(op, indices);
  check_same_device(op, "indices", indices, "weight", weight);
  wrap_padding_idx(op, padding_idx, weight.size(0));
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(weight.size(1));
  at::Tensor out = at::empty(shape, weight.options());
  if (indices.numel() == 0) return out;
  embedding_stub(weight.device().type(), weight.contiguous(), indices.contiguous(), out);
  return out;
}

at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& indices, int64_t num_weights,
                              std::optional<int64_t> padding_idx) {
  const char* op = "embedding_backward";
  check_float_dtype(op, "grad", grad);
  check_indices(op, indices);
  check_same_device(op, "indices", indices, "grad", grad);
  TORCH_CHECK(grad.dim() == indices.dim() + 1 && grad.sizes().slice(0, indices.dim()) == indices.sizes(),
              "teachcompute_ext.", op, ": argument 'grad' has shape ", grad.sizes(), " but 'indices' has shape ",
              indices.sizes(), " (expected indices.shape + [embedding_dim])");
  TORCH_CHECK(num_weights >= 0, "teachcompute_ext.", op, ": argument 'num_weights' must be non-negative, got ",
              num_weights);
  const int64_t padding = wrap_padding_idx(op, padding_idx, num_weights);
  const at::OptionalDeviceGuard guard(at::device_of(grad));
  const int64_t dim = grad.size(-1);
  at::Tensor gw = at::zeros({num_weights, dim}, grad.options());
  if (indices.numel() == 0) return gw;
  embedding_backward_stub(grad.device().type(), grad.contiguous().view({indices.numel(), dim}), indices.contiguous(),
                          padding, gw);
  return gw;
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_forward(const at::Tensor& weight, const at::Tensor& indices,
                                                         const std::optional<at::Tensor>& offsets,
                                                         c10::string_view mode, const std::optional<at::Tensor>& psw,
                                                         std::optional<int64_t> padding_idx, bool include_last_offset) {
  const char* op = "embedding_bag";
  const BagArgs args = check_bag_args(op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  const int64_t dim = weight.size(1);
  const bool max = args.mode == BagMode::MAX;
  const auto long_opts = indices.options().dtype(at::kLong);
  // max: empty bags stay zeros with argmax -1; sum and mean write every row.
  at::Tensor out = max ? at::zeros({args.bags, dim}, weight.options()) : at::empty({args.bags, dim}, weight.options());
  at::Tensor argmax = max ? at::full({args.bags, dim}, -1, long_opts) : at::empty({0}, long_opts);
  if (args.bags == 0 && indices.numel() == 0) return {out, argmax};
  const at::Tensor w = weight.contiguous(), idx = indices.contiguous();
  const BagInputs in{w, idx, offsets, psw, args, include_last_offset};
  embedding_bag_stub(weight.device().type(), in, out, argmax);
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets, const at::Tensor& max_indices, c10::string_view mode,
    const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx, bool include_last_offset) {
  const char* op = "embedding_bag_backward";
  check_float_dtype(op, "grad", grad);
  const BagArgs args = check_bag_args(op, weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
  check_same_device(op, "grad", grad, "weight", weight);
  const int64_t num = weight.size(0), dim = weight.size(1);
  check_bag_grad(op, args, grad, weight, max_indices);
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  at::Tensor gw = at::zeros({num, dim}, grad.options());
  at::Tensor gpsw = psw.has_value() ? at::zeros(psw->sizes(), psw->options()) : at::empty({0}, grad.options());
  // No bag, no index or no column: every gradient is zero (with zero bags,
  // grad has no row to read even when indices is not empty).
  if (args.bags == 0 || indices.numel() == 0 || dim == 0) return {gw, gpsw};
  const at::Tensor w = weight.contiguous(), idx = indices.contiguous();
  const BagInputs in{w, idx, offsets, psw, args, include_last_offset};
  embedding_bag_backward_stub(weight.device().type(), in, grad.contiguous(), max_indices.contiguous(), gw, gpsw);
  return {gw, gpsw};
}

// embedding_bag itself is CompositeImplicitAutograd: it calls
// embedding_bag_forward (which also returns the argmax rows that max mode needs
// for its backward) and returns the bags. Autograd, fake kernels and
// torch.compile see embedding_bag_forward.
at::Tensor embedding_bag_composite(const at::Tensor& weight, const at::Tensor& indices,
                                   const std::optional<at::Tensor>& offsets, c10::string_view mode,
                                   const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,
                                   bool include_last_offset) {
  static auto op = TCE_OP(embedding_bag_forward);
  return std::get<0>(op.call(weight, indices, offsets, mode, psw, padding_idx, include_last_offset));
}

// ---- the backward fused with an optimizer step --------------------------------------------------------
namespace {

// The state each optimizer keeps: its dtype (float32 for a half table: the
// moments of bfloat16 rows in bfloat16 would lose the small updates), and its shapes.
at::ScalarType state_dtype(at::ScalarType weight) { return weight == at::kDouble ? at::kDouble : at::kFloat; }

RowUpdate check_row_update(const char* op, const at::Tensor& weight, const at::Tensor& state1, const at::Tensor& state2,
                           c10::string_view optimizer, double lr, double beta1, double beta2, double eps,
                           double weight_decay, int64_t step) {
  const RowUpdate u{parse_row_optimizer(op, optimizer), lr, beta1, beta2, eps, weight_decay, step};
  TORCH_CHECK(weight.is_contiguous(), "teachcompute_ext.", op,
              ": argument 'weight' must be contiguous (it is updated in place), got strides ", weight.strides());
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr >= 0, "teachcompute_ext.", op,
                    ": argument 'lr' must be finite and >= 0, got ", lr);
  TORCH_CHECK_VALUE(std::isfinite(weight_decay) && weight_decay >= 0, "teachcompute_ext.", op,
                    ": argument 'weight_decay' must be finite and >= 0, got ", weight_decay);
  if (u.kind != RowOptimizer::SGD) {
    TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0, "teachcompute_ext.", op,
                      ": argument 'eps' must be finite and > 0, got ", eps);
  }
  const bool adam = u.kind == RowOptimizer::ADAM || u.kind == RowOptimizer::ADAMW;
  if (adam) {
    TORCH_CHECK_VALUE(beta1 >= 0 && beta1 < 1, "teachcompute_ext.", op, ": argument 'beta1' must be in [0, 1), got ",
                      beta1);
    TORCH_CHECK_VALUE(beta2 >= 0 && beta2 < 1, "teachcompute_ext.", op, ": argument 'beta2' must be in [0, 1), got ",
                      beta2);
    TORCH_CHECK_VALUE(step >= 1, "teachcompute_ext.", op,
                      ": argument 'step' must be >= 1 (the count of steps, this one included), got ", step);
  }
  const int64_t num = weight.size(0), dim = weight.size(1);
  const std::vector<int64_t> rows{num}, table{num, dim}, none{0};
  const std::vector<int64_t>& shape1 = u.kind == RowOptimizer::SGD               ? none
                                       : u.kind == RowOptimizer::ROWWISE_ADAGRAD ? rows
                                                                                 : table;
  const std::vector<int64_t>& shape2 = adam ? table : none;
  const at::ScalarType dtype = state_dtype(weight.scalar_type());
  auto check_state = [&](const char* name, const at::Tensor& s, const std::vector<int64_t>& shape) {
    check_same_device(op, name, s, "weight", weight);
    TORCH_CHECK(s.sizes() == at::IntArrayRef(shape), "teachcompute_ext.", op, ": argument '", name,
                "' must have shape ", at::IntArrayRef(shape), " for optimizer '", optimizer, "' and a weight of shape ",
                weight.sizes(), ", got ", s.sizes());
    if (shape != none) {
      TORCH_CHECK_TYPE(s.scalar_type() == dtype, "teachcompute_ext.", op, ": argument '", name, "' must be ",
                       dtype_name(dtype), " for a ", dtype_name(weight.scalar_type()), " weight, got ",
                       dtype_name(s.scalar_type()));
      TORCH_CHECK(s.is_contiguous(), "teachcompute_ext.", op, ": argument '", name,
                  "' must be contiguous (it is updated in place)");
    }
  };
  check_state("state1", state1, shape1);
  check_state("state2", state2, shape2);
  return u;
}

}  // namespace

void embedding_update_(const at::Tensor& weight, const at::Tensor& state1, const at::Tensor& state2,
                       const at::Tensor& grad, const at::Tensor& indices, std::optional<int64_t> padding_idx,
                       c10::string_view optimizer, double lr, double beta1, double beta2, double eps,
                       double weight_decay, int64_t step) {
  const char* op = "embedding_update_";
  check_weight(op, weight);
  check_indices(op, indices);
  check_same_device(op, "indices", indices, "weight", weight);
  check_update_grad(op, grad, weight);
  TORCH_CHECK(grad.dim() == indices.dim() + 1 && grad.sizes().slice(0, indices.dim()) == indices.sizes() &&
                  grad.size(-1) == weight.size(1),
              "teachcompute_ext.", op, ": argument 'grad' has shape ", grad.sizes(), " but 'indices' has shape ",
              indices.sizes(), " and 'weight' ", weight.sizes(), " (expected indices.shape + [embedding_dim])");
  const RowUpdate u =
      check_row_update(op, weight, state1, state2, optimizer, lr, beta1, beta2, eps, weight_decay, step);
  const int64_t padding = wrap_padding_idx(op, padding_idx, weight.size(0));
  if (indices.numel() == 0) return;
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  at::Tensor w = weight, s1 = state1, s2 = state2;
  embedding_update_stub(weight.device().type(), grad.contiguous(), indices.contiguous(), padding, u, w, s1, s2);
}

at::Tensor embedding_bag_update_(const at::Tensor& weight, const at::Tensor& state1, const at::Tensor& state2,
                                 const at::Tensor& grad, const at::Tensor& indices,
                                 const std::optional<at::Tensor>& offsets, const at::Tensor& max_indices,
                                 c10::string_view bag_mode, const std::optional<at::Tensor>& psw,
                                 std::optional<int64_t> padding_idx, bool include_last_offset, bool psw_grad,
                                 c10::string_view optimizer, double lr, double beta1, double beta2, double eps,
                                 double weight_decay, int64_t step) {
  const char* op = "embedding_bag_update_";
  const BagArgs args =
      check_bag_args(op, weight, indices, offsets, bag_mode, psw, padding_idx, include_last_offset, op);
  check_update_grad(op, grad, weight);
  check_bag_grad(op, args, grad, weight, max_indices);
  const RowUpdate u =
      check_row_update(op, weight, state1, state2, optimizer, lr, beta1, beta2, eps, weight_decay, step);
  const at::OptionalDeviceGuard guard(at::device_of(weight));
  at::Tensor gpsw = psw.has_value() && psw_grad ? at::zeros(psw->sizes(), psw->options()) : at::Tensor();
  if (args.bags > 0 && indices.numel() > 0) {
    const at::Tensor idx = indices.contiguous();
    const BagInputs in{weight, idx, offsets, psw, args, include_last_offset};
    at::Tensor w = weight, s1 = state1, s2 = state2;
    embedding_bag_update_stub(weight.device().type(), in, grad.contiguous(), max_indices.contiguous(), u, w, s1, s2,
                              gpsw);
  }
  return gpsw.defined() ? gpsw : at::empty({0}, grad.options());
}

}  // namespace teachcompute_ext

// The embedding family's frontends, one per op for every device: checks
// (devices, dtypes, shapes, padding_idx), the outputs, the empty cases, then
// the device's kernel through its stub (embedding.h). Registered for CPU and
// CUDA alike.
#include <ATen/DeviceGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>

#include <vector>

#include "common/autograd.h"
#include "embedding/embedding.h"
#include "ops.h"

namespace teachcompute_ext {

TCE_DEFINE_STUB(embedding_stub, embedding_kernel);
TCE_DEFINE_STUB(embedding_backward_stub, embedding_backward_kernel);
TCE_DEFINE_STUB(embedding_bag_stub, embedding_bag_kernel);
TCE_DEFINE_STUB(embedding_bag_backward_stub, embedding_bag_backward_kernel);

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
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == args.bags && grad.size(1) == dim, "teachcompute_ext.", op,
              ": argument 'grad' has shape ", grad.sizes(), " but the bags have shape [", args.bags, ", ", dim, "]");
  if (args.mode == BagMode::MAX) {
    check_same_device(op, "max_indices", max_indices, "weight", weight);
    TORCH_CHECK(max_indices.scalar_type() == at::kLong && max_indices.sizes() == grad.sizes(), "teachcompute_ext.", op,
                ": argument 'max_indices' must be int64 of shape ", grad.sizes(), " (the forward's argmax), got ",
                dtype_name(max_indices.scalar_type()), " of shape ", max_indices.sizes());
  }
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
  static auto op = find_op<std::tuple<at::Tensor, at::Tensor>(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
      const std::optional<at::Tensor>&, std::optional<int64_t>, bool)>("teachcompute_ext::embedding_bag_forward");
  return std::get<0>(op.call(weight, indices, offsets, mode, psw, padding_idx, include_last_offset));
}

}  // namespace teachcompute_ext

// Autograd of the ScatterND family (C++ autograd Functions, the rule of every
// family: csrc/README.md), for reduction="add" and "none"; mul, max and min
// raise in the backward. Written with symbolic sizes (sym_size, *_symint), so
// torch.compile(dynamic=True) traces it without specializing.
//   add:  grad_data = grad; grad_updates[i] = grad[row(i)]
//   none: grad_data = grad with the written rows zeroed; grad_updates[i] =
//         grad[row(i)] for the update that won its row (the last one), else 0
#include <ATen/ops/arange.h>
#include <ATen/ops/full.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>

#include <string>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ScatterSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, c10::string_view);
using OfShapeSig = at::Tensor(c10::SymIntArrayRef, const at::Tensor&, const at::Tensor&, c10::string_view);
using MaskedSig = at::Tensor(c10::SymIntArrayRef, const at::Tensor&, const at::Tensor&, int64_t, c10::string_view);

void check_differentiable(const char* op, const std::string& reduction) {
  TORCH_CHECK(reduction == "none" || reduction == "add", "teachcompute_ext.", op,
              ": not differentiable for reduction='", reduction, "' (gradients exist for none and add)");
}

c10::SymInt prod(c10::SymIntArrayRef sizes, int64_t begin, int64_t end) {
  c10::SymInt p = 1;
  for (int64_t d = begin; d < end; ++d) p = p * sizes[d];
  return p;
}

// Destination row of each update (negative indices wrapped), flattened.
at::Tensor rows_of(const at::Tensor& indices, c10::SymIntArrayRef shape) {
  const at::Tensor idx = indices.to(at::kLong);
  const int64_t k = idx.sym_size(-1).guard_int(__FILE__, __LINE__);
  at::Tensor row = at::zeros_like(idx.select(-1, 0));
  for (int64_t d = 0; d < k; ++d) {
    const at::Tensor v = idx.select(-1, d);
    const c10::Scalar size(shape[d]);
    row = row.mul(size).add(at::where(v.lt(0), v.add(size), v));
  }
  return row.reshape({-1});
}

// True for the last update of each destination (the one reduction="none" keeps).
at::Tensor winners(const at::Tensor& rows, const c10::SymInt& n_rows) {
  const at::Tensor pos = at::arange(c10::Scalar(rows.sym_numel()), rows.options());
  at::Tensor last = at::full_symint({n_rows}, -1, rows.options());
  last = last.scatter_reduce(0, rows, pos, "amax", /*include_self=*/true);
  return last.index_select(0, rows).eq(pos);
}

// grad's rows at `rows` (grad viewed as [n_rows, slice]), zeroed where keep is false.
at::Tensor gather_rows(const at::Tensor& grad, const at::Tensor& rows, int64_t k, c10::SymIntArrayRef updates_shape,
                       const at::Tensor& keep) {
  const auto gs = grad.sym_sizes();
  const at::Tensor g2 = grad.reshape_symint({prod(gs, 0, k), prod(gs, k, grad.dim())});
  at::Tensor out = g2.index_select(0, rows.clamp_min(0));
  if (keep.defined()) out = out.mul(keep.unsqueeze(1).to(out.scalar_type()));
  return out.reshape_symint(updates_shape);
}

struct ScatterNdFunction : public torch::autograd::Function<ScatterNdFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& data, const at::Tensor& indices,
                            const at::Tensor& updates, c10::string_view reduction) {
    static auto op = find_op<ScatterSig>("teachcompute_ext::scatter_nd");
    ctx->save_for_backward({indices});
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["updates_shape"] = c10::IValue(updates.sym_sizes());
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(data, indices, updates, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    check_differentiable("scatter_nd", reduction);
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grad_out[0];
    const auto updates_shape = ctx->saved_data["updates_shape"].toSymIntVector();
    const int64_t k = indices.sym_size(-1).guard_int(__FILE__, __LINE__);
    const at::Tensor rows = rows_of(indices, grad.sym_sizes());
    at::Tensor grad_data, grad_updates;
    if (reduction == "add") {
      if (ctx->needs_input_grad(0)) grad_data = grad;
      if (ctx->needs_input_grad(2)) grad_updates = gather_rows(grad, rows, k, updates_shape, at::Tensor());
    } else {
      const auto gs = grad.sym_sizes();
      const c10::SymInt n_rows = prod(gs, 0, k);
      if (ctx->needs_input_grad(0)) {
        const at::Tensor written = at::zeros_symint({n_rows}, grad.options().dtype(at::kBool)).index_fill(0, rows, true);
        grad_data = grad.reshape_symint({n_rows, prod(gs, k, grad.dim())})
                        .masked_fill(written.unsqueeze(1), 0)
                        .reshape_symint(gs);
      }
      if (ctx->needs_input_grad(2)) grad_updates = gather_rows(grad, rows, k, updates_shape, winners(rows, n_rows));
    }
    return {grad_data, at::Tensor(), grad_updates, at::Tensor()};
  }
};

// scatter_nd_of_shape and masked_scatter_nd_of_shape: only updates has a gradient.
struct OfShapeFunction : public torch::autograd::Function<OfShapeFunction> {
  static at::Tensor forward(AutogradContext* ctx, c10::SymIntArrayRef shape, const at::Tensor& indices,
                            const at::Tensor& updates, std::optional<int64_t> masked_value,
                            c10::string_view reduction) {
    ctx->save_for_backward({indices});
    ctx->saved_data["reduction"] = std::string(reduction);
    ctx->saved_data["updates_shape"] = c10::IValue(updates.sym_sizes());
    ctx->saved_data["masked"] = masked_value.has_value();
    ctx->saved_data["masked_value"] = masked_value.value_or(0);
    at::AutoDispatchBelowADInplaceOrView guard;
    if (masked_value.has_value()) {
      static auto op = find_op<MaskedSig>("teachcompute_ext::masked_scatter_nd_of_shape");
      return op.call(shape, indices, updates, *masked_value, reduction);
    }
    static auto op = find_op<OfShapeSig>("teachcompute_ext::scatter_nd_of_shape");
    return op.call(shape, indices, updates, reduction);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const bool masked = ctx->saved_data["masked"].toBool();
    const std::string reduction = ctx->saved_data["reduction"].toStringRef();
    check_differentiable(masked ? "masked_scatter_nd_of_shape" : "scatter_nd_of_shape", reduction);
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const at::Tensor& grad = grad_out[0];
    const int64_t k = indices.sym_size(-1).guard_int(__FILE__, __LINE__);
    at::Tensor rows = rows_of(indices, grad.sym_sizes());
    at::Tensor keep;
    if (masked) {
      keep = indices.select(-1, 0).ne(ctx->saved_data["masked_value"].toInt()).reshape({-1});
      rows = at::where(keep, rows, 0);
    }
    if (reduction == "none") {
      const c10::SymInt n_rows = prod(grad.sym_sizes(), 0, k);
      // Masked updates compete for an extra row n_rows, so they never win a real one.
      const at::Tensor win = keep.defined() ? winners(at::where(keep, rows, c10::Scalar(n_rows)), n_rows + 1)
                                            : winners(rows, n_rows);
      keep = keep.defined() ? win.logical_and(keep) : win;
    }
    const at::Tensor grad_updates =
        gather_rows(grad, rows, k, ctx->saved_data["updates_shape"].toSymIntVector(), keep);
    return {at::Tensor(), at::Tensor(), grad_updates, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor scatter_nd_autograd(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                               c10::string_view reduction) {
  if (!needs_grad(data) && !needs_grad(updates)) {
    static auto op = find_op<ScatterSig>("teachcompute_ext::scatter_nd");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(data, indices, updates, reduction);
  }
  return ScatterNdFunction::apply(data, indices, updates, reduction);
}

at::Tensor scatter_nd_of_shape_autograd(c10::SymIntArrayRef shape, const at::Tensor& indices,
                                        const at::Tensor& updates, c10::string_view reduction) {
  if (!needs_grad(updates)) {
    static auto op = find_op<OfShapeSig>("teachcompute_ext::scatter_nd_of_shape");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(shape, indices, updates, reduction);
  }
  return OfShapeFunction::apply(shape, indices, updates, std::nullopt, reduction);
}

at::Tensor masked_scatter_nd_of_shape_autograd(c10::SymIntArrayRef shape, const at::Tensor& indices,
                                               const at::Tensor& updates, int64_t masked_value,
                                               c10::string_view reduction) {
  if (!needs_grad(updates)) {
    static auto op = find_op<MaskedSig>("teachcompute_ext::masked_scatter_nd_of_shape");
    at::AutoDispatchBelowADInplaceOrView guard;
    return op.call(shape, indices, updates, masked_value, reduction);
  }
  return OfShapeFunction::apply(shape, indices, updates, std::optional<int64_t>(masked_value), reduction);
}

}  // namespace teachcompute_ext

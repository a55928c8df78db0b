// Autograd of the reduce family (the rule for every family, C++ autograd
// Functions, is in csrc/README.md with its per-call figure). Fake kernels stay
// in Python (ops/reduce.py).
#include <ATen/ops/zeros.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor vector_sum_redispatch(const at::Tensor& x) {
  static auto op = find_op<at::Tensor(const at::Tensor&)>("teachcompute_ext::vector_sum");
  return op.call(x);
}

struct VectorSumFunction : public torch::autograd::Function<VectorSumFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x) {
    ctx->saved_data["sizes"] = c10::IValue(x.sym_sizes());  // SymInts under torch.compile
    at::AutoDispatchBelowADInplaceOrView guard;
    return vector_sum_redispatch(x);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    // A broadcast view of the scalar gradient: nothing of x's size is written.
    return {grad_out[0].expand_symint(ctx->saved_data["sizes"].toSymIntVector())};
  }
};

// softmax / log_softmax: the backward needs only the output, and is its own
// op (softmax_backward / log_softmax_backward) so torch.compile and export
// see one fused kernel rather than a chain of elementwise ops.
template <bool kLog>
struct SoftmaxFunction : public torch::autograd::Function<SoftmaxFunction<kLog>> {
  using Fwd = at::Tensor(const at::Tensor&, int64_t);
  using Bwd = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);
  static at::Tensor call(const at::Tensor& x, int64_t dim) {
    static auto op = find_op<Fwd>(kLog ? "teachcompute_ext::log_softmax" : "teachcompute_ext::softmax");
    return op.call(x, dim);
  }
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor y = call(x, dim);
    ctx->save_for_backward({y});
    ctx->saved_data["dim"] = dim;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    static auto op =
        find_op<Bwd>(kLog ? "teachcompute_ext::log_softmax_backward" : "teachcompute_ext::softmax_backward");
    const at::Tensor y = ctx->get_saved_variables()[0];
    return {op.call(grad_out[0], y, ctx->saved_data["dim"].toInt()), at::Tensor()};
  }
};

// Reduced dims of x, wrapped and ascending (None or [] means all).
std::vector<int64_t> reduced_dims(const at::Tensor& x, at::OptionalIntArrayRef dim) {
  std::vector<int64_t> out;
  const int64_t wrap = std::max<int64_t>(x.dim(), 1);
  if (x.dim() == 0) return out;
  if (!dim.has_value() || dim->empty()) {
    for (int64_t d = 0; d < x.dim(); ++d) out.push_back(d);
  } else {
    for (int64_t d : *dim) out.push_back(d < 0 ? d + wrap : d);
    std::sort(out.begin(), out.end());
  }
  return out;
}

// grad of a reduction, reshaped to broadcast against x: the reduced dims put back.
at::Tensor unsqueeze_reduced(at::Tensor g, const std::vector<int64_t>& dims, bool keepdim) {
  if (!keepdim) {
    for (int64_t d : dims) g = g.unsqueeze(d);
  }
  return g;
}

// sum and mean: the gradient is a broadcast view of grad (divided by the count for mean).
template <bool kMean>
struct SumMeanFunction : public torch::autograd::Function<SumMeanFunction<kMean>> {
  using Sig = at::Tensor(const at::Tensor&, at::OptionalIntArrayRef, bool);
  static at::Tensor call(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
    static auto op = find_op<Sig>(kMean ? "teachcompute_ext::reduce_mean" : "teachcompute_ext::reduce_sum");
    return op.call(x, dim, keepdim);
  }
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
    const std::vector<int64_t> dims = reduced_dims(x, dim);
    c10::SymInt count = 1;
    for (int64_t d : dims) count = count * x.sym_size(d);
    ctx->saved_data["sizes"] = c10::IValue(x.sym_sizes());
    ctx->saved_data["dims"] = dims;
    ctx->saved_data["keepdim"] = keepdim;
    ctx->saved_data["count"] = c10::IValue(count);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call(x, dim, keepdim);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    at::Tensor g = unsqueeze_reduced(grad_out[0], ctx->saved_data["dims"].toIntVector(),
                                     ctx->saved_data["keepdim"].toBool());
    if (kMean) g = g.div(c10::Scalar(ctx->saved_data["count"].toSymInt()));
    return {g.expand_symint(ctx->saved_data["sizes"].toSymIntVector()), at::Tensor(), at::Tensor()};
  }
};

// max and min: the gradient goes to the returned index.
template <bool kMax>
struct MaxMinFunction : public torch::autograd::Function<MaxMinFunction<kMax>> {
  using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool);
  static std::tuple<at::Tensor, at::Tensor> call(const at::Tensor& x, int64_t dim, bool keepdim) {
    static auto op = find_op<Sig>(kMax ? "teachcompute_ext::reduce_max" : "teachcompute_ext::reduce_min");
    return op.call(x, dim, keepdim);
  }
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, int64_t dim, bool keepdim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    auto [values, indices] = call(x, dim, keepdim);
    const int64_t w = x.dim() == 0 ? 0 : (dim < 0 ? dim + x.dim() : dim);
    ctx->saved_data["sizes"] = c10::IValue(x.sym_sizes());
    ctx->saved_data["dim"] = w;
    ctx->saved_data["keepdim"] = keepdim;
    ctx->save_for_backward({indices});
    ctx->mark_non_differentiable({indices});
    return {values, indices};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto sizes = ctx->saved_data["sizes"].toSymIntVector();
    if (sizes.empty()) return {grad_out[0], at::Tensor(), at::Tensor()};
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const bool keepdim = ctx->saved_data["keepdim"].toBool();
    at::Tensor idx = ctx->get_saved_variables()[0];
    at::Tensor g = grad_out[0];
    if (!keepdim) {
      g = g.unsqueeze(dim);
      idx = idx.unsqueeze(dim);
    }
    return {at::zeros_symint(sizes, g.options()).scatter(dim, idx, g), at::Tensor(), at::Tensor()};
  }
};

// logsumexp: d/dx = exp(x - out), as torch's formula.
struct LogSumExpFunction : public torch::autograd::Function<LogSumExpFunction> {
  using Sig = at::Tensor(const at::Tensor&, at::IntArrayRef, bool);
  static at::Tensor call(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
    static auto op = find_op<Sig>("teachcompute_ext::logsumexp");
    return op.call(x, dim, keepdim);
  }
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
    at::AutoDispatchBelowADInplaceOrView guard;
    at::Tensor out = call(x, dim, keepdim);
    ctx->saved_data["dims"] = reduced_dims(x, dim);
    ctx->saved_data["keepdim"] = keepdim;
    ctx->save_for_backward({x, out});
    return out;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const auto dims = ctx->saved_data["dims"].toIntVector();
    const bool keepdim = ctx->saved_data["keepdim"].toBool();
    const at::Tensor g = unsqueeze_reduced(grad_out[0], dims, keepdim);
    const at::Tensor out = unsqueeze_reduced(saved[1], dims, keepdim);
    return {g.mul(saved[0].sub(out).exp()), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor reduce_sum_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return SumMeanFunction<false>::call(x, dim, keepdim);
  }
  return SumMeanFunction<false>::apply(x, dim, keepdim);
}

at::Tensor reduce_mean_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return SumMeanFunction<true>::call(x, dim, keepdim);
  }
  return SumMeanFunction<true>::apply(x, dim, keepdim);
}

template <bool kMax>
std::tuple<at::Tensor, at::Tensor> maxmin_autograd(const at::Tensor& x, int64_t dim, bool keepdim) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return MaxMinFunction<kMax>::call(x, dim, keepdim);
  }
  auto outs = MaxMinFunction<kMax>::apply(x, dim, keepdim);
  return {outs[0], outs[1]};
}

std::tuple<at::Tensor, at::Tensor> reduce_max_autograd(const at::Tensor& x, int64_t dim, bool keepdim) {
  return maxmin_autograd<true>(x, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor> reduce_min_autograd(const at::Tensor& x, int64_t dim, bool keepdim) {
  return maxmin_autograd<false>(x, dim, keepdim);
}

at::Tensor logsumexp_autograd(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return LogSumExpFunction::call(x, dim, keepdim);
  }
  return LogSumExpFunction::apply(x, dim, keepdim);
}

at::Tensor softmax_autograd(const at::Tensor& x, int64_t dim) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return SoftmaxFunction<false>::call(x, dim);
  }
  return SoftmaxFunction<false>::apply(x, dim);
}

at::Tensor log_softmax_autograd(const at::Tensor& x, int64_t dim) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return SoftmaxFunction<true>::call(x, dim);
  }
  return SoftmaxFunction<true>::apply(x, dim);
}

at::Tensor vector_sum_autograd(const at::Tensor& x) {
  if (!needs_grad(x)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return vector_sum_redispatch(x);
  }
  return VectorSumFunction::apply(x);
}

}  // namespace teachcompute_ext

// Autograd of the reduce family: hand-built autograd Nodes (the rule for every
// family, and why not torch::autograd::Function, is in csrc/README.md with its
// per-call figure). Fake kernels stay in Python (ops/reduce.py).
#include <ATen/TensorOperators.h>
#include <ATen/TensorSubclassLikeUtils.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <vector>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

at::Tensor vector_sum_redispatch(const at::Tensor& x) {
  static auto op = find_op<at::Tensor(const at::Tensor&)>("teachcompute_ext::vector_sum");
  return op.call(x);
}

struct VectorSumBackward : Node {
  std::vector<c10::SymInt> sizes;  // SymInts under torch.compile
  variable_list apply(variable_list&& grads) override {
    const BackwardDispatch dispatch;
    if (!grads[0].defined()) return {at::Tensor()};
    // A broadcast view of the scalar gradient: nothing of x's size is written.
    return {grads[0].expand_symint(sizes)};
  }
  std::string name() const override { return "VectorSumBackward"; }
};

// softmax / log_softmax: the backward needs only the output, and is its own
// op (softmax_backward / log_softmax_backward) so torch.compile and export
// see one fused kernel rather than a chain of elementwise ops.
template <bool kLog>
struct SoftmaxBackward : Node {
  SavedVariable result_;
  int64_t dim = 0;
  variable_list apply(variable_list&& grads) override {
    const BackwardDispatch dispatch;
    using Bwd = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t);
    static auto op =
        find_op<Bwd>(kLog ? "teachcompute_ext::log_softmax_backward" : "teachcompute_ext::softmax_backward");
    std::lock_guard<std::mutex> lock(mutex_);
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor()};
    const at::Tensor y = dispatch.unpack(result_, getptr());
    if (backward_needs_graph(g, y)) {
      return {kLog ? g - y.exp() * g.sum(dim, /*keepdim=*/true) : y * (g - (g * y).sum(dim, /*keepdim=*/true))};
    }
    return {op.call(g, y, dim)};
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    result_.reset_data();
  }
  std::string name() const override { return kLog ? "LogSoftmaxBackward" : "SoftmaxBackward"; }
};

template <bool kLog>
at::Tensor softmax_call(const at::Tensor& x, int64_t dim) {
  static auto op = find_op<at::Tensor(const at::Tensor&, int64_t)>(kLog ? "teachcompute_ext::log_softmax"
                                                                         : "teachcompute_ext::softmax");
  return op.call(x, dim);
}

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
struct SumMeanBackward : Node {
  std::vector<c10::SymInt> sizes;
  std::vector<int64_t> dims;
  bool keepdim = false;
  c10::SymInt count = 1;
  variable_list apply(variable_list&& grads) override {
    const BackwardDispatch dispatch;
    if (!grads[0].defined()) return {at::Tensor()};
    at::Tensor g = unsqueeze_reduced(grads[0], dims, keepdim);
    if (kMean) g = g.div(c10::Scalar(count));
    return {g.expand_symint(sizes)};
  }
  std::string name() const override { return kMean ? "ReduceMeanBackward" : "ReduceSumBackward"; }
};

template <bool kMean>
at::Tensor sum_mean_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  reject_forward_ad(kMean ? "reduce_mean" : "reduce_sum", x);
  using Sig = at::Tensor(const at::Tensor&, at::OptionalIntArrayRef, bool);
  static auto op = find_op<Sig>(kMean ? "teachcompute_ext::reduce_mean" : "teachcompute_ext::reduce_sum");
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(x, dim, keepdim);
  }
  if (needs_grad(x)) {
    auto node = make_node<SumMeanBackward<kMean>>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->sizes = x.sym_sizes().vec();
    node->dims = reduced_dims(x, dim);
    node->keepdim = keepdim;
    if (kMean) {
      for (int64_t d : node->dims) node->count = node->count * x.sym_size(d);
    }
    torch::autograd::set_history(out, node);
  }
  return out;
}

// max and min: the gradient goes to the returned index; the indices get no
// history (they are not differentiable).
template <bool kMax>
struct MaxMinBackward : Node {
  std::vector<c10::SymInt> sizes;
  int64_t dim = 0;
  bool keepdim = false;
  SavedVariable indices_;
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const BackwardDispatch dispatch;
    if (!grads[0].defined()) return {at::Tensor()};
    if (sizes.empty()) return {grads[0]};
    at::Tensor idx = dispatch.unpack(indices_);
    at::Tensor g = grads[0];
    if (!keepdim) {
      g = g.unsqueeze(dim);
      idx = idx.unsqueeze(dim);
    }
    at::Tensor gx = at::zeros_symint(sizes, g.options());
    // In place into the fresh zeros, as torch's own max/min backward: the
    // out-of-place scatter copied them first (reduce_min over dim 1 of
    // 4096x4096, forward+backward: 0.80x torch). Subclasses (vmap's batched
    // tensors, tensors of a dispatch mode) keep the out-of-place form.
    if (at::areAnyTensorSubclassLike({g, idx})) return {gx.scatter(dim, idx, g)};
    return {gx.scatter_(dim, idx, g)};
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    indices_.reset_data();
  }
  std::string name() const override { return kMax ? "ReduceMaxBackward" : "ReduceMinBackward"; }
};

template <bool kMax>
std::tuple<at::Tensor, at::Tensor> maxmin_autograd(const at::Tensor& x, int64_t dim, bool keepdim) {
  reject_forward_ad(kMax ? "reduce_max" : "reduce_min", x);
  using Sig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool);
  static auto op = find_op<Sig>(kMax ? "teachcompute_ext::reduce_max" : "teachcompute_ext::reduce_min");
  at::Tensor values, indices;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(values, indices) = op.call(x, dim, keepdim);
  }
  if (needs_grad(x)) {
    auto node = make_node<MaxMinBackward<kMax>>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->sizes = x.sym_sizes().vec();
    node->dim = x.dim() == 0 ? 0 : (dim < 0 ? dim + x.dim() : dim);
    node->keepdim = keepdim;
    node->indices_ = SavedVariable(indices, /*is_output=*/false);  // no history: no cycle
    torch::autograd::set_history(values, node);
  }
  return {values, indices};
}

// logsumexp: d/dx = exp(x - out), as torch's formula.
struct LogSumExpBackward : Node {
  SavedVariable self_, result_;
  std::vector<int64_t> dims;
  bool keepdim = false;
  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const BackwardDispatch dispatch;
    if (!grads[0].defined()) return {at::Tensor()};
    const at::Tensor g = unsqueeze_reduced(grads[0], dims, keepdim);
    const at::Tensor out = unsqueeze_reduced(dispatch.unpack(result_, getptr()), dims, keepdim);
    return {g.mul(dispatch.unpack(self_).sub(out).exp())};
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    self_.reset_data();
    result_.reset_data();
  }
  std::string name() const override { return "LogSumExpBackward"; }
};

template <bool kLog>
at::Tensor softmax_autograd_impl(const at::Tensor& x, int64_t dim) {
  reject_forward_ad(kLog ? "log_softmax" : "softmax", x);
  at::Tensor y;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    y = softmax_call<kLog>(x, dim);
  }
  if (needs_grad(x)) {
    auto node = make_node<SoftmaxBackward<kLog>>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->dim = dim;
    torch::autograd::set_history(y, node);
    node->result_ = SavedVariable(y, /*is_output=*/true);  // after set_history: no reference cycle
  }
  return y;
}

}  // namespace

at::Tensor reduce_sum_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return sum_mean_autograd<false>(x, dim, keepdim);
}

at::Tensor reduce_mean_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return sum_mean_autograd<true>(x, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor> reduce_max_autograd(const at::Tensor& x, int64_t dim, bool keepdim) {
  return maxmin_autograd<true>(x, dim, keepdim);
}

std::tuple<at::Tensor, at::Tensor> reduce_min_autograd(const at::Tensor& x, int64_t dim, bool keepdim) {
  return maxmin_autograd<false>(x, dim, keepdim);
}

at::Tensor logsumexp_autograd(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  reject_forward_ad("logsumexp", x);
  static auto op = find_op<at::Tensor(const at::Tensor&, at::IntArrayRef, bool)>("teachcompute_ext::logsumexp");
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(x, dim, keepdim);
  }
  if (needs_grad(x)) {
    auto node = make_node<LogSumExpBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->dims = reduced_dims(x, dim);
    node->keepdim = keepdim;
    node->self_ = SavedVariable(x, /*is_output=*/false);
    torch::autograd::set_history(out, node);
    node->result_ = SavedVariable(out, /*is_output=*/true);
  }
  return out;
}

at::Tensor softmax_autograd(const at::Tensor& x, int64_t dim) { return softmax_autograd_impl<false>(x, dim); }

at::Tensor log_softmax_autograd(const at::Tensor& x, int64_t dim) { return softmax_autograd_impl<true>(x, dim); }

at::Tensor vector_sum_autograd(const at::Tensor& x) {
  reject_forward_ad("vector_sum", x);
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = vector_sum_redispatch(x);
  }
  if (needs_grad(x)) {
    auto node = make_node<VectorSumBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(x));
    node->sizes = x.sym_sizes().vec();
    torch::autograd::set_history(out, node);
  }
  return out;
}

}  // namespace teachcompute_ext

// Helpers of the autograd kernels (<family>/<family>_autograd.cpp). Every op's
// autograd is a hand-built autograd Node, as torch's generated VariableType
// code builds them, not a torch::autograd::Function: Function::apply refuses
// to run under functorch transforms (torch.func.grad, vmap of grad, jacrev),
// and the Node is also cheaper: 1.2 us of autograd work per fused_matmul
// call against the Function's 3.3 us (csrc/README.md has the rule and the
// figures). The kernel redispatches below autograd to the device's frontend,
// then, when an input needs a gradient, builds the Node, saves what the
// backward reads (outputs with is_output=true: no reference cycle) and sets
// the outputs' history. The Node's backward calls ops through the dispatcher,
// so they record a graph when double backward asks.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/Tensor.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

namespace teachcompute_ext {

// The typed handle of teachcompute_ext::<name>; look it up once (a static).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// Whether a graph must be recorded: no autograd node (nor its saved state) is
// built otherwise, about 0.5 us per call.
inline bool needs_grad(const at::Tensor& t) {
  return t.requires_grad() && at::GradMode::is_enabled();
}
inline bool needs_grad(const std::optional<at::Tensor>& t) {
  return t.has_value() && needs_grad(*t);
}

// A new node of type T (a torch::autograd::Node). torch 2.11 holds nodes in
// std::shared_ptr (deleted through deleteNode, which unlinks long graphs
// without deep recursion), later versions in c10::intrusive_ptr: the pointer
// type of Edge::function says which, so one source builds against both.
template <typename T>
auto make_node() {
  using NodePtr = decltype(torch::autograd::Edge::function);
  if constexpr (std::is_same_v<NodePtr, std::shared_ptr<torch::autograd::Node>>) {
    // deleteNode found by argument-dependent lookup (T derives from
    // torch::autograd::Node): not looked up at all where it does not exist.
    return std::shared_ptr<T>(new T(), [](T* p) { deleteNode(p); });
  } else {
    return c10::make_intrusive<T>();
  }
}

// Held by every backward Node's apply: when the backward records no graph
// (grad mode is off: no create_graph, no torch.func.grad level), its op calls
// skip the Autograd keys. Ops with no autograd kernel of their own
// (softmax_backward, fused_linear_backward, embedding_backward...) otherwise
// went through torch's boxed autograd fallback, and each aten op through its
// VariableType wrapper: softmax 4x8 forward+backward ran 3.2 us (7%) slower
// than torch's. ADInplaceOrView stays on (views and version counters).
class BackwardDispatch {
 public:
  BackwardDispatch() : outside_(c10::impl::tls_local_dispatch_key_set()) {
    if (!at::GradMode::is_enabled()) below_.emplace();
  }
  // A saved tensor, unpacked with the caller's dispatch keys: a checkpoint's
  // unpack hook recomputes the forward here, and that forward must record
  // what it saves (below autograd it saved nothing, and checkpoint refused).
  template <typename... Args>
  at::Tensor unpack(const torch::autograd::SavedVariable& v, Args&&... args) const {
    const c10::impl::ForceDispatchKeyGuard keys(outside_);
    return v.unpack(std::forward<Args>(args)...);
  }

 private:
  c10::impl::LocalDispatchKeySet outside_;
  std::optional<at::AutoDispatchBelowAutograd> below_;
};

// Whether a backward Node must itself be differentiable: grad mode is on in the
// backward (create_graph=True, torch.func's transforms) and a tensor it reads
// needs a gradient. The fused backward ops have no derivative of their own,
// so the Nodes then compute the same gradients with aten ops, which record
// the graph a double backward (gradient penalties, Hessian-vector products)
// differentiates; the fused ops stay the path of every first-order backward.
template <typename... Ts>
bool backward_needs_graph(const Ts&... ts) {
  return at::GradMode::is_enabled() && ((ts.defined() && ts.requires_grad()) || ...);
}

// Forward-mode AD (torch.autograd.forward_ad, torch.func.jvp / jacfwd / hessian):
// the ops have no tangent rule, so a dual input is refused, as torch refuses
// its own ops that have no forward formula. Its tangent was silently dropped
// (a zero JVP, a wrong forward-over-reverse Hessian).
inline bool has_forward_grad(const at::Tensor& t) { return t.defined() && t._fw_grad(/*level=*/0).defined(); }
inline bool has_forward_grad(const std::optional<at::Tensor>& t) { return t.has_value() && has_forward_grad(*t); }
template <typename... Ts>
void reject_forward_ad(const char* op, const Ts&... ts) {
  TORCH_CHECK_NOT_IMPLEMENTED(!(has_forward_grad(ts) || ...), "teachcompute_ext.", op,
                              ": forward-mode AD is not supported (no tangent rule: use reverse mode, "
                              "torch.autograd.grad / torch.func.grad / jacrev)");
}

// A tensor saved for the backward, or an undefined one for an absent optional.
inline torch::autograd::SavedVariable save_input(const std::optional<at::Tensor>& t) {
  return t.has_value() ? torch::autograd::SavedVariable(*t, /*is_output=*/false) : torch::autograd::SavedVariable();
}

}  // namespace teachcompute_ext

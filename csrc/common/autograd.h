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
#include <ATen/core/grad_mode.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>

#include <memory>
#include <optional>
#include <type_traits>

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

// A tensor saved for the backward, or an undefined one for an absent optional.
inline torch::autograd::SavedVariable save_input(const std::optional<at::Tensor>& t) {
  return t.has_value() ? torch::autograd::SavedVariable(*t, /*is_output=*/false) : torch::autograd::SavedVariable();
}

}  // namespace teachcompute_ext

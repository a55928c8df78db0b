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

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/csrc/autograd/edge.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/functions/utils.h>
#include <torch/csrc/autograd/saved_variable.h>
#include <torch/csrc/dynamo/compiled_autograd.h>

#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace teachcompute_ext {

// The typed handle of teachcompute_ext::<name>; look it up once (a static).
template <typename Sig>
c10::TypedOperatorHandle<Sig> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

// The handle of op teachcompute_ext::<name>, typed by its frontend's declaration
// in ops.h: the signature is written once, there.
#define TCE_OP(name) ::teachcompute_ext::find_op<decltype(::teachcompute_ext::name)>("teachcompute_ext::" #name)

// Whether a graph must be recorded: no autograd node (nor its saved state) is
// built otherwise, about 0.5 us per call.
inline bool needs_grad(const at::Tensor& t) { return t.requires_grad() && at::GradMode::is_enabled(); }
inline bool needs_grad(const std::optional<at::Tensor>& t) { return t.has_value() && needs_grad(*t); }

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

inline std::optional<at::Tensor> optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// ---- FunctionalNode: one backward function for eager and compiled autograd ---------------------
//
// Every backward Node of the package derives from FunctionalNode<Derived>, which
// gives it apply (eager autograd), compiled_args and apply_with_saved (compiled
// autograd: torch._dynamo.compiled_autograd, and torch.compile of a training step
// with it on) and release_variables, all from two things Derived writes:
//
//   auto state() { return std::tie(x_, dim, ...); }
//       its SavedVariables and attributes (int64_t, bool, double, std::string,
//       c10::SymInt, std::optional and std::vector of these), in one order;
//   static variable_list backward(const variable_list& grads, const std::vector<bool>& needs,
//                                 const at::Tensor& x, int64_t dim, ...);
//       the gradients from the incoming ones and the state (each SavedVariable
//       unpacked into a tensor, undefined for an absent optional), needs[i] saying
//       whether next edge i wants one (task_should_compute_output).
//
// Compiled autograd traces no C++: as torch's generated Nodes do (2.6 and later),
// apply_with_saved packs the state into IValues and puts one call of the bound
// functional(grads, packed) into the compiled graph, where Dynamo and AOTAutograd
// trace the ops it calls (our backward ops through their fake kernels). Eager
// and compiled backwards run the same static backward: no second copy to drift.
// The pieces used (CompiledNodeArgs, SwapSavedVariables, PackedArgs,
// PyCompilerInterface::bind_function / call_function) are the same in torch 2.11
// and 2.15; the library still holds no Python (the interface is libtorch's).

namespace functional_node_detail {

using torch::autograd::SavedVariable;

// The value backward() receives for a state member: a tensor for a SavedVariable.
template <typename T>
struct Unpacked {
  using type = T;
};
template <>
struct Unpacked<SavedVariable> {
  using type = at::Tensor;
};

template <typename Tuple>
struct UnpackedTuple;
template <typename... Ts>
struct UnpackedTuple<std::tuple<Ts&...>> {
  using type = std::tuple<typename Unpacked<std::remove_const_t<Ts>>::type...>;
};

// What apply passes: the unpacked tensors, the attributes by reference (no copy per call).
template <typename T>
struct Borrowed {
  using type = const T&;
};
template <>
struct Borrowed<SavedVariable> {
  using type = at::Tensor;
};
template <typename Tuple>
struct BorrowedTuple;
template <typename... Ts>
struct BorrowedTuple<std::tuple<Ts&...>> {
  using type = std::tuple<typename Borrowed<std::remove_const_t<Ts>>::type...>;
};

// Members swapped for the compiled graph's proxies (tensors and symbolic sizes);
// the others are constants of the graph, keyed by compiled_args.
template <typename T>
constexpr bool kSwapped =
    std::is_same_v<T, SavedVariable> || std::is_same_v<T, c10::SymInt> || std::is_same_v<T, std::vector<c10::SymInt>>;

// How a member travels to the functional: a SavedVariable as an optional tensor.
template <typename T>
struct Packed {
  using type = T;
};
template <>
struct Packed<SavedVariable> {
  using type = std::optional<at::Tensor>;
};

}  // namespace functional_node_detail

template <typename Derived>
struct FunctionalNode : torch::autograd::Node {
  using variable_list = torch::autograd::variable_list;

  variable_list apply(variable_list&& grads) override {
    std::lock_guard<std::mutex> lock(mutex_);
    const BackwardDispatch dispatch;
    auto members = self().state();
    auto values = std::apply(
        [&](auto&... m) {
          return typename functional_node_detail::BorrowedTuple<decltype(members)>::type{unpack_member(dispatch, m)...};
        },
        members);
    return call_backward(grads, needs_input_grad(), values);
  }

  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    std::apply([](auto&... m) { (reset_member(m), ...); }, self().state());
  }

  void compiled_args(torch::dynamo::autograd::CompiledNodeArgs& args) const override {
    args.collect(std::string(Derived::kFunctional));
    args.collect(name());
    std::apply([&](auto&... m) { (collect_member(args, m), ...); }, const_cast<Derived&>(self()).state());
  }

  variable_list apply_with_saved(const variable_list& grads,
                                 torch::dynamo::autograd::SwapSavedVariables& saved) override {
    auto members = self().state();
    std::apply([&](auto&... m) { (swap_before(saved, m), ...); }, members);
    torch::dynamo::autograd::PackedArgs packed;
    std::apply([&](auto&... m) { (pack_member(packed, m), ...); }, members);
    packed.pack(needs_input_grad());
    const auto& py = torch::dynamo::autograd::getPyCompilerInterface();
    // Bound once per process and Node type: the schema depends on the type only.
    static const std::string fn_name =
        py->bind_function(saved.get_py_compiler(), Derived::kFunctional, &FunctionalNode::functional, schema());
    const auto metadata =
        torch::dynamo::autograd::IValuePacker<std::vector<std::optional<torch::autograd::InputMetadata>>>::pack(
            torch::dynamo::autograd::get_input_metadata(next_edges()));
    auto results =
        py->call_function(saved.get_py_compiler(), "apply_functional", fn_name, grads, packed.vec(), metadata);
    std::apply([&](auto&... m) { (swap_after(saved, m), ...); }, members);
    return results;
  }

 private:
  using SavedVar = torch::autograd::SavedVariable;
  template <typename T>
  using Packed = typename functional_node_detail::Packed<T>::type;

  Derived& self() { return static_cast<Derived&>(*this); }
  const Derived& self() const { return static_cast<const Derived&>(*this); }

  std::vector<bool> needs_input_grad() const {
    std::vector<bool> needs(num_outputs());
    for (size_t i = 0; i < needs.size(); ++i) needs[i] = task_should_compute_output(i);
    return needs;
  }

  template <typename Tuple>
  static variable_list call_backward(const variable_list& grads, const std::vector<bool>& needs, Tuple& values) {
    return std::apply([&](auto&... v) { return Derived::backward(grads, needs, v...); }, values);
  }

  // Eager: a saved output is unpacked with this Node (it does not own it); an
  // input ignores it. Unpacked with the caller's dispatch keys (checkpoint hooks).
  template <typename T>
  decltype(auto) unpack_member(const BackwardDispatch& dispatch, T& m) {
    if constexpr (std::is_same_v<T, SavedVar>) {
      return dispatch.unpack(m, getptr());
    } else {
      return static_cast<const T&>(m);
    }
  }
  template <typename T>
  static void reset_member(T& m) {
    if constexpr (std::is_same_v<T, SavedVar>) m.reset_data();
  }
  template <typename T>
  void collect_member(torch::dynamo::autograd::CompiledNodeArgs& args, const T& m) const {
    if constexpr (std::is_same_v<T, SavedVar>) {
      args.collect(m, /*is_output=*/true);  // unpacked with this Node, as in apply
    } else {
      args.collect(m);
    }
  }
  template <typename T>
  static void swap_before(torch::dynamo::autograd::SwapSavedVariables& saved, T& m) {
    if constexpr (functional_node_detail::kSwapped<T>) saved.before(m);
  }
  template <typename T>
  static void swap_after(torch::dynamo::autograd::SwapSavedVariables& saved, T& m) {
    if constexpr (functional_node_detail::kSwapped<T>) saved.after(m);
  }
  template <typename T>
  void pack_member(torch::dynamo::autograd::PackedArgs& packed, T& m) {
    if constexpr (std::is_same_v<T, SavedVar>) {
      packed.pack(optional(m.unpack(getptr())));  // the proxy swapped in by swap_before
    } else {
      packed.pack(m);
    }
  }

  static std::vector<at::TypePtr> schema() {
    using Members = decltype(std::declval<Derived&>().state());
    std::vector<at::TypePtr> types;
    append_types(types, static_cast<Members*>(nullptr));
    types.push_back(torch::dynamo::autograd::IValuePacker<std::vector<bool>>::packed_type());
    return types;
  }
  template <typename... Ts>
  static void append_types(std::vector<at::TypePtr>& types, std::tuple<Ts&...>*) {
    (types.push_back(torch::dynamo::autograd::IValuePacker<Packed<std::remove_const_t<Ts>>>::packed_type()), ...);
  }

  // The compiled graph's call: the state unpacked in order (a braced list is
  // evaluated left to right), then the same backward as apply.
  static variable_list functional(const variable_list& grads, const std::vector<c10::IValue>& args) {
    torch::dynamo::autograd::PackedArgs packed(args);
    using Members = decltype(std::declval<Derived&>().state());
    auto values = unpack_all(packed, static_cast<Members*>(nullptr));
    const auto needs = packed.unpack<std::vector<bool>>();
    const BackwardDispatch dispatch;
    return call_backward(grads, needs, values);
  }
  template <typename... Ts>
  static auto unpack_all(torch::dynamo::autograd::PackedArgs& packed, std::tuple<Ts&...>*) {
    return typename functional_node_detail::UnpackedTuple<std::tuple<Ts&...>>::type{
        unpack_packed<std::remove_const_t<Ts>>(packed)...};
  }
  template <typename T>
  static auto unpack_packed(torch::dynamo::autograd::PackedArgs& packed) {
    if constexpr (std::is_same_v<T, SavedVar>) {
      return packed.unpack<std::optional<at::Tensor>>().value_or(at::Tensor());
    } else {
      return packed.unpack<T>();
    }
  }
};

}  // namespace teachcompute_ext

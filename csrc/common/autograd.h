// Helpers of the autograd kernels (<family>/<family>_autograd.cpp): every op's
// autograd is a torch::autograd::Function registered for the Autograd key in
// C++ (the rule and its per-call figure are in csrc/README.md). Its forward
// redispatches below autograd to the device's frontend; its backward calls ops
// through the dispatcher, so they record a graph when double backward asks.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/Tensor.h>

#include <optional>

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

}  // namespace teachcompute_ext

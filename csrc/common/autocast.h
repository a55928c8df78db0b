// Autocast for the package's ops, following torch's policy for each op's
// counterpart (ATen/autocast_mode.h and autocast_mode.cpp):
//   lower precision (CPU and CUDA): fused_matmul and fused_linear, as
//     torch.matmul and F.linear: floating tensors cast to the autocast dtype;
//   float32 (CUDA only): softmax, log_softmax, logsumexp and the sums, as
//     torch's (softmax, log_softmax and sum run in float32 there, logsumexp
//     casts to float32); on the CPU torch leaves them in their input dtype,
//     and so does this package (no kernel: the autocast key falls through).
//   none (CPU and CUDA): rms_norm, as torch's (on the H200 with torch 2.11,
//     F.rms_norm of float16 under autocast stays float16);
//   promote (CPU and CUDA): add_rms_norm's x and residual, rotary_embedding,
//     swiglu, geglu, as the elementwise ops they fuse (x + residual, q * cos,
//     silu(gate) * up): their floating tensors cast to the widest of their
//     dtypes, the weight left as it is. Under autocast a Linear's bfloat16
//     output meets float32 tables and residuals (the Llama model, transformers'
//     rotary), which the ops refuse outside autocast.
// One boxed kernel serves every op: it casts the tensor arguments (cached_cast
// casts only floating tensors on the autocast device; parameters cast once per
// autocast region), then calls the op with autocast off, as torch's own
// autocast wrappers do. Its cost only exists under autocast.
#pragma once

#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

namespace teachcompute_ext {

enum class AutocastTo { LOWER_PRECISION, FLOAT32 };

template <c10::DeviceType kDevice, AutocastTo kTo>
void autocast_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const at::ScalarType to =
      kTo == AutocastTo::FLOAT32 ? at::kFloat : at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  const size_t n = op.schema().arguments().size();
  for (size_t i = stack->size() - n; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor()) v = at::autocast::cached_cast(to, v.toTensor(), kDevice);
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  op.callBoxed(stack);
}

// The promote policy (torch's autocast "promote" ops: cat, stack...): the
// floating tensor arguments, except one named weight, cast to the widest of
// their dtypes, then the op with autocast off.
template <c10::DeviceType kDevice>
void autocast_promote_boxed(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const auto& args = op.schema().arguments();
  const size_t n = args.size(), first = stack->size() - n;
  auto promoted = [&](size_t i) {
    const c10::IValue& v = (*stack)[first + i];
    return v.isTensor() && args[i].name() != "weight" && v.toTensor().is_floating_point();
  };
  std::optional<at::ScalarType> to;
  for (size_t i = 0; i < n; ++i) {
    if (!promoted(i)) continue;
    const at::ScalarType t = (*stack)[first + i].toTensor().scalar_type();
    to = to.has_value() ? at::promote_types(*to, t) : t;
  }
  for (size_t i = 0; i < n && to.has_value(); ++i) {
    if (promoted(i) && (*stack)[first + i].toTensor().scalar_type() != *to) {
      (*stack)[first + i] = (*stack)[first + i].toTensor().to(*to);
    }
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  op.callBoxed(stack);
}

}  // namespace teachcompute_ext

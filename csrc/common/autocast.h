// Autocast for the package's ops, following torch's policy for each op's
// counterpart (ATen/autocast_mode.h and autocast_mode.cpp):
//   lower precision (CPU and CUDA): fused_matmul and fused_linear, as
//     torch.matmul and F.linear: floating tensors cast to the autocast dtype;
//   float32 (CUDA only): softmax, log_softmax, logsumexp and the sums, as
//     torch's (softmax, log_softmax and sum run in float32 there, logsumexp
//     casts to float32); on the CPU torch leaves them in their input dtype,
//     and so does this package (no kernel: the autocast key falls through).
//   none (CPU and CUDA): rms_norm, add_rms_norm, rotary_embedding, swiglu,
//     geglu, as torch's rms_norm and elementwise ops (on the H200 with torch
//     2.11, F.rms_norm of float16 under autocast stays float16).
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
  const at::ScalarType to = kTo == AutocastTo::FLOAT32 ? at::kFloat
                                                       : at::autocast::get_lower_precision_fp_from_device_type(kDevice);
  const size_t n = op.schema().arguments().size();
  for (size_t i = stack->size() - n; i < stack->size(); ++i) {
    c10::IValue& v = (*stack)[i];
    if (v.isTensor()) v = at::autocast::cached_cast(to, v.toTensor(), kDevice);
  }
  const c10::impl::ExcludeDispatchKeyGuard no_autocast(
      at::autocast::get_autocast_dispatch_key_from_device_type(kDevice));
  op.callBoxed(stack);
}

}  // namespace teachcompute_ext

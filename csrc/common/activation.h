// The activations of fused_linear's epilogue and of the gated units (swiglu,
// geglu): their names, as ops take them, and the enum the kernels switch on.
// The math is per device: common/vec_activation.h (the CPU's at::vec
// vectors) and common/activation.cuh (CUDA scalars).
#pragma once

#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <string>

namespace teachcompute_ext {

// The derivative of each depends only on its input (the pre-activation),
// except relu whose mask is also readable from its output (fused_linear saves
// no extra tensor for relu's backward).
enum class Act : int { None = 0, Relu = 1, Gelu = 2, GeluTanh = 3, Silu = 4 };

constexpr const char* kActNames = "none, relu, gelu, gelu_tanh, silu";

inline Act parse_activation(const char* op, c10::string_view s) {
  if (s == "none") return Act::None;
  if (s == "relu") return Act::Relu;
  if (s == "gelu") return Act::Gelu;
  if (s == "gelu_tanh") return Act::GeluTanh;
  if (s == "silu") return Act::Silu;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.", op, ": unknown activation '", std::string(s),
                    "' for argument 'activation' (expected one of ", kActNames, ")");
}

}  // namespace teachcompute_ext

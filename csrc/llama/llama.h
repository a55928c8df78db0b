// The ops of a Llama decoder block besides the GEMMs and attention: rms_norm,
// add_rms_norm (the residual add fused in), rotary_embedding, and the gated
// units swiglu and geglu. What every device shares: the argument checks (the
// fake kernels in teachcompute_ext/ops/llama.py mirror them), how an input is
// seen as rows, and the kernel signatures behind the stubs. Frontends in
// llama.cpp; kernels in *_cpu_kernel.cpp and llama_cuda.cu.
//
// Every kernel here is memory-bound: it reads its inputs once and writes its
// outputs once (a row of up to a few thousand elements stays in L1 between
// the two passes a norm needs), where eager torch runs one pass per op of the
// formula and writes each intermediate to memory.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "common/stub.h"

namespace teachcompute_ext {

// A tensor seen as [rows, cols] with unit column stride and any row stride,
// without a copy when its leading dims collapse (a slice of a wider row, a
// batch of rows): the kernels then read it in place. Otherwise a contiguous
// copy. cols >= 1.
at::Tensor row_view(const at::Tensor& t, int64_t cols);

inline void check_shape_eq(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                           const at::Tensor& ref) {
  TORCH_CHECK(t.sizes() == ref.sizes(), "teachcompute_ext.", op, ": argument '", arg, "' has shape ", t.sizes(),
              " but '", ref_arg, "' has shape ", ref.sizes(), " (expected the same shape)");
}

inline void check_dtype_eq(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                           const at::Tensor& ref) {
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), "teachcompute_ext.", op, ": argument '", arg, "' has dtype ",
                   dtype_name(t.scalar_type()), " but '", ref_arg, "' has dtype ", dtype_name(ref.scalar_type()),
                   " (expected the same dtype)");
}

// ---- rms_norm / add_rms_norm ---------------------------------------------------------
// F.rms_norm over the last dim: out = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps),
// computed in float32 for the half types (float64 for float64) and rounded once,
// as torch's. weight may have another floating dtype than x (torch allows it; the
// frontend widens it to x's accumulator type, exactly); out has x's dtype.
inline void check_rms_norm(const char* op, const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps) {
  check_float_dtype(op, "x", x);
  TORCH_CHECK(x.dim() >= 1, "teachcompute_ext.", op, ": argument 'x' must have at least 1 dim (got a 0-d tensor)");
  TORCH_CHECK_VALUE(eps > 0 && std::isfinite(eps), "teachcompute_ext.", op, ": argument 'eps' must be > 0 (got ", eps,
                    ")");
  if (weight.has_value()) {
    check_float_dtype(op, "weight", *weight);
    check_same_device(op, "weight", *weight, "x", x);
    TORCH_CHECK(weight->dim() == 1 && weight->size(0) == x.size(-1), "teachcompute_ext.", op,
                ": argument 'weight' has shape ", weight->sizes(), " but x's last dim is ", x.size(-1), " (expected [",
                x.size(-1), "])");
  }
}

// The accumulator dtype of x: the dtype of rstd and of the widened weight.
inline at::ScalarType acc_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// x, residual: [R, D] row views (residual undefined for rms_norm). weight:
// undefined, or [D] contiguous of x's dtype or of its accumulator dtype.
// out (and h = x + residual, rounded to x's dtype, when residual is defined):
// [R, D] contiguous. rstd: [R], accumulator dtype. R, D >= 1.
using RmsNormFn = void(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                       at::Tensor& out, at::Tensor& h, at::Tensor& rstd);
// gx = d rms_norm / d x (plus grad_add when defined, the add's own gradient)
// and gw = sum over rows of grad * x * rstd, in the accumulator dtype, summed
// in a fixed order (the same bits on every run and thread count). grad and x
// [R, D] row views; gx [R, D] contiguous or undefined (not asked); gw [D] or
// undefined (no weight, or not asked).
using RmsNormBackwardFn = void(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& rstd, const at::Tensor& grad_add, at::Tensor& gx, at::Tensor& gw);
TCE_DECLARE_KERNEL(RmsNormFn, rms_norm_kernel)
TCE_DECLARE_KERNEL(RmsNormBackwardFn, rms_norm_backward_kernel)

// Calls f with a null `const W*` naming the weight's storage type: x's own T, or
// (a weight the frontend widened) the accumulator type; no weight: T.
template <typename T, typename F>
void with_weight_type(const at::Tensor& weight, F f) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  if (!weight.defined() || weight.scalar_type() == c10::CppTypeToScalarType<T>::value) {
    f(static_cast<const T*>(nullptr));
    return;
  }
  TORCH_INTERNAL_ASSERT(weight.scalar_type() == c10::CppTypeToScalarType<A>::value,
                        "rms_norm: unexpected weight dtype");
  if constexpr (!std::is_same_v<A, T>) f(static_cast<const A*>(nullptr));
}

// Rows of the weight gradient each partial sum covers: a fixed count, so the
// order of the sum depends on the shape only (deterministic on every device
// and thread count). 64 rows of 4096 float32: 1 MB of x and grad per partial.
constexpr int64_t kRmsNormRowsPerPartial = 64;

// ---- rotary_embedding -------------------------------------------------------------
// x [..., head_dim] is walked row by row (its last dim contiguous); the rows'
// dims are collapsed where x, out, cos and sin all allow it. cos and sin are
// broadcast to x's rows (stride 0 on the dims they lack or have as 1).
struct RotaryPlan {
  int64_t rows = 0;
  int64_t head_dim = 0;
  int64_t half = 0;  // rotary_dim / 2 (cos and sin's last dim)
  // The row dims (outermost first) and each tensor's stride along them.
  std::vector<int64_t> sizes, x_strides, out_strides, cos_strides, sin_strides;
};
// Row dims a plan may have for the CUDA kernel's fixed-size argument; more
// (after collapsing) and the frontend makes the operands contiguous.
constexpr int64_t kRotaryMaxDims = 6;

// out = x rotated by (cos, sin) (inverse: by (cos, -sin), the backward), the
// columns past rotary_dim copied. interleaved pairs (2i, 2i+1), else (i, i + half).
using RotaryFn = void(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out,
                      const RotaryPlan& plan, bool interleaved, bool inverse);
TCE_DECLARE_KERNEL(RotaryFn, rotary_kernel)

// ---- swiglu / geglu ------------------------------------------------------------------
// out = act(gate) * up; gate and up [R, I] row views, out [R, I] contiguous.
using GluFn = void(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out, Act act);
// ggate = grad * up * act'(gate), gup = grad * act(gate): [R, I] row views
// (the two halves of one buffer for the one-tensor form).
using GluBackwardFn = void(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up, at::Tensor& ggate,
                           at::Tensor& gup, Act act);
TCE_DECLARE_KERNEL(GluFn, glu_kernel)
TCE_DECLARE_KERNEL(GluBackwardFn, glu_backward_kernel)

// geglu's approximate argument, as F.gelu's.
inline Act parse_gelu_approximate(const char* op, c10::string_view s) {
  if (s == "none") return Act::Gelu;
  if (s == "tanh") return Act::GeluTanh;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.", op, ": unknown value '", std::string(s),
                    "' for argument 'approximate' (expected 'none' or 'tanh')");
}

// glu_backward's activation argument: silu, gelu or gelu_tanh.
inline Act parse_glu_activation(const char* op, c10::string_view s) {
  if (s == "silu") return Act::Silu;
  if (s == "gelu") return Act::Gelu;
  if (s == "gelu_tanh") return Act::GeluTanh;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.", op, ": unknown activation '", std::string(s),
                    "' for argument 'activation' (expected 'silu', 'gelu' or 'gelu_tanh')");
}

}  // namespace teachcompute_ext

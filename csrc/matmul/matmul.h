// fused_matmul and fused_linear: the semantics every device shares (argument
// checks, activation names, output shapes; the fake kernels in
// teachcompute_ext/ops/matmul.py mirror them) and the kernel signatures behind
// the stubs. The frontends are in matmul.cpp (fused_matmul is device-generic
// all through: the GEMM library takes alpha and the transposes), the kernels
// in fused_linear_cpu_kernel.cpp and fused_linear_cuda.cu.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>
#include <vector>

#include "common/activation.h"
#include "common/checks.h"
#include "common/stub.h"

namespace teachcompute_ext {

// Activations whose backward needs the pre-activation saved (relu reads its output).
inline bool act_needs_pre(Act a) { return a == Act::Gelu || a == Act::GeluTanh || a == Act::Silu; }

inline void check_same(const char* op, const char* what, const at::Tensor& t, const char* ref_what,
                       const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), "teachcompute_ext.", op, ": argument '", what, "' has dtype ",
              dtype_name(t.scalar_type()), " but '", ref_what, "' has dtype ", dtype_name(ref.scalar_type()));
  check_same_device(op, what, t, ref_what, ref);
}

// x [..., in], weight [out, in], bias [out]: checks and returns (M, N, K) with
// M the product of x's leading dims. A 1-D weight [in] is F.linear's: the
// output has no out_features dim (N = 1 inside, dropped from the shape) and a
// bias must then be 0-d (F.linear accepts that bias for 1-D and 3-D+ x; we
// accept it for every x, where F.linear's 2-D x fails inside addmm).
// fused_linear_backward takes the 2-D form only (vector_weight = false): the
// autograd kernel passes a 1-D weight to it as [1, in].
struct LinearShape {
  int64_t m, n, k;
  bool vector_weight;  // weight is 1-D: N = 1, not in the output shape
};

inline LinearShape check_linear(const char* op, const at::Tensor& x, const at::Tensor& weight,
                                const std::optional<at::Tensor>& bias, bool vector_weight_ok = true) {
  check_float_dtype(op, "x", x);
  check_float_dtype(op, "weight", weight);
  TORCH_CHECK(weight.dim() == 2 || (vector_weight_ok && weight.dim() == 1), "teachcompute_ext.", op,
              ": argument 'weight' must be ", vector_weight_ok ? "1-D [in_features] or " : "",
              "2-D [out_features, in_features], got shape ", weight.sizes());
  TORCH_CHECK(x.dim() >= 1, "teachcompute_ext.", op,
              ": argument 'x' must have at least 1 dim [..., in_features], got a 0-d tensor");
  check_same(op, "weight", weight, "x", x);
  const int64_t k = weight.size(-1);
  TORCH_CHECK(x.size(-1) == k, "teachcompute_ext.", op, ": in_features mismatch: 'x' has shape ", x.sizes(),
              " (last dim ", x.size(-1), ") but 'weight' has shape ", weight.sizes(), " (in_features ", k, ")");
  const bool vec = weight.dim() == 1;
  if (bias.has_value()) {
    check_same(op, "bias", *bias, "x", x);
    if (vec) {
      TORCH_CHECK(bias->dim() == 0, "teachcompute_ext.", op,
                  ": argument 'bias' must be 0-d when 'weight' is 1-D (no out_features), got shape ", bias->sizes());
    } else {
      TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0), "teachcompute_ext.", op,
                  ": argument 'bias' must have shape [", weight.size(0), "] (out_features), got ", bias->sizes());
    }
  }
  const int64_t m = k > 0 ? x.numel() / k : c10::multiply_integers(x.sizes().begin(), x.sizes().end() - 1);
  return {m, vec ? 1 : weight.size(0), k, vec};
}

// x's leading dims, then out_features unless the weight is 1-D.
inline std::vector<int64_t> linear_out_shape(const at::Tensor& x, const LinearShape& s) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  if (!s.vector_weight) shape.push_back(s.n);
  return shape;
}

// fused_linear_backward's checked arguments and its three outputs, allocated;
// a gradient not asked for is an empty tensor (the schema returns Tensor, not
// Tensor?). When done() is true the outputs are final (zeros): m or n is 0, or
// nothing was asked. k == 0 is not done: the output was act(bias), whose bias
// gradient is not zero.
struct LinearBackward {
  LinearShape s;
  Act act;
  bool want_x, want_w, want_b;
  at::Tensor gx, gw, gb;
  std::vector<int64_t> x_shape;

  LinearBackward(const char* op, const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                 const at::Tensor& aux, c10::string_view activation, bool has_bias, std::array<bool, 3> mask)
      : s(check_linear(op, x, weight, std::nullopt, /*vector_weight_ok=*/false)),
        act(parse_activation(op, activation)),
        want_x(mask[0]),
        want_w(mask[1]),
        want_b(mask[2] && has_bias),
        x_shape(x.sizes().begin(), x.sizes().end()) {
    check_same(op, "grad", grad, "x", x);
    const auto out_shape = linear_out_shape(x, s);
    TORCH_CHECK(grad.sizes() == at::IntArrayRef(out_shape), "teachcompute_ext.", op, ": argument 'grad' has shape ",
                grad.sizes(), " but the output has shape ", at::IntArrayRef(out_shape));
    if (act != Act::None) {
      TORCH_CHECK(aux.sizes() == grad.sizes(), "teachcompute_ext.", op, ": argument 'aux' (the saved ",
                  act == Act::Relu ? "output" : "pre-activation", ") has shape ", aux.sizes(), " but 'grad' has shape ",
                  grad.sizes());
      check_same(op, "aux", aux, "x", x);
    }
    gx = at::empty({want_x ? s.m : 0, want_x ? s.k : 0}, x.options());
    gw = at::empty({want_w ? s.n : 0, want_w ? s.k : 0}, x.options());
    gb = at::empty({want_b ? s.n : 0}, x.options());
    if (done()) {
      gx.zero_();
      gw.zero_();
      gb.zero_();
    }
  }
  bool done() const { return s.m == 0 || s.n == 0 || !(want_x || want_w || want_b); }
  std::tuple<at::Tensor, at::Tensor, at::Tensor> result() const { return {want_x ? gx.view(x_shape) : gx, gw, gb}; }
};

// fused_matmul: op(a) is a, or a with its last two dims swapped. 1-D operands
// follow torch.matmul: a vector a is [1, k], a vector b is [k, 1], their 1 is
// not in the output shape, and a transpose flag on a vector is ignored (the
// transpose of a vector is the vector).
struct MatmulShape {
  std::vector<int64_t> batch;  // broadcast batch dims
  int64_t m, n, k;
  bool a_vec, b_vec;         // 1-D operands
  std::vector<int64_t> out;  // batch, then m unless a_vec, then n unless b_vec
};

inline MatmulShape check_matmul(const char* op, const at::Tensor& a, const at::Tensor& b, bool trans_a, bool trans_b) {
  check_float_dtype(op, "a", a);
  check_float_dtype(op, "b", b);
  check_same(op, "b", b, "a", a);
  TORCH_CHECK(a.dim() >= 1, "teachcompute_ext.", op, ": argument 'a' must have at least 1 dim, got a 0-d tensor");
  TORCH_CHECK(b.dim() >= 1, "teachcompute_ext.", op, ": argument 'b' must have at least 1 dim, got a 0-d tensor");
  const bool a_vec = a.dim() == 1, b_vec = b.dim() == 1;
  trans_a = trans_a && !a_vec;
  trans_b = trans_b && !b_vec;
  const int64_t m = a_vec ? 1 : a.size(trans_a ? -1 : -2), ka = a.size(trans_a ? -2 : -1);
  const int64_t kb = b.size(trans_b || b_vec ? -1 : -2), n = b_vec ? 1 : b.size(trans_b ? -2 : -1);
  TORCH_CHECK(ka == kb, "teachcompute_ext.", op, ": inner dims do not match: op(a) is ", m, "x", ka, " (a ", a.sizes(),
              ", trans_a=", trans_a, ") but op(b) is ", kb, "x", n, " (b ", b.sizes(), ", trans_b=", trans_b, ")");
  const int64_t da = std::max<int64_t>(a.dim() - 2, 0), db = std::max<int64_t>(b.dim() - 2, 0), d = std::max(da, db);
  std::vector<int64_t> batch(d);
  for (int64_t i = 0; i < d; ++i) {
    const int64_t sa = i - (d - da) >= 0 ? a.size(i - (d - da)) : 1;
    const int64_t sb = i - (d - db) >= 0 ? b.size(i - (d - db)) : 1;
    TORCH_CHECK(sa == sb || sa == 1 || sb == 1, "teachcompute_ext.", op, ": batch dims do not broadcast: 'a' has ",
                "batch shape ", a.sizes().slice(0, da), " and 'b' has batch shape ", b.sizes().slice(0, db));
    batch[i] = sa == 1 ? sb : sa;
  }
  std::vector<int64_t> out = batch;
  if (!a_vec) out.push_back(m);
  if (!b_vec) out.push_back(n);
  return {batch, m, n, ka, a_vec, b_vec, out};
}

// out [m, n] = act(x2 @ w^T + b) with x2 [m, k] and w [n, k] (any strides), b
// [n] or undefined; pre, when it is not empty, also gets x2 @ w^T + b (the
// pre-activation the backward needs). m, n >= 1; k may be 0.
using FusedLinearFn = void(const at::Tensor& x2, const at::Tensor& w, const at::Tensor& b, Act act, at::Tensor& out,
                           at::Tensor& pre);
// The gradients bw asks for (bw.gx [m, k], bw.gw [n, k], bw.gb [n], allocated)
// from g2 [m, n] and aux2 [m, n] (the pre-activation, or the output for relu;
// unused for none); not bw.done().
using FusedLinearBackwardFn = void(const at::Tensor& g2, const at::Tensor& x2, const at::Tensor& w,
                                   const at::Tensor& aux2, LinearBackward& bw);
TCE_DECLARE_KERNEL(FusedLinearFn, fused_linear_kernel)
TCE_DECLARE_KERNEL(FusedLinearBackwardFn, fused_linear_backward_kernel)

}  // namespace teachcompute_ext

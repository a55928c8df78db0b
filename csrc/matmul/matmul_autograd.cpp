// Autograd of the matmul family (hand-built autograd Nodes, the rule of every
// family: csrc/README.md).
// fused_matmul: C = alpha op(a) op(b). Each gradient is again one fused_matmul,
// its transposes chosen so no operand is ever transposed by a copy; called
// through the dispatcher, so double backward works. 1-D operands become 2-D
// by differentiable views (unsqueeze before, squeeze after), so the Node only
// ever sees matrices.
// fused_linear_forward: the backward is one op, fused_linear_backward, which
// fuses grad * act'(pre) with the bias gradient and runs the two GEMMs. What
// is saved: the pre-activation for gelu, gelu_tanh and silu (relu reads its
// output, none needs nothing); with save_pre=False under autograd the
// pre-activation is recomputed (one more GEMM). A 1-D weight goes the same way
// as fused_matmul's vectors: [1, in] and a [1] bias, the output squeezed.
#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/threshold_backward.h>

#include <array>
#include <string>
#include <vector>

#include <torch/library.h>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

at::Tensor call_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, bool ta, bool tb) {
  static auto op = TCE_OP(fused_matmul);
  return op.call(a, b, alpha, ta, tb);
}

std::tuple<at::Tensor, at::Tensor> call_linear(const at::Tensor& x, const at::Tensor& w,
                                               const std::optional<at::Tensor>& bias, c10::string_view act,
                                               bool save_pre) {
  static auto op = TCE_OP(fused_linear_forward);
  return op.call(x, w, bias, act, save_pre);
}

// t as [rows, last dim], rows the product of the leading dims: written out,
// since reshape cannot infer -1 when t has no elements.
at::Tensor as_rows(const at::Tensor& t) {
  const auto s = t.sym_sizes();
  c10::SymInt rows = 1;
  for (size_t d = 0; d + 1 < s.size(); ++d) rows = rows * s[d];
  return t.reshape_symint({rows, s.back()});
}

// grad * silu'(v) in aten ops that have derivatives (aten's silu_backward has none).
at::Tensor silu_grad(const at::Tensor& grad, const at::Tensor& v) {
  const at::Tensor s = at::sigmoid(v);
  return grad * s * (1 + v * (1 - s));
}

// Next edges: a, b (both of 2 dims or more).
struct FusedMatmulBackward : FunctionalNode<FusedMatmulBackward> {
  static constexpr const char* kFunctional = "tce_FusedMatmulBackward";
  SavedVariable a_, b_;
  double alpha = 1.0;
  bool ta = false, tb = false;
  auto state() { return std::tie(a_, b_, alpha, ta, tb); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& needs, const at::Tensor& a,
                                const at::Tensor& b, double alpha, bool ta, bool tb) {
    const at::Tensor& g = grads[0];
    if (!g.defined()) return {at::Tensor(), at::Tensor()};
    at::Tensor ga, gb;
    if (needs[0]) {
      ga = ta ? call_matmul(b, g, alpha, tb, true) : call_matmul(g, b, alpha, false, !tb);
      ga = ga.sum_to_size_symint(a.sym_sizes());
    }
    if (needs[1]) {
      if (b.dim() == 2 && g.dim() > 2 && !ta) {
        // b shared by the whole batch: one GEMM over all batch rows, not a
        // batched product summed afterwards.
        const at::Tensor a2 = as_rows(a), g2 = as_rows(g);
        gb = tb ? call_matmul(g2, a2, alpha, true, false) : call_matmul(a2, g2, alpha, true, false);
      } else {
        gb = tb ? call_matmul(g, a, alpha, true, ta) : call_matmul(a, g, alpha, !ta, false);
        gb = gb.sum_to_size_symint(b.sym_sizes());
      }
    }
    return {ga, gb};
  }
  std::string name() const override { return "FusedMatmulBackward"; }
};

// Next edges: x, weight, bias (an empty edge when absent). The
// pre-activation output gets no history (it has no gradient), so no
// zero-filled [M, N] gradient is ever made for it: measured 2.5 ms a step at
// (2048, 4096) when it was materialized.
struct FusedLinearBackward : FunctionalNode<FusedLinearBackward> {
  static constexpr const char* kFunctional = "tce_FusedLinearBackward";
  SavedVariable x_, weight_, bias_, aux_;
  std::string act;
  bool has_bias = false, recompute = false;
  auto state() { return std::tie(x_, weight_, bias_, aux_, act, has_bias, recompute); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& needs, const at::Tensor& x,
                                const at::Tensor& weight, const at::Tensor& bias, at::Tensor aux,
                                const std::string& act, bool has_bias, bool recompute) {
    static auto op = TCE_OP(fused_linear_backward);
    const at::Tensor& grad = grads[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor()};
    if (backward_needs_graph(grad, x, weight, bias)) return graph_backward(grad, x, weight, bias, act, has_bias, needs);
    if (recompute) {
      // save_pre=False under autograd (fused_linear itself never asks for
      // it): one more GEMM instead of the saved [M, N] tensor.
      aux = std::get<0>(call_linear(x, weight, optional(bias), "none", false));
    }
    if (!aux.defined()) aux = at::empty({0}, grad.options());
    const std::array<bool, 3> mask{needs[0], needs[1], has_bias && needs[2]};
    auto [gx, gw, gb] = op.call(grad, x, weight, aux, act, has_bias, mask);
    return {mask[0] ? gx : at::Tensor(), mask[1] ? gw : at::Tensor(), mask[2] ? gb : at::Tensor()};
  }
  std::string name() const override { return "FusedLinearBackward"; }

  // The gradients in aten ops, for a backward that records a graph: the
  // pre-activation recomputed (the saved one has no history), act' by aten's
  // own backward ops (each has its derivative), then the two products.
  static variable_list graph_backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                      const at::Tensor& bias, const std::string& act, bool has_bias,
                                      const std::vector<bool>& needs) {
    const at::Tensor pre = at::linear(x, weight, optional(bias));
    at::Tensor d = grad;
    if (act == "relu") d = at::threshold_backward(grad, pre, 0);
    if (act == "gelu") d = at::gelu_backward(grad, pre, "none");
    if (act == "gelu_tanh") d = at::gelu_backward(grad, pre, "tanh");
    if (act == "silu") d = silu_grad(grad, pre);
    const at::Tensor d2 = as_rows(d);
    return {needs[0] ? d.matmul(weight) : at::Tensor(), needs[1] ? d2.t().mm(as_rows(x)) : at::Tensor(),
            has_bias && needs[2] ? d2.sum(0) : at::Tensor()};
  }
};

bool act_needs_pre(const std::string& act) { return act == "gelu" || act == "gelu_tanh" || act == "silu"; }

at::Tensor matmul_with_history(const at::Tensor& a, const at::Tensor& b, double alpha, bool ta, bool tb) {
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = call_matmul(a, b, alpha, ta, tb);
  }
  auto node = make_node<FusedMatmulBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(a, b));
  node->a_ = SavedVariable(a, /*is_output=*/false);
  node->b_ = SavedVariable(b, /*is_output=*/false);
  node->alpha = alpha;
  node->ta = ta;
  node->tb = tb;
  torch::autograd::set_history(out, node);
  return out;
}

std::tuple<at::Tensor, at::Tensor> linear_with_history(const at::Tensor& x, const at::Tensor& weight,
                                                       const std::optional<at::Tensor>& bias,
                                                       c10::string_view activation, bool save_pre) {
  at::Tensor out, pre;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, pre) = call_linear(x, weight, bias, activation, save_pre);
  }
  auto node = make_node<FusedLinearBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, weight, bias));
  node->act = std::string(activation);
  node->has_bias = bias.has_value();
  node->recompute = act_needs_pre(node->act) && !save_pre;
  node->x_ = SavedVariable(x, /*is_output=*/false);
  node->weight_ = SavedVariable(weight, /*is_output=*/false);
  node->bias_ = save_input(bias);  // the recompute, and a backward that records a graph
  torch::autograd::set_history(out, node);
  // After set_history: the saved output does not own its Node (no cycle).
  if (node->act == "relu") node->aux_ = SavedVariable(out, /*is_output=*/true);
  if (act_needs_pre(node->act) && save_pre) node->aux_ = SavedVariable(pre, /*is_output=*/false);
  return {out, pre};
}

at::Tensor fused_matmul_autograd(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a, bool trans_b) {
  reject_forward_ad("fused_matmul", a, b);
  if (!needs_grad(a) && !needs_grad(b)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_matmul(a, b, alpha, trans_a, trans_b);
  }
  const bool a_vec = a.dim() == 1, b_vec = b.dim() == 1;
  if (!a_vec && !b_vec) return matmul_with_history(a, b, alpha, trans_a, trans_b);
  // torch.matmul's vectors: a as [1, k], b as [k, 1], by views autograd
  // records; the transpose of a vector is the vector.
  at::Tensor out = matmul_with_history(a_vec ? a.unsqueeze(0) : a, b_vec ? b.unsqueeze(1) : b, alpha, trans_a && !a_vec,
                                       trans_b && !b_vec);
  if (b_vec) out = out.squeeze(-1);
  if (a_vec) out = out.squeeze(b_vec ? -1 : -2);
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_autograd(const at::Tensor& x, const at::Tensor& weight,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 c10::string_view activation, bool save_pre) {
  reject_forward_ad("fused_linear", x, weight, bias);
  if (!needs_grad(x) && !needs_grad(weight) && !needs_grad(bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_linear(x, weight, bias, activation, save_pre);
  }
  if (weight.dim() != 1) return linear_with_history(x, weight, bias, activation, save_pre);
  // F.linear's 1-D weight: one output feature, [1, in] and a [1] bias by
  // views autograd records, the feature dim squeezed from the outputs.
  // Only the bias's rank is checked here (sizes may be symbolic): the
  // frontend checks the rest on the 2-D form.
  TORCH_CHECK(!bias.has_value() || bias->dim() == 0, "teachcompute_ext.fused_linear: argument 'bias' must be 0-d ",
              "when 'weight' is 1-D (no out_features), got shape ", bias->sym_sizes());
  const std::optional<at::Tensor> bias2 =
      bias.has_value() ? std::optional<at::Tensor>(bias->unsqueeze(0)) : std::nullopt;
  auto [out, pre] = linear_with_history(x, weight.unsqueeze(0), bias2, activation, save_pre);
  const bool kept_pre = save_pre && act_needs_pre(std::string(activation));
  return {out.squeeze(-1), kept_pre ? pre.squeeze(-1) : pre};
}

}  // namespace
}  // namespace teachcompute_ext

// The family's autograd kernels (the schemas are in registration.cpp).
TORCH_LIBRARY_IMPL(teachcompute_ext, Autograd, m) {
  using namespace teachcompute_ext;
  m.impl("fused_matmul", &fused_matmul_autograd);
  m.impl("fused_linear_forward", &fused_linear_forward_autograd);
}

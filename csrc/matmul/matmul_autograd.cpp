// Autograd of the matmul family (C++ autograd Functions, the rule of every
// family: csrc/README.md).
// fused_matmul: C = alpha op(a) op(b). Each gradient is again one fused_matmul,
// its transposes chosen so no operand is ever transposed by a copy; called
// through the dispatcher, so double backward works.
// fused_linear_forward: the backward is one op, fused_linear_backward, which
// fuses grad * act'(pre) with the bias gradient and runs the two GEMMs. What
// is saved: the pre-activation for gelu, gelu_tanh and silu (relu reads its
// output, none needs nothing); with save_pre=False under autograd the
// pre-activation is recomputed (one more GEMM).
#include <torch/csrc/autograd/custom_function.h>

#include <string>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using MatmulSig = at::Tensor(const at::Tensor&, const at::Tensor&, double, bool, bool);
using LinearSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                      const std::optional<at::Tensor>&, c10::string_view, bool);
using LinearBackwardSig = std::tuple<at::Tensor, at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                          const at::Tensor&, const at::Tensor&,
                                                                          c10::string_view, bool, std::array<bool, 3>);

at::Tensor call_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, bool ta, bool tb) {
  static auto op = find_op<MatmulSig>("teachcompute_ext::fused_matmul");
  return op.call(a, b, alpha, ta, tb);
}

std::tuple<at::Tensor, at::Tensor> call_linear(const at::Tensor& x, const at::Tensor& w,
                                               const std::optional<at::Tensor>& bias, c10::string_view act,
                                               bool save_pre) {
  static auto op = find_op<LinearSig>("teachcompute_ext::fused_linear_forward");
  return op.call(x, w, bias, act, save_pre);
}

struct MatmulFunction : public torch::autograd::Function<MatmulFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& a, const at::Tensor& b, double alpha, bool ta,
                            bool tb) {
    ctx->save_for_backward({a, b});
    ctx->saved_data["alpha"] = alpha;
    ctx->saved_data["ta"] = ta;
    ctx->saved_data["tb"] = tb;
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_matmul(a, b, alpha, ta, tb);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &a = saved[0], &b = saved[1];
    const at::Tensor& g = grad_out[0];
    const double alpha = ctx->saved_data["alpha"].toDouble();
    const bool ta = ctx->saved_data["ta"].toBool(), tb = ctx->saved_data["tb"].toBool();
    at::Tensor ga, gb;
    if (ctx->needs_input_grad(0)) {
      ga = ta ? call_matmul(b, g, alpha, tb, true) : call_matmul(g, b, alpha, false, !tb);
      ga = ga.sum_to_size_symint(a.sym_sizes());
    }
    if (ctx->needs_input_grad(1)) {
      if (b.dim() == 2 && g.dim() > 2 && !ta) {
        // b shared by the whole batch: one GEMM over all batch rows, not a
        // batched product summed afterwards.
        const at::Tensor a2 = a.reshape_symint({-1, a.sym_size(-1)});
        const at::Tensor g2 = g.reshape_symint({-1, g.sym_size(-1)});
        gb = tb ? call_matmul(g2, a2, alpha, true, false) : call_matmul(a2, g2, alpha, true, false);
      } else {
        gb = tb ? call_matmul(g, a, alpha, true, ta) : call_matmul(a, g, alpha, !ta, false);
        gb = gb.sum_to_size_symint(b.sym_sizes());
      }
    }
    return {ga, gb, at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

bool act_needs_pre(const std::string& act) {
  return act == "gelu" || act == "gelu_tanh" || act == "silu";
}

struct LinearFunction : public torch::autograd::Function<LinearFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, c10::string_view activation, bool save_pre) {
    at::Tensor out, pre;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, pre) = call_linear(x, weight, bias, activation, save_pre);
    }
    const std::string act(activation);
    ctx->mark_non_differentiable({pre});
    // No zero-filled [M, N] gradient for pre (it has none): measured 2.5 ms a
    // step at (2048, 4096) when it was materialized.
    ctx->set_materialize_grads(false);
    const bool recompute = act_needs_pre(act) && !save_pre;
    const at::Tensor aux = act == "relu" ? out : (act_needs_pre(act) && save_pre ? pre : at::Tensor());
    ctx->save_for_backward({x, weight, recompute ? bias.value_or(at::Tensor()) : at::Tensor(), aux});
    ctx->saved_data["activation"] = act;
    ctx->saved_data["has_bias"] = bias.has_value();
    ctx->saved_data["recompute"] = recompute;
    return {out, pre};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    static auto op = find_op<LinearBackwardSig>("teachcompute_ext::fused_linear_backward");
    const at::Tensor& grad = grad_out[0];
    if (!grad.defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &weight = saved[1];
    at::Tensor aux = saved[3];
    const std::string act = ctx->saved_data["activation"].toStringRef();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    if (ctx->saved_data["recompute"].toBool()) {
      // save_pre=False under autograd (fused_linear itself never asks for
      // it): one more GEMM instead of the saved [M, N] tensor.
      const std::optional<at::Tensor> bias =
          saved[2].defined() ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
      aux = std::get<0>(call_linear(x, weight, bias, "none", false));
    }
    if (!aux.defined()) aux = at::empty({0}, grad.options());
    // needs_input_grad counts the tensor inputs only: x, weight, and bias when given.
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                   has_bias && ctx->needs_input_grad(2)};
    auto [gx, gw, gb] = op.call(grad, x, weight, aux, act, has_bias, mask);
    return {mask[0] ? gx : at::Tensor(), mask[1] ? gw : at::Tensor(), mask[2] ? gb : at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

}  // namespace

at::Tensor fused_matmul_autograd(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a,
                                 bool trans_b) {
  if (!needs_grad(a) && !needs_grad(b)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_matmul(a, b, alpha, trans_a, trans_b);
  }
  return MatmulFunction::apply(a, b, alpha, trans_a, trans_b);
}

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_autograd(const at::Tensor& x, const at::Tensor& weight,
                                                                 const std::optional<at::Tensor>& bias,
                                                                 c10::string_view activation, bool save_pre) {
  if (!needs_grad(x) && !needs_grad(weight) && !needs_grad(bias)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_linear(x, weight, bias, activation, save_pre);
  }
  auto outs = LinearFunction::apply(x, weight, bias, activation, save_pre);
  return {outs[0], outs[1]};
}

}  // namespace teachcompute_ext

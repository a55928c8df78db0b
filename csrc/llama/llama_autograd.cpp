// Autograd of the Llama family: hand-built autograd Nodes (the rule for every
// family, and why, is in csrc/README.md), and the two composites whose
// forward keeps what the backward needs (rms_norm and add_rms_norm return one
// and two of their forward op's outputs; rstd, one float per row, is kept).
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/gelu_backward.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/slice.h>

#include <array>
#include <string>

#include <torch/library.h>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;
using OptTensor = std::optional<at::Tensor>;

std::tuple<at::Tensor, at::Tensor> call_rms_norm(const at::Tensor& x, const OptTensor& w, double eps) {
  static auto op = TCE_OP(rms_norm_forward);
  return op.call(x, w, eps);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> call_add_rms_norm(const at::Tensor& x, const at::Tensor& r,
                                                                 const OptTensor& w, double eps) {
  static auto op = TCE_OP(add_rms_norm_forward);
  return op.call(x, r, w, eps);
}

// rms_norm (edges x, weight) and add_rms_norm (edges x, residual, weight; its
// second output h = x + residual is differentiable too): one fused backward
// op, which adds h's own gradient into gx (grad_add).
struct RmsNormBackward : FunctionalNode<RmsNormBackward> {
  static constexpr const char* kFunctional = "tce_RmsNormBackward";
  SavedVariable x_, weight_, rstd_;  // x_: the normalized tensor (add_rms_norm: h, an output)
  bool add = false;
  double eps = 0;
  auto state() { return std::tie(x_, weight_, rstd_, add, eps); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& needs, const at::Tensor& x,
                                const at::Tensor& w, const at::Tensor& rstd, bool add, double eps) {
    static auto op = TCE_OP(rms_norm_backward);
    const at::Tensor& g = grads[0];
    const at::Tensor gh = add ? grads[1] : at::Tensor();
    const size_t wi = add ? 2 : 1;
    variable_list out(wi + 1);
    if (!g.defined()) {
      // Only h (the new residual) was used: its gradient is x's and residual's.
      if (gh.defined()) out[0] = out[1] = gh;
      return out;
    }
    const bool want_x = needs[0] || (add && needs[1]);
    const std::array<bool, 2> mask{want_x, w.defined() && needs[wi]};
    at::Tensor gx, gw;
    if (backward_needs_graph(g, gh, x, w)) {
      // rstd recomputed from x, so that its own dependence on x is in the graph.
      const auto ft = at::isReducedFloatingType(x.scalar_type()) ? at::kFloat : x.scalar_type();
      const at::Tensor xf = x.to(ft), gf = g.to(ft);
      const at::Tensor r = (xf * xf).mean(-1, /*keepdim=*/true).add(eps).rsqrt();
      const at::Tensor xhat = xf * r;
      const at::Tensor gy = w.defined() ? gf * w.to(ft) : gf;
      if (mask[0]) {
        gx = (r * (gy - xhat * (gy * xhat).mean(-1, /*keepdim=*/true))).to(x.scalar_type());
        if (gh.defined()) gx = gx + gh;
      }
      if (mask[1]) gw = (gf * xhat).sum_to_size_symint(w.sym_sizes()).to(w.scalar_type());
    } else {
      std::tie(gx, gw) = op.call(g, x, optional(w), rstd, optional(gh), mask);
    }
    if (want_x) {
      out[0] = gx;
      if (add) out[1] = gx;
    }
    if (mask[1]) out[wi] = gw;
    return out;
  }
  std::string name() const override { return add ? "AddRmsNormBackward" : "RmsNormBackward"; }
};

// rotary_embedding (edges x, cos, sin): x's gradient is the inverse rotation
// (one op); cos and sin's, rarely asked (they are buffers), by aten ops.
struct RotaryBackward : FunctionalNode<RotaryBackward> {
  static constexpr const char* kFunctional = "tce_RotaryEmbeddingBackward";
  SavedVariable x_, cos_, sin_;  // x_ only when cos or sin needs a gradient
  bool interleaved = false;
  auto state() { return std::tie(x_, cos_, sin_, interleaved); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& needs, const at::Tensor& x,
                                const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
    static auto op = TCE_OP(rotary_embedding_backward);
    const at::Tensor& g = grads[0];
    variable_list out(3);
    if (!g.defined()) return out;
    if (needs[0]) {
      if (backward_needs_graph(g, cos, sin)) {
        // The inverse rotation is the rotation by -sin: rotary_embedding itself,
        // through its autograd.
        static auto rotate = TCE_OP(rotary_embedding);
        out[0] = rotate.call(g, cos, sin.neg(), interleaved);
      } else {
        out[0] = op.call(g, cos, sin, interleaved);
      }
    }
    if (needs[1] || needs[2]) {
      const c10::SymInt h = cos.sym_size(-1);
      // The two members of each pair: (i, i + half), or (2i, 2i + 1) interleaved.
      auto part = [&](const at::Tensor& t, int k) {
        return interleaved ? at::slice_symint(t, -1, k, 2 * h, 2) : t.narrow_symint(-1, k * h, h);
      };
      const at::Tensor x1 = part(x, 0), x2 = part(x, 1), g1 = part(g, 0), g2 = part(g, 1);
      if (needs[1]) out[1] = (g1 * x1 + g2 * x2).sum_to_size_symint(cos.sym_sizes());
      if (needs[2]) out[2] = (g2 * x1 - g1 * x2).sum_to_size_symint(sin.sym_sizes());
    }
    return out;
  }
  std::string name() const override { return "RotaryEmbeddingBackward"; }
};

// swiglu / geglu (edges gate, up; or gate alone in the one-tensor form): both
// gradients in one pass of one op.
struct GluBackward : FunctionalNode<GluBackward> {
  static constexpr const char* kFunctional = "tce_GluBackward";
  SavedVariable gate_, up_;
  std::string act;
  bool split = false;
  auto state() { return std::tie(gate_, up_, act, split); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& needs, const at::Tensor& gate,
                                const at::Tensor& up, const std::string& act, bool split) {
    static auto op = TCE_OP(glu_backward);
    const at::Tensor& g = grads[0];
    variable_list out(split ? 1 : 2);
    if (!g.defined()) return out;
    at::Tensor gg, gu;
    if (backward_needs_graph(g, gate, up)) {
      const c10::SymInt half = gate.sym_size(-1) / 2;
      const at::Tensor gt = split ? gate.narrow_symint(-1, 0, half) : gate;
      const at::Tensor u = split ? gate.narrow_symint(-1, half, half) : up;
      at::Tensor a;
      if (act == "silu") {
        a = at::silu(gt);
        const at::Tensor sg = at::sigmoid(gt);  // aten's silu_backward has no derivative of its own
        gg = g * u * sg * (1 + gt * (1 - sg));
      } else {
        const c10::string_view approximate = act == "gelu_tanh" ? "tanh" : "none";
        a = at::gelu(gt, approximate);
        gg = at::gelu_backward(g * u, gt, approximate);
      }
      gu = g * a;
      if (split) gg = at::cat({gg, gu}, -1);
    } else {
      std::tie(gg, gu) = op.call(g, gate, optional(up), act);
    }
    if (needs[0]) out[0] = gg;
    if (!split && needs[1]) out[1] = gu;
    return out;
  }
  std::string name() const override { return act == "silu" ? "SwigluBackward" : "GegluBackward"; }
};

template <typename Forward>
at::Tensor glu_autograd(const at::Tensor& gate, const OptTensor& up, const char* act, Forward forward) {
  reject_forward_ad(act == std::string("silu") ? "swiglu" : "geglu", gate, up);
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = forward();
  }
  if (!needs_grad(gate) && !needs_grad(up)) return out;
  auto node = make_node<GluBackward>();
  node->set_next_edges(up.has_value() ? torch::autograd::collect_next_edges(gate, *up)
                                      : torch::autograd::collect_next_edges(gate));
  node->act = act;
  node->split = !up.has_value();
  node->gate_ = SavedVariable(gate, /*is_output=*/false);
  node->up_ = save_input(up);
  torch::autograd::set_history(out, node);
  return out;
}

std::tuple<at::Tensor, at::Tensor> rms_norm_forward_autograd(const at::Tensor& x, const OptTensor& weight, double eps) {
  reject_forward_ad("rms_norm", x, weight);
  at::Tensor out, rstd;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, rstd) = call_rms_norm(x, weight, eps);
  }
  if (!needs_grad(x) && !needs_grad(weight)) return {out, rstd};
  auto node = make_node<RmsNormBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, weight));
  node->x_ = SavedVariable(x, /*is_output=*/false);
  node->weight_ = save_input(weight);
  node->rstd_ = SavedVariable(rstd, /*is_output=*/false);  // no history: owns no node
  node->eps = eps;
  torch::autograd::set_history(out, node);
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_forward_autograd(const at::Tensor& x,
                                                                             const at::Tensor& residual,
                                                                             const OptTensor& weight, double eps) {
  reject_forward_ad("add_rms_norm", x, residual, weight);
  at::Tensor out, h, rstd;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, h, rstd) = call_add_rms_norm(x, residual, weight, eps);
  }
  if (!needs_grad(x) && !needs_grad(residual) && !needs_grad(weight)) return {out, h, rstd};
  auto node = make_node<RmsNormBackward>();
  node->add = true;
  node->eps = eps;
  node->set_next_edges(torch::autograd::collect_next_edges(x, residual, weight));
  node->weight_ = save_input(weight);
  node->rstd_ = SavedVariable(rstd, /*is_output=*/false);
  std::vector<at::Tensor> outputs{out, h};
  torch::autograd::set_history(outputs, node);
  // After set_history: the saved output does not own its Node (no cycle).
  node->x_ = SavedVariable(h, /*is_output=*/true);
  return {out, h, rstd};
}

at::Tensor rotary_embedding_autograd(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin,
                                     bool interleaved) {
  reject_forward_ad("rotary_embedding", x, cos, sin);
  static auto op = TCE_OP(rotary_embedding);
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = op.call(x, cos, sin, interleaved);
  }
  const bool table_grad = needs_grad(cos) || needs_grad(sin);
  if (!needs_grad(x) && !table_grad) return out;
  auto node = make_node<RotaryBackward>();
  node->set_next_edges(torch::autograd::collect_next_edges(x, cos, sin));
  node->interleaved = interleaved;
  node->cos_ = SavedVariable(cos, /*is_output=*/false);
  node->sin_ = SavedVariable(sin, /*is_output=*/false);
  if (table_grad) node->x_ = SavedVariable(x, /*is_output=*/false);
  torch::autograd::set_history(out, node);
  return out;
}

at::Tensor swiglu_autograd(const at::Tensor& gate, const OptTensor& up) {
  static auto op = TCE_OP(swiglu);
  return glu_autograd(gate, up, "silu", [&] { return op.call(gate, up); });
}

at::Tensor geglu_autograd(const at::Tensor& gate, const OptTensor& up, c10::string_view approximate) {
  static auto op = TCE_OP(geglu);
  return glu_autograd(gate, up, approximate == "tanh" ? "gelu_tanh" : "gelu",
                      [&] { return op.call(gate, up, approximate); });
}

}  // namespace

at::Tensor rms_norm_composite(const at::Tensor& x, const OptTensor& weight, double eps) {
  return std::get<0>(call_rms_norm(x, weight, eps));
}

std::tuple<at::Tensor, at::Tensor> add_rms_norm_composite(const at::Tensor& x, const at::Tensor& residual,
                                                          const OptTensor& weight, double eps) {
  auto [out, h, rstd] = call_add_rms_norm(x, residual, weight, eps);
  return {out, h};
}

}  // namespace teachcompute_ext

// The family's autograd kernels (the schemas are in registration.cpp).
TORCH_LIBRARY_IMPL(teachcompute_ext, Autograd, m) {
  using namespace teachcompute_ext;
  m.impl("rms_norm_forward", &rms_norm_forward_autograd);
  m.impl("add_rms_norm_forward", &add_rms_norm_forward_autograd);
  m.impl("rotary_embedding", &rotary_embedding_autograd);
  m.impl("swiglu", &swiglu_autograd);
  m.impl("geglu", &geglu_autograd);
}

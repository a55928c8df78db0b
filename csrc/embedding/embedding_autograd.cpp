// Autograd of the embedding family (hand-built autograd Nodes, the rule of
// every family: csrc/README.md). The weight gradients are the dense backward ops
// embedding_backward and embedding_bag_backward; indices and offsets get none.
#include <ATen/TensorOperators.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/embedding_dense_backward.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>

#include <string>

#include <torch/library.h>

#include "common/autograd.h"
#include "embedding/embedding.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

// embedding_backward's schema takes a SymInt (the frontend an int64_t): typed by the schema.
using EmbeddingBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, std::optional<int64_t>);

// One next edge: weight.
struct EmbeddingBackward : FunctionalNode<EmbeddingBackward> {
  static constexpr const char* kFunctional = "tce_EmbeddingBackward";
  SavedVariable indices_;
  c10::SymInt num = 0;  // a SymInt under torch.compile
  std::optional<int64_t> padding_idx;
  auto state() { return std::tie(indices_, num, padding_idx); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& /*needs*/,
                                const at::Tensor& indices, const c10::SymInt& num,
                                const std::optional<int64_t>& padding_idx) {
    static auto op = find_op<EmbeddingBackwardSig>("teachcompute_ext::embedding_backward");
    if (!grads[0].defined()) return {at::Tensor()};
    if (backward_needs_graph(grads[0])) {
      // aten's dense backward has its own derivative (a gather of the rows).
      const c10::SymInt pad = !padding_idx.has_value() ? c10::SymInt(-1)
                              : *padding_idx < 0       ? num + *padding_idx
                                                       : c10::SymInt(*padding_idx);
      return {at::embedding_dense_backward_symint(grads[0], indices, num, pad, /*scale_grad_by_freq=*/false)};
    }
    return {op.call(grads[0], indices, num, padding_idx)};
  }
  std::string name() const override { return "EmbeddingBackward"; }
};

// embedding_bag_forward -> (bags, argmax): next edges weight and
// per_sample_weights (an empty edge when absent); argmax gets no history.
struct BagBackward : FunctionalNode<BagBackward> {
  static constexpr const char* kFunctional = "tce_EmbeddingBagBackward";
  SavedVariable weight_, indices_, offsets_, argmax_, psw_;
  std::string mode;
  std::optional<int64_t> padding_idx;
  bool include_last_offset = false;
  auto state() { return std::tie(weight_, indices_, offsets_, argmax_, psw_, mode, padding_idx, include_last_offset); }
  static variable_list backward(const variable_list& grads, const std::vector<bool>& needs, const at::Tensor& weight,
                                const at::Tensor& indices, const at::Tensor& offsets, const at::Tensor& argmax,
                                const at::Tensor& psw, const std::string& mode,
                                const std::optional<int64_t>& padding_idx, bool include_last_offset) {
    static auto op = TCE_OP(embedding_bag_backward);
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    at::Tensor gw, gpsw;
    // The weight gradient does not depend on the weight; the psw gradient does.
    if (backward_needs_graph(grads[0], psw, psw.defined() ? weight : at::Tensor())) {
      std::tie(gw, gpsw) =
          graph_backward(grads[0], weight, indices, offsets, argmax, psw, mode, padding_idx, include_last_offset);
    } else {
      std::tie(gw, gpsw) = op.call(grads[0], weight, indices, optional(offsets), argmax, mode, optional(psw),
                                   padding_idx, include_last_offset);
    }
    return {needs[0] ? gw : at::Tensor(), psw.defined() && needs[1] ? gpsw : at::Tensor()};
  }
  std::string name() const override { return "EmbeddingBagBackward"; }

  // The gradients in aten ops, for a backward that records a graph: each index
  // position's bag (searchsorted in the bag starts), then an index_add of the
  // scaled gradient rows (sum, mean) or a scatter_add at the argmax (max).
  static std::tuple<at::Tensor, at::Tensor> graph_backward(const at::Tensor& g, const at::Tensor& weight,
                                                           const at::Tensor& indices, const at::Tensor& offsets,
                                                           const at::Tensor& argmax, const at::Tensor& psw,
                                                           const std::string& mode,
                                                           const std::optional<int64_t>& padding_idx,
                                                           bool include_last_offset) {
    const int64_t num = weight.size(0), dim = weight.size(1), bags = g.size(0);
    at::Tensor gw = at::zeros({num, dim}, g.options());
    at::Tensor gpsw = psw.defined() ? at::zeros_like(psw) : at::Tensor();
    if (mode == "max") return {gw.scatter_add(0, argmax.clamp_min(0), g * argmax.ge(0).to(g.scalar_type())), gpsw};
    const at::Tensor idx = indices.reshape({-1}).to(at::kLong);
    const int64_t n = idx.size(0);
    if (bags == 0 || n == 0) return {gw, gpsw};
    const at::Tensor pos = at::arange(n, idx.options());
    at::Tensor bag_of;
    if (!offsets.defined()) {
      bag_of = pos.div(indices.size(1), "floor");  // 2-D indices: bags of one row each
    } else {
      const at::Tensor off = offsets.to(at::kLong);
      bag_of = at::searchsorted(off.narrow(0, 0, bags), pos, /*out_int32=*/false, /*right=*/true).sub(1);
      if (include_last_offset) bag_of = bag_of.masked_fill(pos.ge(off.select(0, bags)), -1);
    }
    const int64_t pad = wrap_padding_idx("embedding_bag", padding_idx, num);
    const at::Tensor valid = bag_of.ge(0).logical_and(idx.ne(pad));
    const at::Tensor bag_c = bag_of.clamp_min(0), idx_c = idx.masked_fill(valid.logical_not(), 0);
    const at::Tensor rows = g.index_select(0, bag_c);
    at::Tensor scale = valid.to(g.scalar_type());
    if (psw.defined()) scale = scale * psw.reshape({-1});
    if (mode == "mean") {
      const at::Tensor count = at::zeros({bags}, g.options()).index_add(0, bag_c, valid.to(g.scalar_type()));
      scale = scale / count.index_select(0, bag_c).clamp_min(1);
    }
    gw = gw.index_add(0, idx_c, rows * scale.unsqueeze(1));
    if (psw.defined()) {
      gpsw = ((rows * weight.index_select(0, idx_c)).sum(1) * valid.to(g.scalar_type())).reshape(psw.sizes());
    }
    return {gw, gpsw};
  }
};

at::Tensor embedding_autograd(const at::Tensor& weight, const at::Tensor& indices, std::optional<int64_t> padding_idx) {
  reject_forward_ad("embedding", weight);
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = TCE_OP(embedding);
    out = op.call(weight, indices, padding_idx);
  }
  if (needs_grad(weight)) {
    auto node = make_node<EmbeddingBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(weight));
    node->indices_ = SavedVariable(indices, /*is_output=*/false);
    node->num = weight.sym_size(0);
    node->padding_idx = padding_idx;
    torch::autograd::set_history(out, node);
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_forward_autograd(const at::Tensor& weight, const at::Tensor& indices,
                                                                  const std::optional<at::Tensor>& offsets,
                                                                  c10::string_view mode,
                                                                  const std::optional<at::Tensor>& psw,
                                                                  std::optional<int64_t> padding_idx,
                                                                  bool include_last_offset) {
  reject_forward_ad("embedding_bag", weight, psw);
  at::Tensor out, argmax;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = TCE_OP(embedding_bag_forward);
    std::tie(out, argmax) = op.call(weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
  }
  if (needs_grad(weight) || needs_grad(psw)) {
    auto node = make_node<BagBackward>();
    node->set_next_edges(torch::autograd::collect_next_edges(weight, psw));
    node->weight_ = SavedVariable(weight, /*is_output=*/false);
    node->indices_ = SavedVariable(indices, /*is_output=*/false);
    node->offsets_ = save_input(offsets);
    node->argmax_ = SavedVariable(argmax, /*is_output=*/false);  // no history: no cycle
    node->psw_ = save_input(psw);
    node->mode = std::string(mode);
    node->padding_idx = padding_idx;
    node->include_last_offset = include_last_offset;
    torch::autograd::set_history(out, node);
  }
  return {out, argmax};
}

}  // namespace
}  // namespace teachcompute_ext

// The family's autograd kernels (the schemas are in registration.cpp).
TORCH_LIBRARY_IMPL(teachcompute_ext, Autograd, m) {
  using namespace teachcompute_ext;
  m.impl("embedding", &embedding_autograd);
  m.impl("embedding_bag_forward", &embedding_bag_forward_autograd);
}

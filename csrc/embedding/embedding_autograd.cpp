// Autograd of the embedding family (hand-built autograd Nodes, the rule of
// every family: csrc/README.md). The weight gradients are the dense backward ops
// embedding_backward and embedding_bag_backward; indices and offsets get none.
#include <mutex>
#include <string>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::Node;
using torch::autograd::SavedVariable;
using torch::autograd::variable_list;

using EmbeddingSig = at::Tensor(const at::Tensor&, const at::Tensor&, std::optional<int64_t>);
using EmbeddingBackwardSig = at::Tensor(const at::Tensor&, const at::Tensor&, c10::SymInt, std::optional<int64_t>);
using BagSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                   const std::optional<at::Tensor>&, c10::string_view,
                                                   const std::optional<at::Tensor>&, std::optional<int64_t>, bool);
using BagBackwardSig = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                                           const std::optional<at::Tensor>&, const at::Tensor&,
                                                           c10::string_view, const std::optional<at::Tensor>&,
                                                           std::optional<int64_t>, bool);

at::Tensor call_embedding(const at::Tensor& weight, const at::Tensor& indices, std::optional<int64_t> padding_idx) {
  static auto op = find_op<EmbeddingSig>("teachcompute_ext::embedding");
  return op.call(weight, indices, padding_idx);
}

std::tuple<at::Tensor, at::Tensor> call_bag(const at::Tensor& weight, const at::Tensor& indices,
                                            const std::optional<at::Tensor>& offsets, c10::string_view mode,
                                            const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,
                                            bool include_last_offset) {
  static auto op = find_op<BagSig>("teachcompute_ext::embedding_bag_forward");
  return op.call(weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
}

// One next edge: weight.
struct EmbeddingBackward : Node {
  SavedVariable indices_;
  c10::SymInt num = 0;  // a SymInt under torch.compile
  std::optional<int64_t> padding_idx;
  variable_list apply(variable_list&& grads) override {
    const BackwardDispatch dispatch;
    static auto op = find_op<EmbeddingBackwardSig>("teachcompute_ext::embedding_backward");
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {at::Tensor()};
    return {op.call(grads[0], dispatch.unpack(indices_), num, padding_idx)};
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    indices_.reset_data();
  }
  std::string name() const override { return "EmbeddingBackward"; }
};

// embedding_bag_forward -> (bags, argmax): next edges weight and
// per_sample_weights (an empty edge when absent); argmax gets no history.
struct BagBackward : Node {
  SavedVariable weight_, indices_, offsets_, argmax_, psw_;
  std::string mode;
  std::optional<int64_t> padding_idx;
  bool include_last_offset = false;
  variable_list apply(variable_list&& grads) override {
    const BackwardDispatch dispatch;
    static auto op = find_op<BagBackwardSig>("teachcompute_ext::embedding_bag_backward");
    std::lock_guard<std::mutex> lock(mutex_);
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor()};
    const auto opt = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    const at::Tensor psw = dispatch.unpack(psw_);
    auto [gw, gpsw] = op.call(grads[0], dispatch.unpack(weight_), dispatch.unpack(indices_), opt(dispatch.unpack(offsets_)),
                              dispatch.unpack(argmax_), mode, opt(psw), padding_idx, include_last_offset);
    return {task_should_compute_output(0) ? gw : at::Tensor(),
            psw.defined() && task_should_compute_output(1) ? gpsw : at::Tensor()};
  }
  void release_variables() override {
    std::lock_guard<std::mutex> lock(mutex_);
    weight_.reset_data();
    indices_.reset_data();
    offsets_.reset_data();
    argmax_.reset_data();
    psw_.reset_data();
  }
  std::string name() const override { return "EmbeddingBagBackward"; }
};

}  // namespace

at::Tensor embedding_autograd(const at::Tensor& weight, const at::Tensor& indices,
                              std::optional<int64_t> padding_idx) {
  at::Tensor out;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    out = call_embedding(weight, indices, padding_idx);
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
  at::Tensor out, argmax;
  {
    at::AutoDispatchBelowADInplaceOrView guard;
    std::tie(out, argmax) = call_bag(weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
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

}  // namespace teachcompute_ext

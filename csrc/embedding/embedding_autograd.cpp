// Autograd of the embedding family (C++ autograd Functions, the rule of every
// family: csrc/README.md). The weight gradients are the dense backward ops
// embedding_backward and embedding_bag_backward; indices and offsets get none.
#include <torch/csrc/autograd/custom_function.h>

#include "common/autograd.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

using torch::autograd::AutogradContext;
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

c10::IValue optional_int(std::optional<int64_t> v) {
  return v.has_value() ? c10::IValue(*v) : c10::IValue();
}

std::optional<int64_t> to_optional_int(const c10::IValue& v) {
  return v.isNone() ? std::nullopt : std::optional<int64_t>(v.toInt());
}

struct EmbeddingFunction : public torch::autograd::Function<EmbeddingFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& indices,
                            std::optional<int64_t> padding_idx) {
    ctx->save_for_backward({indices});
    ctx->saved_data["num"] = c10::IValue(weight.sym_size(0));  // a SymInt under torch.compile
    ctx->saved_data["padding_idx"] = optional_int(padding_idx);
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_embedding(weight, indices, padding_idx);
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    static auto op = find_op<EmbeddingBackwardSig>("teachcompute_ext::embedding_backward");
    const at::Tensor indices = ctx->get_saved_variables()[0];
    const at::Tensor gw = op.call(grad_out[0], indices, ctx->saved_data["num"].toSymInt(),
                                  to_optional_int(ctx->saved_data["padding_idx"]));
    return {gw, at::Tensor(), at::Tensor()};
  }
};

// embedding_bag_forward -> (bags, argmax): weight and per_sample_weights get gradients.
struct BagFunction : public torch::autograd::Function<BagFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& weight, const at::Tensor& indices,
                               const std::optional<at::Tensor>& offsets, c10::string_view mode,
                               const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,
                               bool include_last_offset) {
    at::Tensor out, argmax;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      std::tie(out, argmax) = call_bag(weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
    }
    ctx->save_for_backward({weight, indices, offsets.value_or(at::Tensor()), argmax, psw.value_or(at::Tensor())});
    ctx->saved_data["mode"] = std::string(mode);
    ctx->saved_data["padding_idx"] = optional_int(padding_idx);
    ctx->saved_data["include_last_offset"] = include_last_offset;
    ctx->mark_non_differentiable({argmax});
    return {out, argmax};
  }
  static variable_list backward(AutogradContext* ctx, variable_list grad_out) {
    static auto op = find_op<BagBackwardSig>("teachcompute_ext::embedding_bag_backward");
    const auto saved = ctx->get_saved_variables();
    const auto opt = [](const at::Tensor& t) { return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt; };
    const std::string mode = ctx->saved_data["mode"].toStringRef();
    auto [gw, gpsw] = op.call(grad_out[0], saved[0], saved[1], opt(saved[2]), saved[3], mode, opt(saved[4]),
                              to_optional_int(ctx->saved_data["padding_idx"]),
                              ctx->saved_data["include_last_offset"].toBool());
    // needs_input_grad counts the tensor inputs only: weight, indices, offsets (when given), psw.
    const size_t psw_edge = saved[2].defined() ? 3 : 2;
    return {ctx->needs_input_grad(0) ? gw : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            saved[4].defined() && ctx->needs_input_grad(psw_edge) ? gpsw : at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

at::Tensor embedding_autograd(const at::Tensor& weight, const at::Tensor& indices,
                              std::optional<int64_t> padding_idx) {
  if (!needs_grad(weight)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_embedding(weight, indices, padding_idx);
  }
  return EmbeddingFunction::apply(weight, indices, padding_idx);
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_forward_autograd(const at::Tensor& weight, const at::Tensor& indices,
                                                                  const std::optional<at::Tensor>& offsets,
                                                                  c10::string_view mode,
                                                                  const std::optional<at::Tensor>& psw,
                                                                  std::optional<int64_t> padding_idx,
                                                                  bool include_last_offset) {
  if (!needs_grad(weight) && !needs_grad(psw)) {
    at::AutoDispatchBelowADInplaceOrView guard;
    return call_bag(weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
  }
  auto outs = BagFunction::apply(weight, indices, offsets, mode, psw, padding_idx, include_last_offset);
  return {outs[0], outs[1]};
}

}  // namespace teachcompute_ext

// Every entry point of teachcompute_ext, grouped by op family: one frontend per
// op, registered for CPU and CUDA alike (registration.cpp), and the autograd
// kernels. The schemas live in registration.cpp; each family's semantics and
// kernel signatures in <family>/<family>.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/OptionalArrayRef.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace teachcompute_ext {

// ---- reduce/ : vector sum, reductions, softmax (reduce.cpp) ------------------------
at::Tensor vector_sum(const at::Tensor& x);
at::Tensor reduce_sum(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
at::Tensor reduce_mean(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_max(const at::Tensor& x, int64_t dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_min(const at::Tensor& x, int64_t dim, bool keepdim);
at::Tensor logsumexp(const at::Tensor& x, at::IntArrayRef dim, bool keepdim);
at::Tensor softmax(const at::Tensor& x, int64_t dim);
at::Tensor log_softmax(const at::Tensor& x, int64_t dim);
at::Tensor softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim);
at::Tensor log_softmax_backward(const at::Tensor& grad, const at::Tensor& out, int64_t dim);

// ---- scatter_nd/ : ScatterND with ONNX semantics (scatter_nd.cpp) ------------------
at::Tensor scatter_nd(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                      c10::string_view reduction);
void scatter_nd_(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                 c10::string_view reduction);
at::Tensor scatter_nd_of_shape(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                               c10::string_view reduction);
at::Tensor masked_scatter_nd_of_shape(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                      int64_t masked_value, c10::string_view reduction);

// ---- embedding/ : embedding and embedding_bag (embedding.cpp) ------------------------
at::Tensor embedding(const at::Tensor& weight, const at::Tensor& indices, std::optional<int64_t> padding_idx);
at::Tensor embedding_backward(const at::Tensor& grad, const at::Tensor& indices, int64_t num_weights,
                              std::optional<int64_t> padding_idx);
std::tuple<at::Tensor, at::Tensor> embedding_bag_forward(const at::Tensor& weight, const at::Tensor& indices,
                                                         const std::optional<at::Tensor>& offsets,
                                                         c10::string_view mode, const std::optional<at::Tensor>& psw,
                                                         std::optional<int64_t> padding_idx, bool include_last_offset);
std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(const at::Tensor& grad, const at::Tensor& weight,
                                                          const at::Tensor& indices,
                                                          const std::optional<at::Tensor>& offsets,
                                                          const at::Tensor& max_indices, c10::string_view mode,
                                                          const std::optional<at::Tensor>& psw,
                                                          std::optional<int64_t> padding_idx, bool include_last_offset);
// The backward fused with an optimizer step: weight and state updated in place (embedding.h says how).
void embedding_update_(const at::Tensor& weight, const at::Tensor& state1, const at::Tensor& state2,
                       const at::Tensor& grad, const at::Tensor& indices, std::optional<int64_t> padding_idx,
                       c10::string_view optimizer, double lr, double beta1, double beta2, double eps,
                       double weight_decay, int64_t step);
at::Tensor embedding_bag_update_(const at::Tensor& weight, const at::Tensor& state1, const at::Tensor& state2,
                                 const at::Tensor& grad, const at::Tensor& indices,
                                 const std::optional<at::Tensor>& offsets, const at::Tensor& max_indices,
                                 c10::string_view bag_mode, const std::optional<at::Tensor>& psw,
                                 std::optional<int64_t> padding_idx, bool include_last_offset, bool psw_grad,
                                 c10::string_view optimizer, double lr, double beta1, double beta2, double eps,
                                 double weight_decay, int64_t step);
// CompositeImplicitAutograd: embedding_bag_forward's first output.
at::Tensor embedding_bag_composite(const at::Tensor& weight, const at::Tensor& indices,
                                   const std::optional<at::Tensor>& offsets, c10::string_view mode,
                                   const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,
                                   bool include_last_offset);

// ---- matmul/ : fused_matmul and fused_linear (matmul.cpp) ----------------------------
at::Tensor fused_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a, bool trans_b);
std::tuple<at::Tensor, at::Tensor> fused_linear_forward(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        c10::string_view activation, bool save_pre);
std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward(const at::Tensor& grad, const at::Tensor& x,
                                                                     const at::Tensor& weight, const at::Tensor& aux,
                                                                     c10::string_view activation, bool has_bias,
                                                                     std::array<bool, 3> output_mask);
// CompositeImplicitAutograd: fused_linear_forward's first output, the
// pre-activation kept only when a backward can follow.
at::Tensor fused_linear_composite(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  c10::string_view activation);

// ---- llama/ : rms_norm, add_rms_norm, rotary_embedding, swiglu, geglu (llama.cpp) ----------
std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                    double eps);
std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_forward(const at::Tensor& x, const at::Tensor& residual,
                                                                    const std::optional<at::Tensor>& weight,
                                                                    double eps);
std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad, const at::Tensor& x,
                                                     const std::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                                     const std::optional<at::Tensor>& grad_add,
                                                     std::array<bool, 2> output_mask);
at::Tensor rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved);
at::Tensor rotary_embedding_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin,
                                     bool interleaved);
at::Tensor swiglu(const at::Tensor& gate, const std::optional<at::Tensor>& up);
at::Tensor geglu(const at::Tensor& gate, const std::optional<at::Tensor>& up, c10::string_view approximate);
std::tuple<at::Tensor, at::Tensor> glu_backward(const at::Tensor& grad, const at::Tensor& gate,
                                                const std::optional<at::Tensor>& up, c10::string_view activation);
// CompositeImplicitAutograd (llama_autograd.cpp): the public outputs of the *_forward ops.
at::Tensor rms_norm_composite(const at::Tensor& x, const std::optional<at::Tensor>& weight, double eps);
std::tuple<at::Tensor, at::Tensor> add_rms_norm_composite(const at::Tensor& x, const at::Tensor& residual,
                                                          const std::optional<at::Tensor>& weight, double eps);

}  // namespace teachcompute_ext

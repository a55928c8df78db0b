// Every kernel entry point of teachcompute_ext, grouped by op family.
// The schemas live in registration.cpp; each family's kernels in its folder.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/SymIntArrayRef.h>
#include <c10/util/OptionalArrayRef.h>
#include <c10/util/string_view.h>

#include <array>
#include <optional>
#include <tuple>

namespace teachcompute_ext {

// ---- reduce/ : vector sum and reductions --------------------------------
at::Tensor vector_sum_cpu(const at::Tensor& x);
at::Tensor vector_sum_autograd(const at::Tensor& x);
at::Tensor softmax_cpu(const at::Tensor& x, int64_t dim);
at::Tensor log_softmax_cpu(const at::Tensor& x, int64_t dim);
at::Tensor softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& out, int64_t dim);
at::Tensor log_softmax_backward_cpu(const at::Tensor& grad, const at::Tensor& out, int64_t dim);
at::Tensor softmax_autograd(const at::Tensor& x, int64_t dim);
at::Tensor reduce_sum_cpu(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
at::Tensor reduce_mean_cpu(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_max_cpu(const at::Tensor& x, int64_t dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_min_cpu(const at::Tensor& x, int64_t dim, bool keepdim);
at::Tensor logsumexp_cpu(const at::Tensor& x, at::IntArrayRef dim, bool keepdim);
at::Tensor reduce_sum_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
at::Tensor reduce_mean_autograd(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_max_autograd(const at::Tensor& x, int64_t dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_min_autograd(const at::Tensor& x, int64_t dim, bool keepdim);
at::Tensor logsumexp_autograd(const at::Tensor& x, at::IntArrayRef dim, bool keepdim);
at::Tensor log_softmax_autograd(const at::Tensor& x, int64_t dim);

// ---- scatter_nd/ : ScatterND with ONNX semantics --------------------------
at::Tensor scatter_nd_cpu(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                          c10::string_view reduction);
void scatter_nd__cpu(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                     c10::string_view reduction);
at::Tensor scatter_nd_of_shape_cpu(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                   c10::string_view reduction);
at::Tensor masked_scatter_nd_of_shape_cpu(c10::SymIntArrayRef shape, const at::Tensor& indices,
                                          const at::Tensor& updates, int64_t masked_value,
                                          c10::string_view reduction);

// ---- embedding/ : embedding and embedding_bag --------------------------------
#define TCE_EMBEDDING_DECLS(dev)                                                                                  \
  at::Tensor embedding_##dev(const at::Tensor& weight, const at::Tensor& indices, std::optional<int64_t> padding_idx); \
  at::Tensor embedding_backward_##dev(const at::Tensor& grad, const at::Tensor& indices, int64_t num_weights,      \
                                      std::optional<int64_t> padding_idx);                                         \
  std::tuple<at::Tensor, at::Tensor> embedding_bag_forward_##dev(                                                  \
      const at::Tensor& weight, const at::Tensor& indices, const std::optional<at::Tensor>& offsets,               \
      c10::string_view mode, const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,             \
      bool include_last_offset);                                                                                   \
  std::tuple<at::Tensor, at::Tensor> embedding_bag_backward_##dev(                                                 \
      const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& indices,                                 \
      const std::optional<at::Tensor>& offsets, const at::Tensor& max_indices, c10::string_view mode,              \
      const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx, bool include_last_offset);
TCE_EMBEDDING_DECLS(cpu)
at::Tensor embedding_bag_composite(const at::Tensor& weight, const at::Tensor& indices,
                                   const std::optional<at::Tensor>& offsets, c10::string_view mode,
                                   const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,
                                   bool include_last_offset);

// ---- matmul/ : fused_matmul and fused_linear ----------------------------------
// fused_matmul is device-generic (the GEMM library takes alpha and the transposes).
at::Tensor fused_matmul(const at::Tensor& a, const at::Tensor& b, double alpha, bool trans_a, bool trans_b);
#define TCE_FUSED_LINEAR_DECLS(dev)                                                                              \
  std::tuple<at::Tensor, at::Tensor> fused_linear_forward_##dev(const at::Tensor& x, const at::Tensor& weight,   \
                                                                const std::optional<at::Tensor>& bias,          \
                                                                c10::string_view activation, bool save_pre);    \
  std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_##dev(                                   \
      const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& aux,            \
      c10::string_view activation, bool has_bias, std::array<bool, 3> output_mask);
TCE_FUSED_LINEAR_DECLS(cpu)
at::Tensor fused_linear_composite(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  c10::string_view activation);

#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
TCE_EMBEDDING_DECLS(cuda)
TCE_FUSED_LINEAR_DECLS(cuda)
at::Tensor vector_sum_cuda(const at::Tensor& x);
at::Tensor softmax_cuda(const at::Tensor& x, int64_t dim);
at::Tensor log_softmax_cuda(const at::Tensor& x, int64_t dim);
at::Tensor softmax_backward_cuda(const at::Tensor& grad, const at::Tensor& out, int64_t dim);
at::Tensor log_softmax_backward_cuda(const at::Tensor& grad, const at::Tensor& out, int64_t dim);
at::Tensor reduce_sum_cuda(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
at::Tensor reduce_mean_cuda(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_max_cuda(const at::Tensor& x, int64_t dim, bool keepdim);
std::tuple<at::Tensor, at::Tensor> reduce_min_cuda(const at::Tensor& x, int64_t dim, bool keepdim);
at::Tensor logsumexp_cuda(const at::Tensor& x, at::IntArrayRef dim, bool keepdim);
at::Tensor scatter_nd_cuda(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                           c10::string_view reduction);
void scatter_nd__cuda(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                      c10::string_view reduction);
at::Tensor scatter_nd_of_shape_cuda(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                    c10::string_view reduction);
at::Tensor masked_scatter_nd_of_shape_cuda(c10::SymIntArrayRef shape, const at::Tensor& indices,
                                           const at::Tensor& updates, int64_t masked_value,
                                           c10::string_view reduction);
#endif

}  // namespace teachcompute_ext

// Every kernel entry point of teachcompute_ext, grouped by op family.
// The schemas live in registration.cpp; each family's kernels in its folder.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/OptionalArrayRef.h>

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
#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
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
#endif

}  // namespace teachcompute_ext

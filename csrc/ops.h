// Every kernel entry point of teachcompute_ext, grouped by op family.
// The schemas live in registration.cpp; each family's kernels in its folder.
#pragma once

#include <ATen/core/Tensor.h>

namespace teachcompute_ext {

// ---- reduce/ : vector sum and reductions --------------------------------
at::Tensor vector_sum_cpu(const at::Tensor& x);
at::Tensor vector_sum_autograd(const at::Tensor& x);
#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
at::Tensor vector_sum_cuda(const at::Tensor& x);
#endif

}  // namespace teachcompute_ext

// Every schema of teachcompute_ext, one comment each, and the kernels behind them:
// CPU, CUDA and Autograd (C++, see reduce/reduce_autograd.cpp for why). Fake
// kernels are registered from Python, in teachcompute_ext/ops/<family>.py.
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(teachcompute_ext, m) {
  // ---- reduce -------------------------------------------------------------
  // Sum of every element of x (any shape, any strides) as a 0-dim tensor of x's dtype.
  m.def("vector_sum(Tensor x) -> Tensor", {at::Tag::pt2_compliant_tag});
}

TORCH_LIBRARY_IMPL(teachcompute_ext, CPU, m) {
  m.impl("vector_sum", &teachcompute_ext::vector_sum_cpu);
}

TORCH_LIBRARY_IMPL(teachcompute_ext, Autograd, m) {
  m.impl("vector_sum", &teachcompute_ext::vector_sum_autograd);
}

#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(teachcompute_ext, CUDA, m) {
  m.impl("vector_sum", &teachcompute_ext::vector_sum_cuda);
}
#endif

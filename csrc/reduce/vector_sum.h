// vector_sum: semantics shared by the CPU and CUDA paths (the fake kernel in
// teachcompute_ext/ops/reduce.py mirrors them): any shape and strides, one of
// the four float dtypes, 0-dim result of x's dtype, 0 for an empty tensor.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "common/checks.h"
#include "common/cpu_isa.h"

namespace teachcompute_ext {

inline void check_vector_sum_input(const at::Tensor& x) {
  check_float_dtype("vector_sum", "x", x);
}

// CPU kernels, one table per ISA (vector_sum_cpu_kernel.cpp).
// Each returns the sum of n elements p[0], p[stride], ..., p[(n-1)*stride]
// in double: the leaves are summed in the vector unit in float (or double),
// the pairwise tree above them in double, so the result rounds to x's dtype
// as if summed exactly (see the kernel file).
struct VectorSumKernels {
  double (*f32)(const float* p, int64_t n, int64_t stride);
  double (*f64)(const double* p, int64_t n, int64_t stride);
  double (*f16)(const c10::Half* p, int64_t n, int64_t stride);
  double (*bf16)(const c10::BFloat16* p, int64_t n, int64_t stride);
};
TCE_DECLARE_ISA_TABLE(VectorSumKernels, kVectorSumKernels)

// The kernel of this machine's ISA for scalar_t, and the parallel sum of a
// dense span (vector_sum_cpu.cpp; also used by reduce_sum).
template <typename scalar_t>
using SumFn = double (*)(const scalar_t* p, int64_t n, int64_t stride);
template <typename scalar_t>
SumFn<scalar_t> sum_kernel();
template <typename scalar_t>
double sum_dense(const scalar_t* p, int64_t n);

}  // namespace teachcompute_ext

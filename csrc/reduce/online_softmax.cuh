// The online (max, sum of exp) pair of softmax, log_softmax and logsumexp on
// CUDA: two partial pairs over disjoint elements merge into the pair of their
// union, so threads, warps and blocks can each fold their own share.
#pragma once

#include <cmath>
#include <limits>

namespace teachcompute_ext::cuda {

__device__ __forceinline__ float dexp(float v) { return expf(v); }
__device__ __forceinline__ double dexp(double v) { return exp(v); }
__device__ __forceinline__ float dlog(float v) { return logf(v); }
__device__ __forceinline__ double dlog(double v) { return log(v); }

// NaN-propagating max, as torch's.
template <typename A>
__device__ __forceinline__ A nan_max(A a, A b) {
  return (a != a || a > b) ? a : b;
}

template <typename A>
struct MaxSum {
  A m;  // running max
  A s;  // sum of exp(x - m)
};

template <typename A>
__device__ __forceinline__ MaxSum<A> merge(MaxSum<A> a, MaxSum<A> b) {
  constexpr A ninf = -std::numeric_limits<A>::infinity();
  const A M = nan_max(a.m, b.m);
  if (M == ninf) return {M, A(0)};  // nothing but -inf so far: exp(-inf - -inf) would be NaN
  const A ea = a.m == ninf ? A(0) : a.s * dexp(a.m - M);
  const A eb = b.m == ninf ? A(0) : b.s * dexp(b.m - M);
  return {M, ea + eb};
}

}  // namespace teachcompute_ext::cuda

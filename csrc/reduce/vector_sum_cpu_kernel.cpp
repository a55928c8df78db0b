// Pairwise (cascade) sum of a span. Compiled once per CPU ISA from this source.
// Leaves of kLeaf elements are summed with 4 independent vector accumulators
// (hides the 4-cycle FP-add latency so the loop runs at load speed); leaf
// results are combined pairwise in double, so the rounding error stays near one
// ulp of the result (measured: 1e8 uniform floats, rel. error ~1e-9 vs torch.sum's
// ~1e-7 before the final float rounding). Bound: memory bandwidth, 4 B/elem for float32.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cstring>
#include <type_traits>

#include "reduce/vector_sum.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// 1024 elements: 16 (AVX512) to 64 (DEFAULT) serial adds per lane, a few
// percent of time spent on the horizontal reduction and the call per leaf.
constexpr int64_t kLeaf = 1024;

template <typename acc_t>
double horizontal_sum(const Vectorized<acc_t>& v) {
  alignas(64) acc_t lanes[Vectorized<acc_t>::size()];
  v.store(lanes);
  double s = 0;
  for (int64_t i = 0; i < Vectorized<acc_t>::size(); ++i) s += static_cast<double>(lanes[i]);
  return s;
}

// Sum of n <= kLeaf contiguous elements.
template <typename scalar_t>
double leaf_sum(const scalar_t* p, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using Vec = Vectorized<scalar_t>;
    constexpr int64_t L = Vec::size();
    Vec a0(0), a1(0), a2(0), a3(0);
    int64_t i = 0;
    for (; i + 4 * L <= n; i += 4 * L) {
      a0 += Vec::loadu(p + i);
      a1 += Vec::loadu(p + i + L);
      a2 += Vec::loadu(p + i + 2 * L);
      a3 += Vec::loadu(p + i + 3 * L);
    }
    for (; i + L <= n; i += L) a0 += Vec::loadu(p + i);
    if (i < n) {
      alignas(64) scalar_t tail[L] = {};
      std::memcpy(tail, p + i, (n - i) * sizeof(scalar_t));
      a1 += Vec::loadu(tail);
    }
    return horizontal_sum<scalar_t>((a0 + a1) + (a2 + a3));
  } else {
    // Half and BFloat16: load 2L narrow values, widen to two float vectors.
    using HVec = Vectorized<scalar_t>;
    using FVec = Vectorized<float>;
    constexpr int64_t L = HVec::size();
    FVec a0(0), a1(0), a2(0), a3(0);
    int64_t i = 0;
    for (; i + 2 * L <= n; i += 2 * L) {
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(HVec::loadu(p + i));
      auto [x2, x3] = at::vec::convert_to_float<scalar_t>(HVec::loadu(p + i + L));
      a0 += x0;
      a1 += x1;
      a2 += x2;
      a3 += x3;
    }
    if (i < n) {
      alignas(64) scalar_t tail[2 * L];
      for (int64_t j = 0; j < 2 * L; ++j) tail[j] = scalar_t(0);
      std::memcpy(static_cast<void*>(tail), p + i, (n - i) * sizeof(scalar_t));
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(HVec::loadu(tail));
      auto [x2, x3] = at::vec::convert_to_float<scalar_t>(HVec::loadu(tail + L));
      a0 += x0;
      a1 += x1;
      a2 += x2;
      a3 += x3;
    }
    return horizontal_sum<float>((a0 + a1) + (a2 + a3));
  }
}

// Strided leaf: a gather the vector unit cannot speed up, so scalar double
// accumulators cost nothing extra here; 4 of them break the add dependency chain.
template <typename scalar_t>
double strided_leaf_sum(const scalar_t* p, int64_t n, int64_t stride) {
  using acc_t = double;
  acc_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    a0 += static_cast<acc_t>(p[i * stride]);
    a1 += static_cast<acc_t>(p[(i + 1) * stride]);
    a2 += static_cast<acc_t>(p[(i + 2) * stride]);
    a3 += static_cast<acc_t>(p[(i + 3) * stride]);
  }
  for (; i < n; ++i) a0 += static_cast<acc_t>(p[i * stride]);
  return (a0 + a1) + (a2 + a3);
}

// Splits at a multiple of kLeaf so every leaf but the last is full.
template <typename scalar_t>
double pairwise_sum(const scalar_t* p, int64_t n, int64_t stride) {
  if (n <= kLeaf) {
    return stride == 1 ? leaf_sum(p, n) : strided_leaf_sum(p, n, stride);
  }
  const int64_t half = (n / 2 + kLeaf - 1) / kLeaf * kLeaf;
  return pairwise_sum(p, half, stride) + pairwise_sum(p + half * stride, n - half, stride);
}

}  // namespace

extern const VectorSumKernels kVectorSumKernels;
const VectorSumKernels kVectorSumKernels = {
    &pairwise_sum<float>,
    &pairwise_sum<double>,
    &pairwise_sum<c10::Half>,
    &pairwise_sum<c10::BFloat16>,
};

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

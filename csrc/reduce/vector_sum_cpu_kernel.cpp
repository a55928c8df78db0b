// vector_sum on the CPU, compiled once per CPU ISA from this source, and the
// pairwise span sum that reduce_sum shares (sum_cpu.h).
// The span: pairwise (cascade) sum.
// Leaves of kLeaf elements are summed with 4 independent vector accumulators
// (hides the 4-cycle FP-add latency so the loop runs at load speed); super-leaf
// results are combined pairwise as float vectors (a binary counter of equal-
// size partials), and only the levels' horizontal sums and the chunk totals
// are added in double, so what is left is mostly the final rounding to x's
// dtype (measured on 1e8 uniform floats: relative error 2.4e-8,
// the correctly rounded float32, same as torch.sum). Bound: memory bandwidth,
// 4 B/elem for float32.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <c10/util/SmallVector.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/layout.h"
#include "common/rounding.h"
#include "reduce/reduce.h"
#include "reduce/sum_cpu.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Leaves of 1024 elements (16 adds per lane with AVX512), 16 of them summed in
// registers into a super-leaf before it enters the pairwise tree. Measured
// (ratio to torch.sum, 2 threads, 1e6 / 1e7 / 1e8 floats): 1024-element leaves
// pushed one by one into the tree ran at 60% of torch's speed in L2 (the tree
// bookkeeping per leaf); 4096-element leaves 1.03 / 1.18 / 0.93; these
// super-leaves 1.04 / 1.26 / 1.03.
constexpr int64_t kLeaf = 1024;
constexpr int64_t kSuper = 16;
// Half and BFloat16 (widened to float on load) keep 4096-element leaves pushed
// one by one: 1e8 bfloat16 ran at 1.04x torch.sum so, 0.77x as 2048 x 8 super-leaves.
template <typename scalar_t>
constexpr bool kIsReduced = !(std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>);
template <typename scalar_t>
constexpr int64_t kLeafOf = kIsReduced<scalar_t> ? 4096 : kLeaf;
template <typename scalar_t>
constexpr int64_t kSuperOf = kIsReduced<scalar_t> ? 1 : kSuper;

template <typename scalar_t>
using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// The lanes' sum in double. A float vector is widened in two halves and
// reduced in the vector unit: a short row pays this once, and the store and
// 16 scalar adds it replaces were a third of a 300-element row's time.
template <typename T>
double horizontal_sum(const Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {
    const __m512 f = v;
    return _mm512_reduce_add_pd(
        _mm512_add_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(f)), _mm512_cvtps_pd(_mm512_extractf32x8_ps(f, 1))));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 f = v;
    const __m256d d =
        _mm256_add_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(f)), _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
    const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(d), _mm256_extractf128_pd(d, 1));
    return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
  }
#endif
  alignas(64) T lanes[Vectorized<T>::size()];
  v.store(lanes);
  double s = 0;
  for (int64_t i = 0; i < Vectorized<T>::size(); ++i) s += static_cast<double>(lanes[i]);
  return s;
}

// Lane-wise sums of n <= kLeafOf<scalar_t> contiguous elements, kept as a vector: the
// horizontal reduction is paid once per call, not once per leaf (doing it per
// leaf measured 2.5x slower on L2-resident data).
template <typename scalar_t>
inline __attribute__((always_inline)) Vectorized<acc_t<scalar_t>> leaf_sum(const scalar_t* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX512)
  // 256-bit loads even where 512-bit ones exist (torch.sum's AVX2 loop does the
  // same): on an AMD EPYC (Zen, 512-bit ops split in two), one thread summing 1e8
  // floats from DRAM ran at 0.60x torch with 512-bit loads, 1.0x with these;
  // at 1e6 (cache) both are at parity.
  if constexpr (std::is_same_v<scalar_t, float>) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
#pragma GCC unroll 2
    for (; i + 32 <= n; i += 32) {
      a0 = _mm256_add_ps(a0, _mm256_loadu_ps(p + i));
      a1 = _mm256_add_ps(a1, _mm256_loadu_ps(p + i + 8));
      a2 = _mm256_add_ps(a2, _mm256_loadu_ps(p + i + 16));
      a3 = _mm256_add_ps(a3, _mm256_loadu_ps(p + i + 24));
    }
    __m512 v = _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_add_ps(a0, a2)), _mm256_add_ps(a1, a3), 1);
    if (i < n) {
      const __mmask16 m0 = static_cast<__mmask16>((n - i) >= 16 ? 0xFFFF : ((1u << (n - i)) - 1));
      v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m0, p + i));
      if (n - i > 16) {
        const __mmask16 m1 = static_cast<__mmask16>((n - i - 16) >= 16 ? 0xFFFF : ((1u << (n - i - 16)) - 1));
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m1, p + i + 16));
      }
    }
    return Vectorized<float>(v);
  } else
#endif
      if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
    using Vec = Vectorized<scalar_t>;
    constexpr int64_t L = Vec::size();
    Vec a0(0), a1(0), a2(0), a3(0);
    int64_t i = 0;
    // Unrolled only twice: fully unrolled (a compile-time trip count of 16), GCC
    // scheduled a leaf as two passes of two chains each, every pass touching every
    // other pair of cache lines; that order ran 1e8 floats at 0.60x torch on one
    // thread, 0.86x in order.
#pragma GCC unroll 2
    for (; i + 4 * L <= n; i += 4 * L) {
      a0 += Vec::loadu(p + i);
      a1 += Vec::loadu(p + i + L);
      a2 += Vec::loadu(p + i + 2 * L);
      a3 += Vec::loadu(p + i + 3 * L);
    }
    for (; i + L <= n; i += L) a0 += Vec::loadu(p + i);
    if (i < n) a1 += Vec::loadu(p + i, n - i);  // masked on AVX512 (a stack copy stalled the load)
    return (a0 + a1) + (a2 + a3);
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
      const int64_t c0 = std::min<int64_t>(n - i, L), c1 = n - i - c0;
      auto [x0, x1] = at::vec::convert_to_float<scalar_t>(HVec::loadu(p + i, c0));
      auto [x2, x3] = at::vec::convert_to_float<scalar_t>(c1 > 0 ? HVec::loadu(p + i + L, c1) : HVec(scalar_t(0)));
      a0 += x0;
      a1 += x1;
      a2 += x2;
      a3 += x3;
    }
    return (a0 + a1) + (a2 + a3);
  }
}

// Pairwise sum of contiguous leaves without recursion: a binary counter over
// the leaves, where level l holds the sum of 2^l leaves (merged when the
// counter carries), so every add combines two partials of equal size.
template <typename scalar_t>
double contiguous_sum(const scalar_t* p, int64_t n) {
  using AVec = Vectorized<acc_t<scalar_t>>;
  // Raw storage: a default-constructed AVec[64] is zeroed, 4 KB per call for nothing.
  alignas(64) unsigned char storage[64 * sizeof(AVec)];
  AVec* level = reinterpret_cast<AVec*>(storage);
  int64_t count = 0;
  int top = 0;
  auto push = [&](AVec v) {
    int l = 0;
    for (int64_t c = count; c & 1; c >>= 1, ++l) v = level[l] + v;
    level[l] = v;
    top = std::max(top, l + 1);
    ++count;
  };
  int64_t start = 0;
  // Full leaves get a compile-time trip count: a tight loop with no bound
  // checks (with a run-time count the loop ran at half the L2 bandwidth).
  // A super-leaf of kSuper full leaves, summed in registers: one push per
  // kSuper * kLeaf elements, and each lane still sees short add chains.
  constexpr int64_t leaf = kLeafOf<scalar_t>, super = kSuperOf<scalar_t>;
  for (; start + super * leaf <= n; start += super * leaf) {
    AVec v = leaf_sum(p + start, leaf);
    for (int64_t k = 1; k < super; ++k) v += leaf_sum(p + start + k * leaf, leaf);
    push(v);
  }
  for (; start + leaf <= n; start += leaf) push(leaf_sum(p + start, leaf));
  if (start < n) push(leaf_sum(p + start, n - start));
  // Leftover levels: bit l of count says whether level l holds a partial.
  double total = 0;
  for (int l = 0; l < top; ++l) {
    if ((count >> l) & 1) total += horizontal_sum(level[l]);
  }
  return total;
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

// Strided: pairwise by recursion (the gather dominates the call cost), with
// short leaves since 4 scalar chains of 64 adds each keep the error small.
constexpr int64_t kStridedLeaf = 256;

template <typename scalar_t>
double strided_sum(const scalar_t* p, int64_t n, int64_t stride) {
  if (n <= kStridedLeaf) return strided_leaf_sum(p, n, stride);
  const int64_t half = n / 2;
  return strided_sum(p, half, stride) + strided_sum(p + half * stride, n - half, stride);
}

}  // namespace

template <typename scalar_t>
double sum_span(const scalar_t* p, int64_t n, int64_t stride) {
  return stride == 1 ? contiguous_sum(p, n) : strided_sum(p, n, stride);
}
template double sum_span<float>(const float*, int64_t, int64_t);
template double sum_span<double>(const double*, int64_t, int64_t);
template double sum_span<c10::Half>(const c10::Half*, int64_t, int64_t);
template double sum_span<c10::BFloat16>(const c10::BFloat16*, int64_t, int64_t);

namespace {

// Sum of a dense span of n elements: fixed chunks summed in parallel
// (at::parallel_for, so torch.set_num_threads applies), then added pairwise.
template <typename scalar_t>
double sum_dense(const scalar_t* p, int64_t n) {
  const int64_t chunk = sum_chunk_for(n);
  const int64_t nchunks = (n + chunk - 1) / chunk;
  if (nchunks == 1) return sum_span(p, n, 1);
  c10::SmallVector<double, 256> partial(nchunks);
  at::parallel_for(0, nchunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t start = c * chunk;
      partial[c] = sum_span(p + start, std::min(chunk, n - start), 1);
    }
  });
  return pairwise_combine(partial.data(), nchunks);
}

// Sum of a general strided view (sliced, expanded), with no copy: rows along
// the innermost collapsed dim, grouped into fixed groups of about kSumChunk
// elements; a few long rows are split into kSumChunk pieces so every thread works.
template <typename scalar_t>
double sum_strided(const scalar_t* base, const std::vector<Dim>& dims) {
  const Dim inner = dims.back();
  const int64_t outer_ndim = static_cast<int64_t>(dims.size()) - 1;
  int64_t rows = 1;
  for (int64_t d = 0; d < outer_ndim; ++d) rows *= dims[d].size;
  const int64_t pieces = (inner.size + kSumChunk - 1) / kSumChunk;
  if (pieces > 1) {
    std::vector<double> partial(rows * pieces);
    at::parallel_for(0, rows * pieces, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        int64_t rem = u / pieces, offset = 0;
        for (int64_t d = outer_ndim - 1; d >= 0; --d) {
          offset += (rem % dims[d].size) * dims[d].stride;
          rem /= dims[d].size;
        }
        const int64_t start = (u % pieces) * kSumChunk;
        partial[u] =
            sum_span(base + offset + start * inner.stride, std::min(kSumChunk, inner.size - start), inner.stride);
      }
    });
    return pairwise_combine(partial.data(), rows * pieces);
  }
  const int64_t rows_per_group = std::max<int64_t>(1, kSumChunk / inner.size);
  const int64_t ngroups = (rows + rows_per_group - 1) / rows_per_group;
  std::vector<double> partial(ngroups);
  at::parallel_for(0, ngroups, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> idx(outer_ndim);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t r0 = g * rows_per_group, r1 = std::min(rows, r0 + rows_per_group);
      // Multi-index of row r0 over the outer dims, then advanced like an odometer.
      int64_t rem = r0, offset = 0;
      for (int64_t d = outer_ndim - 1; d >= 0; --d) {
        idx[d] = rem % dims[d].size;
        rem /= dims[d].size;
        offset += idx[d] * dims[d].stride;
      }
      double s = 0;
      for (int64_t r = r0; r < r1; ++r) {
        s += sum_span(base + offset, inner.size, inner.stride);
        for (int64_t d = outer_ndim - 1; d >= 0; --d) {
          offset += dims[d].stride;
          if (++idx[d] < dims[d].size) break;
          offset -= idx[d] * dims[d].stride;
          idx[d] = 0;
        }
      }
      partial[g] = s;
    }
  });
  return pairwise_combine(partial.data(), ngroups);
}

}  // namespace

// Dense inputs (contiguous, transposed, permuted) are summed straight from
// memory; other views row by row along their innermost collapsed dim.
void vector_sum_kernel(const at::Tensor& x, at::Tensor& out) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "vector_sum_cpu", [&] {
    const scalar_t* p = x.const_data_ptr<scalar_t>();
    // Every element once, in some order: the storage span is [p, p + numel).
    const double total =
        x.is_non_overlapping_and_dense() ? sum_dense(p, x.numel()) : sum_strided(p, collapse_layout(x));
    *out.mutable_data_ptr<scalar_t>() = round_to<scalar_t>(total);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

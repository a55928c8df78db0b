// The CPU sums shared by vector_sum and reduce_sum/reduce_mean, defined in
// vector_sum_cpu_kernel.cpp. Only for the per-ISA kernel files (compiled with
// CPU_CAPABILITY set): each ISA build calls its own copy.
#pragma once

#include <cstdint>

namespace teachcompute_ext {
namespace CPU_CAPABILITY {

// Sum of p[0], p[stride], ..., p[(n-1)*stride] in double: the leaves are summed
// in the vector unit in float (or double), the pairwise tree above them in
// double, so the result rounds to the dtype as if summed exactly. One thread.
template <typename scalar_t>
double sum_span(const scalar_t* p, int64_t n, int64_t stride);

// Chunk sizes of the parallel sums: they depend on n only, never on the thread
// count, so a result is the same bits for any number of threads. Measured on 2
// threads (ratio to torch.sum, 3 interleaved runs each): 1e6 floats
// (L3-resident) 0.98x with 64K chunks, 1.01x with 256K; 1e7 (DRAM) 1.23x with
// 64K, 0.90x with 256K.
constexpr int64_t kSumChunk = 1 << 16;
constexpr int64_t kCacheResidentChunk = 1 << 18;
constexpr int64_t kCacheResidentMax = 1 << 22;
inline int64_t sum_chunk_for(int64_t n) { return n <= kCacheResidentMax ? kCacheResidentChunk : kSumChunk; }

// Pairwise sum of n partial results (the chunk totals).
inline double pairwise_combine(const double* v, int64_t n) {
  if (n <= 8) {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += v[i];
    return s;
  }
  return pairwise_combine(v, n / 2) + pairwise_combine(v + n / 2, n - n / 2);
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

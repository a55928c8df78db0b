// Per-ISA CPU kernel table of the reductions along dims (reduce_cpu_kernel.cpp).
// All results are doubles: exact for max/min, and the caller rounds once.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "common/cpu_isa.h"

namespace teachcompute_ext {

// Outputs handled together by a COLS kernel: 64 neighbouring outputs
// (256 bytes of float32 per reduced element: four AVX512 or eight AVX2 loads).
constexpr int64_t kReduceColTile = 64;

template <typename scalar_t>
struct ReduceFns {
  // COLS: out[c] for c < width, over p[r * stride + c], r < R.
  void (*sum_cols)(const scalar_t* p, int64_t R, int64_t stride, int64_t width, double* out);
  // ROWS: value and first index of the max (is_max) or min of p[0..n), n >= 1, n < 2^24.
  void (*maxmin_row)(const scalar_t* p, int64_t n, bool is_max, double* val, int64_t* idx);
  void (*maxmin_cols)(const scalar_t* p, int64_t R, int64_t stride, int64_t width, bool is_max, double* val,
                      int64_t* idx);
  // logsumexp as (max, sum of exp(x - max)); the caller finishes max + log(sum).
  void (*lse_row)(const scalar_t* p, int64_t n, double* m, double* s);
  void (*lse_cols)(const scalar_t* p, int64_t R, int64_t stride, int64_t width, double* m, double* s);
};

using ReduceKernels = PerDtype<ReduceFns>;
TCE_DECLARE_ISA_TABLE(ReduceKernels, kReduceKernels)

}  // namespace teachcompute_ext

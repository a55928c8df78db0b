// Per-ISA CPU kernel of the ScatterND family (scatter_nd_cpu_kernel.cpp).
#pragma once

#include <cstdint>

#include "common/cpu_isa.h"

namespace teachcompute_ext {

// Where the rows applied to one destination come from: update number u
// (an entry of `order`) reads row src_row[u] of src (u itself when src_row is
// null), multiplied by scale[u] when scale is not null (add only). ScatterND
// uses the identity; the embedding backward and the bag forward/backward use
// the mapping, so the family has one scatter-add kernel.
template <typename scalar_t>
struct RowSource {
  const scalar_t* src;
  const int64_t* src_row;  // nullable
  const double* scale;     // nullable
  bool dst_is_zero = false;  // add only: dst is known to hold zeros, it is not read
};

template <typename scalar_t>
struct ScatterFns {
  // Applies, in order, the rows of updates order[0..count) (each `slice` long)
  // to dst[0..slice) with `reduction` (a ScatterReduction); half types combine
  // in float and round once. order[count..ahead) are the updates that come
  // next (other destinations): their rows are prefetched.
  void (*apply)(scalar_t* dst, RowSource<scalar_t> rows, const int64_t* order, int64_t count, int64_t ahead,
                int64_t slice, int reduction);
  // The bag form of the same loop: dst = post * sum_j w[j] * src[rows[j]] (w null: 1) over
  // count rows, dst written, not read. embedding_bag's forward without padding.
  // rows[count..ahead) come next (the following bags): their rows are prefetched.
  void (*bag_sum)(scalar_t* dst, const scalar_t* src, const int64_t* rows, int64_t count, int64_t ahead,
                  int64_t slice, const scalar_t* w, double post);
};
using ScatterKernels = PerDtype<ScatterFns>;
TCE_DECLARE_ISA_TABLE(ScatterKernels, kScatterKernels)

}  // namespace teachcompute_ext

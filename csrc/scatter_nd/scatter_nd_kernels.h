// Per-ISA CPU kernel of the ScatterND family (scatter_nd_cpu_kernel.cpp).
#pragma once

#include <cstdint>

#include "common/cpu_isa.h"

namespace teachcompute_ext {

template <typename scalar_t>
struct ScatterFns {
  // Applies, in order, the updates rows order[0..count) (each `slice` long) to
  // dst[0..slice) with `reduction` (a ScatterReduction); half types combine
  // in float and round once. order[count..ahead) are the rows that come next
  // (other destinations): they are prefetched.
  void (*apply)(scalar_t* dst, const scalar_t* updates, const int64_t* order, int64_t count, int64_t ahead,
                int64_t slice, int reduction);
};
using ScatterKernels = PerDtype<ScatterFns>;
TCE_DECLARE_ISA_TABLE(ScatterKernels, kScatterKernels)

}  // namespace teachcompute_ext

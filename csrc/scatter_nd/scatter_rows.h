// The one scatter kernel of the package, for ScatterND and the embedding ops,
// on every device: out (contiguous, [n_rows, slice]) row dest[u] receives, for
// every update u in index order, row src_row[u] of src (row u when there is
// no src_row), times scale[u] when there is a scale (add only). dest[u] == -1
// skips u. The CPU version is deterministic and parallel over destinations;
// the CUDA one uses atomics (float for the half types), or sorted segments
// under torch.use_deterministic_algorithms(True), and "none" keeps the last
// update on both.
#pragma once

#include <ATen/core/Tensor.h>

#include "scatter_nd/scatter_nd.h"

namespace teachcompute_ext {

#ifdef CPU_CAPABILITY
// Only for the per-ISA kernel files: each ISA build calls its own copy.
namespace CPU_CAPABILITY {

void scatter_rows(at::Tensor& out, const int64_t* dest, int64_t n, const at::Tensor& src, const int64_t* src_row,
                  const double* scale, ScatterReduction red);

// The same with the grouping given: group g applies order[bounds[g]..bounds[g+1])
// to row group_row[g] (no two groups may share a row). The bag forward uses it
// with one group per bag. out_is_zero (add): out is not read, only written
// (empty groups get zeros), so out may come from at::empty.
void scatter_groups(at::Tensor& out, const int64_t* group_row, int64_t groups, const int64_t* bounds,
                    const int64_t* order, int64_t order_size, const at::Tensor& src, const int64_t* src_row,
                    const double* scale, ScatterReduction red, bool out_is_zero);

// dst[0..slice) = post * sum_j w[j] * src[rows[j]] (w null: 1) over count rows,
// dst written, not read: embedding_bag's forward without padding.
// rows[count..ahead) come next (the following bags): their rows are prefetched.
template <typename T>
void bag_sum(T* dst, const T* src, const int64_t* rows, int64_t count, int64_t ahead, int64_t slice, const T* w,
             double post);

}  // namespace CPU_CAPABILITY
#endif

namespace cuda_kernels {

// dest, src_row: int64 [n] on the device (src_row may be undefined); src
// contiguous [m, slice] of out's dtype; scale: [n] of the accumulation dtype
// (float, double for float64) or undefined.
void scatter_rows(at::Tensor& out, const at::Tensor& dest, const at::Tensor& src, const at::Tensor& src_row,
                  const at::Tensor& scale, ScatterReduction red);

}  // namespace cuda_kernels

}  // namespace teachcompute_ext

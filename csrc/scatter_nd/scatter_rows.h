// The one scatter kernel of the package, for ScatterND and the embedding ops:
// out (contiguous, [n_rows, ...]) row dest[u] receives, for every update u in
// index order, row src_row[u] of src (row u when src_row is null), times
// scale[u] when scale is not null. dest[u] == -1 skips u. Deterministic and
// parallel over destinations (scatter_nd_cpu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

#include "scatter_nd/scatter_nd.h"

namespace teachcompute_ext {

void scatter_rows_cpu(at::Tensor& out, const std::vector<int64_t>& dest, const at::Tensor& src,
                      const int64_t* src_row, const double* scale, ScatterReduction red);

// The same with the grouping given: group g applies order[bounds[g]..bounds[g+1])
// to row group_row[g] (no two groups may share a row). The bag forward uses it
// with one group per bag. out_is_zero (add): out is not read, only written
// (empty groups get zeros), so out may come from at::empty.
void scatter_groups_cpu(at::Tensor& out, const std::vector<int64_t>& group_row, const int64_t* bounds,
                        const int64_t* order, int64_t order_size, const at::Tensor& src, const int64_t* src_row,
                        const double* scale, ScatterReduction red, bool out_is_zero);

// The kernels of this machine's ISA (bag_sum is used by embedding_bag).
template <typename scalar_t>
struct ScatterFns;
template <typename scalar_t>
const ScatterFns<scalar_t>& scatter_kernels();

}  // namespace teachcompute_ext

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
// with one group per bag.
void scatter_groups_cpu(at::Tensor& out, const std::vector<int64_t>& group_row, const std::vector<int64_t>& bounds,
                        const std::vector<int64_t>& order, const at::Tensor& src, const int64_t* src_row,
                        const double* scale, ScatterReduction red);

}  // namespace teachcompute_ext

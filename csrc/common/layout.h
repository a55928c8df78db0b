// A tensor's memory layout reduced to the fewest (size, stride) dims that walk
// the same elements: size-1 dims dropped, dims ordered by stride (largest
// first, stride-0 broadcast dims outermost), neighbours that are contiguous with
// each other merged. A transposed or permuted dense tensor collapses to one
// stride-1 dim, a sliced matrix to (rows, row_stride) x (cols, 1).
#pragma once

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace teachcompute_ext {

struct Dim {
  int64_t size;
  int64_t stride;
};

inline std::vector<Dim> collapse_layout(const at::Tensor& x) {
  std::vector<Dim> dims;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (x.size(d) != 1) dims.push_back({x.size(d), x.stride(d)});
  }
  // Stride-0 (expanded) dims go outermost: the inner loop then walks memory.
  std::stable_sort(dims.begin(), dims.end(), [](const Dim& a, const Dim& b) {
    const bool a0 = a.stride == 0, b0 = b.stride == 0;
    if (a0 != b0) return a0;
    return a.stride > b.stride;
  });
  std::vector<Dim> out;
  for (const Dim& d : dims) {
    if (!out.empty() && out.back().stride == d.stride * d.size) {
      out.back().size *= d.size;
      out.back().stride = d.stride;
    } else {
      out.push_back(d);
    }
  }
  return out;
}

}  // namespace teachcompute_ext

// ScatterND family on the CPU. Three steps, all deterministic:
//  1. each index tuple -> destination row (checked: out of range is an error);
//  2. a stable bucketing of the updates by destination (counting sort when the
//     rows are few enough, else a stable sort), so duplicates keep index order;
//  3. in parallel over destinations (no two threads share one, so no races and
//     no atomics), the per-ISA kernel applies each destination's updates.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <numeric>
#include <vector>

#include "ops.h"
#include "scatter_nd/scatter_nd.h"
#include "scatter_nd/scatter_nd_kernels.h"
#include "scatter_nd/scatter_rows.h"

namespace teachcompute_ext {

template <typename scalar_t>
const ScatterFns<scalar_t>& scatter_kernels() {
  static const ScatterKernels& k = TCE_ISA_TABLE(kScatterKernels);
  return for_dtype<scalar_t>(k);
}
template const ScatterFns<float>& scatter_kernels<float>();
template const ScatterFns<double>& scatter_kernels<double>();
template const ScatterFns<c10::Half>& scatter_kernels<c10::Half>();
template const ScatterFns<c10::BFloat16>& scatter_kernels<c10::BFloat16>();

namespace {

constexpr int64_t kSkip = -1;  // a masked update

template <typename scalar_t>
const ScatterFns<scalar_t>& scatter_fns() {
  return scatter_kernels<scalar_t>();
}

// Destination row of every update, or kSkip for masked ones.
template <typename index_t>
std::vector<int64_t> destination_rows(const char* op, const index_t* idx, const ScatterShape& s,
                                      at::IntArrayRef shape, const int64_t* masked_value) {
  std::vector<int64_t> rows(s.n_updates);
  at::parallel_for(0, s.n_updates, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const index_t* t = idx + i * s.k;
      if (masked_value != nullptr && static_cast<int64_t>(t[0]) == *masked_value) {
        rows[i] = kSkip;
        continue;
      }
      int64_t row = 0;
      for (int64_t d = 0; d < s.k; ++d) {
        const int64_t v = static_cast<int64_t>(t[d]), size = shape[d];
        // Compared before any arithmetic: no value can wrap into range.
        TORCH_CHECK_INDEX(v >= -size && v < size, "teachcompute_ext.", op, ": index ", v, " out of range for dim ",
                          d, " of size ", size, " (argument 'indices', entry ", i, ")");
        row = row * size + (v < 0 ? v + size : v);
      }
      rows[i] = row;
    }
  });
  return rows;
}

struct Segment {
  int64_t row, begin, end;  // order[begin..end) go to `row`
};

// Stable bucketing of the updates by destination.
void bucketize(const std::vector<int64_t>& rows, int64_t n_rows, std::vector<int64_t>& order,
               std::vector<Segment>& segs) {
  const int64_t n = static_cast<int64_t>(rows.size());
  order.clear();
  segs.clear();
  if (n_rows <= 4 * n + (1 << 20)) {
    segs.reserve(std::min<int64_t>(n, n_rows));
    std::vector<int64_t> start(n_rows + 1, 0);
    for (int64_t r : rows) {
      if (r != kSkip) ++start[r + 1];
    }
    for (int64_t r = 0; r < n_rows; ++r) {
      if (start[r + 1] > 0) segs.push_back({r, start[r], start[r] + start[r + 1]});
      start[r + 1] += start[r];
    }
    order.resize(start[n_rows]);
    for (int64_t i = 0; i < n; ++i) {
      if (rows[i] != kSkip) order[start[rows[i]]++] = i;
    }
    return;
  }
  for (int64_t i = 0; i < n; ++i) {
    if (rows[i] != kSkip) order.push_back(i);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return rows[a] < rows[b]; });
  for (int64_t b = 0; b < static_cast<int64_t>(order.size());) {
    int64_t e = b + 1;
    while (e < static_cast<int64_t>(order.size()) && rows[order[e]] == rows[order[b]]) ++e;
    segs.push_back({rows[order[b]], b, e});
    b = e;
  }
}

// Scatters into `out` (contiguous, of `shape`), in place.
void scatter_into(const char* op, at::Tensor& out, at::IntArrayRef shape, const at::Tensor& indices_in,
                  const at::Tensor& updates_in, ScatterReduction red, const ScatterShape& s,
                  const int64_t* masked_value) {
  const at::Tensor indices = indices_in.contiguous();
  const at::Tensor updates = updates_in.contiguous();
  std::vector<int64_t> rows;
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "scatter_nd_indices", [&] {
    rows = destination_rows<index_t>(op, indices.const_data_ptr<index_t>(), s, shape, masked_value);
  });
  // The indices were checked even when there is nothing to write.
  if (s.slice == 0 || out.numel() == 0) return;
  at::Tensor out2d = out.view({s.n_rows, s.slice});  // same storage: destinations as rows
  scatter_rows_cpu(out2d, rows, updates, nullptr, nullptr, red);
}

}  // namespace

void scatter_groups_cpu(at::Tensor& out, const std::vector<int64_t>& group_row, const int64_t* bounds,
                        const int64_t* order, int64_t order_size, const at::Tensor& src, const int64_t* src_row,
                        const double* scale, ScatterReduction red, bool out_is_zero) {
  const int64_t n_rows = out.size(0);
  const int64_t slice = n_rows == 0 ? 0 : out.numel() / n_rows;
  if (slice == 0 || group_row.empty()) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "scatter_groups_cpu", [&] {
    const auto& f = scatter_fns<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const RowSource<scalar_t> rs{src.const_data_ptr<scalar_t>(), src_row, scale, out_is_zero};
    const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, slice));
    at::parallel_for(0, static_cast<int64_t>(group_row.size()), grain, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) {
        if (bounds[g + 1] == bounds[g]) {
          if (out_is_zero) std::fill(o + group_row[g] * slice, o + (group_row[g] + 1) * slice, scalar_t(0));
          continue;
        }
        f.apply(o + group_row[g] * slice, rs, order + bounds[g], bounds[g + 1] - bounds[g], order_size - bounds[g],
                slice, static_cast<int>(red));
      }
    });
  });
}

void scatter_rows_cpu(at::Tensor& out, const std::vector<int64_t>& dest, const at::Tensor& src,
                      const int64_t* src_row, const double* scale, ScatterReduction red) {
  if (out.numel() == 0 || dest.empty()) return;
  std::vector<int64_t> order;
  std::vector<Segment> segs;
  bucketize(dest, out.size(0), order, segs);
  std::vector<int64_t> group_row(segs.size()), bounds(segs.size() + 1, 0);
  for (size_t g = 0; g < segs.size(); ++g) {
    group_row[g] = segs[g].row;
    bounds[g] = segs[g].begin;
    bounds[g + 1] = segs[g].end;
  }
  scatter_groups_cpu(out, group_row, bounds.data(), order.data(), static_cast<int64_t>(order.size()), src, src_row,
                     scale, red, false);
}

at::Tensor scatter_nd_cpu(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                          c10::string_view reduction) {
  const char* op = "scatter_nd";
  const ScatterReduction red = parse_reduction(op, reduction);
  const ScatterShape s = check_scatter(op, data.sizes(), data.scalar_type(), indices, updates, true);
  at::Tensor out = data.clone(at::MemoryFormat::Contiguous);
  scatter_into(op, out, data.sizes(), indices, updates, red, s, nullptr);
  return out;
}

void scatter_nd__cpu(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                     c10::string_view reduction) {
  const char* op = "scatter_nd_";
  const ScatterReduction red = parse_reduction(op, reduction);
  const ScatterShape s = check_scatter(op, data.sizes(), data.scalar_type(), indices, updates, true);
  if (data.is_contiguous()) {
    at::Tensor out = data;
    scatter_into(op, out, data.sizes(), indices, updates, red, s, nullptr);
  } else {
    at::Tensor out = data.contiguous();
    scatter_into(op, out, data.sizes(), indices, updates, red, s, nullptr);
    const_cast<at::Tensor&>(data).copy_(out);
  }
}

at::Tensor scatter_nd_of_shape_cpu(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                   c10::string_view reduction) {
  const char* op = "scatter_nd_of_shape";
  const ScatterReduction red = parse_reduction(op, reduction);
  const at::IntArrayRef sh = C10_AS_INTARRAYREF_SLOW(shape);
  const ScatterShape s = check_scatter(op, sh, updates.scalar_type(), indices, updates, false);
  at::Tensor out = at::zeros(sh, updates.options());
  scatter_into(op, out, sh, indices, updates, red, s, nullptr);
  return out;
}

at::Tensor masked_scatter_nd_of_shape_cpu(c10::SymIntArrayRef shape, const at::Tensor& indices,
                                          const at::Tensor& updates, int64_t masked_value,
                                          c10::string_view reduction) {
  const char* op = "masked_scatter_nd_of_shape";
  const ScatterReduction red = parse_reduction(op, reduction);
  const at::IntArrayRef sh = C10_AS_INTARRAYREF_SLOW(shape);
  const ScatterShape s = check_masked_scatter(sh, indices, updates);
  at::Tensor out = at::zeros(sh, updates.options());
  scatter_into(op, out, sh, indices, updates, red, s, &masked_value);
  return out;
}

}  // namespace teachcompute_ext

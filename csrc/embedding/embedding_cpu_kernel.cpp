// embedding and embedding_bag on the CPU, compiled once per ISA.
// Forward: embedding copies rows in parallel; embedding_bag sums (scaled for
// mean and per-sample weights) the rows of each bag straight into its output
// row with the package's one scatter kernel (one group per bag), so the
// [num_indices, dim] gathered matrix is never built. max keeps the argmax row
// of every (bag, column) for its backward.
// Backward: the dense weight gradient is a scatter-add of gradient rows with
// many repeated destinations: the ScatterND kernel (bucketed by destination,
// deterministic, parallel over destinations), reading grad rows through a
// row mapping (the bag of each index) and scales, again without materializing.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "common/grain.h"
#include "embedding/embedding.h"
#include "scatter_nd/scatter_rows.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

// An int64 array left uninitialized: zero-filling the per-index arrays (and
// faulting their pages in twice) cost as much as the bag sums themselves.
struct Buf {
  std::unique_ptr<int64_t[]> p;
  int64_t n = 0;
  explicit Buf(int64_t size = 0) : p(new int64_t[std::max<int64_t>(size, 1)]), n(size) {}
  int64_t size() const { return n; }
  int64_t* data() { return p.get(); }
  const int64_t* data() const { return p.get(); }
  int64_t& operator[](int64_t i) { return p[i]; }
  int64_t operator[](int64_t i) const { return p[i]; }
};

// Each index as an int64 row of weight, checked before any use.
Buf checked_rows(const char* op, const at::Tensor& indices, int64_t num) {
  const at::Tensor idx = indices.contiguous();
  const int64_t n = idx.numel();
  Buf rows(n);
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_rows", [&] {
    const index_t* p = idx.const_data_ptr<index_t>();
    at::parallel_for(0, n, kIndexTaskItems, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const int64_t v = static_cast<int64_t>(p[i]);
        TORCH_CHECK_INDEX(v >= 0 && v < num, "teachcompute_ext.", op, ": index ", v,
                          " out of range for argument 'indices' (weight has ", num, " rows; entry ", i, ")");
        rows[i] = v;
      }
    });
  });
  return rows;
}

// Throws, naming the first entry of rows[lo, hi) outside [0, num). The min/max
// scan vectorizes; a check-and-throw per entry does not.
template <typename I>
void check_index_range(const char* op, const I* rows, int64_t lo, int64_t hi, int64_t num) {
  I mn = 0, mx = 0;
  for (int64_t i = lo; i < hi; ++i) {
    mn = std::min(mn, rows[i]);
    mx = std::max(mx, rows[i]);
  }
  if (mn >= 0 && static_cast<int64_t>(mx) < num) return;
  for (int64_t i = lo; i < hi; ++i) {
    const int64_t v = static_cast<int64_t>(rows[i]);
    TORCH_CHECK_INDEX(v >= 0 && v < num, "teachcompute_ext.", op, ": index ", v,
                      " out of range for argument 'indices' (weight has ", num, " rows; entry ", i, ")");
  }
}

// Bag b holds positions [begin[b], begin[b + 1]) of the flattened indices.
std::vector<int64_t> bag_bounds(const char* op, const at::Tensor& indices, const std::optional<at::Tensor>& offsets,
                                int64_t bags, bool include_last_offset) {
  const int64_t n = indices.numel();
  std::vector<int64_t> begin(bags + 1);
  if (indices.dim() == 2) {
    const int64_t len = indices.size(1);
    for (int64_t b = 0; b <= bags; ++b) begin[b] = b * len;
    return begin;
  }
  const at::Tensor off = offsets->contiguous();
  std::vector<int64_t> o(off.numel());
  AT_DISPATCH_INDEX_TYPES(off.scalar_type(), "embedding_bag_offsets", [&] {
    const index_t* p = off.const_data_ptr<index_t>();
    for (int64_t i = 0; i < off.numel(); ++i) o[i] = static_cast<int64_t>(p[i]);
  });
  if (!o.empty()) {
    TORCH_CHECK_VALUE(o[0] == 0, "teachcompute_ext.", op, ": offsets[0] must be 0, got ", o[0]);
  }
  for (size_t i = 1; i < o.size(); ++i) {
    TORCH_CHECK_VALUE(o[i] >= o[i - 1], "teachcompute_ext.", op, ": 'offsets' must be non-decreasing, got offsets[", i,
                      "] = ", o[i], " after offsets[", i - 1, "] = ", o[i - 1]);
  }
  for (size_t i = 0; i < o.size(); ++i) {
    TORCH_CHECK_VALUE(o[i] <= n, "teachcompute_ext.", op, ": offsets[", i, "] = ", o[i],
                      " is past the end of 'indices' (", n, " entries)");
  }
  for (int64_t b = 0; b < bags; ++b) begin[b] = o[b];
  // include_last_offset: the last offset ends the last bag, as documented by
  // torch (which, given a last offset short of the end, ignores the tail in
  // float32 but not in float64); indices past it count for no bag.
  begin[bags] = include_last_offset ? o[bags] : n;
  return begin;
}

struct BagPlan {
  Buf rows;                     // weight row of each position
  std::vector<int64_t> bounds;  // bag b: positions order[bounds[b]..bounds[b+1]) (padding removed)
  Buf order;                    // positions that count, bag after bag (order.n of them)
  Buf bag_of;                   // bag of each position, -1 when it counts for none (backward only)
};

BagPlan plan_bags(const char* op, const at::Tensor& weight, const at::Tensor& indices,
                  const std::optional<at::Tensor>& offsets, int64_t bags, int64_t padding, bool include_last_offset,
                  bool need_bag_of) {
  BagPlan p;
  p.rows = checked_rows(op, indices, weight.size(0));
  const int64_t n = p.rows.size();
  const std::vector<int64_t> begin = bag_bounds(op, indices, offsets, bags, include_last_offset);
  p.bounds.assign(bags + 1, 0);
  p.order = Buf(n);
  if (need_bag_of) {
    p.bag_of = Buf(n);
    std::fill(p.bag_of.data(), p.bag_of.data() + n, -1);
  }
  if (padding < 0) {
    // No padding: every position of a bag counts, the plan is the bag layout
    // itself, built in parallel (serially it cost more than the bag sums).
    const int64_t first = begin[0];
    p.order.n = begin[bags] - first;
    for (int64_t b = 0; b <= bags; ++b) p.bounds[b] = begin[b] - first;
    at::parallel_for(0, bags, kBagPlanTaskItems, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        for (int64_t i = begin[b]; i < begin[b + 1]; ++i) {
          p.order[i - first] = i;
          if (need_bag_of) p.bag_of[i] = b;
        }
      }
    });
    return p;
  }
  int64_t used = 0;
  for (int64_t b = 0; b < bags; ++b) {
    p.bounds[b] = used;
    for (int64_t i = begin[b]; i < begin[b + 1]; ++i) {
      if (p.rows[i] == padding) continue;
      p.order[used++] = i;
      if (need_bag_of) p.bag_of[i] = b;
    }
  }
  p.bounds[bags] = used;
  p.order.n = used;
  return p;
}

// Per-position scale: per-sample weight (sum) or 1 / (entries of its bag) (mean).
std::vector<double> bag_scales(const BagPlan& p, BagMode mode, const std::optional<at::Tensor>& psw) {
  std::vector<double> scale;
  if (psw.has_value()) {
    const at::Tensor w = psw->contiguous().to(at::kDouble);
    const double* q = w.const_data_ptr<double>();
    scale.assign(q, q + w.numel());
  } else if (mode == BagMode::MEAN) {
    scale.assign(p.rows.size(), 0.0);
    at::parallel_for(0, static_cast<int64_t>(p.bounds.size()) - 1, kBagPlanTaskItems, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t cnt = p.bounds[b + 1] - p.bounds[b];
        for (int64_t j = p.bounds[b]; j < p.bounds[b + 1]; ++j) scale[p.order[j]] = 1.0 / static_cast<double>(cnt);
      }
    });
  }
  return scale;
}

}  // namespace

// Each task checks its own indices, then copies their rows, in one parallel
// region read straight from the index tensor (a checked int64 copy of the
// indices first was a second region and pass: 20000x33 bfloat16, 4096 indices,
// 10.9 us slower than torch's call).
void embedding_kernel(const at::Tensor& weight, const at::Tensor& indices, at::Tensor& out) {
  const at::Tensor idx = indices.contiguous();
  const int64_t n = idx.numel(), num = weight.size(0);
  const int64_t bytes = weight.size(1) * static_cast<int64_t>(weight.element_size());
  const char* src = static_cast<const char*>(weight.const_data_ptr());
  char* dst = static_cast<char*>(out.mutable_data_ptr());
  AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding", [&] {
    const index_t* rows = idx.const_data_ptr<index_t>();
    at::parallel_for(0, n, grain_for(bytes, kCopyTaskBytes), [&](int64_t b, int64_t e) {
      check_index_range("embedding", rows, b, e, num);
      for (int64_t i = b; i < e; ++i) std::memcpy(dst + i * bytes, src + static_cast<int64_t>(rows[i]) * bytes, bytes);
    });
  });
}

void embedding_backward_kernel(const at::Tensor& grad, const at::Tensor& indices, int64_t padding, at::Tensor& gw) {
  Buf dest = checked_rows("embedding_backward", indices, gw.size(0));
  if (padding >= 0) {
    for (int64_t i = 0; i < dest.size(); ++i) dest[i] = dest[i] == padding ? -1 : dest[i];  // no gradient
  }
  scatter_rows(gw, dest.data(), dest.size(), grad, nullptr, nullptr, ScatterReduction::ADD);
}

void embedding_bag_kernel(const BagInputs& in, at::Tensor& out, at::Tensor& argmax) {
  const char* op = "embedding_bag";
  const at::Tensor& w = in.weight;
  const at::Tensor& indices = in.indices;
  const auto& offsets = in.offsets;
  const auto& psw = in.psw;
  const BagMode mode = in.args.mode;
  const int64_t bags = in.args.bags, padding = in.args.padding;
  const bool include_last_offset = in.include_last_offset;
  const int64_t dim = w.size(1);
  if (padding < 0 && mode != BagMode::MAX) {
    // The common case, no padding: each bag is a contiguous run of indices, summed
    // straight into its output row by the scatter family's bag_sum kernel.
    // int64 indices are only checked, not copied.
    // int64 indices are checked by each task just before it sums its bags,
    // inside the same parallel region (a separate checking pass was one more
    // fork-join and read of the indices: 14% of the kernel's time on 4096
    // bags of 32 Zipf rows of a 20000x96 table).
    Buf converted;
    const bool check = indices.scalar_type() == at::kLong;
    const int64_t num = w.size(0), n = indices.numel();
    const int64_t* rows_ptr;
    if (check) {
      rows_ptr = indices.const_data_ptr<int64_t>();
    } else {
      converted = checked_rows(op, indices, num);
      rows_ptr = converted.data();
    }
    const std::vector<int64_t> begin = bag_bounds(op, indices, offsets, bags, include_last_offset);
    // Entries past the last bag's end count for no bag but must be in range too.
    if (check) check_index_range<int64_t>(op, rows_ptr, begin[bags], n, num);
    const at::Tensor pw = psw.has_value() ? psw->contiguous() : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "embedding_bag_sum", [&] {
      const scalar_t* wp = w.const_data_ptr<scalar_t>();
      const scalar_t* pp = pw.defined() ? pw.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
      const int64_t per_bag = bags > 0 ? (begin[bags] - begin[0]) / bags + 1 : 1;
      at::parallel_for(0, bags, grain_for(per_bag * dim + 1, kRowSumTaskWork), [&](int64_t b0, int64_t b1) {
        if (check) check_index_range<int64_t>(op, rows_ptr, begin[b0], begin[b1], num);
        for (int64_t b = b0; b < b1; ++b) {
          const int64_t cnt = begin[b + 1] - begin[b];
          const double post = (mode == BagMode::MEAN && cnt > 0) ? 1.0 / static_cast<double>(cnt) : 1.0;
          bag_sum<scalar_t>(op_ + b * dim, wp, rows_ptr + begin[b], cnt, begin[b1] - begin[b], dim,
                            pp ? pp + begin[b] : nullptr, post);
        }
      });
    });
    return;
  }
  const BagPlan p = plan_bags(op, w, indices, offsets, bags, padding, include_last_offset, /*need_bag_of=*/false);
  if (mode != BagMode::MAX) {
    // out is uninitialized: the kernel writes every row once (zeros for an empty bag).
    const std::vector<double> scale = bag_scales(p, mode, psw);
    std::vector<int64_t> group_row(bags);
    for (int64_t b = 0; b < bags; ++b) group_row[b] = b;
    scatter_groups(out, group_row.data(), bags, p.bounds.data(), p.order.data(), p.order.size(), w, p.rows.data(),
                   scale.empty() ? nullptr : scale.data(), ScatterReduction::ADD, /*out_is_zero=*/true);
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "embedding_bag_max", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* wp = w.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    int64_t* ap = argmax.mutable_data_ptr<int64_t>();
    at::parallel_for(0, bags, 1, [&](int64_t b0, int64_t b1) {  // a bag of rows each: heavy enough alone
      std::vector<A> best(dim);
      for (int64_t b = b0; b < b1; ++b) {
        int64_t* arg = ap + b * dim;
        for (int64_t j = p.bounds[b]; j < p.bounds[b + 1]; ++j) {
          const int64_t row = p.rows[p.order[j]];
          const scalar_t* src = wp + row * dim;
          for (int64_t c = 0; c < dim; ++c) {
            const A v = static_cast<A>(src[c]);
            if (arg[c] < 0 || v > best[c]) {  // the first maximum wins, as torch
              best[c] = v;
              arg[c] = row;
            }
          }
        }
        for (int64_t c = 0; c < dim; ++c) {
          if (arg[c] >= 0) op_[b * dim + c] = static_cast<scalar_t>(best[c]);
        }
      }
    });
  });
}

void embedding_bag_backward_kernel(const BagInputs& in, const at::Tensor& g, const at::Tensor& max_indices,
                                   at::Tensor& gw, at::Tensor& gpsw) {
  const at::Tensor& weight = in.weight;
  const auto& psw = in.psw;
  const BagMode mode = in.args.mode;
  const int64_t bags = in.args.bags, dim = weight.size(1);
  const BagPlan p = plan_bags("embedding_bag_backward", weight, in.indices, in.offsets, bags, in.args.padding,
                              in.include_last_offset, /*need_bag_of=*/true);
  if (mode == BagMode::MAX) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "embedding_bag_max_backward", [&] {
      using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const int64_t* ap = max_indices.const_data_ptr<int64_t>();
      const int64_t num = gw.size(0);
      scalar_t* wp = gw.mutable_data_ptr<scalar_t>();
      // Columns split across threads: each (row, column) has one writer, bags in order.
      at::parallel_for(0, dim, kColumnTaskItems, [&](int64_t c0, int64_t c1) {
        for (int64_t b = 0; b < bags; ++b) {
          for (int64_t c = c0; c < c1; ++c) {
            const int64_t r = ap[b * dim + c];
            TORCH_CHECK_INDEX(r >= -1 && r < num, "teachcompute_ext.embedding_bag_backward: max_indices entry ", r,
                              " out of range for a weight with ", num, " rows (-1: an empty bag)");
            if (r >= 0)
              wp[r * dim + c] =
                  static_cast<scalar_t>(static_cast<A>(wp[r * dim + c]) + static_cast<A>(gp[b * dim + c]));
          }
        }
      });
    });
    return;
  }
  std::vector<int64_t> dest(p.rows.size(), -1);
  for (int64_t k = 0; k < p.order.size(); ++k) dest[p.order[k]] = p.rows[p.order[k]];
  const std::vector<double> scale = bag_scales(p, mode, psw);
  scatter_rows(gw, dest.data(), static_cast<int64_t>(dest.size()), g, p.bag_of.data(),
               scale.empty() ? nullptr : scale.data(), ScatterReduction::ADD);
  if (psw.has_value() && p.order.size() > 0) {
    // d out[b] / d psw[i] = weight[row_i]: the gradient is <grad[b], weight[row_i]>.
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "embedding_bag_psw_backward", [&] {
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      const scalar_t* wp = weight.const_data_ptr<scalar_t>();
      scalar_t* out = gpsw.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, p.order.size(), kBagPlanTaskItems, [&](int64_t j0, int64_t j1) {
        for (int64_t j = j0; j < j1; ++j) {
          const int64_t i = p.order[j];
          const scalar_t* a = gp + p.bag_of[i] * dim;
          const scalar_t* bw = wp + p.rows[i] * dim;
          double s = 0;
          for (int64_t c = 0; c < dim; ++c) s += static_cast<double>(a[c]) * static_cast<double>(bw[c]);
          out[i] = static_cast<scalar_t>(s);
        }
      });
    });
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

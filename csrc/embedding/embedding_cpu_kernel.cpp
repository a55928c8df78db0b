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
// The backward fused with an optimizer step (at the end): see there.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "common/grain.h"
#include "common/vec_io.h"
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

// Each position's destination row: its row when it counts, -1 (skipped) for
// padding and positions past the last bag.
std::vector<int64_t> counted_rows(const BagPlan& p) {
  std::vector<int64_t> dest(p.rows.size(), -1);
  for (int64_t k = 0; k < p.order.size(); ++k) dest[p.order[k]] = p.rows[p.order[k]];
  return dest;
}

// per_sample_weights' gradient: d out[b] / d psw[i] = weight[row_i], so
// gpsw[i] = <grad[bag_i], weight[row_i]> (for the update: the weight before it).
void bag_psw_gradient(const BagPlan& p, const at::Tensor& g, const at::Tensor& weight, at::Tensor& gpsw) {
  if (p.order.size() == 0) return;
  const int64_t dim = weight.size(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "embedding_bag_psw_gradient", [&] {
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
  const std::vector<int64_t> dest = counted_rows(p);
  const std::vector<double> scale = bag_scales(p, mode, psw);
  scatter_rows(gw, dest.data(), static_cast<int64_t>(dest.size()), g, p.bag_of.data(),
               scale.empty() ? nullptr : scale.data(), ScatterReduction::ADD);
  if (psw.has_value()) bag_psw_gradient(p, g, weight, gpsw);
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

// ---- the backward fused with an optimizer step (embedding_update_, embedding_bag_update_) -----------
// What bounds it: the touched rows' bytes (weight and state read and written
// once each), plus the contributions' gradient rows read once; the table's
// gradient is never built. The grouping is a radix sort of the contributions,
// not a bucket per table row: a counting sort over a 1,000,000-row table
// walks a million counters for a batch that touches a few hundred rows.
namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

// Contributions grouped by destination row: keys (row << 32 | contribution),
// sorted by an LSD radix sort on the row's bits, 11 a pass; stable, so each
// row's contributions stay in index order and its sum has the same bits for
// any thread count.
struct RowGroups {
  std::vector<uint64_t> keys;
  std::vector<int64_t> starts;  // group k: keys[starts[k] .. starts[k + 1])
  int64_t size() const { return static_cast<int64_t>(starts.size()) - 1; }
  int64_t row(int64_t k) const { return static_cast<int64_t>(keys[starts[k]] >> 32); }
};

RowGroups group_by_row(const char* op, const int64_t* rows, int64_t n, int64_t num_rows) {
  TORCH_CHECK(n < (int64_t(1) << 32), "teachcompute_ext.", op, ": more than 2^32 contributions in one update");
  RowGroups g;
  g.keys.reserve(n);
  for (int64_t j = 0; j < n; ++j) {
    if (rows[j] >= 0) g.keys.push_back((static_cast<uint64_t>(rows[j]) << 32) | static_cast<uint64_t>(j));
  }
  const int64_t m = static_cast<int64_t>(g.keys.size());
  int bits = 0;
  while ((int64_t(1) << bits) < num_rows) ++bits;
  constexpr int kRadix = 11;
  constexpr uint64_t kMask = (uint64_t(1) << kRadix) - 1;
  std::vector<uint64_t> tmp(m);
  std::vector<int64_t> count(size_t(1) << kRadix);
  for (int shift = 32; shift < 32 + bits; shift += kRadix) {
    std::fill(count.begin(), count.end(), 0);
    for (const uint64_t k : g.keys) ++count[(k >> shift) & kMask];
    int64_t sum = 0;
    for (int64_t& c : count) {
      const int64_t here = c;
      c = sum;
      sum += here;
    }
    for (const uint64_t k : g.keys) tmp[count[(k >> shift) & kMask]++] = k;
    g.keys.swap(tmp);
  }
  g.starts.reserve(m + 1);
  for (int64_t i = 0; i < m; ++i) {
    if (i == 0 || (g.keys[i] >> 32) != (g.keys[i - 1] >> 32)) g.starts.push_back(i);
  }
  g.starts.push_back(m);
  return g;
}

// One optimizer step on a row of dim entries, at::vec vectors at a time (a
// scalar loop's sqrt and division cost 2.8 ms of the 4.2 ms of an update of
// 2048 bags of 20 into 20000x64); g (the summed gradient, in the accumulation
// type A) may be overwritten. The state is in A too (float for the half types
// and float32, double for float64).
template <typename T, typename A>
void update_row(T* w, A* s1, A* s2, A* g, int64_t dim, const RowUpdate& u, A step_size) {
  using V = Vectorized<A>;
  using WIO = vec_io::IO<T>;
  constexpr int64_t L = V::size();
  const V lr(static_cast<A>(u.lr)), wd(static_cast<A>(u.weight_decay)), eps(static_cast<A>(u.eps));
  const V one(A(1));
  // f(w, g, j) -> the new w of entries [j, j + L) (or fewer at the end), given their old w and g.
  auto each = [&](auto f) {
    for (int64_t j = 0; j < dim; j += L) {
      const int64_t c = std::min(L, dim - j);
      const V wv = c == L ? WIO::load(w + j) : WIO::load_count(w + j, c);
      const V gv = c == L ? V::loadu(g + j) : V::loadu(g + j, c);
      const V nw = f(wv, gv, j, c);
      if (c == L) {
        WIO::store(w + j, nw);
      } else {
        WIO::store_part(w + j, nw, c);
      }
    }
  };
  auto load = [](const A* p, int64_t c) { return c == L ? V::loadu(p) : V::loadu(p, c); };
  auto store = [](A* p, const V& v, int64_t c) { c == L ? v.store(p) : v.store(p, c); };
  switch (u.kind) {
    case RowOptimizer::SGD: each([&](V wv, V gv, int64_t, int64_t) { return wv - lr * (gv + wd * wv); }); return;
    case RowOptimizer::ROWWISE_ADAGRAD: {
      V sq(A(0));
      for (int64_t j = 0; j < dim; j += L) {
        const int64_t c = std::min(L, dim - j);
        const V wv = c == L ? WIO::load(w + j) : WIO::load_count(w + j, c);
        const V gv = load(g + j, c) + wd * wv;  // lanes past the end: 0 + wd * 0
        store(g + j, gv, c);
        sq = sq + gv * gv;
      }
      A lanes[L];
      sq.store(lanes);
      A squares = 0;
      for (int64_t l = 0; l < L; ++l) squares += lanes[l];
      const A s = s1[0] + (dim > 0 ? squares / static_cast<A>(dim) : A(0));
      s1[0] = s;
      const V scale(static_cast<A>(u.lr) / (std::sqrt(s) + static_cast<A>(u.eps)));
      each([&](V wv, V gv, int64_t, int64_t) { return wv - scale * gv; });
      return;
    }
    case RowOptimizer::ADAGRAD:
      each([&](V wv, V gv, int64_t j, int64_t c) {
        const V gc = gv + wd * wv;
        const V sv = load(s1 + j, c) + gc * gc;
        store(s1 + j, sv, c);
        return wv - lr * gc / (sv.sqrt() + eps);
      });
      return;
    case RowOptimizer::ADAM:
    case RowOptimizer::ADAMW: {
      const bool decoupled = u.kind == RowOptimizer::ADAMW;
      const V b1(static_cast<A>(u.beta1)), b2(static_cast<A>(u.beta2)), step(step_size);
      const V decay = decoupled ? one - lr * wd : one;
      const V l2 = decoupled ? V(A(0)) : wd;
      each([&](V wv, V gv, int64_t j, int64_t c) {
        const V gc = gv + l2 * wv;
        const V m = b1 * load(s1 + j, c) + (one - b1) * gc;
        const V v = b2 * load(s2 + j, c) + (one - b2) * gc * gc;
        store(s1 + j, m, c);
        store(s2 + j, v, c);
        return wv * decay - step * m / (v.sqrt() + eps);
      });
      return;
    }
  }
}

// Applies the optimizer to every group's row. add(k, acc) adds group k's
// contributions into acc (zeros on entry), in their sorted order.
template <typename T, typename Add>
void update_rows(const RowGroups& groups, const RowUpdate& u, at::Tensor& weight, at::Tensor& state1,
                 at::Tensor& state2, int64_t work_per_group, const Add& add) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const int64_t dim = weight.size(1);
  T* w = weight.mutable_data_ptr<T>();
  A* s1 = state1.numel() > 0 ? state1.mutable_data_ptr<A>() : nullptr;
  A* s2 = state2.numel() > 0 ? state2.mutable_data_ptr<A>() : nullptr;
  const int64_t s1_stride = u.kind == RowOptimizer::ROWWISE_ADAGRAD ? 1 : dim;
  // SparseAdam's step size: the bias corrections folded into one factor.
  const double bc1 = 1.0 - std::pow(u.beta1, static_cast<double>(u.step));
  const double bc2 = 1.0 - std::pow(u.beta2, static_cast<double>(u.step));
  const A step_size = (u.kind == RowOptimizer::ADAM || u.kind == RowOptimizer::ADAMW)
                          ? static_cast<A>(u.lr * std::sqrt(bc2) / bc1)
                          : A(0);
  // Each row's weight and state lines are fetched kAhead groups early: 2048
  // bags of 20 into 20000x64 (87% of the rows touched), Adam: 2.7 -> 1.3 ms
  // (2 threads). A 1,000,000x64 table stays at 6-7 ms: 40,000 rows far apart
  // in three 256 MB arrays of 4 KB pages, each access a TLB miss (torch's own
  // index_select of those rows from the three arrays takes 9 ms).
  constexpr int64_t kAhead = 8;
  auto prefetch = [&](int64_t k) {
    const int64_t r = groups.row(k);
    auto lines = [](const void* p, int64_t bytes) {
      for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(static_cast<const char*>(p) + b, 1, 1);
    };
    lines(w + r * dim, dim * static_cast<int64_t>(sizeof(T)));
    if (s1) lines(s1 + r * s1_stride, s1_stride * static_cast<int64_t>(sizeof(A)));
    if (s2) lines(s2 + r * dim, dim * static_cast<int64_t>(sizeof(A)));
  };
  at::parallel_for(0, groups.size(), grain_for(work_per_group, kRowSumTaskWork), [&](int64_t k0, int64_t k1) {
    std::vector<A> acc(dim);
    for (int64_t k = k0; k < std::min(k1, k0 + kAhead); ++k) prefetch(k);
    for (int64_t k = k0; k < k1; ++k) {
      if (k + kAhead < k1) prefetch(k + kAhead);
      std::fill(acc.begin(), acc.end(), A(0));
      add(k, acc.data());
      const int64_t r = groups.row(k);
      update_row<T, A>(w + r * dim, s1 ? s1 + r * s1_stride : nullptr, s2 ? s2 + r * dim : nullptr, acc.data(), dim, u,
                       step_size);
    }
  });
}

// Row contributions: contribution j adds scale[j] (1 without scales) times
// gradient row src[j] to its destination row.
template <typename T>
void update_from_rows(const char* op, const int64_t* dest, const int64_t* src, const double* scale, int64_t n,
                      const at::Tensor& grad, const RowUpdate& u, at::Tensor& weight, at::Tensor& state1,
                      at::Tensor& state2) {
  using A = std::conditional_t<std::is_same_v<T, double>, double, float>;
  const RowGroups groups = group_by_row(op, dest, n, weight.size(0));
  if (groups.size() == 0) return;
  const int64_t dim = weight.size(1);
  const T* gp = grad.const_data_ptr<T>();
  const int64_t per_group = (static_cast<int64_t>(groups.keys.size()) / groups.size() + 2) * dim;
  using V = Vectorized<A>;
  using IO = vec_io::IO<T>;
  constexpr int64_t L = V::size();
  update_rows<T>(groups, u, weight, state1, state2, per_group, [&](int64_t k, A* acc) {
    for (int64_t i = groups.starts[k]; i < groups.starts[k + 1]; ++i) {
      const int64_t j = static_cast<int64_t>(groups.keys[i] & 0xffffffffu);
      const T* row = gp + (src ? src[j] : j) * dim;
      const V s(scale ? static_cast<A>(scale[j]) : A(1));
      int64_t c = 0;
      for (; c + L <= dim; c += L) (V::loadu(acc + c) + s * IO::load(row + c)).store(acc + c);
      if (c < dim) (V::loadu(acc + c, dim - c) + s * IO::load_count(row + c, dim - c)).store(acc + c, dim - c);
    }
  });
}

}  // namespace

void embedding_update_kernel(const at::Tensor& grad, const at::Tensor& indices, int64_t padding, const RowUpdate& u,
                             at::Tensor& weight, at::Tensor& state1, at::Tensor& state2) {
  const char* op = "embedding_update_";
  Buf rows = checked_rows(op, indices, weight.size(0));  // every index checked before anything is written
  const int64_t n = rows.size();
  if (padding >= 0) {
    for (int64_t i = 0; i < n; ++i) {
      if (rows[i] == padding) rows[i] = -1;
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_update", [&] {
    update_from_rows<scalar_t>(op, rows.data(), nullptr, nullptr, n, grad, u, weight, state1, state2);
  });
}

void embedding_bag_update_kernel(const BagInputs& in, const at::Tensor& g, const at::Tensor& max_indices,
                                 const RowUpdate& u, at::Tensor& weight, at::Tensor& state1, at::Tensor& state2,
                                 at::Tensor& gpsw) {
  const char* op = "embedding_bag_update_";
  const BagMode mode = in.args.mode;
  const int64_t bags = in.args.bags, dim = weight.size(1), num = weight.size(0);
  // Every index and offset checked here, before anything is written.
  const BagPlan p = plan_bags(op, weight, in.indices, in.offsets, bags, in.args.padding, in.include_last_offset,
                              /*need_bag_of=*/true);
  if (mode == BagMode::MAX) {
    // Each (bag, column)'s gradient goes to the row its maximum came from: the
    // contributions are elements, grouped by that row.
    const int64_t* ap = max_indices.const_data_ptr<int64_t>();
    const int64_t n = bags * dim;
    for (int64_t e = 0; e < n; ++e) {
      TORCH_CHECK_INDEX(ap[e] >= -1 && ap[e] < num, "teachcompute_ext.", op, ": max_indices entry ", ap[e],
                        " out of range for a weight with ", num, " rows (-1: an empty bag)");
    }
    const RowGroups groups = group_by_row(op, ap, n, num);
    if (groups.size() == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_bag_max_update", [&] {
      using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
      const scalar_t* gp = g.const_data_ptr<scalar_t>();
      update_rows<scalar_t>(groups, u, weight, state1, state2, 2 * dim, [&](int64_t k, A* acc) {
        for (int64_t i = groups.starts[k]; i < groups.starts[k + 1]; ++i) {
          const int64_t e = static_cast<int64_t>(groups.keys[i] & 0xffffffffu);
          acc[e % dim] += static_cast<A>(gp[e]);
        }
      });
    });
    return;
  }
  const std::vector<double> scale = bag_scales(p, mode, in.psw);
  // From the weight before its update.
  if (gpsw.defined()) bag_psw_gradient(p, g, weight, gpsw);
  const std::vector<int64_t> dest = counted_rows(p);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_bag_update", [&] {
    update_from_rows<scalar_t>(op, dest.data(), p.bag_of.data(), scale.empty() ? nullptr : scale.data(),
                               static_cast<int64_t>(dest.size()), g, u, weight, state1, state2);
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

// ScatterND on the CPU, compiled once per ISA, and the row scatter the
// embedding ops share (scatter_rows.h). Three steps, all deterministic:
//  1. each index tuple -> destination row (checked: out of range is an error);
//  2. a stable bucketing of the updates by destination (counting sort when the
//     rows are few enough, else a stable sort), so duplicates keep index order;
//  3. in parallel over destinations (no two threads share one, so no races and
//     no atomics), all the updates of one destination row are applied in index
//     order to accumulators held in registers (4 vectors of columns at a time)
//     and written back once. The destination is read and written once however
//     many duplicates it has, which is where index_put_(accumulate=True) spends
//     its time. Bound: memory (each update read once); 2.1x index_add_ on the
//     issue's benchmark.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <numeric>
#include <type_traits>
#include <vector>

#include "common/grain.h"
#include "common/vec_io.h"
#include "scatter_nd/scatter_nd.h"
#include "scatter_nd/scatter_rows.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

// Where the rows applied to one destination come from: update number u
// (an entry of `order`) reads row src_row[u] of src (u itself when src_row is
// null), multiplied by scale[u] when scale is not null (add only).
template <typename scalar_t>
struct RowSource {
  const scalar_t* src;
  const int64_t* src_row;    // nullable
  const double* scale;       // nullable
  bool dst_is_zero = false;  // add only: dst is known to hold zeros, it is not read
};

// Update rows are visited in destination order, i.e. at random in memory: each
// is a latency-bound burst. Prefetching the rows kPrefetchRows ahead (up to
// 4 KB of each) keeps several in flight. Measured, 400000 rows of 1 KB into
// 100000 destinations (2 threads): 42 ms without, 23 ms with (index_add_: 32 ms).
constexpr int64_t kPrefetchRows = 4;
constexpr int64_t kPrefetchBytes = 4096;

template <typename T>
inline void prefetch_row(const T* p, int64_t slice) {
  const int64_t bytes = std::min<int64_t>(slice * static_cast<int64_t>(sizeof(T)), kPrefetchBytes);
  const char* c = reinterpret_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b);
}

template <ScatterReduction kRed, typename A>
inline A combine_scalar(A a, A b) {
  if constexpr (kRed == ScatterReduction::ADD)
    return a + b;
  else if constexpr (kRed == ScatterReduction::MUL)
    return a * b;
  else if constexpr (kRed == ScatterReduction::MAX)
    return (a != a || a > b) ? a : b;
  else
    return (a != a || a < b) ? a : b;
}

template <ScatterReduction kRed, typename V>
inline V combine_vec(const V& a, const V& b) {
  if constexpr (kRed == ScatterReduction::ADD)
    return a + b;
  else if constexpr (kRed == ScatterReduction::MUL)
    return a * b;
  else if constexpr (kRed == ScatterReduction::MAX)
    return at::vec::maximum(a, b);
  else
    return at::vec::minimum(a, b);
}

// The reduction (and whether rows are scaled) is a template parameter: the
// inner loop is a plain load-combine. Columns go in blocks of 4 vectors whose
// accumulators stay in registers while every update row streams through (the
// next block re-reads the rows from L1/L2). Measured on bags of 32 rows of 128
// floats: a run-time switch in the inner loop and an L1 buffer round trip per
// vector ran 4x slower than this.
template <typename T, ScatterReduction kRed, bool kScaled>
void apply_impl(T* dst, RowSource<T> rs, const int64_t* order, int64_t count, int64_t ahead, int64_t slice) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  constexpr int64_t B = 4 * L;
  auto row_of = [&](int64_t u) { return rs.src + (rs.src_row ? rs.src_row[u] : u) * slice; };
  auto scale_of = [&](int64_t u) { return kScaled ? static_cast<A>(rs.scale[u]) : A(1); };
  int64_t c0 = 0;
  for (; c0 + B <= slice; c0 += B) {
    V a0(0), a1(0), a2(0), a3(0);
    if (!(kRed == ScatterReduction::ADD && rs.dst_is_zero)) {
      a0 = IO<T>::load(dst + c0);
      a1 = IO<T>::load(dst + c0 + L);
      a2 = IO<T>::load(dst + c0 + 2 * L);
      a3 = IO<T>::load(dst + c0 + 3 * L);
    }
    for (int64_t j = 0; j < count; ++j) {
      if (c0 == 0 && j + kPrefetchRows < ahead) prefetch_row(row_of(order[j + kPrefetchRows]), slice);
      const T* src = row_of(order[j]) + c0;
      const V s0 = IO<T>::load(src), s1 = IO<T>::load(src + L), s2 = IO<T>::load(src + 2 * L),
              s3 = IO<T>::load(src + 3 * L);
      if constexpr (kScaled) {
        const V f(scale_of(order[j]));
        a0 = at::vec::fmadd(s0, f, a0);
        a1 = at::vec::fmadd(s1, f, a1);
        a2 = at::vec::fmadd(s2, f, a2);
        a3 = at::vec::fmadd(s3, f, a3);
      } else {
        a0 = combine_vec<kRed>(a0, s0);
        a1 = combine_vec<kRed>(a1, s1);
        a2 = combine_vec<kRed>(a2, s2);
        a3 = combine_vec<kRed>(a3, s3);
      }
    }
    IO<T>::store(dst + c0, a0);
    IO<T>::store(dst + c0 + L, a1);
    IO<T>::store(dst + c0 + 2 * L, a2);
    IO<T>::store(dst + c0 + 3 * L, a3);
  }
  // Remaining columns (fewer than 4 vectors): one at a time.
  for (int64_t c = c0; c < slice; ++c) {
    A a = (kRed == ScatterReduction::ADD && rs.dst_is_zero) ? A(0) : static_cast<A>(dst[c]);
    for (int64_t j = 0; j < count; ++j) {
      const A v = static_cast<A>(row_of(order[j])[c]);
      a = kScaled ? a + v * scale_of(order[j]) : combine_scalar<kRed>(a, v);
    }
    dst[c] = static_cast<T>(a);
  }
}

template <typename T>
void apply(T* dst, RowSource<T> rs, const int64_t* order, int64_t count, int64_t ahead, int64_t slice, int reduction) {
  switch (static_cast<ScatterReduction>(reduction)) {
    case ScatterReduction::NONE: {
      // The last update in index order wins.
      const T* src = rs.src + (rs.src_row ? rs.src_row[order[count - 1]] : order[count - 1]) * slice;
      std::copy(src, src + slice, dst);
      return;
    }
    case ScatterReduction::ADD:
      if (rs.scale != nullptr) return apply_impl<T, ScatterReduction::ADD, true>(dst, rs, order, count, ahead, slice);
      return apply_impl<T, ScatterReduction::ADD, false>(dst, rs, order, count, ahead, slice);
    case ScatterReduction::MUL: return apply_impl<T, ScatterReduction::MUL, false>(dst, rs, order, count, ahead, slice);
    case ScatterReduction::MAX: return apply_impl<T, ScatterReduction::MAX, false>(dst, rs, order, count, ahead, slice);
    default: return apply_impl<T, ScatterReduction::MIN, false>(dst, rs, order, count, ahead, slice);
  }
}

// Integer and bool data: exact, in the data's own type. Rows stream through
// the destination one after the other (the compiler vectorizes the inner loop);
// add and mul wrap around as torch's do (computed unsigned: signed overflow is
// undefined in C++). Integer scatters are not benchmarked against torch yet.
template <typename T, ScatterReduction kRed>
void apply_int_impl(T* dst, const T* src, const int64_t* src_row, const int64_t* order, int64_t count, int64_t slice) {
  using U = std::make_unsigned_t<T>;
  for (int64_t j = 0; j < count; ++j) {
    const T* row = src + (src_row ? src_row[order[j]] : order[j]) * slice;
    for (int64_t c = 0; c < slice; ++c) {
      if constexpr (kRed == ScatterReduction::ADD) {
        dst[c] = static_cast<T>(static_cast<U>(dst[c]) + static_cast<U>(row[c]));
      } else if constexpr (kRed == ScatterReduction::MUL) {
        dst[c] = static_cast<T>(static_cast<U>(dst[c]) * static_cast<U>(row[c]));
      } else if constexpr (kRed == ScatterReduction::MAX) {
        dst[c] = std::max(dst[c], row[c]);
      } else {
        dst[c] = std::min(dst[c], row[c]);
      }
    }
  }
}

template <typename T>
void apply_int(T* dst, const T* src, const int64_t* src_row, const int64_t* order, int64_t count, int64_t slice,
               ScatterReduction red) {
  if constexpr (std::is_same_v<T, bool>) {
    TORCH_INTERNAL_ASSERT(red == ScatterReduction::NONE, "bool scatter takes none only");
  } else {
    switch (red) {
      case ScatterReduction::ADD:
        return apply_int_impl<T, ScatterReduction::ADD>(dst, src, src_row, order, count, slice);
      case ScatterReduction::MUL:
        return apply_int_impl<T, ScatterReduction::MUL>(dst, src, src_row, order, count, slice);
      case ScatterReduction::MAX:
        return apply_int_impl<T, ScatterReduction::MAX>(dst, src, src_row, order, count, slice);
      case ScatterReduction::MIN:
        return apply_int_impl<T, ScatterReduction::MIN>(dst, src, src_row, order, count, slice);
      default: break;
    }
  }
  // none: the last update in index order wins.
  const T* last = src + (src_row ? src_row[order[count - 1]] : order[count - 1]) * slice;
  std::copy(last, last + slice, dst);
}

// Whole rows of up to NV vectors (128 floats with AVX512) stay in registers, so
// each row is walked once (two 64-float passes re-read each row's index and
// missed again on its second half).
// A gathered row is a cache miss unless it is hot, so the loop keeps misses in
// flight: while it adds row j it prefetches row j + kBagAhead, one prefetch per
// cache line. Too many lines in flight stall the prefetches themselves on the
// full fill buffers (perf: 25-35% of the loop's samples on one prefetch), so
// the distance is short. Measured (4096 bags of 32 rows, 2 threads, same
// process, ratio to F.embedding_bag, geometric mean over float32 and bfloat16
// tables of 100000x128, 20000x96 and 100000x300, uniform and Zipf ids): two
// rows per step with all lines 48 rows ahead (the loop before, tuned on Zipf
// ids alone) 0.83x, 16 ahead 0.87x; one row per step 8 ahead 0.90x, 16 ahead
// 0.93x, 24 ahead 0.91x, 32 ahead 0.89x.
constexpr int64_t kBagAhead = 16;

// One block of columns [c0, c0 + (NV - 1) * L + tail) of every row of the bag,
// summed in NV vector registers; tail < L masks the block's last vector.
template <typename T, bool kWeighted, int NV>
void bag_block(T* dst, const T* src, const int64_t* rows, int64_t count, int64_t ahead, int64_t slice, const T* w,
               double post, int64_t c0, int64_t tail) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  // Vectors per cache line: 1 for float32, 2 for 16-bit types (L elements of
  // 2 bytes each are half a line).
  constexpr int kPerLine = std::max<int>(1, static_cast<int>(64 / (L * sizeof(T))));
  V acc[NV];
  for (int k = 0; k < NV; ++k) acc[k] = V(0);
  for (int64_t j = 0; j < count; ++j) {
    const T* pf = src + rows[j + kBagAhead < ahead ? j + kBagAhead : j] * slice + c0;
    const T* r = src + rows[j] * slice + c0;
    const V f(kWeighted ? static_cast<A>(w[j]) : A(1));
#pragma GCC unroll 8
    for (int k = 0; k < NV; ++k) {
      if constexpr (kWeighted) {
        acc[k] = at::vec::fmadd(tile_load<T, NV>(r, k, tail), f, acc[k]);
      } else {
        acc[k] += tile_load<T, NV>(r, k, tail);
      }
      if (k % kPerLine == 0) __builtin_prefetch(pf + k * L, 0, 3);
    }
  }
  const V vpost(static_cast<A>(post));
#pragma GCC unroll 8
  for (int k = 0; k < NV; ++k) tile_store<T, NV>(dst + c0, k, tail, acc[k] * vpost);
}

template <typename T, bool kWeighted>
void bag_sum_impl(T* dst, const T* src, const int64_t* rows, int64_t count, int64_t ahead, int64_t slice, const T* w,
                  double post) {
  // Up to 8 vectors of accumulators with 32 vector registers (AVX512), 4 with
  // 16. The columns past the last full block are one block of their own width
  // with a masked last vector, so they too are walked once per row with the
  // prefetch: dim 300 = 2 x 128 + 44 took a 16-column loop and 12 scalar
  // columns (0.64x F.embedding_bag at 512 bags), dim 96 = 64 + 32 two walks.
  constexpr int64_t L = IO<T>::L;
  constexpr int kMax = L >= 16 ? 8 : 4;
  constexpr int64_t B = kMax * L;
  int64_t c0 = 0;
  for (; c0 + B <= slice; c0 += B) bag_block<T, kWeighted, kMax>(dst, src, rows, count, ahead, slice, w, post, c0, L);
  const int64_t rest = slice - c0;
  if (rest == 0) return;
  with_tile<T, B>(rest, [&](auto k) {
    constexpr int K = decltype(k)::value;
    bag_block<T, kWeighted, K>(dst, src, rows, count, ahead, slice, w, post, c0, rest - (K - 1) * L);
  });
}

}  // namespace

template <typename T>
void bag_sum(T* dst, const T* src, const int64_t* rows, int64_t count, int64_t ahead, int64_t slice, const T* w,
             double post) {
  if (w != nullptr) {
    bag_sum_impl<T, true>(dst, src, rows, count, ahead, slice, w, post);
  } else {
    bag_sum_impl<T, false>(dst, src, rows, count, ahead, slice, w, post);
  }
}

template void bag_sum<float>(float*, const float*, const int64_t*, int64_t, int64_t, int64_t, const float*, double);
template void bag_sum<double>(double*, const double*, const int64_t*, int64_t, int64_t, int64_t, const double*, double);
template void bag_sum<c10::Half>(c10::Half*, const c10::Half*, const int64_t*, int64_t, int64_t, int64_t,
                                 const c10::Half*, double);
template void bag_sum<c10::BFloat16>(c10::BFloat16*, const c10::BFloat16*, const int64_t*, int64_t, int64_t, int64_t,
                                     const c10::BFloat16*, double);

namespace {

constexpr int64_t kSkip = -1;  // a masked update

// Destination row of every update, or kSkip for masked ones.
template <typename index_t>
std::vector<int64_t> destination_rows(const char* op, const index_t* idx, const ScatterShape& s, at::IntArrayRef shape,
                                      const int64_t* masked_value) {
  std::vector<int64_t> rows(s.n_updates);
  at::parallel_for(0, s.n_updates, kScatterRowTaskItems, [&](int64_t b, int64_t e) {
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
        TORCH_CHECK_INDEX(v >= -size && v < size, "teachcompute_ext.", op, ": index ", v, " out of range for dim ", d,
                          " of size ", size, " (argument 'indices', entry ", i, ")");
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
void bucketize(const int64_t* rows, int64_t n, int64_t n_rows, std::vector<int64_t>& order,
               std::vector<Segment>& segs) {
  order.clear();
  segs.clear();
  if (n_rows <= 4 * n + (1 << 20)) {
    segs.reserve(std::min<int64_t>(n, n_rows));
    std::vector<int64_t> start(n_rows + 1, 0);
    for (int64_t i = 0; i < n; ++i) {
      if (rows[i] != kSkip) ++start[rows[i] + 1];
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

}  // namespace

void scatter_groups(at::Tensor& out, const int64_t* group_row, int64_t groups, const int64_t* bounds,
                    const int64_t* order, int64_t order_size, const at::Tensor& src, const int64_t* src_row,
                    const double* scale, ScatterReduction red, bool out_is_zero) {
  const int64_t n_rows = out.size(0);
  const int64_t slice = n_rows == 0 ? 0 : out.numel() / n_rows;
  if (slice == 0 || groups == 0) return;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, slice));
  if (at::isIntegralType(out.scalar_type(), /*includeBool=*/true)) {
    // ScatterND only: no scale, out holds data.
    TORCH_INTERNAL_ASSERT(scale == nullptr && !out_is_zero, "integer scatter_groups: no scale, out holds data");
    AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, out.scalar_type(), "scatter_groups_int_cpu", [&] {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const scalar_t* sp = src.const_data_ptr<scalar_t>();
      at::parallel_for(0, groups, grain, [&](int64_t b, int64_t e) {
        for (int64_t g = b; g < e; ++g) {
          if (bounds[g + 1] == bounds[g]) continue;
          apply_int<scalar_t>(o + group_row[g] * slice, sp, src_row, order + bounds[g], bounds[g + 1] - bounds[g],
                              slice, red);
        }
      });
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "scatter_groups_cpu", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const RowSource<scalar_t> rs{src.const_data_ptr<scalar_t>(), src_row, scale, out_is_zero};
    at::parallel_for(0, groups, grain, [&](int64_t b, int64_t e) {
      for (int64_t g = b; g < e; ++g) {
        if (bounds[g + 1] == bounds[g]) {
          if (out_is_zero) std::fill(o + group_row[g] * slice, o + (group_row[g] + 1) * slice, scalar_t(0));
          continue;
        }
        apply<scalar_t>(o + group_row[g] * slice, rs, order + bounds[g], bounds[g + 1] - bounds[g],
                        order_size - bounds[g], slice, static_cast<int>(red));
      }
    });
  });
}

void scatter_rows(at::Tensor& out, const int64_t* dest, int64_t n, const at::Tensor& src, const int64_t* src_row,
                  const double* scale, ScatterReduction red) {
  if (out.numel() == 0 || n == 0) return;
  std::vector<int64_t> order;
  std::vector<Segment> segs;
  bucketize(dest, n, out.size(0), order, segs);
  std::vector<int64_t> group_row(segs.size()), bounds(segs.size() + 1, 0);
  for (size_t g = 0; g < segs.size(); ++g) {
    group_row[g] = segs[g].row;
    bounds[g] = segs[g].begin;
    bounds[g + 1] = segs[g].end;
  }
  scatter_groups(out, group_row.data(), static_cast<int64_t>(segs.size()), bounds.data(), order.data(),
                 static_cast<int64_t>(order.size()), src, src_row, scale, red, false);
}

void scatter_nd_kernel(const char* op, at::Tensor& out, at::IntArrayRef shape, const at::Tensor& indices,
                       const at::Tensor& updates, ScatterReduction red, const ScatterShape& s,
                       const int64_t* masked_value) {
  std::vector<int64_t> rows;
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "scatter_nd_indices", [&] {
    rows = destination_rows<index_t>(op, indices.const_data_ptr<index_t>(), s, shape, masked_value);
  });
  // The indices were checked even when there is nothing to write.
  if (s.slice == 0 || out.numel() == 0) return;
  at::Tensor out2d = out.view({s.n_rows, s.slice});  // same storage: destinations as rows
  scatter_rows(out2d, rows.data(), static_cast<int64_t>(rows.size()), updates, nullptr, nullptr, red);
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

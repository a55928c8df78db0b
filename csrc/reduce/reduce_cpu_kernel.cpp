// Reductions along dims on the CPU (reduce_sum, reduce_mean, reduce_max,
// reduce_min, logsumexp), compiled once per ISA: the launch over the plan of
// reduce.h and the kernels for its ROWS and COLS layouts (sum rows reuse
// vector_sum's pairwise span sum). Max/min keep, per lane, the best value and
// the index where it was first seen (blends, no branches); lanes are merged
// preferring the lowest index, so ties and NaN give torch's index (the first).
// COLS kernels load one vector of 64 neighbouring outputs per reduced element:
// a reduction over an outer dim streams rows at full vector width with no
// transposing copy. Long reductions are split along their outermost reduced
// dim into pieces of about 64K elements whose partial results merge in piece
// order, so few outputs still use every thread (reduce_sum over dim 0 of a
// (140001, 2) tensor was one serial loop) and results do not depend on the
// thread count. Bound: memory (each input element read once).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/grain.h"
#include "common/rounding.h"
#include "common/vec_io.h"
#include "reduce/reduce.h"
#include "reduce/sum_cpu.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

// Outputs handled together by a COLS kernel: 64 neighbouring outputs
// (256 bytes of float32 per reduced element: four AVX512 or eight AVX2 loads).
constexpr int64_t kColTile = 64;

template <typename T, typename F>
inline void with_col_tile(int64_t width, F f) {
  vec_io::with_tile<T, kColTile>(width, f);
}

// Lanes of K vectors into out[0 .. width), converted.
template <typename Out, typename A, int K>
inline void store_tile(const Vectorized<A> (&v)[K], int64_t width, Out* out) {
  constexpr int64_t L = Vectorized<A>::size();
  alignas(64) A lanes[K * L];
  for (int j = 0; j < K; ++j) v[j].store(lanes + j * L);
  for (int64_t c = 0; c < width; ++c) out[c] = static_cast<Out>(lanes[c]);
}

// ---- sum, COLS: out[c] = sum_r p[r * stride + c], c < width <= kColTile --
// Two-level cascade per lane (blocks of 64 rows in the vector unit, block sums
// added in double) keeps a 4096-row float32 column sum within a few ulps. A
// tile of one or two vectors runs U independent chains of rows (an add's
// latency is 4 cycles, its throughput 2 a cycle), so a narrow tile is not
// latency-bound.
template <typename T, int K>
void sum_tile(const T* p, int64_t R, int64_t stride, int64_t width, double* out) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  constexpr int U = K <= 2 ? 4 : (K <= 4 ? 2 : 1);
  constexpr int64_t kRowBlock = 64;
  const int64_t tail = width - (K - 1) * L;
  double total[K * L] = {};
  for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) {
    V acc[U][K];
    for (int u = 0; u < U; ++u) {
      for (int j = 0; j < K; ++j) acc[u][j] = V(0);
    }
    const int64_t r1 = std::min(R, r0 + kRowBlock);
    int64_t r = r0;
    for (; r + U <= r1; r += U) {
      for (int u = 0; u < U; ++u) {
        for (int j = 0; j < K; ++j) acc[u][j] += tile_load<T, K>(p + (r + u) * stride, j, tail);
      }
    }
    for (; r < r1; ++r) {
      for (int j = 0; j < K; ++j) acc[0][j] += tile_load<T, K>(p + r * stride, j, tail);
    }
    for (int u = 1; u < U; ++u) {
      for (int j = 0; j < K; ++j) acc[0][j] += acc[u][j];
    }
    alignas(64) A lanes[K * L];
    for (int j = 0; j < K; ++j) acc[0][j].store(lanes + j * L);
    for (int64_t c = 0; c < width; ++c) total[c] += static_cast<double>(lanes[c]);
  }
  for (int64_t c = 0; c < width; ++c) out[c] = total[c];
}

template <typename T>
void sum_cols(const T* p, int64_t R, int64_t stride, int64_t width, double* out) {
  with_col_tile<T>(width, [&](auto k) { sum_tile<T, decltype(k)::value>(p, R, stride, width, out); });
}

// ---- max / min ---------------------------------------------------------------
// Lane-wise update: take v where it beats best, or is the first NaN.
template <typename A>
inline void maxmin_update(Vectorized<A>& best, Vectorized<A>& idx, const Vectorized<A>& v, const Vectorized<A>& pos,
                          bool is_max) {
  using V = Vectorized<A>;
  const V better = is_max ? (v > best) : (v < best);
  const V take = better | ((v != v) & (best == best));
  best = V::blendv(best, v, take);
  idx = V::blendv(idx, pos, take);
}

// Indices travel as floating lanes: exact below 2^24 (float) / 2^53 (double);
// the caller sends longer rows to the scalar path.
template <typename T>
void maxmin_row(const T* p, int64_t n, bool is_max, double* val, int64_t* idx) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  A best_s = static_cast<A>(p[0]);
  int64_t best_i = 0;
  int64_t i = 0;
  if (n >= 2 * L) {
    V best = IO<T>::load(p), bidx = V::arange(0, 1);
    const V step(static_cast<A>(L));
    V pos = bidx + step;
    for (i = L; i + L <= n; i += L, pos += step) maxmin_update<A>(best, bidx, IO<T>::load(p + i), pos, is_max);
    alignas(64) A bv[L], bi[L];
    best.store(bv);
    bidx.store(bi);
    best_s = bv[0];
    best_i = static_cast<int64_t>(bi[0]);
    for (int64_t k = 1; k < L; ++k) merge_candidate<A>(bv[k], static_cast<int64_t>(bi[k]), is_max, best_s, best_i);
  } else {
    i = 1;
  }
  for (; i < n; ++i) merge_candidate<A>(static_cast<A>(p[i]), i, is_max, best_s, best_i);
  *val = static_cast<double>(best_s);
  *idx = best_i;
}

template <typename T, int K>
void maxmin_tile(const T* p, int64_t R, int64_t stride, int64_t width, bool is_max, double* val, int64_t* idx) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  const int64_t tail = width - (K - 1) * L;
  V best[K], bidx[K];
  for (int j = 0; j < K; ++j) {
    best[j] = tile_load<T, K>(p, j, tail);
    bidx[j] = V(0);
  }
  for (int64_t r = 1; r < R; ++r) {
    const V pos(static_cast<A>(r));
    for (int j = 0; j < K; ++j)
      maxmin_update<A>(best[j], bidx[j], tile_load<T, K>(p + r * stride, j, tail), pos, is_max);
  }
  store_tile(best, width, val);
  store_tile(bidx, width, idx);
}

template <typename T>
void maxmin_cols(const T* p, int64_t R, int64_t stride, int64_t width, bool is_max, double* val, int64_t* idx) {
  with_col_tile<T>(width, [&](auto k) { maxmin_tile<T, decltype(k)::value>(p, R, stride, width, is_max, val, idx); });
}

// ---- logsumexp: online (max, sum of exp) -----------------------------------------
template <typename T>
void lse_row(const T* p, int64_t n, double* m_out, double* s_out) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  const A ninf = -std::numeric_limits<A>::infinity();
  V m(ninf), s(0);
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    const V v0 = IO<T>::load(p + i), v1 = IO<T>::load(p + i + L);
    const V v2 = IO<T>::load(p + i + 2 * L), v3 = IO<T>::load(p + i + 3 * L);
    const V bm = at::vec::maximum(at::vec::maximum(v0, v1), at::vec::maximum(v2, v3));
    online_update<A>(m, s, bm,
                     [&](const V& mn) { return (vexp(v0 - mn) + vexp(v1 - mn)) + (vexp(v2 - mn) + vexp(v3 - mn)); });
  }
  for (; i < n; i += L) {
    const V v = i + L <= n ? IO<T>::load(p + i) : IO<T>::load_part(p + i, n - i, ninf);
    online_update<A>(m, s, v, [&](const V& mn) { return V::blendv(vexp(v - mn), V(0), v == V(ninf)); });
  }
  alignas(64) A ml[L], sl[L];
  m.store(ml);
  A M = ninf;
  for (int64_t k = 0; k < L; ++k) M = (std::isnan(ml[k]) || ml[k] > M) ? ml[k] : M;
  (s * V::blendv(vexp(m - V(M)), V(0), m == V(ninf))).store(sl);
  double S = 0;
  for (int64_t k = 0; k < L; ++k) S += sl[k];
  *m_out = static_cast<double>(M);
  *s_out = S;
}

// Two passes over the tile (a piece is at most kPiece elements, so the second
// reads it from L2): the max, then the sum of exp(x - max), one exp per
// element; the online form needs two (the rescale and the term). Lanes whose
// max is -inf hold sum 0; +inf and NaN maxima are final (lse_finish).
template <typename T, int K>
void lse_tile(const T* p, int64_t R, int64_t stride, int64_t width, double* m_out, double* s_out) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  const int64_t tail = width - (K - 1) * L;
  const V ninf(-std::numeric_limits<A>::infinity());
  V m[K], s[K];
  for (int j = 0; j < K; ++j) {
    m[j] = ninf;
    s[j] = V(0);
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int j = 0; j < K; ++j) m[j] = at::vec::maximum(m[j], tile_load<T, K>(p + r * stride, j, tail));
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int j = 0; j < K; ++j) s[j] += vexp(tile_load<T, K>(p + r * stride, j, tail) - m[j]);
  }
  for (int j = 0; j < K; ++j) s[j] = V::blendv(s[j], V(0), m[j] == ninf);
  store_tile(m, width, m_out);
  store_tile(s, width, s_out);
}

template <typename T>
void lse_cols(const T* p, int64_t R, int64_t stride, int64_t width, double* m_out, double* s_out) {
  with_col_tile<T>(width, [&](auto k) { lse_tile<T, decltype(k)::value>(p, R, stride, width, m_out, s_out); });
}

// ---- the launch: outputs in groups, long reductions in pieces ------------------------
constexpr int64_t kPiece = 1 << 16;  // elements of one output per piece of a split reduction

int64_t grain(int64_t per_item) { return grain_for(per_item, kPassTaskWork); }

// How outputs are grouped and a reduction is cut: a group is one output (ROWS,
// GENERAL) or a tile of up to kColTile neighbouring outputs (COLS); a piece is
// a run of indices [r0, r1) of the outermost reduced dim, red[0]. The cut
// depends on the shapes only.
struct Cut {
  bool cols = false;
  int64_t C = 1, tiles = 1;  // COLS: the contiguous kept dim and its tiles
  std::vector<Dim> outer;    // COLS: the other kept dims
  std::vector<Dim> red;      // the plan's reduced dims, or one dim of size 1
  int64_t groups = 0;
  int64_t rows_per_piece = 1, pieces = 1;

  explicit Cut(const ReducePlan& p) {
    red = p.red.empty() ? std::vector<Dim>{{1, 1}} : p.red;
    cols = p.layout == ReduceLayout::COLS;
    int64_t width = 1;
    if (cols) {
      C = p.kept.back().size;
      tiles = (C + kColTile - 1) / kColTile;
      outer.assign(p.kept.begin(), p.kept.end() - 1);
      groups = (p.nout / C) * tiles;
      width = std::min(C, kColTile);
    } else {
      groups = p.nout;
    }
    const int64_t per_row = (p.count / red[0].size) * width;  // elements a group reads per index of red[0]
    rows_per_piece = std::max<int64_t>(1, kPiece / per_row);
    pieces = (red[0].size + rows_per_piece - 1) / rows_per_piece;
  }
  // First output, width and offset in x of group g.
  void group(const ReducePlan& p, int64_t g, int64_t& out0, int64_t& width, int64_t& offset) const {
    if (!cols) {
      out0 = g;
      width = 1;
      offset = kept_offset(p.kept, g);
      return;
    }
    const int64_t o = g / tiles, c0 = (g % tiles) * kColTile;
    out0 = o * C + c0;
    width = std::min(kColTile, C - c0);
    offset = kept_offset(outer, o) + c0;
  }
};

// Runs compute(base, r0, r1, width, states) for every (group, piece): the
// states of the group's outputs over indices [r0, r1) of red[0], base pointing
// at the group's first element. Pieces of one output merge in piece order,
// then finish(output, state) writes it.
template <typename State, typename T, typename Compute, typename Merge, typename Finish>
void run(const T* xp, const ReducePlan& p, const Cut& cut, Compute compute, Merge merge, Finish finish) {
  const int64_t R0 = cut.red[0].size, S0 = cut.red[0].stride;
  if (cut.pieces == 1) {
    at::parallel_for(0, cut.groups, grain(p.count * (cut.cols ? kColTile : 1)), [&](int64_t g0, int64_t g1) {
      State st[kColTile];
      for (int64_t g = g0; g < g1; ++g) {
        int64_t out0, width, off;
        cut.group(p, g, out0, width, off);
        compute(xp + off, 0, R0, width, st);
        for (int64_t c = 0; c < width; ++c) finish(out0 + c, st[c]);
      }
    });
    return;
  }
  const int64_t np = cut.pieces;
  std::vector<State> part(p.nout * np);
  at::parallel_for(0, cut.groups * np, 1, [&](int64_t u0, int64_t u1) {
    State st[kColTile];
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = u / np, piece = u % np;
      int64_t out0, width, off;
      cut.group(p, g, out0, width, off);
      const int64_t r0 = piece * cut.rows_per_piece, r1 = std::min(R0, r0 + cut.rows_per_piece);
      compute(xp + off + r0 * S0, r0, r1, width, st);
      for (int64_t c = 0; c < width; ++c) part[(out0 + c) * np + piece] = st[c];
    }
  });
  at::parallel_for(0, p.nout, grain(np * 4), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      State acc = part[o * np];
      for (int64_t k = 1; k < np; ++k) merge(acc, part[o * np + k]);
      finish(o, acc);
    }
  });
}

// Calls f(ptr, n, stride) for each innermost reduced row of one output whose
// red[0] runs over [0, rows0) from base (GENERAL layout).
template <typename T, typename F>
void for_red_rows(const std::vector<Dim>& red, int64_t rows0, const T* base, F f) {
  std::vector<Dim> dims = red;
  dims[0].size = rows0;
  const Dim inner = dims.back();
  const std::vector<Dim> outer(dims.begin(), dims.end() - 1);
  int64_t rows = 1;
  for (const Dim& d : outer) rows *= d.size;
  for (int64_t r = 0; r < rows; ++r) f(base + kept_offset(outer, r), inner.size, inner.stride);
}

// ---- sum / mean -------------------------------------------------------------
template <typename T>
void sum_or_mean(const at::Tensor& x, const ReducePlan& p, const Cut& cut, bool mean, at::Tensor& out) {
  T* op = out.mutable_data_ptr<T>();
  const double scale = mean ? 1.0 / static_cast<double>(p.count) : 1.0;
  auto compute = [&](const T* base, int64_t r0, int64_t r1, int64_t width, double* st) {
    if (cut.cols) {
      sum_cols(base, r1 - r0, cut.red[0].stride, width, st);
    } else if (p.layout == ReduceLayout::ROWS) {
      st[0] = sum_span(base, r1 - r0, 1);
    } else {
      double s = 0;
      for_red_rows(cut.red, r1 - r0, base, [&](const T* r, int64_t n, int64_t stride) { s += sum_span(r, n, stride); });
      st[0] = s;
    }
  };
  run<double>(
      x.const_data_ptr<T>(), p, cut, compute, [](double& a, double b) { a += b; },
      [&](int64_t o, double s) { op[o] = round_to<T>(mean ? s * scale : s); });
}

// ---- max / min ----------------------------------------------------------------
struct ValIdx {
  double v;
  int64_t i;
};

template <typename T>
void max_or_min(const at::Tensor& x, const ReducePlan& p, const Cut& cut, bool is_max, at::Tensor& values,
                at::Tensor& indices) {
  using A = acc_t<T>;
  T* vp = values.mutable_data_ptr<T>();
  int64_t* ip = indices.mutable_data_ptr<int64_t>();
  const int64_t S = cut.red[0].stride;
  // A piece holds at most kPiece < 2^24 indices: exact in the float lanes of the vector kernels.
  auto compute = [&](const T* base, int64_t r0, int64_t r1, int64_t width, ValIdx* st) {
    const int64_t n = r1 - r0;
    if (cut.cols) {
      double v[kColTile];
      int64_t i[kColTile];
      maxmin_cols(base, n, S, width, is_max, v, i);
      for (int64_t c = 0; c < width; ++c) st[c] = {v[c], i[c] + r0};
    } else if (p.layout == ReduceLayout::ROWS) {
      maxmin_row(base, n, is_max, &st[0].v, &st[0].i);
      st[0].i += r0;
    } else {
      A best = static_cast<A>(base[0]);
      int64_t bi = 0;
      for (int64_t r = 1; r < n; ++r) merge_candidate<A>(static_cast<A>(base[r * S]), r, is_max, best, bi);
      st[0] = {static_cast<double>(best), bi + r0};
    }
  };
  run<ValIdx>(
      x.const_data_ptr<T>(), p, cut, compute,
      [&](ValIdx& a, const ValIdx& b) { merge_candidate<double>(b.v, b.i, is_max, a.v, a.i); },
      [&](int64_t o, const ValIdx& s) {
        vp[o] = static_cast<T>(s.v);
        ip[o] = s.i;
      });
}

// ---- logsumexp ----------------------------------------------------------------
struct MaxSum {
  double m, s;  // running max, sum of exp(x - m)
};

// Merge of two (max, sum of exp(x - max)) pairs.
void lse_merge(double& m, double& s, double m2, double s2) {
  const double M = (std::isnan(m2) || m2 > m || std::isnan(m)) ? (std::isnan(m) ? m : m2) : m;
  if (M == -std::numeric_limits<double>::infinity()) {
    m = M;
    s = 0;
    return;
  }
  const double a = m == -std::numeric_limits<double>::infinity() ? 0.0 : s * std::exp(m - M);
  const double b = m2 == -std::numeric_limits<double>::infinity() ? 0.0 : s2 * std::exp(m2 - M);
  m = M;
  s = a + b;
}

// As torch.logsumexp: -inf for all -inf (or nothing), +inf when +inf is there, NaN with NaN.
double lse_finish(double m, double s) {
  if (std::isnan(m) || std::isinf(m)) return m;
  return m + std::log(s);
}

template <typename T>
void logsumexp(const at::Tensor& x, const ReducePlan& p, const Cut& cut, at::Tensor& out) {
  T* op = out.mutable_data_ptr<T>();
  auto compute = [&](const T* base, int64_t r0, int64_t r1, int64_t width, MaxSum* st) {
    if (cut.cols) {
      double m[kColTile], s[kColTile];
      lse_cols(base, r1 - r0, cut.red[0].stride, width, m, s);
      for (int64_t c = 0; c < width; ++c) st[c] = {m[c], s[c]};
    } else if (p.layout == ReduceLayout::ROWS) {
      lse_row(base, r1 - r0, &st[0].m, &st[0].s);
    } else {
      double m = -std::numeric_limits<double>::infinity(), s = 0;
      for_red_rows(cut.red, r1 - r0, base, [&](const T* r, int64_t n, int64_t stride) {
        for (int64_t i = 0; i < n; ++i) lse_merge(m, s, static_cast<double>(r[i * stride]), 1.0);
      });
      st[0] = {m, s};
    }
  };
  run<MaxSum>(
      x.const_data_ptr<T>(), p, cut, compute, [](MaxSum& a, const MaxSum& b) { lse_merge(a.m, a.s, b.m, b.s); },
      [&](int64_t o, const MaxSum& s) { op[o] = round_to<T>(lse_finish(s.m, s.s)); });
}

// ---- integer and bool: sums in int64, max / min exact ---------------------------
// Plain loops over the same plan, cut and pieces as the floating kernels (the
// compiler vectorizes the COLS loop); integer reductions are not benchmarked
// against torch yet. Sums wrap around as torch's do (unsigned arithmetic:
// signed overflow is undefined in C++).
template <typename T>
void int_sum(const at::Tensor& x, const ReducePlan& p, const Cut& cut, at::Tensor& out) {
  int64_t* op = out.mutable_data_ptr<int64_t>();
  auto compute = [&](const T* base, int64_t r0, int64_t r1, int64_t width, uint64_t* st) {
    const int64_t n = r1 - r0;
    for (int64_t c = 0; c < width; ++c) st[c] = 0;
    if (cut.cols) {
      const int64_t S = cut.red[0].stride;
      for (int64_t r = 0; r < n; ++r) {
        for (int64_t c = 0; c < width; ++c) st[c] += static_cast<uint64_t>(static_cast<int64_t>(base[r * S + c]));
      }
      return;
    }
    for_red_rows(cut.red, n, base, [&](const T* r, int64_t len, int64_t stride) {
      for (int64_t i = 0; i < len; ++i) st[0] += static_cast<uint64_t>(static_cast<int64_t>(r[i * stride]));
    });
  };
  run<uint64_t>(
      x.const_data_ptr<T>(), p, cut, compute, [](uint64_t& a, uint64_t b) { a += b; },
      [&](int64_t o, uint64_t s) { op[o] = static_cast<int64_t>(s); });
}

struct IntValIdx {
  int64_t v, i;
};

template <typename T>
void int_max_or_min(const at::Tensor& x, const ReducePlan& p, const Cut& cut, bool is_max, at::Tensor& values,
                    at::Tensor& indices) {
  T* vp = values.mutable_data_ptr<T>();
  int64_t* ip = indices.mutable_data_ptr<int64_t>();
  // Strictly better only: the first index of the best value stays (torch's index).
  auto better = [is_max](int64_t v, int64_t best) { return is_max ? v > best : v < best; };
  auto compute = [&](const T* base, int64_t r0, int64_t r1, int64_t width, IntValIdx* st) {
    const int64_t n = r1 - r0;
    if (cut.cols) {
      const int64_t S = cut.red[0].stride;
      for (int64_t c = 0; c < width; ++c) st[c] = {static_cast<int64_t>(base[c]), r0};
      for (int64_t r = 1; r < n; ++r) {
        for (int64_t c = 0; c < width; ++c) {
          const int64_t v = static_cast<int64_t>(base[r * S + c]);
          if (better(v, st[c].v)) st[c] = {v, r0 + r};
        }
      }
      return;
    }
    // Max/min reduce one dim: a single strided row.
    const int64_t S = cut.red[0].stride;
    st[0] = {static_cast<int64_t>(base[0]), r0};
    for (int64_t r = 1; r < n; ++r) {
      const int64_t v = static_cast<int64_t>(base[r * S]);
      if (better(v, st[0].v)) st[0] = {v, r0 + r};
    }
  };
  run<IntValIdx>(
      x.const_data_ptr<T>(), p, cut, compute,
      [&](IntValIdx& a, const IntValIdx& b) {
        if (better(b.v, a.v) || (b.v == a.v && b.i < a.i)) a = b;
      },
      [&](int64_t o, const IntValIdx& s) {
        vp[o] = static_cast<T>(s.v);
        ip[o] = s.i;
      });
}

}  // namespace

void reduce_kernel(const at::Tensor& x, const ReducePlan& p, ReduceOp op, at::Tensor& out, at::Tensor& indices) {
  const Cut cut(p);
  if (at::isIntegralType(x.scalar_type(), /*includeBool=*/true)) {
    // The frontend lets integers and bool reach only sum, max and min.
    AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, x.scalar_type(), "reduce_int_cpu", [&] {
      if (op == ReduceOp::MAX || op == ReduceOp::MIN) {
        int_max_or_min<scalar_t>(x, p, cut, op == ReduceOp::MAX, out, indices);
      } else {
        int_sum<scalar_t>(x, p, cut, out);
      }
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reduce_cpu", [&] {
    switch (op) {
      case ReduceOp::SUM:
      case ReduceOp::MEAN: sum_or_mean<scalar_t>(x, p, cut, op == ReduceOp::MEAN, out); break;
      case ReduceOp::MAX:
      case ReduceOp::MIN: max_or_min<scalar_t>(x, p, cut, op == ReduceOp::MAX, out, indices); break;
      case ReduceOp::LOGSUMEXP: logsumexp<scalar_t>(x, p, cut, out); break;
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

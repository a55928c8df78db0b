// Reductions along dims on the CPU, compiled once per ISA: the kernels for
// the ROWS and COLS layouts of reduce_dims.h (sum rows reuse vector_sum's
// pairwise kernel). Max/min keep, per lane, the best value and the index where
// it was first seen (blends, no branches); lanes are merged preferring the
// lowest index, so ties and NaN give torch's index (the first). COLS kernels
// load one vector of 64 neighbouring outputs per reduced element: a reduction
// over an outer dim streams rows at full vector width with no transposing
// copy. Bound: memory (each input element read once).
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

#include "common/vec_io.h"
#include "reduce/reduce_dims.h"
#include "reduce/reduce_kernels.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

// Lanes of NV vectors (one COLS tile) into out[0 .. NV * L), converted.
template <typename Out, typename A, int64_t NV>
inline void store_tile(const Vectorized<A> (&v)[NV], Out* out) {
  constexpr int64_t L = Vectorized<A>::size();
  alignas(64) A lanes[NV * L];
  for (int64_t j = 0; j < NV; ++j) v[j].store(lanes + j * L);
  for (int64_t c = 0; c < NV * L; ++c) out[c] = static_cast<Out>(lanes[c]);
}

// ---- sum, COLS: out[c] = sum_r p[r * stride + c], c < width <= kReduceColTile --
// Two-level cascade per lane (blocks of 64 rows, block sums added in double)
// keeps a 4096-row float32 column sum within a few ulps.
template <typename T>
void sum_cols(const T* p, int64_t R, int64_t stride, int64_t width, double* out) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  constexpr int64_t NV = kReduceColTile / L;
  constexpr int64_t kRowBlock = 64;
  if (width < kReduceColTile) {
    for (int64_t c = 0; c < width; ++c) {
      double s = 0;
      for (int64_t r = 0; r < R; ++r) s += static_cast<double>(p[r * stride + c]);
      out[c] = s;
    }
    return;
  }
  double total[kReduceColTile] = {};
  for (int64_t r0 = 0; r0 < R; r0 += kRowBlock) {
    V acc[NV];
    for (int64_t j = 0; j < NV; ++j) acc[j] = V(0);
    const int64_t r1 = std::min(R, r0 + kRowBlock);
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < NV; ++j) acc[j] += IO<T>::load(p + r * stride + j * L);
    }
    alignas(64) A lanes[kReduceColTile];
    for (int64_t j = 0; j < NV; ++j) acc[j].store(lanes + j * L);
    for (int64_t c = 0; c < kReduceColTile; ++c) total[c] += static_cast<double>(lanes[c]);
  }
  for (int64_t c = 0; c < kReduceColTile; ++c) out[c] = total[c];
}

// ---- max / min ---------------------------------------------------------------
// Lane-wise update: take v where it beats best, or is the first NaN.
template <typename A>
inline void maxmin_update(Vectorized<A>& best, Vectorized<A>& idx, const Vectorized<A>& v,
                          const Vectorized<A>& pos, bool is_max) {
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

template <typename T>
void maxmin_cols(const T* p, int64_t R, int64_t stride, int64_t width, bool is_max, double* val, int64_t* idx) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  constexpr int64_t NV = kReduceColTile / L;
  if (width < kReduceColTile) {
    for (int64_t c = 0; c < width; ++c) {
      A best = static_cast<A>(p[c]);
      int64_t bi = 0;
      for (int64_t r = 1; r < R; ++r) merge_candidate<A>(static_cast<A>(p[r * stride + c]), r, is_max, best, bi);
      val[c] = static_cast<double>(best);
      idx[c] = bi;
    }
    return;
  }
  V best[NV], bidx[NV];
  for (int64_t j = 0; j < NV; ++j) {
    best[j] = IO<T>::load(p + j * L);
    bidx[j] = V(0);
  }
  for (int64_t r = 1; r < R; ++r) {
    const V pos(static_cast<A>(r));
    for (int64_t j = 0; j < NV; ++j) maxmin_update<A>(best[j], bidx[j], IO<T>::load(p + r * stride + j * L), pos, is_max);
  }
  store_tile(best, val);
  store_tile(bidx, idx);
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
    online_update<A>(m, s, bm, [&](const V& mn) {
      return (vexp(v0 - mn) + vexp(v1 - mn)) + (vexp(v2 - mn) + vexp(v3 - mn));
    });
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

template <typename T>
void lse_cols(const T* p, int64_t R, int64_t stride, int64_t width, double* m_out, double* s_out) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  constexpr int64_t NV = kReduceColTile / L;
  const A ninf = -std::numeric_limits<A>::infinity();
  if (width < kReduceColTile) {
    for (int64_t c = 0; c < width; ++c) {
      double m = -std::numeric_limits<double>::infinity(), s = 0;
      for (int64_t r = 0; r < R; ++r) {
        const double v = static_cast<double>(p[r * stride + c]);
        const double mn = (std::isnan(v) || v > m) ? v : m;
        if (mn != -std::numeric_limits<double>::infinity()) s = s * std::exp(m - mn) + std::exp(v - mn);
        m = mn;
      }
      m_out[c] = m;
      s_out[c] = s;
    }
    return;
  }
  V m[NV], s[NV];
  for (int64_t j = 0; j < NV; ++j) {
    m[j] = V(ninf);
    s[j] = V(0);
  }
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t j = 0; j < NV; ++j) {
      const V v = IO<T>::load(p + r * stride + j * L);
      online_update<A>(m[j], s[j], v, [&](const V& mn) { return vexp(v - mn); });
    }
  }
  store_tile(m, m_out);
  store_tile(s, s_out);
}

template <typename T>
constexpr ReduceFns<T> fns() {
  return {&sum_cols<T>, &maxmin_row<T>, &maxmin_cols<T>, &lse_row<T>, &lse_cols<T>};
}

}  // namespace

extern const ReduceKernels kReduceKernels;
const ReduceKernels kReduceKernels = {fns<float>(), fns<double>(), fns<c10::Half>(), fns<c10::BFloat16>()};

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

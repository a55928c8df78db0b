// softmax / log_softmax forward and backward on the CPU, compiled once per ISA.
// Forward, rows of up to kBlockVecs vectors (fwd_row_short): the max, then the
// exps relative to it and their sum, then the output, as torch's kernel.
// Longer rows (fwd_row): one pass computes the max and the sum of exponentials together
// (online normalizer: when the running max grows, the running sum is rescaled
// by exp(old - new)), one pass writes the output. Blocks of 4 vectors share one
// rescale, so the first pass costs 1.25 exp per element. Backward: one pass
// for the row's dot product, one to write, both fused in one kernel.
// inner == 1 works along contiguous rows; inner > 1 vectorizes across 64
// contiguous columns at once and walks the rows, so no transposing copy is
// needed for a reduction over an outer dim. Bound: memory (read x, write y)
// plus exp throughput (exp_u20, the polynomial torch's own softmax uses).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/grain.h"
#include "common/vec_io.h"
#include "reduce/reduce.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;

using namespace vec_io;

// Columns handled together when inner > 1: a tile of 64 contiguous elements
// per row (256 bytes of float32: four AVX512 or eight AVX2 vectors).
constexpr int64_t kSoftmaxColTile = 64;

// ---- forward, inner == 1 ------------------------------------------------------
// The row is walked in blocks of kBlockVecs vectors (L1-resident): the block's
// lane-wise max first (no exp), then one rescale of the running sum and one exp
// per element. softmax stores those exps in y and, per block, the max they are
// relative to; the output pass rescales each block with one vector exp. So
// softmax costs 1 + 2/kBlockVecs exp per element and two passes (read x and
// write y; read and write y), where the classic max / exp-sum / scale scheme
// reads x twice. log_softmax's second pass is exp-free: y = (x - M) - log S.
// Measured (ratio to torch.softmax, 4096x4096 / 256x32000, allocator warm):
// blocks of 16 vectors 0.93 / 1.15, 32: 0.97 / 1.18, 64: 1.07 / 1.20, 128: 1.04 / 1.23.
constexpr int64_t kBlockVecs = 64;

// Per-task scratch of the forward rows: the running max of each block and,
// for half types, the row's exps in float.
template <typename A>
struct RowScratch {
  std::vector<A> block_max;
  std::vector<A> exps;
};

// A row whose max is -inf (all -inf), +inf or NaN has no softmax: NaN, as
// torch (spelled out: exp_u20 of NaN is not NaN).
template <typename A>
bool no_softmax(A row_max) {
  return !(row_max > -std::numeric_limits<A>::infinity()) || std::isinf(row_max);
}

template <typename T>
void nan_row(T* y, int64_t n) {
  std::fill(y, y + n, static_cast<T>(std::numeric_limits<float>::quiet_NaN()));
}

template <typename T>
void fwd_row(const T* x, T* y, int64_t n, bool log, bool stream, RowScratch<acc_t<T>>& scratch) {
  // softmax keeps its exps in y even for large outputs: recomputing them to
  // stream y out measured 0.80x torch on 4096x4096 against 1.07x this way.
  // log_softmax's output pass needs no exp, so only it streams.
  const bool keep_exps = !log;
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  constexpr int64_t B = kBlockVecs * L;
  const A ninf = -std::numeric_limits<A>::infinity();
  const int64_t nblocks = (n + B - 1) / B;
  std::vector<A>& block_max = scratch.block_max;
  if (keep_exps) block_max.resize(nblocks * L);
  // Half types keep the exps in a float row (L1/L2-resident), not in y: y is
  // then rounded once, as torch's, and each element is converted once.
  // bfloat16 softmax went through y twice: 2278 us against torch's 1155 us
  // on 1024x1000 (1 thread), and two roundings.
  A* ebuf = nullptr;
  if (kIsReduced<T> && keep_exps) {
    scratch.exps.resize(nblocks * B);
    ebuf = scratch.exps.data();
  }
  auto keep = [&](int64_t i, const V& e, int64_t count) {
    if (ebuf != nullptr) {
      e.store(ebuf + i);
    } else if (count == L) {
      IO<T>::store(y + i, e);
    } else {
      IO<T>::store_part(y + i, e, count);
    }
  };
  V m(ninf), s(0);
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t start = b * B, len = std::min(B, n - start);
    const int64_t full = len / L, rest = len % L;
    const T* xb = x + start;
    V bm(ninf);
    for (int64_t k = 0; k < full; ++k) bm = at::vec::maximum(bm, IO<T>::load(xb + k * L));
    if (rest) bm = at::vec::maximum(bm, IO<T>::load_part(xb + full * L, rest, ninf));
    online_update<A>(m, s, bm, [&](const V& mn) {
      V e0(0), e1(0);
      for (int64_t k = 0; k < full; ++k) {
        const V e = vexp(IO<T>::load(xb + k * L) - mn);
        if (keep_exps) keep(start + k * L, e, L);
        (k & 1 ? e1 : e0) += e;
      }
      if (rest) {
        // -inf padding: exp gives 0 there (or garbage when mn is -inf, and then
        // the whole block is dropped by online_update).
        const V e = V::blendv(vexp(IO<T>::load_part(xb + full * L, rest, ninf) - mn), V(0),
                              IO<T>::load_part(xb + full * L, rest, ninf) == V(ninf));
        if (keep_exps) keep(start + full * L, e, rest);
        e0 += e;
      }
      return e0 + e1;
    });
    if (keep_exps) m.store(block_max.data() + b * L);
  }
  // Combine the lanes: M = max of lane maxima, S = sum of lane sums rescaled to M.
  alignas(64) A ml[L], sl[L];
  m.store(ml);
  A M = ninf;
  for (int64_t k = 0; k < L; ++k) M = (std::isnan(ml[k]) || ml[k] > M) ? ml[k] : M;
  // One vector exp for all lanes (16 scalar std::exp calls cost ~10% on 4096-wide rows).
  const V lane_scale = V::blendv(vexp(m - V(M)), V(0), m == V(ninf));
  (s * lane_scale).store(sl);
  A S = 0;
  for (int64_t k = 0; k < L; ++k) S += sl[k];
  if (no_softmax(M)) return nan_row(y, n);
  if (log) {
    // (x - M) - log S: x - M is exact near the max, as in torch's kernel.
    const V vm(M), ls(std::log(S));
    write_vectors(y, n, stream, [&](int64_t i, int64_t c) { return (load_n(x + i, c) - vm) - ls; });
    return;
  }
  // y holds exp(x - m_b) with m_b the running lane max at block b: rescale by
  // exp(m_b - M) / S, one vector exp per block.
  const V vM(M), inv(A(1) / S);
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t start = b * B, len = std::min(B, n - start);
    const int64_t full = len / L, rest = len % L;
    const V mb = V::loadu(block_max.data() + b * L);
    const V scale = V::blendv(vexp(mb - vM) * inv, V(0), mb == V(ninf));
    if (ebuf != nullptr) {
      for (int64_t k = 0; k < full; ++k) IO<T>::store(y + start + k * L, V::loadu(ebuf + start + k * L) * scale);
      if (rest) IO<T>::store_part(y + start + full * L, V::loadu(ebuf + start + full * L) * scale, rest);
      continue;
    }
    for (int64_t k = 0; k < full; ++k) {
      T* p = y + start + k * L;
      IO<T>::store(p, IO<T>::load(p) * scale);
    }
    if (rest) {
      T* p = y + start + full * L;
      IO<T>::store_part(p, IO<T>::load_part(p, rest, 0) * scale, rest);
    }
  }
}

// A row of one block (n <= kBlockVecs vectors, L1-resident): its max is known
// before any exp, so the exps are taken relative to the row max itself: no
// online rescale and no per-lane rescale (two vector exps and two 16-lane
// scalar loops a row less), the classic max / exp-sum / write of torch's own
// kernel. Half types widen the row once into a float row, which the exp and
// write passes read (and softmax overwrites with its exps): one conversion per
// element, not three, and y rounded once. 256x300, 2 threads, ratio to
// torch.log_softmax: float32 0.86x -> 1.07x, bfloat16 0.79x -> 0.99x
// (torch.softmax: bfloat16 1.58x).
template <typename T>
void fwd_row_short(const T* x, T* y, int64_t n, bool log, bool stream, RowScratch<acc_t<T>>& scratch) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  const A ninf = -std::numeric_limits<A>::infinity();
  const int64_t full = n / L, rest = n % L;
  A* xf = nullptr;  // the widened row (half types): whole vectors, the tail padded with -inf
  if constexpr (kIsReduced<T>) {
    // One vector of slack: a streaming write's unaligned pieces read a whole vector from any offset.
    scratch.exps.resize((full + 2) * L);
    xf = scratch.exps.data();
  }
  auto src = [&](int64_t k) {
    if constexpr (kIsReduced<T>) {
      return V::loadu(xf + k * L);
    } else {
      return k < full ? IO<T>::load(x + k * L) : IO<T>::load_part(x + k * L, rest, ninf);
    }
  };
  const int64_t vecs = full + (rest ? 1 : 0);
  V bm(ninf);
  for (int64_t k = 0; k < vecs; ++k) {
    V v;
    if constexpr (kIsReduced<T>) {
      v = k < full ? IO<T>::load(x + k * L) : IO<T>::load_part(x + k * L, rest, ninf);
      v.store(xf + k * L);
    } else {
      v = src(k);
    }
    bm = at::vec::maximum(bm, v);
  }
  // at::vec::maximum propagates NaN, lanes and the reduction alike.
  const A M = at::vec::vec_reduce_all<A>([](V a, V b) { return at::vec::maximum(a, b); }, bm);
  if (no_softmax(M)) return nan_row(y, n);
  const V vM(M);
  // The -inf padding of the tail gives exp 0: M is finite here.
  V s0(0), s1(0);
  for (int64_t k = 0; k < vecs; ++k) {
    const V e = vexp(src(k) - vM);
    if (!log) {
      // softmax keeps its exps for the write pass: in the float row, or in y.
      if constexpr (kIsReduced<T>) {
        e.store(xf + k * L);
      } else if (k < full) {
        IO<T>::store(y + k * L, e);
      } else {
        IO<T>::store_part(y + k * L, e, rest);
      }
    }
    (k & 1 ? s1 : s0) += e;
  }
  const A S = at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, s0 + s1);
  if (log) {
    const V ls(std::log(S));
    write_vectors(y, n, stream, [&](int64_t i, int64_t c) {
      if constexpr (kIsReduced<T>) {
        return (V::loadu(xf + i) - vM) - ls;
      } else {
        return (load_n(x + i, c) - vM) - ls;
      }
    });
    return;
  }
  const V inv(A(1) / S);
  if constexpr (kIsReduced<T>) {
    write_vectors(y, n, stream, [&](int64_t i, int64_t) { return V::loadu(xf + i) * inv; });
  } else {
    for (int64_t k = 0; k < full; ++k) IO<T>::store(y + k * L, IO<T>::load(y + k * L) * inv);
    if (rest) IO<T>::store_part(y + full * L, IO<T>::load_part(y + full * L, rest, 0) * inv, rest);
  }
}

template <typename T>
void fwd_rows(const T* x, T* y, int64_t n, int64_t r0, int64_t r1, bool log, bool stream) {
  RowScratch<acc_t<T>> scratch;  // one allocation per task, reused across its rows
  if (n <= kBlockVecs * IO<T>::L) {
    for (int64_t r = r0; r < r1; ++r) fwd_row_short(x + r * n, y + r * n, n, log, stream, scratch);
  } else {
    for (int64_t r = r0; r < r1; ++r) fwd_row(x + r * n, y + r * n, n, log, stream, scratch);
  }
  stream_fence(stream);
}

// ---- forward, inner > 1 --------------------------------------------------------
// COLS unit u: outer index u / tiles, columns from c0; offset of its first element.
struct ColTile {
  int64_t offset, c0;
};
inline ColTile col_tile(int64_t u, int64_t n, int64_t inner) {
  const int64_t tiles = (inner + kSoftmaxColTile - 1) / kSoftmaxColTile;
  const int64_t c0 = (u % tiles) * kSoftmaxColTile;
  return {(u / tiles) * n * inner + c0, c0};
}

// One tile of width <= 64 columns (K vectors, the last masked), three passes
// over its rows (a tile of n rows is at most n x 256 bytes, L2-resident for
// the second and third): the max, the sum of exp(x - max), then the output.
// Two exps per element; the online form costs three. Columns of -inf, or
// holding +inf or NaN, give NaN as in torch; spelled out because exp_u20 of
// NaN (inf - inf) is not NaN.
template <typename T, int K>
void fwd_tile(const T* xb, T* yb, int64_t n, int64_t inner, int64_t width, bool log) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  const int64_t tail = width - (K - 1) * L;
  const V inf(std::numeric_limits<A>::infinity()), nan(std::numeric_limits<A>::quiet_NaN());
  V m[K], s[K];
  for (int j = 0; j < K; ++j) {
    m[j] = -inf;
    s[j] = V(0);
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < K; ++j) m[j] = at::vec::maximum(m[j], tile_load<T, K>(xb + r * inner, j, tail));
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < K; ++j) s[j] += vexp(tile_load<T, K>(xb + r * inner, j, tail) - m[j]);
  }
  V c[K];
  for (int j = 0; j < K; ++j) {
    const V no_softmax = (m[j] == inf) | (m[j] == -inf) | (m[j] != m[j]);
    c[j] = log ? V::blendv(s[j].log(), nan, (m[j] == inf) | (m[j] != m[j])) : V::blendv(V(1) / s[j], nan, no_softmax);
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < K; ++j) {
      const V v = tile_load<T, K>(xb + r * inner, j, tail);
      tile_store<T, K>(yb + r * inner, j, tail, log ? (v - m[j]) - c[j] : vexp(v - m[j]) * c[j]);
    }
  }
}

template <typename T>
void fwd_cols(const T* x, T* y, int64_t n, int64_t inner, int64_t u0, int64_t u1, bool log) {
  for (int64_t u = u0; u < u1; ++u) {
    const auto [off, c0] = col_tile(u, n, inner);
    const int64_t width = std::min(kSoftmaxColTile, inner - c0);
    with_tile<T, kSoftmaxColTile>(
        width, [&](auto k) { fwd_tile<T, decltype(k)::value>(x + off, y + off, n, inner, width, log); });
  }
}

// ---- backward -----------------------------------------------------------------
// softmax:     gx = y * (g - sum(g * y))
// log_softmax: gx = g - exp(y) * sum(g)
// kLog is a template parameter so each loop body is branch-free.
template <typename T, bool kLog>
void bwd_row(const T* g, const T* y, T* gx, int64_t n, bool stream) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  V acc[4] = {V(0), V(0), V(0), V(0)};
  int64_t i = 0;
  for (; i + 4 * L <= n; i += 4 * L) {
    for (int k = 0; k < 4; ++k) {
      const V gv = IO<T>::load(g + i + k * L);
      acc[k] = kLog ? acc[k] + gv : at::vec::fmadd(gv, IO<T>::load(y + i + k * L), acc[k]);
    }
  }
  for (; i < n; i += L) {
    const int64_t k = std::min(L, n - i);
    const V gv = IO<T>::load_part(g + i, k, 0);
    acc[0] += kLog ? gv : gv * IO<T>::load_part(y + i, k, 0);
  }
  const V dot(at::vec::vec_reduce_all<A>([](V a, V b) { return a + b; }, (acc[0] + acc[1]) + (acc[2] + acc[3])));
  write_vectors(gx, n, stream, [&](int64_t i, int64_t c) {
    const V gv = load_n(g + i, c), yv = load_n(y + i, c);
    // exp(NaN) must be NaN: log_softmax's NaN rows (all -inf) give NaN gradients, as torch's.
    return kLog ? gv - vexp_nan(yv) * dot : yv * (gv - dot);
  });
}

template <typename T>
void bwd_rows(const T* g, const T* y, T* gx, int64_t n, int64_t r0, int64_t r1, bool log, bool stream) {
  for (int64_t r = r0; r < r1; ++r) {
    if (log) {
      bwd_row<T, true>(g + r * n, y + r * n, gx + r * n, n, stream);
    } else {
      bwd_row<T, false>(g + r * n, y + r * n, gx + r * n, n, stream);
    }
  }
  stream_fence(stream);
}

template <typename T, int K>
void bwd_tile(const T* g, const T* y, T* gx, int64_t n, int64_t inner, int64_t width, bool log) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  const int64_t tail = width - (K - 1) * IO<T>::L;
  V dot[K];
  for (int j = 0; j < K; ++j) dot[j] = V(0);
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < K; ++j) {
      const V gv = tile_load<T, K>(g + r * inner, j, tail);
      dot[j] += log ? gv : gv * tile_load<T, K>(y + r * inner, j, tail);
    }
  }
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < K; ++j) {
      const V gv = tile_load<T, K>(g + r * inner, j, tail), yv = tile_load<T, K>(y + r * inner, j, tail);
      tile_store<T, K>(gx + r * inner, j, tail, log ? gv - vexp_nan(yv) * dot[j] : yv * (gv - dot[j]));
    }
  }
}

template <typename T>
void bwd_cols(const T* g, const T* y, T* gx, int64_t n, int64_t inner, int64_t u0, int64_t u1, bool log) {
  for (int64_t u = u0; u < u1; ++u) {
    const auto [off, c0] = col_tile(u, n, inner);
    const int64_t width = std::min(kSoftmaxColTile, inner - c0);
    with_tile<T, kSoftmaxColTile>(
        width, [&](auto k) { bwd_tile<T, decltype(k)::value>(g + off, y + off, gx + off, n, inner, width, log); });
  }
}

int64_t grain(int64_t work_per_item) { return grain_for(work_per_item, kExpTaskWork); }

}  // namespace

// In parallel (at::parallel_for) over rows (inner == 1) or over tiles of 64
// columns (inner > 1).
void softmax_kernel(const at::Tensor& x, at::Tensor& y, const SoftmaxShape& sh, bool log) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_cpu", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (sh.inner == 1) {
      const bool stream = static_cast<int64_t>(y.nbytes()) > kStreamBytes;
      at::parallel_for(0, sh.outer, grain(sh.n),
                       [&](int64_t r0, int64_t r1) { fwd_rows<scalar_t>(xp, yp, sh.n, r0, r1, log, stream); });
    } else {
      const int64_t units = sh.outer * ((sh.inner + kSoftmaxColTile - 1) / kSoftmaxColTile);
      at::parallel_for(0, units, grain(sh.n * kSoftmaxColTile),
                       [&](int64_t u0, int64_t u1) { fwd_cols<scalar_t>(xp, yp, sh.n, sh.inner, u0, u1, log); });
    }
  });
}

void softmax_backward_kernel(const at::Tensor& grad, const at::Tensor& out, at::Tensor& gx, const SoftmaxShape& sh,
                             bool log) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "softmax_backward_cpu", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* yp = out.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    if (sh.inner == 1) {
      const bool stream = static_cast<int64_t>(gx.nbytes()) > kStreamBytes;
      at::parallel_for(0, sh.outer, grain(sh.n),
                       [&](int64_t r0, int64_t r1) { bwd_rows<scalar_t>(gp, yp, gxp, sh.n, r0, r1, log, stream); });
    } else {
      const int64_t units = sh.outer * ((sh.inner + kSoftmaxColTile - 1) / kSoftmaxColTile);
      at::parallel_for(0, units, grain(sh.n * kSoftmaxColTile),
                       [&](int64_t u0, int64_t u1) { bwd_cols<scalar_t>(gp, yp, gxp, sh.n, sh.inner, u0, u1, log); });
    }
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

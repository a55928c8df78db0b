// rms_norm and add_rms_norm on the CPU, forward and backward, compiled once
// per ISA. Forward: one pass over the row for the sum of squares (add_rms_norm
// writes h = x + residual in the same pass), one for out = x * rstd * weight
// while the row is still in L1: x is read from memory once and out written
// once. Eager F.rms_norm runs pow, mean, add, rsqrt, mul, mul: six
// passes and four intermediates. Backward: per row, one pass for
// dot = sum(grad * w * x), one for gx = rstd * grad * w - x * rstd^3 dot / D
// that also accumulates the weight gradient grad * x * rstd into a partial
// sum per fixed group of rows; the partials are then added in a fixed order
// (deterministic). Bound: memory, 2 streams forward (3 for add_rms_norm's
// x, residual, h; out), 3 backward (grad, x; gx). No streaming (non-temporal)
// stores: a fresh output is page-faulted in by the kernel, which zeroes each
// page through the caches first, and then streaming them out costs more
// (8192x4096 float32 forward: 68.5 ms streamed, 55.4 ms not, same process,
// interleaved; torch.compile's kernel 58.5 ms, a clone 54.4 ms).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "common/grain.h"
#include "common/vec_io.h"
#include "llama/llama.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

// kPassTaskWork elements per task (common/grain.h).
inline int64_t grain_rows(int64_t cols) { return grain_for(cols, kPassTaskWork); }

// The weight, stored as T or as the accumulator type A (a widened weight of another dtype).
template <typename T, typename W>
inline Vectorized<acc_t<T>> load_w(const W* w, int64_t i, int64_t count) {
  using A = acc_t<T>;
  constexpr int64_t L = IO<T>::L;
  if (w == nullptr) return Vectorized<A>(A(1));
  if constexpr (std::is_same_v<W, A>) {
    return count == L ? Vectorized<A>::loadu(w + i) : Vectorized<A>::loadu(w + i, count);
  } else {
    return load_n(w + i, count);
  }
}

template <typename A>
inline A lane_sum(const Vectorized<A>& v) {
  return at::vec::vec_reduce_all<A>([](const Vectorized<A>& a, const Vectorized<A>& b) { return a + b; }, v);
}

// Rows [r0, r1): rstd, out (and h). The second pass reads h back when there is a
// residual: its rounded values, so that out is exactly rms_norm(h) as stored.
template <typename T, typename W>
void forward_rows(const T* x, int64_t ldx, const T* res, int64_t ldr, const W* w, acc_t<T> eps, T* out, T* h,
                  acc_t<T>* rstd, int64_t D, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  for (int64_t r = r0; r < r1; ++r) {
    const T* xr = x + r * ldx;
    T* hr = h != nullptr ? h + r * D : nullptr;
    V s0(0), s1(0);
    int64_t i = 0;
    if (res != nullptr) {
      const T* rr = res + r * ldr;
      for (; i < D; i += L) {
        const int64_t c = std::min(L, D - i);
        V v = load_n(xr + i, c) + load_n(rr + i, c);
        if (c == L) {
          IO<T>::store(hr + i, v);
        } else {
          IO<T>::store_part(hr + i, v, c);
        }
        if constexpr (kIsReduced<T>) v = load_n(hr + i, c);  // the rounded h
        s0 = at::vec::fmadd(v, v, s0);
      }
    } else {
      for (; i + 2 * L <= D; i += 2 * L) {
        const V a = IO<T>::load(xr + i), b = IO<T>::load(xr + i + L);
        s0 = at::vec::fmadd(a, a, s0);
        s1 = at::vec::fmadd(b, b, s1);
      }
      for (; i < D; i += L) {
        const V v = load_n(xr + i, std::min(L, D - i));
        s0 = at::vec::fmadd(v, v, s0);
      }
    }
    const A rs = A(1) / std::sqrt(lane_sum(s0 + s1) / A(D) + eps);
    rstd[r] = rs;
    const T* src = hr != nullptr ? hr : xr;
    const V vr(rs);
    write_vectors(out + r * D, D, /*stream=*/false,
                  [&](int64_t j, int64_t c) { return load_n(src + j, c) * vr * load_w<T>(w, j, c); });
  }
}

template <typename T, typename W>
void forward_typed(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                   at::Tensor& out, at::Tensor& h, at::Tensor& rstd) {
  using A = acc_t<T>;
  const int64_t R = x.size(0), D = x.size(1);
  const T* xp = x.const_data_ptr<T>();
  const T* rp = residual.defined() ? residual.const_data_ptr<T>() : nullptr;
  const int64_t ldr = residual.defined() ? residual.stride(0) : 0;
  const W* wp = weight.defined() ? weight.const_data_ptr<W>() : nullptr;
  T* op = out.mutable_data_ptr<T>();
  T* hp = h.defined() ? h.mutable_data_ptr<T>() : nullptr;
  A* sp = rstd.mutable_data_ptr<A>();
  at::parallel_for(0, R, grain_rows(D), [&](int64_t r0, int64_t r1) {
    forward_rows<T, W>(xp, x.stride(0), rp, ldr, wp, static_cast<A>(eps), op, hp, sp, D, r0, r1);
  });
}

// ---- backward -------------------------------------------------------------------------

// Rows [r0, r1): gx (when asked) and, when gw_part is not null, the sum of
// grad * x * rstd over these rows into gw_part[0, D).
template <typename T, typename W>
void backward_rows(const T* g, int64_t ldg, const T* x, int64_t ldx, const W* w, const acc_t<T>* rstd, const T* gadd,
                   int64_t lda, T* gx, acc_t<T>* gw_part, int64_t D, int64_t r0, int64_t r1) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  if (gw_part != nullptr) std::fill(gw_part, gw_part + D, A(0));
  for (int64_t r = r0; r < r1; ++r) {
    const T* gr = g + r * ldg;
    const T* xr = x + r * ldx;
    const A rs = rstd[r];
    const V vr(rs);
    if (gx != nullptr) {
      V d0(0), d1(0);
      int64_t i = 0;
      for (; i + 2 * L <= D; i += 2 * L) {
        d0 = at::vec::fmadd(IO<T>::load(gr + i) * load_w<T>(w, i, L), IO<T>::load(xr + i), d0);
        d1 = at::vec::fmadd(IO<T>::load(gr + i + L) * load_w<T>(w, i + L, L), IO<T>::load(xr + i + L), d1);
      }
      for (; i < D; i += L) {
        const int64_t c = std::min(L, D - i);
        d0 = at::vec::fmadd(load_n(gr + i, c) * load_w<T>(w, i, c), load_n(xr + i, c), d0);
      }
      const V coef(lane_sum(d0 + d1) * rs * rs * rs / A(D));
      const T* ar = gadd != nullptr ? gadd + r * lda : nullptr;
      write_vectors(gx + r * D, D, /*stream=*/false, [&](int64_t j, int64_t c) {
        const V xv = load_n(xr + j, c), gv = load_n(gr + j, c);
        if (gw_part != nullptr) {
          const V acc = at::vec::fmadd(gv * xv, vr, V::loadu(gw_part + j, c));
          acc.store(gw_part + j, c);
        }
        V v = vr * gv * load_w<T>(w, j, c) - xv * coef;
        if (ar != nullptr) v = v + load_n(ar + j, c);
        return v;
      });
    } else if (gw_part != nullptr) {
      for (int64_t j = 0; j < D; j += L) {
        const int64_t c = std::min(L, D - j);
        const V acc = at::vec::fmadd(load_n(gr + j, c) * load_n(xr + j, c), vr, V::loadu(gw_part + j, c));
        acc.store(gw_part + j, c);
      }
    }
  }
}

template <typename T, typename W>
void backward_typed(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& rstd,
                    const at::Tensor& grad_add, at::Tensor& gx, at::Tensor& gw) {
  using A = acc_t<T>;
  const int64_t R = x.size(0), D = x.size(1);
  const T* gp = grad.const_data_ptr<T>();
  const T* xp = x.const_data_ptr<T>();
  const W* wp = weight.defined() ? weight.const_data_ptr<W>() : nullptr;
  const A* sp = rstd.const_data_ptr<A>();
  const T* ap = grad_add.defined() ? grad_add.const_data_ptr<T>() : nullptr;
  const int64_t lda = grad_add.defined() ? grad_add.stride(0) : 0;
  T* gxp = gx.defined() ? gx.mutable_data_ptr<T>() : nullptr;
  if (!gw.defined()) {
    at::parallel_for(0, R, grain_rows(D), [&](int64_t r0, int64_t r1) {
      backward_rows<T, W>(gp, grad.stride(0), xp, x.stride(0), wp, sp, ap, lda, gxp, nullptr, D, r0, r1);
    });
    return;
  }
  // The weight gradient: one partial sum per group of rows, the groups fixed
  // by R alone (up to kRmsNormRowsPerPartial rows, at least 8 groups when R
  // allows, so that a few hundred rows still split across threads).
  const int64_t per = std::clamp<int64_t>(R / 8, 1, kRmsNormRowsPerPartial);
  const int64_t groups = (R + per - 1) / per;
  std::vector<A> partials(static_cast<size_t>(groups * D));
  at::parallel_for(0, groups, std::max<int64_t>(1, grain_rows(D) / per), [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      backward_rows<T, W>(gp, grad.stride(0), xp, x.stride(0), wp, sp, ap, lda, gxp, partials.data() + gi * D, D,
                          gi * per, std::min(R, (gi + 1) * per));
    }
  });
  // The partials added in group order, columns split across threads.
  A* gwp = gw.mutable_data_ptr<A>();
  constexpr int64_t L = Vectorized<A>::size();
  at::parallel_for(0, (D + L - 1) / L, grain_for(groups * L, kPassTaskWork), [&](int64_t c0, int64_t c1) {
    for (int64_t cv = c0; cv < c1; ++cv) {
      const int64_t j = cv * L, c = std::min(L, D - j);
      Vectorized<A> s(0);
      for (int64_t gi = 0; gi < groups; ++gi) s = s + Vectorized<A>::loadu(partials.data() + gi * D + j, c);
      s.store(gwp + j, c);
    }
  });
}

}  // namespace

void rms_norm_kernel(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                     at::Tensor& out, at::Tensor& h, at::Tensor& rstd) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    with_weight_type<scalar_t>(weight, [&](auto w) {
      forward_typed<scalar_t, std::remove_const_t<std::remove_pointer_t<decltype(w)>>>(x, residual, weight, eps, out, h,
                                                                                       rstd);
    });
  });
}

void rms_norm_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& rstd, const at::Tensor& grad_add, at::Tensor& gx, at::Tensor& gw) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_backward", [&] {
    with_weight_type<scalar_t>(weight, [&](auto w) {
      backward_typed<scalar_t, std::remove_const_t<std::remove_pointer_t<decltype(w)>>>(grad, x, weight, rstd, grad_add,
                                                                                        gx, gw);
    });
  });
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

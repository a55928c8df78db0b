// rotary_embedding on the CPU, compiled once per ISA: each row of head_dim is
// rotated pair by pair with the cos and sin row of its position, in one pass
// (read x, write out; cos and sin are [seq, rotary_dim / 2], a few hundred KB
// that stay in L2 while the heads that share them go by). The rows are walked
// in x's own order through any strides, so q and k of [batch, heads, seq, d]
// and their [batch, seq, heads, d] views are read in place. Eager's formula
// q * cos + rotate_half(q) * sin runs five passes with two intermediates (the
// cat of rotate_half among them) over a cos and sin of head_dim, not half.
// Interleaved (GPT-J) pairs are split into even and odd vectors with
// at::vec's deinterleave2 and put back with interleave2. The backward is the
// same kernel with sin negated (the inverse rotation). Bound: memory.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/grain.h"
#include "common/vec_io.h"
#include "llama/llama.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

template <typename T>
void rotate_half_row(const T* x, const T* c, const T* s, T* o, int64_t D, int64_t half, acc_t<T> sign) {
  using V = Vectorized<acc_t<T>>;
  const V sg(sign);
  write_vectors(o, half, /*stream=*/false, [&](int64_t i, int64_t n) {
    return load_n(x + i, n) * load_n(c + i, n) - load_n(x + half + i, n) * (load_n(s + i, n) * sg);
  });
  write_vectors(o + half, half, /*stream=*/false, [&](int64_t i, int64_t n) {
    return load_n(x + half + i, n) * load_n(c + i, n) + load_n(x + i, n) * (load_n(s + i, n) * sg);
  });
  if (2 * half < D) std::memcpy(o + 2 * half, x + 2 * half, (D - 2 * half) * sizeof(T));
}

template <typename T>
void interleaved_row(const T* x, const T* c, const T* s, T* o, int64_t D, int64_t half, acc_t<T> sign) {
  using A = acc_t<T>;
  using V = Vectorized<A>;
  constexpr int64_t L = IO<T>::L;
  const V sg(sign);
  int64_t i = 0;  // pair index
  for (; i + L <= half; i += L) {
    const auto [even, odd] = at::vec::deinterleave2(IO<T>::load(x + 2 * i), IO<T>::load(x + 2 * i + L));
    const V cv = IO<T>::load(c + i), sv = IO<T>::load(s + i) * sg;
    const auto [a, b] = at::vec::interleave2(even * cv - odd * sv, odd * cv + even * sv);
    IO<T>::store(o + 2 * i, a);
    IO<T>::store(o + 2 * i + L, b);
  }
  for (; i < half; ++i) {
    const A e = static_cast<A>(x[2 * i]), d = static_cast<A>(x[2 * i + 1]);
    const A cv = static_cast<A>(c[i]), sv = static_cast<A>(s[i]) * sign;
    o[2 * i] = static_cast<T>(e * cv - d * sv);
    o[2 * i + 1] = static_cast<T>(d * cv + e * sv);
  }
  if (2 * half < D) std::memcpy(o + 2 * half, x + 2 * half, (D - 2 * half) * sizeof(T));
}

template <typename T>
void rotary_typed(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out,
                  const RotaryPlan& p, bool interleaved, bool inverse) {
  using A = acc_t<T>;
  const T* xp = x.const_data_ptr<T>();
  const T* cp = cos.const_data_ptr<T>();
  const T* sp = sin.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const A sign = inverse ? A(-1) : A(1);
  const int64_t nd = static_cast<int64_t>(p.sizes.size());
  at::parallel_for(0, p.rows, grain_for(p.head_dim, kPassTaskWork), [&](int64_t r0, int64_t r1) {
    // The multi-index of row r0, then carried from row to row.
    std::vector<int64_t> idx(nd);
    int64_t xo = 0, oo = 0, co = 0, so = 0;
    for (int64_t d = nd - 1, r = r0; d >= 0; --d) {
      idx[d] = r % p.sizes[d];
      r /= p.sizes[d];
      xo += idx[d] * p.x_strides[d];
      oo += idx[d] * p.out_strides[d];
      co += idx[d] * p.cos_strides[d];
      so += idx[d] * p.sin_strides[d];
    }
    for (int64_t r = r0; r < r1; ++r) {
      if (interleaved) {
        interleaved_row(xp + xo, cp + co, sp + so, op + oo, p.head_dim, p.half, sign);
      } else {
        rotate_half_row(xp + xo, cp + co, sp + so, op + oo, p.head_dim, p.half, sign);
      }
      for (int64_t d = nd - 1; d >= 0; --d) {
        xo += p.x_strides[d];
        oo += p.out_strides[d];
        co += p.cos_strides[d];
        so += p.sin_strides[d];
        if (++idx[d] < p.sizes[d]) break;
        xo -= p.sizes[d] * p.x_strides[d];
        oo -= p.sizes[d] * p.out_strides[d];
        co -= p.sizes[d] * p.cos_strides[d];
        so -= p.sizes[d] * p.sin_strides[d];
        idx[d] = 0;
      }
    }
  });
}

}  // namespace

void rotary_kernel(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out,
                   const RotaryPlan& plan, bool interleaved, bool inverse) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_embedding",
                                  [&] { rotary_typed<scalar_t>(x, cos, sin, out, plan, interleaved, inverse); });
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

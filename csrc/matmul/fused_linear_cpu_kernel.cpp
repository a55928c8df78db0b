// fused_linear's CPU epilogues, compiled once per ISA: bias + activation on a
// tile of the GEMM output while it is still in the cache (forward), and
// grad * act'(pre) together with the bias gradient's column sums (backward).
// Bound: the activation's arithmetic (erf, tanh or exp per element with
// at::vec's Sleef-based vector functions), the tile being L2-resident; the
// memory traffic is the one write of each output the GEMM already pays.
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>

#include "common/vec_io.h"
#include "matmul/fused_linear.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

// The constants of torch's gelu (approximate="tanh") and of the erf form.
constexpr double kSqrt1_2 = 0.70710678118654752440;   // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kBeta = 0.79788456080286535588;      // sqrt(2 / pi)
constexpr double kKappa = 0.044715;

template <typename V>
inline V act_forward(const V& v, Act act) {
  using A = typename V::value_type;
  switch (act) {
    case Act::Relu:
      return at::vec::clamp_min(v, V(A(0)));
    case Act::Gelu:
      return V(A(0.5)) * v * (V(A(1)) + (v * V(A(kSqrt1_2))).erf());
    case Act::GeluTanh: {
      const V inner = V(A(kBeta)) * (v + V(A(kKappa)) * v * v * v);
      return V(A(0.5)) * v * (V(A(1)) + inner.tanh());
    }
    case Act::Silu:
      return v / (V(A(1)) + v.neg().exp());
    default:
      return v;
  }
}

// d act / d pre, times grad. For relu `v` is the output: its mask is out > 0,
// the same as pre > 0 (and torch's threshold_backward gives 0 at 0).
template <typename V>
inline V act_backward(const V& g, const V& v, Act act) {
  using A = typename V::value_type;
  switch (act) {
    case Act::Relu:
      return V::blendv(V(A(0)), g, v > V(A(0)));
    case Act::Gelu: {
      const V cdf = V(A(0.5)) * (V(A(1)) + (v * V(A(kSqrt1_2))).erf());
      const V pdf = (V(A(-0.5)) * v * v).exp() * V(A(kInvSqrt2Pi));
      return g * (cdf + v * pdf);
    }
    case Act::GeluTanh: {
      const V v2 = v * v;
      const V t = (V(A(kBeta)) * (v + V(A(kKappa)) * v2 * v)).tanh();
      const V left = V(A(0.5)) * (V(A(1)) + t);
      const V right = V(A(0.5)) * v * (V(A(1)) - t * t) * V(A(kBeta)) * (V(A(1)) + V(A(3 * kKappa)) * v2);
      return g * (left + right);
    }
    case Act::Silu: {
      const V s = V(A(1)) / (V(A(1)) + v.neg().exp());
      return g * s * (V(A(1)) + v * (V(A(1)) - s));
    }
    default:
      return g;
  }
}

template <typename T, Act act>
void forward_rows(T* y, int64_t ldy, T* pre, int64_t ldp, const T* bias, int64_t rows, int64_t cols) {
  using IOT = IO<T>;
  using V = typename IOT::V;
  using A = typename IOT::A;
  constexpr int64_t L = IOT::L;
  for (int64_t r = 0; r < rows; ++r) {
    T* yr = y + r * ldy;
    T* pr = pre ? pre + r * ldp : nullptr;
    int64_t j = 0;
    for (; j + L <= cols; j += L) {
      V v = IOT::load(yr + j);
      if (bias) v = v + IOT::load(bias + j);
      if (pr) IOT::store(pr + j, v);
      IOT::store(yr + j, act_forward(v, act));
    }
    if (j < cols) {
      const int64_t c = cols - j;
      V v = IOT::load_part(yr + j, c, A(0));
      if (bias) v = v + IOT::load_part(bias + j, c, A(0));
      if (pr) IOT::store_part(pr + j, v, c);
      IOT::store_part(yr + j, act_forward(v, act), c);
    }
  }
}

template <typename T>
void forward(T* y, int64_t ldy, T* pre, int64_t ldp, const T* bias, int64_t rows, int64_t cols, Act act) {
  // The switch is outside the row loop so each activation gets its own
  // inner loop, with no per-vector branch.
  switch (act) {
    case Act::Relu: return forward_rows<T, Act::Relu>(y, ldy, pre, ldp, bias, rows, cols);
    case Act::Gelu: return forward_rows<T, Act::Gelu>(y, ldy, pre, ldp, bias, rows, cols);
    case Act::GeluTanh: return forward_rows<T, Act::GeluTanh>(y, ldy, pre, ldp, bias, rows, cols);
    case Act::Silu: return forward_rows<T, Act::Silu>(y, ldy, pre, ldp, bias, rows, cols);
    default: return forward_rows<T, Act::None>(y, ldy, pre, ldp, bias, rows, cols);
  }
}

template <typename T, Act act>
void backward_rows(const T* g, int64_t ldg, const T* aux, int64_t lda, T* dpre, int64_t ldd, int64_t rows,
                   int64_t cols, acc_t<T>* bias_acc) {
  using IOT = IO<T>;
  using V = typename IOT::V;
  using A = typename IOT::A;
  constexpr int64_t L = IOT::L;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * ldg;
    const T* ar = act == Act::None ? nullptr : aux + r * lda;
    T* dr = act == Act::None ? nullptr : dpre + r * ldd;
    int64_t j = 0;
    for (; j + L <= cols; j += L) {
      V d = IOT::load(gr + j);
      if constexpr (act != Act::None) {
        d = act_backward(d, IOT::load(ar + j), act);
        IOT::store(dr + j, d);
      }
      if (bias_acc) (V::loadu(bias_acc + j) + d).store(bias_acc + j);
    }
    if (j < cols) {
      const int64_t c = cols - j;
      V d = IOT::load_part(gr + j, c, A(0));
      if constexpr (act != Act::None) {
        d = act_backward(d, IOT::load_part(ar + j, c, A(0)), act);
        IOT::store_part(dr + j, d, c);
      }
      if (bias_acc) (V::loadu(bias_acc + j, c) + d).store(bias_acc + j, c);
    }
  }
}

template <typename T>
void backward(const T* g, int64_t ldg, const T* aux, int64_t lda, T* dpre, int64_t ldd, int64_t rows, int64_t cols,
              Act act, void* bias_acc) {
  auto* acc = static_cast<acc_t<T>*>(bias_acc);
  switch (act) {
    case Act::Relu: return backward_rows<T, Act::Relu>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    case Act::Gelu: return backward_rows<T, Act::Gelu>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    case Act::GeluTanh: return backward_rows<T, Act::GeluTanh>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    case Act::Silu: return backward_rows<T, Act::Silu>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    default: return backward_rows<T, Act::None>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
  }
}

template <typename T>
constexpr FusedLinearFns<T> fns() {
  return {&forward<T>, &backward<T>};
}

}  // namespace

extern const FusedLinearKernels kFusedLinearKernels;
const FusedLinearKernels kFusedLinearKernels = {fns<float>(), fns<double>(), fns<c10::Half>(),
                                                fns<c10::BFloat16>()};

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

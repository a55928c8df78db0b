// The activations on the CPU's vectors (at::vec, Sleef-based erf/tanh), forward
// and backward, for the per-ISA kernel files: fused_linear's epilogue and the
// gated units. act_backward(g, v, act) is g * act'(v). The exps are exp_u20,
// the polynomial torch's own softmax uses (faster than Sleef's 1-ULP exp, a
// few ULP less exact): swiglu 4096 x 11008 forward went from 0.91x to 1.02x
// torch.compile's kernel with it (and act_and_derivative in the backward).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include "common/activation.h"

#include <limits>
#include <type_traits>

namespace teachcompute_ext {
namespace CPU_CAPABILITY {

// The constants of torch's gelu (approximate="tanh") and of the erf form.
constexpr double kSqrt1_2 = 0.70710678118654752440;     // 1 / sqrt(2)
constexpr double kInvSqrt2Pi = 0.39894228040143267794;  // 1 / sqrt(2 pi)
constexpr double kBeta = 0.79788456080286535588;        // sqrt(2 / pi)
constexpr double kKappa = 0.044715;

// erf for gelu. float32: at::vec's own formula (Abramowitz-Stegun 7.1.26,
// |error| < 1.5e-7) with exp_u20 for its exp, where at::vec calls Sleef's
// 1-ULP exp: geglu 256x2816 float32 (1 thread) went from 761 to 507 us, where
// F.gelu(g) * u takes 722 us (F.gelu alone 313 us: torch runs MKL's
// vsCdfNorm there). float64 keeps at::vec's erf (the formula is float32-
// accurate only).
template <typename V>
inline V gelu_erf(const V& x) {
  using A = typename V::value_type;
  if constexpr (std::is_same_v<A, double>) {
    return x.erf();
  } else {
    const V ax = x.abs();
    const V t = V(A(1)) / at::vec::fmadd(V(A(0.3275911f)), ax, V(A(1)));
    V r = at::vec::fmadd(V(A(1.061405429f)), t, V(A(-1.453152027f)));
    r = at::vec::fmadd(r, t, V(A(1.421413741f)));
    r = at::vec::fmadd(r, t, V(A(-0.284496736f)));
    r = at::vec::fmadd(r, t, V(A(0.254829592f)));
    const V y = V(A(1)) - r * t * (ax * ax).neg().exp_u20();
    return V::blendv(y, y.neg(), x < V(A(0)));
  }
}

// gelu'(v) = Phi(v) + v phi(v), summed as torch sums it: 0.5 ((1 + 2 v phi(v)) + erf(v / sqrt 2)),
// e = exp(-v^2 / 2). Where the true value is below float's resolution next to 1
// (v < -6.15 in float32) the sum is exactly 0, as torch's; Phi(v) + v phi(v) left
// v phi(v) there, down to subnormals from v = -13.5 (1.5% of an unscaled layer's
// pre-activation gradient was subnormal, and the two GEMMs of fused_linear's
// backward that read it ran 3.5x slower: 13.4 ms against 3.9 ms for silu).
// float64 keeps Phi(v) + v phi(v), as torch's float64 (its tail is far from float64's subnormals
// and exact to the last digits there).
template <typename V>
inline V gelu_derivative(const V& v, const V& e, const V& erf) {
  using A = typename V::value_type;
  if constexpr (std::is_same_v<A, double>) {
    // exp's subnormal results (|v| > 37.6) count as 0, as in torch's: v phi(v) stays normal.
    const V ez = V::blendv(e, V(A(0)), e < V(std::numeric_limits<A>::min()));
    return V(A(0.5)) * (V(A(1)) + erf) + v * ez * V(A(kInvSqrt2Pi));
  } else {
    const V two_v_phi = v * e * V(A(2 * kInvSqrt2Pi));
    return V(A(0.5)) * ((V(A(1)) + two_v_phi) + erf);
  }
}
template <typename V>
inline V gelu_derivative(const V& v, const V& e) {
  using A = typename V::value_type;
  return gelu_derivative(v, e, gelu_erf(v * V(A(kSqrt1_2))));
}

template <typename V>
inline V act_forward(const V& v, Act act) {
  using A = typename V::value_type;
  switch (act) {
    case Act::Relu: return at::vec::clamp_min(v, V(A(0)));
    case Act::Gelu: return V(A(0.5)) * v * (V(A(1)) + gelu_erf(v * V(A(kSqrt1_2))));
    case Act::GeluTanh: {
      const V inner = V(A(kBeta)) * (v + V(A(kKappa)) * v * v * v);
      return V(A(0.5)) * v * (V(A(1)) + inner.tanh());
    }
    case Act::Silu: return v / (V(A(1)) + v.neg().exp_u20());
    default: return v;
  }
}

// d act / d pre, times grad. For relu `v` is the output: its mask is out > 0,
// the same as pre > 0 (and torch's threshold_backward gives 0 at 0).
template <typename V>
inline V act_backward(const V& g, const V& v, Act act) {
  using A = typename V::value_type;
  switch (act) {
    case Act::Relu: return V::blendv(V(A(0)), g, v > V(A(0)));
    case Act::Gelu: return g * gelu_derivative(v, (V(A(-0.5)) * v * v).exp());
    case Act::GeluTanh: {
      const V v2 = v * v;
      const V t = (V(A(kBeta)) * (v + V(A(kKappa)) * v2 * v)).tanh();
      const V left = V(A(0.5)) * (V(A(1)) + t);
      const V right = V(A(0.5)) * v * (V(A(1)) - t * t) * V(A(kBeta)) * (V(A(1)) + V(A(3 * kKappa)) * v2);
      return g * (left + right);
    }
    case Act::Silu: {
      const V s = V(A(1)) / (V(A(1)) + v.neg().exp_u20());
      return g * s * (V(A(1)) + v * (V(A(1)) - s));
    }
    default: return g;
  }
}

// act(v) and act'(v) together, sharing the one transcendental each needs (the
// gated units' backward needs both): gelu's erf, gelu_tanh's tanh, silu's exp.
template <typename V>
inline void act_and_derivative(const V& v, Act act, V& f, V& df) {
  using A = typename V::value_type;
  switch (act) {
    case Act::Gelu: {
      const V erf = gelu_erf(v * V(A(kSqrt1_2)));
      f = v * (V(A(0.5)) * (V(A(1)) + erf));
      df = gelu_derivative(v, (V(A(-0.5)) * v * v).exp_u20(), erf);
      return;
    }
    case Act::GeluTanh: {
      const V v2 = v * v;
      const V t = (V(A(kBeta)) * (v + V(A(kKappa)) * v2 * v)).tanh();
      const V left = V(A(0.5)) * (V(A(1)) + t);
      f = v * left;
      df = left + V(A(0.5)) * v * (V(A(1)) - t * t) * V(A(kBeta)) * (V(A(1)) + V(A(3 * kKappa)) * v2);
      return;
    }
    case Act::Silu: {
      const V s = V(A(1)) / (V(A(1)) + v.neg().exp_u20());
      f = v * s;
      df = s * (V(A(1)) + v * (V(A(1)) - s));
      return;
    }
    default: f = act_forward(v, act); df = act_backward(V(A(1)), v, act);
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

// The activations on CUDA scalars (accumulator type), forward and backward:
// fused_linear's elementwise epilogues and the gated units. act_bwd(g, v, act)
// is g * act'(v).
#pragma once

#include "common/activation.h"

namespace teachcompute_ext::cuda_kernels {

template <typename A>
__device__ __forceinline__ A act_fwd(A v, Act act) {
  switch (act) {
    case Act::Relu: return v > A(0) ? v : (v != v ? v : A(0));
    case Act::Gelu: return A(0.5) * v * (A(1) + erf(v * A(0.70710678118654752440)));
    case Act::GeluTanh: {
      const A inner = A(0.79788456080286535588) * (v + A(0.044715) * v * v * v);
      return A(0.5) * v * (A(1) + tanh(inner));
    }
    case Act::Silu: return v / (A(1) + exp(-v));
    default: return v;
  }
}

template <typename A>
__device__ __forceinline__ A act_bwd(A g, A v, Act act) {
  switch (act) {
    case Act::Relu: return v > A(0) ? g : A(0);
    case Act::Gelu: {
      // float: 0.5 ((1 + 2 v phi(v)) + erf(v / sqrt 2)), as torch sums it: exactly 0 where the
      // true value is below float's resolution next to 1, never a subnormal (vec_activation.h
      // says why); double: Phi(v) + v phi(v), as torch's float64.
      const A e = exp(A(-0.5) * v * v), erf_v = erf(v * A(0.70710678118654752440));
      if constexpr (std::is_same_v<A, double>) {
        const A ez = e < A(2.2250738585072014e-308) ? A(0) : e;  // exp's subnormals count as 0, as torch's
        return g * (A(0.5) * (A(1) + erf_v) + v * ez * A(0.39894228040143267794));
      } else {
        return g * (A(0.5) * ((A(1) + v * e * A(0.79788456080286535588)) + erf_v));
      }
    }
    case Act::GeluTanh: {
      const A kBeta = A(0.79788456080286535588), kKappa = A(0.044715);
      const A t = tanh(kBeta * (v + kKappa * v * v * v));
      return g * (A(0.5) * (A(1) + t) + A(0.5) * v * (A(1) - t * t) * kBeta * (A(1) + A(3) * kKappa * v * v));
    }
    case Act::Silu: {
      const A s = A(1) / (A(1) + exp(-v));
      return g * s * (A(1) + v * (A(1) - s));
    }
    default: return g;
  }
}

}  // namespace teachcompute_ext::cuda_kernels

// The Llama family on CUDA: rms_norm / add_rms_norm forward and backward,
// rotary_embedding, swiglu / geglu forward and backward. Each is one pass over
// memory, as on the CPU:
// - rms_norm: a block of 256 threads per row (grid capped, rows looped); the
//   sum of squares is a block reduction, the second pass re-reads the row
//   from L2 (a row of 4096 bfloat16 is 8 KB). The weight gradient is summed
//   per fixed group of rows into a [groups, D] float buffer (each thread owns
//   its columns: no atomics), then over groups in a fixed order: the same
//   bits on every run, as the CPU's.
// - rotary: a block per row of head_dim, a thread per pair; cos and sin rows
//   are shared by the heads, so they are read from L2.
// - swiglu / geglu: elementwise over [R, I] through the row strides.
// Bound: memory. Not run on a GPU yet (benchmarks/gpu_check.sh runs it).
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cstdint>

#include "common/activation.cuh"
#include "common/cuda_utils.cuh"
#include "llama/llama.h"

namespace teachcompute_ext::cuda_kernels {
namespace {

using cuda::acc_type;
constexpr int kNormThreads = 256;

// ---- rms_norm / add_rms_norm -----------------------------------------------------

template <typename T, typename W>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_fwd(const T* __restrict__ x, int64_t ldx, const T* __restrict__ res, int64_t ldr, const W* __restrict__ w,
                 acc_type<T> eps, T* __restrict__ out, T* __restrict__ h, acc_type<T>* __restrict__ rstd, int64_t R,
                 int64_t D) {
  using A = acc_type<T>;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const T* xr = x + r * ldx;
    T* hr = h != nullptr ? h + r * D : nullptr;
    A ss = 0;
    for (int64_t j = threadIdx.x; j < D; j += kNormThreads) {
      A v;
      if (res != nullptr) {
        const T hv = static_cast<T>(static_cast<A>(xr[j]) + static_cast<A>(res[r * ldr + j]));
        hr[j] = hv;
        v = static_cast<A>(hv);  // the rounded h, as stored
      } else {
        v = static_cast<A>(xr[j]);
      }
      ss += v * v;
    }
    const A rs = A(1) / sqrt(cuda::block_sum<kNormThreads>(ss) / A(D) + eps);
    if (threadIdx.x == 0) rstd[r] = rs;
    // Each thread reads back the elements it wrote (h) or read (x): no barrier needed.
    const T* src = hr != nullptr ? hr : xr;
    for (int64_t j = threadIdx.x; j < D; j += kNormThreads) {
      const A wv = w != nullptr ? static_cast<A>(w[j]) : A(1);
      out[r * D + j] = static_cast<T>(static_cast<A>(src[j]) * rs * wv);
    }
  }
}

// Rows [g * per, (g + 1) * per) per block g: gx, and the group's weight
// gradient partial into part[g * D, (g + 1) * D) when part is not null.
template <typename T, typename W>
__global__ void __launch_bounds__(kNormThreads)
    rms_norm_bwd(const T* __restrict__ g, int64_t ldg, const T* __restrict__ x, int64_t ldx, const W* __restrict__ w,
                 const acc_type<T>* __restrict__ rstd, const T* __restrict__ gadd, int64_t lda, T* __restrict__ gx,
                 acc_type<T>* __restrict__ part, int64_t R, int64_t D, int64_t per, int64_t groups) {
  using A = acc_type<T>;
  for (int64_t gi = blockIdx.x; gi < groups; gi += gridDim.x) {
    A* pr = part != nullptr ? part + gi * D : nullptr;
    if (pr != nullptr) {
      for (int64_t j = threadIdx.x; j < D; j += kNormThreads) pr[j] = A(0);
    }
    const int64_t r1 = min(R, (gi + 1) * per);
    for (int64_t r = gi * per; r < r1; ++r) {
      const T* gr = g + r * ldg;
      const T* xr = x + r * ldx;
      const A rs = rstd[r];
      A coef = 0;
      if (gx != nullptr) {
        A dot = 0;
        for (int64_t j = threadIdx.x; j < D; j += kNormThreads) {
          const A wv = w != nullptr ? static_cast<A>(w[j]) : A(1);
          dot += static_cast<A>(gr[j]) * wv * static_cast<A>(xr[j]);
        }
        coef = cuda::block_sum<kNormThreads>(dot) * rs * rs * rs / A(D);
      }
      for (int64_t j = threadIdx.x; j < D; j += kNormThreads) {
        const A gv = static_cast<A>(gr[j]), xv = static_cast<A>(xr[j]);
        if (pr != nullptr) pr[j] += gv * xv * rs;
        if (gx != nullptr) {
          const A wv = w != nullptr ? static_cast<A>(w[j]) : A(1);
          A v = rs * gv * wv - xv * coef;
          if (gadd != nullptr) v += static_cast<A>(gadd[r * lda + j]);
          gx[r * D + j] = static_cast<T>(v);
        }
      }
    }
  }
}

// gw[j] = sum over groups of part[g][j], groups in order.
template <typename A>
__global__ void __launch_bounds__(256)
    sum_partials(const A* __restrict__ part, A* __restrict__ gw, int64_t groups, int64_t D) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < D; j += int64_t(gridDim.x) * blockDim.x) {
    A s = 0;
    for (int64_t gi = 0; gi < groups; ++gi) s += part[gi * D + j];
    gw[j] = s;
  }
}

// ---- rotary ----------------------------------------------------------------------

struct RotaryArgs {
  int64_t nd;
  int64_t sizes[kRotaryMaxDims], xs[kRotaryMaxDims], os[kRotaryMaxDims], cs[kRotaryMaxDims], ss[kRotaryMaxDims];
};

constexpr int kRotaryThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kRotaryThreads)
    rotary(const T* __restrict__ x, const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ out,
           RotaryArgs a, int64_t rows, int64_t D, int64_t half, bool interleaved, bool inverse) {
  using A = acc_type<T>;
  const A sign = inverse ? A(-1) : A(1);
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    int64_t xo = 0, oo = 0, co = 0, so = 0, rem = r;
    for (int64_t d = a.nd - 1; d >= 0; --d) {
      const int64_t i = rem % a.sizes[d];
      rem /= a.sizes[d];
      xo += i * a.xs[d];
      oo += i * a.os[d];
      co += i * a.cs[d];
      so += i * a.ss[d];
    }
    for (int64_t i = threadIdx.x; i < half; i += kRotaryThreads) {
      const int64_t i1 = interleaved ? 2 * i : i, i2 = interleaved ? 2 * i + 1 : i + half;
      const A x1 = static_cast<A>(x[xo + i1]), x2 = static_cast<A>(x[xo + i2]);
      const A c = static_cast<A>(cos[co + i]), s = static_cast<A>(sin[so + i]) * sign;
      out[oo + i1] = static_cast<T>(x1 * c - x2 * s);
      out[oo + i2] = static_cast<T>(x2 * c + x1 * s);
    }
    for (int64_t j = 2 * half + threadIdx.x; j < D; j += kRotaryThreads) out[oo + j] = x[xo + j];
  }
}

// ---- swiglu / geglu --------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(256) glu_fwd(const T* __restrict__ g, int64_t ldg, const T* __restrict__ u,
                                               int64_t ldu, T* __restrict__ out, int64_t R, int64_t I, Act act) {
  using A = acc_type<T>;
  const int64_t n = R * I;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / I, c = k - r * I;
    out[k] = static_cast<T>(act_fwd(static_cast<A>(g[r * ldg + c]), act) * static_cast<A>(u[r * ldu + c]));
  }
}

template <typename T>
__global__ void __launch_bounds__(256)
    glu_bwd(const T* __restrict__ d, int64_t ldd, const T* __restrict__ g, int64_t ldg, const T* __restrict__ u,
            int64_t ldu, T* __restrict__ gg, int64_t ldgg, T* __restrict__ gu, int64_t ldgu, int64_t R, int64_t I,
            Act act) {
  using A = acc_type<T>;
  const int64_t n = R * I;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < n; k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = k / I, c = k - r * I;
    const A dv = static_cast<A>(d[r * ldd + c]), gv = static_cast<A>(g[r * ldg + c]);
    gg[r * ldgg + c] = static_cast<T>(act_bwd(dv * static_cast<A>(u[r * ldu + c]), gv, act));
    gu[r * ldgu + c] = static_cast<T>(dv * act_fwd(gv, act));
  }
}

}  // namespace

void rms_norm_kernel(const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight, double eps,
                     at::Tensor& out, at::Tensor& h, at::Tensor& rstd) {
  const int64_t R = x.size(0), D = x.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm", [&] {
    using A = acc_type<scalar_t>;
    with_weight_type<scalar_t>(weight, [&](auto wtag) {
      using W = std::remove_const_t<std::remove_pointer_t<decltype(wtag)>>;
      rms_norm_fwd<scalar_t, W><<<cuda::capped_grid(R, 1, 32), kNormThreads, 0, stream>>>(
          x.const_data_ptr<scalar_t>(), x.stride(0), residual.defined() ? residual.const_data_ptr<scalar_t>() : nullptr,
          residual.defined() ? residual.stride(0) : 0, weight.defined() ? weight.const_data_ptr<W>() : nullptr,
          static_cast<A>(eps), out.mutable_data_ptr<scalar_t>(), h.defined() ? h.mutable_data_ptr<scalar_t>() : nullptr,
          rstd.mutable_data_ptr<A>(), R, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void rms_norm_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                              const at::Tensor& rstd, const at::Tensor& grad_add, at::Tensor& gx, at::Tensor& gw) {
  const int64_t R = x.size(0), D = x.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  // The same fixed groups as the CPU's (llama.h): the sum's order depends on R only.
  const int64_t per = gw.defined() ? std::clamp<int64_t>(R / 8, 1, kRmsNormRowsPerPartial) : 1;
  const int64_t groups = (R + per - 1) / per;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_backward", [&] {
    using A = acc_type<scalar_t>;
    at::Tensor part =
        gw.defined() ? at::empty({groups, D}, x.options().dtype(c10::CppTypeToScalarType<A>::value)) : at::Tensor();
    with_weight_type<scalar_t>(weight, [&](auto wtag) {
      using W = std::remove_const_t<std::remove_pointer_t<decltype(wtag)>>;
      rms_norm_bwd<scalar_t, W><<<cuda::capped_grid(groups, 1, 32), kNormThreads, 0, stream>>>(
          grad.const_data_ptr<scalar_t>(), grad.stride(0), x.const_data_ptr<scalar_t>(), x.stride(0),
          weight.defined() ? weight.const_data_ptr<W>() : nullptr, rstd.const_data_ptr<A>(),
          grad_add.defined() ? grad_add.const_data_ptr<scalar_t>() : nullptr,
          grad_add.defined() ? grad_add.stride(0) : 0, gx.defined() ? gx.mutable_data_ptr<scalar_t>() : nullptr,
          part.defined() ? part.mutable_data_ptr<A>() : nullptr, R, D, per, groups);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (gw.defined()) {
      sum_partials<A><<<cuda::capped_grid(D, 256), 256, 0, stream>>>(part.const_data_ptr<A>(), gw.mutable_data_ptr<A>(),
                                                                     groups, D);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void rotary_kernel(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, at::Tensor& out,
                   const RotaryPlan& p, bool interleaved, bool inverse) {
  RotaryArgs a{};
  a.nd = static_cast<int64_t>(p.sizes.size());
  TORCH_INTERNAL_ASSERT(a.nd <= kRotaryMaxDims, "rotary_embedding: too many row dims");
  for (int64_t d = 0; d < a.nd; ++d) {
    a.sizes[d] = p.sizes[d];
    a.xs[d] = p.x_strides[d];
    a.os[d] = p.out_strides[d];
    a.cs[d] = p.cos_strides[d];
    a.ss[d] = p.sin_strides[d];
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rotary_embedding", [&] {
    rotary<scalar_t><<<cuda::capped_grid(p.rows, 1, 32), kRotaryThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), cos.const_data_ptr<scalar_t>(), sin.const_data_ptr<scalar_t>(),
        out.mutable_data_ptr<scalar_t>(), a, p.rows, p.head_dim, p.half, interleaved, inverse);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void glu_kernel(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out, Act act) {
  const int64_t R = gate.size(0), I = gate.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gate.scalar_type(), "glu", [&] {
    glu_fwd<scalar_t><<<cuda::capped_grid(R * I, 256), 256, 0, stream>>>(
        gate.const_data_ptr<scalar_t>(), gate.stride(0), up.const_data_ptr<scalar_t>(), up.stride(0),
        out.mutable_data_ptr<scalar_t>(), R, I, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void glu_backward_kernel(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up, at::Tensor& ggate,
                         at::Tensor& gup, Act act) {
  const int64_t R = gate.size(0), I = gate.size(1);
  const auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, gate.scalar_type(), "glu_backward", [&] {
    glu_bwd<scalar_t><<<cuda::capped_grid(R * I, 256), 256, 0, stream>>>(
        grad.const_data_ptr<scalar_t>(), grad.stride(0), gate.const_data_ptr<scalar_t>(), gate.stride(0),
        up.const_data_ptr<scalar_t>(), up.stride(0), ggate.mutable_data_ptr<scalar_t>(), ggate.stride(0),
        gup.mutable_data_ptr<scalar_t>(), gup.stride(0), R, I, act);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace teachcompute_ext::cuda_kernels

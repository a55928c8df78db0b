// Reductions along dims on CUDA (reduce_sum, reduce_mean, reduce_max,
// reduce_min, logsumexp), from the same plan as the CPU (reduce_dims.h).
// ROWS (each output reduces one contiguous span): a warp per output for spans
// up to 1024 elements, a block of 512 threads otherwise; partial states merge
// by warp shuffles, then across warps in shared memory. COLS and GENERAL: one
// thread per output walking its reduced elements; with the innermost kept dim
// contiguous, neighbouring threads read neighbouring addresses, so every step
// is a coalesced load with no transposing copy. ROWS read 16-byte packs when
// the row is aligned. Bound: memory (each input read once). Not yet run on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <c10/cuda/CUDAGuard.h>

#include <cmath>
#include <limits>

#include "common/cuda_utils.cuh"
#include "ops.h"
#include "reduce/online_softmax.cuh"
#include "reduce/reduce_dims.h"

namespace teachcompute_ext {
namespace {

using cuda::kWarp;
constexpr int kBlockThreads = 512;
constexpr int kGeneralThreads = 256;
constexpr int kMaxDims = 10;

using cuda::acc_type;

struct DimsArg {
  int n;
  int64_t sizes[kMaxDims];
  int64_t strides[kMaxDims];
};

DimsArg to_arg(const std::vector<Dim>& dims) {
  DimsArg a{};
  a.n = static_cast<int>(dims.size());
  for (int d = 0; d < a.n; ++d) {
    a.sizes[d] = dims[d].size;
    a.strides[d] = dims[d].stride;
  }
  return a;
}

__device__ __forceinline__ int64_t offset_of(const DimsArg& a, int64_t i) {
  int64_t off = 0;
  for (int d = a.n - 1; d >= 0; --d) {
    off += (i % a.sizes[d]) * a.strides[d];
    i /= a.sizes[d];
  }
  return off;
}

// ---- the reducers: a state, its update with one element, a merge, a result --
template <typename A>
struct SumOp {
  struct State {
    A s;
  };
  A scale;
  __device__ State init() const { return {A(0)}; }
  __device__ void update(State& st, A v, int64_t) const { st.s += v; }
  __device__ State merge(State a, State b) const { return {a.s + b.s}; }
  __device__ A result(State st) const { return st.s * scale; }
};

template <typename A>
struct LseOp {
  using State = cuda::MaxSum<A>;
  __device__ State init() const { return {-std::numeric_limits<A>::infinity(), A(0)}; }
  __device__ State merge(State a, State b) const { return cuda::merge(a, b); }
  __device__ void update(State& st, A v, int64_t) const { st = merge(st, State{v, A(1)}); }
  // As torch.logsumexp: -inf, +inf and NaN maxima are the result.
  __device__ A result(State st) const { return (isnan(st.m) || isinf(st.m)) ? st.m : st.m + log(st.s); }
};

template <typename A, bool kMax>
struct MaxMinOp {
  struct State {
    A v;
    int64_t i;  // -1: empty
  };
  __device__ State init() const { return {A(0), -1}; }
  // Fixed preference: a real candidate, then NaN, then the better value, then the lower index.
  __device__ State merge(State a, State b) const {
    if (a.i < 0) return b;
    if (b.i < 0) return a;
    const bool an = a.v != a.v, bn = b.v != b.v;
    if (an || bn) return (an && (!bn || a.i < b.i)) ? a : b;
    if (a.v == b.v) return a.i < b.i ? a : b;
    return (kMax ? a.v > b.v : a.v < b.v) ? a : b;
  }
  __device__ void update(State& st, A v, int64_t i) const { st = merge(st, State{v, i}); }
  __device__ A result(State st) const { return st.v; }
};

template <typename S>
__device__ __forceinline__ S shfl_state(S s, int o) {
  // States are one or two 4/8-byte fields: shuffle them word by word.
  static_assert(sizeof(S) % 4 == 0, "state must be whole words");
  constexpr int kWords = sizeof(S) / 4;
  union {
    S s;
    int w[kWords];
  } u;
  u.s = s;
#pragma unroll
  for (int k = 0; k < kWords; ++k) u.w[k] = __shfl_xor_sync(0xffffffffu, u.w[k], o);
  return u.s;
}

template <typename Op>
__device__ typename Op::State warp_merge(const Op& op, typename Op::State st) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) st = op.merge(st, shfl_state(st, o));
  return st;
}

template <typename T, typename Op, int kThreads>
__global__ void __launch_bounds__(kThreads) rows_kernel(const T* __restrict__ x, DimsArg kept, int64_t count, Op op,
                                                        T* __restrict__ out, int64_t* __restrict__ out_idx) {
  using A = acc_type<T>;
  using State = typename Op::State;
  const int64_t o = blockIdx.x;
  const T* row = x + offset_of(kept, o);
  State st = op.init();
  cuda::for_each_packed(row, count, threadIdx.x, kThreads,
                        [&](T v, int64_t i) { op.update(st, static_cast<A>(v), i); });
  st = warp_merge(op, st);
  if constexpr (kThreads > kWarp) {
    __shared__ State partial[kThreads / kWarp];
    if (threadIdx.x % kWarp == 0) partial[threadIdx.x / kWarp] = st;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kThreads / kWarp; ++w) st = op.merge(st, partial[w]);
    }
  }
  if (threadIdx.x == 0) {
    out[o] = static_cast<T>(op.result(st));
    if constexpr (std::is_same_v<Op, MaxMinOp<A, true>> || std::is_same_v<Op, MaxMinOp<A, false>>) {
      out_idx[o] = st.i;
    }
  }
}

template <typename T, typename Op>
__global__ void __launch_bounds__(kGeneralThreads) general_kernel(const T* __restrict__ x, DimsArg kept, DimsArg red,
                                                                  int64_t nout, int64_t count, Op op,
                                                                  T* __restrict__ out, int64_t* __restrict__ out_idx) {
  using A = acc_type<T>;
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * kGeneralThreads + threadIdx.x; o < nout;
       o += static_cast<int64_t>(gridDim.x) * kGeneralThreads) {
    const T* base = x + offset_of(kept, o);
    typename Op::State st = op.init();
    for (int64_t r = 0; r < count; ++r) op.update(st, static_cast<A>(base[offset_of(red, r)]), r);
    out[o] = static_cast<T>(op.result(st));
    if constexpr (std::is_same_v<Op, MaxMinOp<A, true>> || std::is_same_v<Op, MaxMinOp<A, false>>) {
      out_idx[o] = st.i;
    }
  }
}

template <typename T, typename Op>
void launch(const at::Tensor& x, const ReducePlan& p, const Op& op, at::Tensor& out, int64_t* out_idx) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const T* xp = x.const_data_ptr<T>();
  T* o = out.mutable_data_ptr<T>();
  const DimsArg kept = to_arg(p.kept);
  if (p.layout == ReduceLayout::ROWS && p.count <= 1024) {
    rows_kernel<T, Op, kWarp><<<p.nout, kWarp, 0, stream>>>(xp, kept, p.count, op, o, out_idx);
  } else if (p.layout == ReduceLayout::ROWS) {
    rows_kernel<T, Op, kBlockThreads><<<p.nout, kBlockThreads, 0, stream>>>(xp, kept, p.count, op, o, out_idx);
  } else {
    const int64_t grid = std::max<int64_t>(
        1, std::min<int64_t>((p.nout + kGeneralThreads - 1) / kGeneralThreads, 8LL * cuda::sm_count()));
    general_kernel<T, Op><<<grid, kGeneralThreads, 0, stream>>>(xp, kept, to_arg(p.red), p.nout, p.count, op, o,
                                                               out_idx);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Plans x, or x made contiguous when its layout needs more dims than the kernels take.
ReducePlan plan_for_cuda(const char* op, at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  ReducePlan p = plan_reduction(op, x, dim, keepdim);
  if (static_cast<int>(p.kept.size()) > kMaxDims || static_cast<int>(p.red.size()) > kMaxDims) {
    x = x.contiguous();
    p = plan_reduction(op, x, dim, keepdim);
  }
  return p;
}

at::Tensor sum_or_mean(const char* op, const at::Tensor& input, at::OptionalIntArrayRef dim, bool keepdim,
                       bool mean) {
  check_float_dtype(op, "x", input);
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor x = input;
  const ReducePlan p = plan_for_cuda(op, x, dim, keepdim);
  if (p.count == 0) {
    return at::full(p.out_shape, mean ? std::numeric_limits<double>::quiet_NaN() : 0.0, x.options());
  }
  at::Tensor out = at::empty(p.out_shape, x.options());
  if (p.nout == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reduce_sum_cuda", [&] {
    using A = acc_type<scalar_t>;
    const SumOp<A> sop{mean ? A(1) / static_cast<A>(p.count) : A(1)};
    launch<scalar_t>(x, p, sop, out, nullptr);
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> max_or_min(const char* op, const at::Tensor& input, int64_t dim, bool keepdim,
                                              bool is_max) {
  check_maxmin(op, input, dim);
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor x = input;
  const ReducePlan p = plan_for_cuda(op, x, at::IntArrayRef{dim}, keepdim);
  at::Tensor values = at::empty(p.out_shape, x.options());
  at::Tensor indices = at::empty(p.out_shape, x.options().dtype(at::kLong));
  if (p.nout == 0) return {values, indices};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reduce_max_cuda", [&] {
    using A = acc_type<scalar_t>;
    int64_t* ip = indices.mutable_data_ptr<int64_t>();
    if (is_max) {
      launch<scalar_t>(x, p, MaxMinOp<A, true>{}, values, ip);
    } else {
      launch<scalar_t>(x, p, MaxMinOp<A, false>{}, values, ip);
    }
  });
  return {values, indices};
}

}  // namespace

at::Tensor reduce_sum_cuda(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return sum_or_mean("reduce_sum", x, dim, keepdim, false);
}
at::Tensor reduce_mean_cuda(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return sum_or_mean("reduce_mean", x, dim, keepdim, true);
}
std::tuple<at::Tensor, at::Tensor> reduce_max_cuda(const at::Tensor& x, int64_t dim, bool keepdim) {
  return max_or_min("reduce_max", x, dim, keepdim, true);
}
std::tuple<at::Tensor, at::Tensor> reduce_min_cuda(const at::Tensor& x, int64_t dim, bool keepdim) {
  return max_or_min("reduce_min", x, dim, keepdim, false);
}
at::Tensor logsumexp_cuda(const at::Tensor& input, at::IntArrayRef dim, bool keepdim) {
  const char* op = "logsumexp";
  check_float_dtype(op, "x", input);
  c10::cuda::CUDAGuard guard(input.device());
  at::Tensor x = input;
  const ReducePlan p = plan_for_cuda(op, x, dim, keepdim);
  if (p.count == 0) return at::full(p.out_shape, -std::numeric_limits<double>::infinity(), x.options());
  at::Tensor out = at::empty(p.out_shape, x.options());
  if (p.nout == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "logsumexp_cuda", [&] {
    launch<scalar_t>(x, p, LseOp<acc_type<scalar_t>>{}, out, nullptr);
  });
  return out;
}

}  // namespace teachcompute_ext

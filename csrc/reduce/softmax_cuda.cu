// softmax / log_softmax forward and backward on CUDA.
// Rows (inner == 1): a warp per row when n <= 1024, a block of 512 threads per
// longer row. Each thread keeps an online (max, sum) pair over its strided
// elements; pairs are merged by warp shuffles (and shared memory across the
// warps of a block), then a second pass writes the output. Columns (inner > 1):
// one thread per column, adjacent threads on adjacent columns, so every row
// step is a coalesced load; no transposing copy. Rows are read and written in
// 16-byte packs when aligned. Grids are capped and the kernels loop over the
// rest of the rows (a grid of one block per row failed at 2^31 rows). Bound:
// memory (one read of x for the statistics, one read and one write for the
// output). Not yet run on a GPU.
#include <ATen/Dispatch.h>

#include <cmath>
#include <limits>

#include "common/cuda_utils.cuh"
#include "reduce/online_softmax.cuh"
#include "reduce/reduce.h"

namespace teachcompute_ext::cuda_kernels {
namespace {

using cuda::kWarp;
constexpr int kRowsPerWarpBlock = 8;
constexpr int kBlockThreads = 512;
constexpr int kColThreads = 256;

using cuda::acc_type;

using cuda::dexp;
using cuda::dlog;
using cuda::MaxSum;
using cuda::merge;

template <typename A>
__device__ __forceinline__ MaxSum<A> warp_merge(MaxSum<A> v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) {
    MaxSum<A> other{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)};
    v = merge(v, other);
  }
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Merges the per-warp results of a block (all threads get the result).
template <typename A>
__device__ MaxSum<A> block_merge(MaxSum<A> v) {
  __shared__ A sm[kBlockThreads / kWarp], ss[kBlockThreads / kWarp];
  v = warp_merge(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) {
    sm[warp] = v.m;
    ss[warp] = v.s;
  }
  __syncthreads();
  MaxSum<A> r{sm[0], ss[0]};
  for (int w = 1; w < kBlockThreads / kWarp; ++w) r = merge(r, MaxSum<A>{sm[w], ss[w]});
  __syncthreads();
  return r;
}

template <typename A>
__device__ A block_sum(A v) {
  __shared__ A sh[kBlockThreads / kWarp];
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  A r = 0;
  for (int w = 0; w < kBlockThreads / kWarp; ++w) r += sh[w];
  __syncthreads();
  return r;
}

// ---- forward --------------------------------------------------------------------
// kWarpRow: a warp per row (blockDim = 32 x 8); otherwise a block per row.
template <typename T, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? kWarp * kRowsPerWarpBlock : kBlockThreads)
    fwd_rows(const T* __restrict__ x, T* __restrict__ y, int64_t rows, int64_t n, bool log) {
  using A = acc_type<T>;
  const int tid = threadIdx.x;
  const int nthreads = kWarpRow ? kWarp : kBlockThreads;
  const int64_t per_block = kWarpRow ? kRowsPerWarpBlock : 1;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block + (kWarpRow ? threadIdx.y : 0);
  // Block-uniform for the block-wide rows (block_merge synchronizes); a warp
  // past the last row leaves whole, so the shuffles stay full.
  for (int64_t row = first; row < rows; row += static_cast<int64_t>(gridDim.x) * per_block) {
    const T* xr = x + row * n;
    T* yr = y + row * n;
    MaxSum<A> st{-std::numeric_limits<A>::infinity(), A(0)};
    cuda::for_each_packed(xr, n, tid, nthreads,
                          [&](T v, int64_t) { st = merge(st, MaxSum<A>{static_cast<A>(v), A(1)}); });
    st = kWarpRow ? warp_merge(st) : block_merge(st);
    const A M = st.m, ls = dlog(st.s), inv = A(1) / st.s;
    cuda::map_packed<T>(xr, nullptr, yr, n, tid, nthreads, [&](T v, T) {
      return static_cast<T>(log ? (static_cast<A>(v) - M) - ls : dexp(static_cast<A>(v) - M) * inv);
    });
  }
}

template <typename T>
__global__ void __launch_bounds__(kColThreads) fwd_cols(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner,
                         bool log) {
  using A = acc_type<T>;
  const int64_t total = outer * inner;
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x; col < total;
       col += static_cast<int64_t>(gridDim.x) * kColThreads) {
    const int64_t base = (col / inner) * n * inner + col % inner;
    MaxSum<A> st{-std::numeric_limits<A>::infinity(), A(0)};
    for (int64_t r = 0; r < n; ++r) st = merge(st, MaxSum<A>{static_cast<A>(x[base + r * inner]), A(1)});
    const A ls = dlog(st.s), inv = A(1) / st.s;
    for (int64_t r = 0; r < n; ++r) {
      const A v = static_cast<A>(x[base + r * inner]);
      y[base + r * inner] = static_cast<T>(log ? (v - st.m) - ls : dexp(v - st.m) * inv);
    }
  }
}

// ---- backward -------------------------------------------------------------------
template <typename T, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? kWarp * kRowsPerWarpBlock : kBlockThreads)
    bwd_rows(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ gx, int64_t rows, int64_t n,
             bool log) {
  using A = acc_type<T>;
  const int tid = threadIdx.x;
  const int nthreads = kWarpRow ? kWarp : kBlockThreads;
  const int64_t per_block = kWarpRow ? kRowsPerWarpBlock : 1;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * per_block + (kWarpRow ? threadIdx.y : 0);
  for (int64_t row = first; row < rows; row += static_cast<int64_t>(gridDim.x) * per_block) {
    const int64_t off = row * n;
    A acc = 0;
    if (log) {
      cuda::for_each_packed(g + off, n, tid, nthreads, [&](T v, int64_t) { acc += static_cast<A>(v); });
    } else {
      for (int64_t i = tid; i < n; i += nthreads) acc += static_cast<A>(g[off + i]) * static_cast<A>(y[off + i]);
    }
    const A dot = kWarpRow ? warp_sum(acc) : block_sum(acc);
    cuda::map_packed<T>(g + off, y + off, gx + off, n, tid, nthreads, [&](T gt, T yt) {
      const A gv = static_cast<A>(gt), yv = static_cast<A>(yt);
      return static_cast<T>(log ? gv - dexp(yv) * dot : yv * (gv - dot));
    });
  }
}

template <typename T>
__global__ void __launch_bounds__(kColThreads) bwd_cols(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ gx, int64_t outer,
                         int64_t n, int64_t inner, bool log) {
  using A = acc_type<T>;
  const int64_t total = outer * inner;
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x; col < total;
       col += static_cast<int64_t>(gridDim.x) * kColThreads) {
    const int64_t base = (col / inner) * n * inner + col % inner;
    A dot = 0;
    for (int64_t r = 0; r < n; ++r) {
      const A gv = static_cast<A>(g[base + r * inner]);
      dot += log ? gv : gv * static_cast<A>(y[base + r * inner]);
    }
    for (int64_t r = 0; r < n; ++r) {
      const A gv = static_cast<A>(g[base + r * inner]), yv = static_cast<A>(y[base + r * inner]);
      gx[base + r * inner] = static_cast<T>(log ? gv - dexp(yv) * dot : yv * (gv - dot));
    }
  }
}

int64_t col_grid(int64_t cols) {
  return std::max<int64_t>(1, std::min<int64_t>((cols + kColThreads - 1) / kColThreads, 8LL * cuda::sm_count()));
}

// Row grids: capped, the kernels loop over the remaining rows.
unsigned row_grid(int64_t blocks) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, 64LL * cuda::sm_count())));
}

}  // namespace

void softmax_kernel(const at::Tensor& x, at::Tensor& y, const SoftmaxShape& sh, bool log) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "softmax_cuda", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* yp = y.mutable_data_ptr<scalar_t>();
    if (sh.inner == 1 && sh.n <= 1024) {
      const dim3 block(kWarp, kRowsPerWarpBlock);
      const unsigned grid = row_grid((sh.outer + kRowsPerWarpBlock - 1) / kRowsPerWarpBlock);
      fwd_rows<scalar_t, true><<<grid, block, 0, stream>>>(xp, yp, sh.outer, sh.n, log);
    } else if (sh.inner == 1) {
      fwd_rows<scalar_t, false><<<row_grid(sh.outer), kBlockThreads, 0, stream>>>(xp, yp, sh.outer, sh.n, log);
    } else {
      fwd_cols<scalar_t><<<col_grid(sh.outer * sh.inner), kColThreads, 0, stream>>>(xp, yp, sh.outer, sh.n,
                                                                                   sh.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

void softmax_backward_kernel(const at::Tensor& grad, const at::Tensor& out, at::Tensor& gx, const SoftmaxShape& sh,
                             bool log) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "softmax_backward_cuda", [&] {
    const scalar_t* gp = grad.const_data_ptr<scalar_t>();
    const scalar_t* yp = out.const_data_ptr<scalar_t>();
    scalar_t* gxp = gx.mutable_data_ptr<scalar_t>();
    if (sh.inner == 1 && sh.n <= 1024) {
      const dim3 block(kWarp, kRowsPerWarpBlock);
      const unsigned grid = row_grid((sh.outer + kRowsPerWarpBlock - 1) / kRowsPerWarpBlock);
      bwd_rows<scalar_t, true><<<grid, block, 0, stream>>>(gp, yp, gxp, sh.outer, sh.n, log);
    } else if (sh.inner == 1) {
      bwd_rows<scalar_t, false><<<row_grid(sh.outer), kBlockThreads, 0, stream>>>(gp, yp, gxp, sh.outer, sh.n, log);
    } else {
      bwd_cols<scalar_t><<<col_grid(sh.outer * sh.inner), kColThreads, 0, stream>>>(gp, yp, gxp, sh.outer, sh.n,
                                                                                    sh.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace teachcompute_ext::cuda_kernels

// softmax / log_softmax forward and backward on CUDA.
// Rows (inner == 1): a warp per row when n <= 1024, a block of 512 threads per
// longer row. Each thread keeps an online (max, sum) pair over its strided
// elements; pairs are merged by warp shuffles (and shared memory across the
// warps of a block), then a second pass writes the output. Columns (inner > 1):
// one thread per column, adjacent threads on adjacent columns, so every row
// step is a coalesced load; no transposing copy. Few long columns (softmax
// over dim 0 of a (10^6, 2) tensor ran on 2 threads): blocks of bx columns x
// by row-strided threads, the column cut into pieces over the grid's y; the
// pieces' states merge in piece order (the same bits every run), then each
// piece writes its rows. Rows are read and written in
// 16-byte packs when aligned. Grids are capped and the kernels loop over the
// rest of the rows (a grid of one block per row failed at 2^31 rows). Bound:
// memory (one read of x for the statistics, one read and one write for the
// output). Not yet run on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <algorithm>
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

// ---- forward --------------------------------------------------------------------
// kWarpRow: a warp per row (blockDim = 32 x 8); otherwise a block per row.
template <typename T, bool kWarpRow>
__global__ void __launch_bounds__(kWarpRow ? kWarp* kRowsPerWarpBlock : kBlockThreads)
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
__global__ void __launch_bounds__(kColThreads)
    fwd_cols(const T* __restrict__ x, T* __restrict__ y, int64_t outer, int64_t n, int64_t inner, bool log) {
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
__global__ void __launch_bounds__(kWarpRow ? kWarp* kRowsPerWarpBlock : kBlockThreads)
    bwd_rows(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ gx, int64_t rows, int64_t n, bool log) {
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
    const A dot = kWarpRow ? cuda::warp_sum(acc) : cuda::block_sum<kBlockThreads>(acc);
    cuda::map_packed<T>(g + off, y + off, gx + off, n, tid, nthreads, [&](T gt, T yt) {
      const A gv = static_cast<A>(gt), yv = static_cast<A>(yt);
      return static_cast<T>(log ? gv - dexp(yv) * dot : yv * (gv - dot));
    });
  }
}

template <typename T>
__global__ void __launch_bounds__(kColThreads)
    bwd_cols(const T* __restrict__ g, const T* __restrict__ y, T* __restrict__ gx, int64_t outer, int64_t n,
             int64_t inner, bool log) {
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

// ---- few long columns: split over blocks ---------------------------------------------------------
constexpr int kSplitThreads = 256;

// The (bx x by) block, the pieces and their length for cols columns of n rows.
struct ColSplit {
  int bx, by;
  int64_t col_blocks, pieces, piece_len;
};

ColSplit col_split(int64_t cols, int64_t n) {
  ColSplit c;
  c.bx = cuda::outputs_per_block(cols);
  c.by = kSplitThreads / c.bx;
  c.col_blocks = cuda::ceil_div(cols, c.bx);
  c.piece_len = cuda::ceil_div(n, cuda::pieces_to_fill(c.col_blocks, n, c.by));
  c.pieces = cuda::ceil_div(n, c.piece_len);
  return c;
}

// Column col of the (outer, n, inner) layout starts at base(col) and steps by inner.
__device__ __forceinline__ int64_t col_base(int64_t col, int64_t n, int64_t inner) {
  return (col / inner) * n * inner + col % inner;
}

// Pass 1 of the forward: each piece's (max, sum of exp) of each column into
// part[piece * cols + col]. Pass 1 of the backward: the dot sum(g * y) (sum(g)
// for log_softmax) into dot[piece * cols + col].
template <typename T, bool kBackward>
__global__ void __launch_bounds__(kSplitThreads)
    split_stats(const T* __restrict__ a, const T* __restrict__ b, int64_t cols, int64_t n, int64_t inner,
                int64_t piece_len, bool log, MaxSum<acc_type<T>>* __restrict__ part, acc_type<T>* __restrict__ dot) {
  using A = acc_type<T>;
  __shared__ MaxSum<A> states[kSplitThreads];
  __shared__ A sums[kSplitThreads];
  const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t piece = blockIdx.y;
  int64_t r0, r1;
  cuda::piece_rows(piece, piece_len, n, r0, r1);
  const int64_t nblocks = (cols + bx - 1) / bx;
  for (int64_t cb = blockIdx.x; cb < nblocks; cb += gridDim.x) {  // block-uniform trip count
    const int64_t col = cb * bx + tx;
    MaxSum<A> st{-std::numeric_limits<A>::infinity(), A(0)};
    A acc = 0;
    if (col < cols) {
      const int64_t base = col_base(col, n, inner);
      for (int64_t r = r0 + ty; r < r1; r += by) {
        const A v = static_cast<A>(a[base + r * inner]);
        if constexpr (kBackward) {
          acc += log ? v : v * static_cast<A>(b[base + r * inner]);
        } else {
          st = merge(st, MaxSum<A>{v, A(1)});
        }
      }
    }
    states[ty * bx + tx] = st;
    sums[ty * bx + tx] = acc;
    __syncthreads();
    if (ty == 0 && col < cols) {
      for (int k = 1; k < by; ++k) {
        st = merge(st, states[k * bx + tx]);
        acc += sums[k * bx + tx];
      }
      if constexpr (kBackward) {
        dot[piece * cols + col] = acc;
      } else {
        part[piece * cols + col] = st;
      }
    }
    __syncthreads();
  }
}

// Pass 2: every block merges its columns' states over all pieces, in piece
// order, then writes the rows of its own piece.
template <typename T, bool kBackward>
__global__ void __launch_bounds__(kSplitThreads)
    split_write(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out, int64_t cols, int64_t n,
                int64_t inner, int64_t piece_len, int64_t pieces, bool log,
                const MaxSum<acc_type<T>>* __restrict__ part, const acc_type<T>* __restrict__ dot) {
  using A = acc_type<T>;
  __shared__ A m_sh[32], c_sh[32];  // per column of the block: max and 1 / sum (forward), or the dot
  const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t piece = blockIdx.y;
  int64_t r0, r1;
  cuda::piece_rows(piece, piece_len, n, r0, r1);
  const int64_t nblocks = (cols + bx - 1) / bx;
  for (int64_t cb = blockIdx.x; cb < nblocks; cb += gridDim.x) {  // block-uniform trip count
    const int64_t col = cb * bx + tx;
    if (ty == 0 && col < cols) {
      if constexpr (kBackward) {
        A d = 0;
        for (int64_t k = 0; k < pieces; ++k) d += dot[k * cols + col];
        c_sh[tx] = d;
      } else {
        MaxSum<A> st = part[col];
        for (int64_t k = 1; k < pieces; ++k) st = merge(st, part[k * cols + col]);
        m_sh[tx] = st.m;
        c_sh[tx] = log ? dlog(st.s) : A(1) / st.s;
      }
    }
    __syncthreads();
    if (col < cols) {
      const int64_t base = col_base(col, n, inner);
      const A M = m_sh[tx], C = c_sh[tx];
      for (int64_t r = r0 + ty; r < r1; r += by) {
        const int64_t i = base + r * inner;
        const A v = static_cast<A>(a[i]);
        if constexpr (kBackward) {
          const A yv = static_cast<A>(b[i]);
          out[i] = static_cast<T>(log ? v - dexp(yv) * C : yv * (v - C));
        } else {
          out[i] = static_cast<T>(log ? (v - M) - C : dexp(v - M) * C);
        }
      }
    }
    __syncthreads();
  }
}

// Whether a columns layout should be split: too few columns to fill the GPU
// with one thread each, and columns long enough to share.
bool split_columns(int64_t cols, int64_t n) { return cols < 16LL * cuda::sm_count() * kColThreads / 4 && n >= 1024; }

template <typename T, bool kBackward>
void launch_split(const T* a, const T* b, T* out, const SoftmaxShape& sh, bool log, const at::Tensor& like) {
  using A = acc_type<T>;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t cols = sh.outer * sh.inner;
  const ColSplit c = col_split(cols, sh.n);
  const int64_t state_bytes = kBackward ? sizeof(A) : sizeof(MaxSum<A>);
  const at::Tensor ws = at::empty({c.pieces * cols * state_bytes}, like.options().dtype(at::kByte));
  auto* part = kBackward ? nullptr : reinterpret_cast<MaxSum<A>*>(ws.data_ptr());
  auto* dot = kBackward ? reinterpret_cast<A*>(ws.data_ptr()) : nullptr;
  const dim3 grid(static_cast<unsigned>(std::min<int64_t>(c.col_blocks, 64LL * cuda::sm_count())),
                  static_cast<unsigned>(c.pieces));
  const dim3 block(c.bx, c.by);
  split_stats<T, kBackward><<<grid, block, 0, stream>>>(a, b, cols, sh.n, sh.inner, c.piece_len, log, part, dot);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  split_write<T, kBackward>
      <<<grid, block, 0, stream>>>(a, b, out, cols, sh.n, sh.inner, c.piece_len, c.pieces, log, part, dot);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t col_grid(int64_t cols) { return cuda::capped_grid(cols, kColThreads, 8); }

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
    } else if (split_columns(sh.outer * sh.inner, sh.n)) {
      launch_split<scalar_t, false>(xp, nullptr, yp, sh, log, x);
    } else {
      fwd_cols<scalar_t>
          <<<col_grid(sh.outer * sh.inner), kColThreads, 0, stream>>>(xp, yp, sh.outer, sh.n, sh.inner, log);
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
    } else if (split_columns(sh.outer * sh.inner, sh.n)) {
      launch_split<scalar_t, true>(gp, yp, gxp, sh, log, out);
    } else {
      bwd_cols<scalar_t>
          <<<col_grid(sh.outer * sh.inner), kColThreads, 0, stream>>>(gp, yp, gxp, sh.outer, sh.n, sh.inner, log);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace teachcompute_ext::cuda_kernels

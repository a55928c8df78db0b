// Reductions along dims on CUDA (reduce_sum, reduce_mean, reduce_max,
// reduce_min, logsumexp), from the plan of reduce.h.
// ROWS (each output reduces one contiguous span): a warp per output for spans
// up to 1024 elements (8 outputs per block), a block of 512 threads otherwise;
// 16-byte loads when the row is aligned; states merge by warp shuffles, then
// across warps in shared memory. COLS and GENERAL: a block of 256 threads
// covers bx neighbouring outputs (x) times by = 256 / bx reducers (y), so a
// warp reads neighbouring addresses when the innermost kept dim is contiguous
// (coalesced, no transposing copy) and a few outputs still get many threads;
// the reducers' states merge in shared memory.
// Few outputs and long reductions: each reduction is split into pieces
// (blockIdx.y) so that the grid fills the GPU; pieces write partial states and
// a second kernel merges them in piece order. Every split depends on the
// shapes and the SM count only: the same input gives the same bits every run
// (no float atomics). Without the split, reduce_sum over dim 0 of a
// (140001, 2) float32 tensor was two threads each adding 140001 floats in
// sequence: slow, and about 3e-3 off. Bound: memory (each input read once).
// Not yet run on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>

#include <cmath>
#include <limits>

#include "common/cuda_utils.cuh"
#include "reduce/online_softmax.cuh"
#include "reduce/reduce.h"

namespace teachcompute_ext::cuda_kernels {
namespace {

using cuda::acc_type;
using cuda::kWarp;

constexpr int kRowThreads = 512;   // threads on one long row
constexpr int kWarpRows = 8;       // short rows per block, a warp each
constexpr int kShortRow = 1024;    // rows up to this long get a warp
constexpr int kTileThreads = 256;  // COLS / GENERAL block

struct DimsArg {
  int n;
  int64_t sizes[kMaxReduceDims];
  int64_t strides[kMaxReduceDims];
};

DimsArg to_arg(const std::vector<Dim>& dims) {
  TORCH_CHECK(dims.size() <= static_cast<size_t>(kMaxReduceDims),
              "teachcompute_ext: internal error: a reduction plan with ", dims.size(),
              " dims reached the CUDA kernel (at most ", kMaxReduceDims, ")");
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
  using Value = A;
  static constexpr bool kIndexed = false;
  struct State {
    A s;
  };
  double scale;  // 1 / count for mean, in double as on the CPU (1 / count is inexact in float past 2^24)
  __device__ State init() const { return {A(0)}; }
  __device__ void update(State& st, A v, int64_t) const { st.s += v; }
  __device__ State merge(State a, State b) const { return {a.s + b.s}; }
  __device__ A result(State st) const { return static_cast<A>(static_cast<double>(st.s) * scale); }
};

// Integer and bool sums: exact, in int64 (torch's result dtype), wrapping
// around as torch's do (unsigned: signed overflow is undefined).
struct IntSumOp {
  using Value = int64_t;
  static constexpr bool kIndexed = false;
  struct State {
    int64_t s;
  };
  __device__ State init() const { return {0}; }
  __device__ void update(State& st, int64_t v, int64_t) const {
    st.s = static_cast<int64_t>(static_cast<uint64_t>(st.s) + static_cast<uint64_t>(v));
  }
  __device__ State merge(State a, State b) const {
    return {static_cast<int64_t>(static_cast<uint64_t>(a.s) + static_cast<uint64_t>(b.s))};
  }
  __device__ int64_t result(State st) const { return st.s; }
};

template <typename A>
struct LseOp {
  using Value = A;
  static constexpr bool kIndexed = false;
  using State = cuda::MaxSum<A>;
  __device__ State init() const { return {-std::numeric_limits<A>::infinity(), A(0)}; }
  __device__ State merge(State a, State b) const { return cuda::merge(a, b); }
  __device__ void update(State& st, A v, int64_t) const { st = merge(st, State{v, A(1)}); }
  // As torch.logsumexp: -inf, +inf and NaN maxima are the result.
  __device__ A result(State st) const { return (isnan(st.m) || isinf(st.m)) ? st.m : st.m + log(st.s); }
};

template <typename A, bool kMax>
struct MaxMinOp {
  using Value = A;
  static constexpr bool kIndexed = true;
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

// Where a state goes: the output (one piece), or partial[piece * nout + o].
template <typename O, typename Op>
struct Sink {
  O* out;
  int64_t* out_idx;
  typename Op::State* partial;
  int64_t nout;
  __device__ void put(const Op& op, int64_t o, int64_t piece, typename Op::State st) const {
    if (partial != nullptr) {
      partial[piece * nout + o] = st;
      return;
    }
    out[o] = static_cast<O>(op.result(st));
    if constexpr (Op::kIndexed) out_idx[o] = st.i;
  }
};

// ROWS: kRows rows per block, kThreadsX threads on each; piece blockIdx.y
// covers elements [r0, r0 + piece_len) of every row.
template <typename T, typename O, typename Op, int kThreadsX, int kRows>
__global__ void __launch_bounds__(kThreadsX* kRows)
    rows_kernel(const T* __restrict__ x, DimsArg kept, int64_t nout, int64_t count, int64_t piece_len, Op op,
                Sink<O, Op> sink) {
  using A = typename Op::Value;
  using State = typename Op::State;
  const int64_t piece = blockIdx.y;
  int64_t r0, r1;
  cuda::piece_rows(piece, piece_len, count, r0, r1);
  const int64_t n = r1 - r0;
  const int64_t nblocks = (nout + kRows - 1) / kRows;
  for (int64_t rb = blockIdx.x; rb < nblocks; rb += gridDim.x) {  // block-uniform trip count
    const int64_t o = rb * kRows + threadIdx.y;
    State st = op.init();
    if (o < nout) {
      const T* row = x + offset_of(kept, o) + r0;
      cuda::for_each_packed(row, n, threadIdx.x, kThreadsX,
                            [&](T v, int64_t i) { op.update(st, static_cast<A>(v), r0 + i); });
    }
    st = warp_merge(op, st);
    if constexpr (kThreadsX > kWarp) {
      static_assert(kRows == 1, "block-wide rows are one per block");
      __shared__ State warps[kThreadsX / kWarp];
      if (threadIdx.x % kWarp == 0) warps[threadIdx.x / kWarp] = st;
      __syncthreads();
      if (threadIdx.x == 0) {
        for (int w = 1; w < kThreadsX / kWarp; ++w) st = op.merge(st, warps[w]);
      }
      __syncthreads();  // `warps` is reused by the next row
    }
    if (threadIdx.x == 0 && o < nout) sink.put(op, o, piece, st);
  }
}

// COLS / GENERAL: blockDim (bx, by), bx * by == kTileThreads; output o reads
// its reduced elements r (linear over the reduced dims) in [r0, r1).
template <typename T, typename O, typename Op>
__global__ void __launch_bounds__(kTileThreads)
    tile_kernel(const T* __restrict__ x, DimsArg kept, DimsArg red, int64_t nout, int64_t count, int64_t piece_len,
                Op op, Sink<O, Op> sink) {
  using A = typename Op::Value;
  using State = typename Op::State;
  __shared__ State states[kTileThreads];
  const int bx = blockDim.x, by = blockDim.y, tx = threadIdx.x, ty = threadIdx.y;
  const int64_t piece = blockIdx.y;
  int64_t r0, r1;
  cuda::piece_rows(piece, piece_len, count, r0, r1);
  const int64_t nblocks = (nout + bx - 1) / bx;
  for (int64_t ob = blockIdx.x; ob < nblocks; ob += gridDim.x) {  // block-uniform trip count
    const int64_t o = ob * bx + tx;
    State st = op.init();
    if (o < nout) {
      const T* base = x + offset_of(kept, o);
      for (int64_t r = r0 + ty; r < r1; r += by) op.update(st, static_cast<A>(base[offset_of(red, r)]), r);
    }
    states[ty * bx + tx] = st;
    __syncthreads();
    if (ty == 0 && o < nout) {
      for (int k = 1; k < by; ++k) st = op.merge(st, states[k * bx + tx]);
      sink.put(op, o, piece, st);
    }
    __syncthreads();
  }
}

// Merges each output's pieces in piece order and writes it.
template <typename O, typename Op>
__global__ void __launch_bounds__(kTileThreads)
    finalize_kernel(const typename Op::State* __restrict__ partial, int64_t pieces, int64_t nout, Op op,
                    O* __restrict__ out, int64_t* __restrict__ out_idx) {
  for (int64_t o = static_cast<int64_t>(blockIdx.x) * kTileThreads + threadIdx.x; o < nout;
       o += static_cast<int64_t>(gridDim.x) * kTileThreads) {
    typename Op::State st = partial[o];
    for (int64_t k = 1; k < pieces; ++k) st = op.merge(st, partial[k * nout + o]);
    out[o] = static_cast<O>(op.result(st));
    if constexpr (Op::kIndexed) out_idx[o] = st.i;
  }
}

using cuda::ceil_div;

// Grid x: the blocks, capped (each kernel loops over the rest): a grid of one
// block per output failed at 2^31 outputs.
unsigned grid_x(int64_t blocks) { return static_cast<unsigned>(std::min<int64_t>(blocks, 64LL * cuda::sm_count())); }

// T: x's dtype, O: out's (int64 for integer sums, T otherwise).
template <typename T, typename O, typename Op>
void launch(const at::Tensor& x, const ReducePlan& p, const Op& op, at::Tensor& out, int64_t* out_idx) {
  using State = typename Op::State;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const T* xp = x.const_data_ptr<T>();
  O* o = out.mutable_data_ptr<O>();
  const DimsArg kept = to_arg(p.kept);
  const bool rows = p.layout == ReduceLayout::ROWS;
  const bool short_rows = p.count <= kShortRow;
  int64_t blocks, threads_per_output;
  int bx = 1, by = 1;
  if (rows) {
    blocks = short_rows ? ceil_div(p.nout, kWarpRows) : p.nout;
    threads_per_output = short_rows ? kWarp : kRowThreads;
  } else {
    bx = cuda::outputs_per_block(p.nout);
    by = kTileThreads / bx;
    blocks = ceil_div(p.nout, bx);
    threads_per_output = by;
  }
  int64_t pieces = cuda::pieces_to_fill(blocks, p.count, threads_per_output);
  // Pieces of rows start at a multiple of 16 elements: 16-byte loads stay aligned.
  int64_t piece_len = ceil_div(p.count, pieces);
  if (rows) piece_len = ceil_div(piece_len, 16) * 16;
  pieces = ceil_div(p.count, piece_len);
  at::Tensor partial;
  State* pp = nullptr;
  if (pieces > 1) {
    partial = at::empty({pieces * p.nout * static_cast<int64_t>(sizeof(State))}, x.options().dtype(at::kByte));
    pp = reinterpret_cast<State*>(partial.mutable_data_ptr());
  }
  const Sink<O, Op> sink{o, out_idx, pp, p.nout};
  const dim3 grid(grid_x(blocks), static_cast<unsigned>(pieces));
  if (rows && short_rows) {
    rows_kernel<T, O, Op, kWarp, kWarpRows>
        <<<grid, dim3(kWarp, kWarpRows), 0, stream>>>(xp, kept, p.nout, p.count, piece_len, op, sink);
  } else if (rows) {
    rows_kernel<T, O, Op, kRowThreads, 1>
        <<<grid, kRowThreads, 0, stream>>>(xp, kept, p.nout, p.count, piece_len, op, sink);
  } else {
    tile_kernel<T, O, Op>
        <<<grid, dim3(bx, by), 0, stream>>>(xp, kept, to_arg(p.red), p.nout, p.count, piece_len, op, sink);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (pieces > 1) {
    finalize_kernel<O, Op>
        <<<grid_x(ceil_div(p.nout, kTileThreads)), kTileThreads, 0, stream>>>(pp, pieces, p.nout, op, o, out_idx);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace

void reduce_kernel(const at::Tensor& x, const ReducePlan& p, ReduceOp rop, at::Tensor& out, at::Tensor& indices) {
  if (at::isIntegralType(x.scalar_type(), /*includeBool=*/true)) {
    // Integer and bool: sums in int64, max/min exact; the frontend refuses the other ops.
    AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, x.scalar_type(), "reduce_int_cuda", [&] {
      switch (rop) {
        case ReduceOp::MAX:
          launch<scalar_t, scalar_t>(x, p, MaxMinOp<int64_t, true>{}, out, indices.mutable_data_ptr<int64_t>());
          break;
        case ReduceOp::MIN:
          launch<scalar_t, scalar_t>(x, p, MaxMinOp<int64_t, false>{}, out, indices.mutable_data_ptr<int64_t>());
          break;
        default: launch<scalar_t, int64_t>(x, p, IntSumOp{}, out, nullptr); break;
      }
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reduce_cuda", [&] {
    using A = acc_type<scalar_t>;
    switch (rop) {
      case ReduceOp::SUM:
      case ReduceOp::MEAN:
        launch<scalar_t, scalar_t>(x, p, SumOp<A>{rop == ReduceOp::MEAN ? 1.0 / static_cast<double>(p.count) : 1.0},
                                   out, nullptr);
        break;
      case ReduceOp::MAX:
        launch<scalar_t, scalar_t>(x, p, MaxMinOp<A, true>{}, out, indices.mutable_data_ptr<int64_t>());
        break;
      case ReduceOp::MIN:
        launch<scalar_t, scalar_t>(x, p, MaxMinOp<A, false>{}, out, indices.mutable_data_ptr<int64_t>());
        break;
      case ReduceOp::LOGSUMEXP: launch<scalar_t, scalar_t>(x, p, LseOp<A>{}, out, nullptr); break;
    }
  });
}

}  // namespace teachcompute_ext::cuda_kernels

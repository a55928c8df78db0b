// embedding and embedding_bag on CUDA.
// Forward: one thread per output element (adjacent threads, adjacent columns:
// coalesced); embedding_bag loops over its bag's entries, so the gathered
// [num_indices, dim] matrix is never built. Indices and offsets are checked on
// the device (validate_kernel, or inline): a bad one is a device-side assert
// naming the op and the argument, the CPU's error, with no host sync.
// Backward: the scatter-add of the ScatterND family (scatter_rows: float
// atomics, float accumulation for the half types, or sorted segments under
// torch.use_deterministic_algorithms(True)), reading each gradient row through
// the bag of its index and its scale (1 / count for mean, the per-sample
// weight), so no [num_indices, dim] matrix is built either.
// Not yet run on a GPU.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>

#include <cmath>

#include "common/cuda_utils.cuh"
#include "embedding/embedding.h"
#include "scatter_nd/scatter_rows.h"

namespace teachcompute_ext::cuda_kernels {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t work) { return cuda::capped_grid(work, kThreads); }

#define TCE_GRID_LOOP(i, n)                                                            \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(gridDim.x) * kThreads)

// The op's name in a device message.
enum class EmbOp : int { EMBEDDING, EMBEDDING_BACKWARD, BAG, BAG_BACKWARD, UPDATE, BAG_UPDATE };

__device__ const char* op_name(EmbOp op) {
  switch (op) {
    case EmbOp::EMBEDDING_BACKWARD: return "embedding_backward";
    case EmbOp::BAG: return "embedding_bag";
    case EmbOp::BAG_BACKWARD: return "embedding_bag_backward";
    case EmbOp::UPDATE: return "embedding_update_";
    case EmbOp::BAG_UPDATE: return "embedding_bag_update_";
    default: return "embedding";
  }
}

__device__ __forceinline__ void check_index(int64_t r, int64_t num, int64_t i, EmbOp op) {
  TCE_DEVICE_CHECK(r >= 0 && r < num,
                   "teachcompute_ext.%s: index %lld out of range for argument 'indices' (weight has %lld rows; "
                   "entry %lld)\n",
                   op_name(op), static_cast<long long>(r), static_cast<long long>(num), static_cast<long long>(i));
}

// Every index in [0, num) and, with offsets, offsets[0] == 0, offsets
// non-decreasing and none past n: the checks of the CPU path (bag_bounds).
template <typename index_t>
__global__ void __launch_bounds__(kThreads) validate_kernel(const index_t* __restrict__ idx, int64_t n, int64_t num,
                                                            const int64_t* __restrict__ off, int64_t noff, EmbOp op) {
  const int64_t work = n > noff ? n : noff;
  TCE_GRID_LOOP(i, work) {
    if (i < n) check_index(static_cast<int64_t>(idx[i]), num, i, op);
    if (i < noff) {
      const int64_t o = off[i];
      TCE_DEVICE_CHECK(i > 0 || o == 0, "teachcompute_ext.%s: offsets[0] must be 0, got %lld\n", op_name(op),
                       static_cast<long long>(o));
      TCE_DEVICE_CHECK(i == 0 || o >= off[i - 1],
                       "teachcompute_ext.%s: 'offsets' must be non-decreasing, got offsets[%lld] = %lld after "
                       "offsets[%lld] = %lld\n",
                       op_name(op), static_cast<long long>(i), static_cast<long long>(o), static_cast<long long>(i - 1),
                       static_cast<long long>(i > 0 ? off[i - 1] : 0));
      TCE_DEVICE_CHECK(o <= n,
                       "teachcompute_ext.%s: offsets[%lld] = %lld is past the end of 'indices' (%lld entries)\n",
                       op_name(op), static_cast<long long>(i), static_cast<long long>(o), static_cast<long long>(n));
    }
  }
}

template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads) gather_kernel(const T* __restrict__ w, const index_t* __restrict__ idx,
                                                          T* __restrict__ out, int64_t n, int64_t num, int64_t dim) {
  TCE_GRID_LOOP(t, n * dim) {
    const int64_t i = t / dim, c = t % dim, r = static_cast<int64_t>(idx[i]);
    check_index(r, num, i, EmbOp::EMBEDDING);
    out[t] = w[r * dim + c];
  }
}

// Bag b covers positions [bag_begin(b), bag_end(b)): b * fixed_len (2-D
// indices) or offsets[b]; the last bag ends at offsets[bags]
// (include_last_offset) or n.
struct BagBounds {
  int64_t n, bags, fixed_len;
  bool last_offset;
  __device__ int64_t begin(const int64_t* off, int64_t b) const { return off ? off[b] : b * fixed_len; }
  __device__ int64_t end(const int64_t* off, int64_t b) const {
    if (!off) return (b + 1) * fixed_len;
    return (b + 1 < bags || last_offset) ? off[b + 1] : n;
  }
};

// Indices and offsets were validated first (validate_kernel).
template <typename T, typename index_t>
__global__ void __launch_bounds__(kThreads)
    bag_kernel(const T* __restrict__ w, const index_t* __restrict__ idx, const int64_t* __restrict__ off,
               const T* __restrict__ psw, BagBounds bb, int64_t dim, BagMode mode, int64_t padding, T* __restrict__ out,
               int64_t* __restrict__ argmax) {
  using A = cuda::acc_type<T>;
  TCE_GRID_LOOP(t, bb.bags * dim) {
    const int64_t b = t / dim, c = t % dim;
    const int64_t begin = bb.begin(off, b), end = bb.end(off, b);
    A acc = 0, best = 0;
    int64_t cnt = 0, arg = -1;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t r = static_cast<int64_t>(idx[i]);
      if (r == padding) continue;
      const A v = static_cast<A>(w[r * dim + c]);
      if (mode == BagMode::MAX) {
        if (arg < 0 || v > best) {  // the first maximum wins, as torch
          best = v;
          arg = r;
        }
      } else {
        acc += psw ? v * static_cast<A>(psw[i]) : v;
        ++cnt;
      }
    }
    if (mode == BagMode::MAX) {
      out[t] = static_cast<T>(arg >= 0 ? best : A(0));
      argmax[t] = arg;
    } else {
      out[t] = static_cast<T>(mode == BagMode::MEAN && cnt > 0 ? acc / static_cast<A>(cnt) : acc);
    }
  }
}

// The bag of every position (-1 past the last bag) by binary search over the
// bag starts, its destination row (-1 for padding or no bag) and, for mean
// with padding, the count of each bag.
template <typename index_t>
__global__ void __launch_bounds__(kThreads)
    positions_kernel(const index_t* __restrict__ idx, const int64_t* __restrict__ off, BagBounds bb, int64_t padding,
                     int64_t* __restrict__ bag_of, int64_t* __restrict__ dest, int* __restrict__ counts) {
  TCE_GRID_LOOP(i, bb.n) {
    int64_t b;
    if (!off) {
      b = i / bb.fixed_len;
    } else {
      int64_t lo = 0, hi = bb.bags;  // the last bag whose start is <= i
      while (hi - lo > 1) {
        const int64_t mid = (lo + hi) / 2;
        if (off[mid] <= i)
          lo = mid;
        else
          hi = mid;
      }
      b = lo;
      // Empty bags share a start: lo is the last of them, the one that holds i.
    }
    if (b >= bb.bags || i >= bb.end(off, b) || i < bb.begin(off, b)) b = -1;
    const int64_t r = static_cast<int64_t>(idx[i]);
    const bool counts_for_bag = b >= 0 && r != padding;
    bag_of[i] = b;
    dest[i] = counts_for_bag ? r : -1;
    if (counts != nullptr && counts_for_bag) atomicAdd(counts + b, 1);
  }
}

// Per-position scale of the gradient row: 1 / (entries of its bag) for mean,
// the per-sample weight for sum with weights.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    scale_kernel(const int64_t* __restrict__ bag_of, const int64_t* __restrict__ off, BagBounds bb,
                 const int* __restrict__ counts, const T* __restrict__ psw, cuda::acc_type<T>* __restrict__ scale) {
  using A = cuda::acc_type<T>;
  TCE_GRID_LOOP(i, bb.n) {
    const int64_t b = bag_of[i];
    if (b < 0) {
      scale[i] = A(0);
    } else if (psw != nullptr) {
      scale[i] = static_cast<A>(psw[i]);
    } else {
      const int64_t cnt = counts != nullptr ? counts[b] : bb.end(off, b) - bb.begin(off, b);
      scale[i] = A(1) / static_cast<A>(cnt > 0 ? cnt : 1);
    }
  }
}

// gpsw[i] = <grad[bag_of[i]], weight[idx[i]]> for the positions that count.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    psw_grad_kernel(const T* __restrict__ g, const T* __restrict__ w, const int64_t* __restrict__ bag_of,
                    const int64_t* __restrict__ dest, int64_t n, int64_t dim, T* __restrict__ gpsw) {
  using A = cuda::acc_type<T>;
  TCE_GRID_LOOP(i, n) {
    const int64_t r = dest[i];
    A s = 0;
    if (r >= 0) {
      const T* a = g + bag_of[i] * dim;
      const T* b = w + r * dim;
      for (int64_t c = 0; c < dim; ++c) s += static_cast<A>(a[c]) * static_cast<A>(b[c]);
    }
    gpsw[i] = static_cast<T>(s);
  }
}

// max: (bag, column) sends its gradient to (argmax row, column) of gw viewed as
// [num * dim, 1] (row_only: to the argmax row, for the fused update's grouping).
__global__ void __launch_bounds__(kThreads)
    max_dest_kernel(const int64_t* __restrict__ argmax, int64_t total, int64_t dim, int64_t num, bool row_only,
                    EmbOp op, int64_t* __restrict__ dest) {
  TCE_GRID_LOOP(t, total) {
    const int64_t r = argmax[t];
    TCE_DEVICE_CHECK(r >= -1 && r < num,
                     "teachcompute_ext.%s: max_indices entry %lld out of range for a weight with %lld rows (-1: an "
                     "empty bag)\n",
                     op_name(op), static_cast<long long>(r), static_cast<long long>(num));
    dest[t] = r < 0 ? -1 : row_only ? r : r * dim + t % dim;
  }
}

// The embedding backward's destinations: the index, or -1 for padding.
template <typename index_t>
__global__ void __launch_bounds__(kThreads)
    embedding_dest_kernel(const index_t* __restrict__ idx, int64_t n, int64_t num, int64_t padding, EmbOp op,
                          int64_t* __restrict__ dest) {
  TCE_GRID_LOOP(i, n) {
    const int64_t r = static_cast<int64_t>(idx[i]);
    check_index(r, num, i, op);
    dest[i] = r == padding ? -1 : r;
  }
}

// ---- the backward fused with an optimizer step ---------------------------------------------------------
// The contributions sorted by destination row (at::sort, stable: each row's in
// index order, so its sum has the same bits every run), then one warp per
// segment start: the lanes take 32 columns at a time (coalesced reads of each
// gradient row), sum the row's contributions in order, and apply the
// optimizer to those columns of the row and its state (rowwise_adagrad first
// reduces the row's mean square over the warp). Untouched rows are not read.
// Design as FBGEMM's TBE backward (sorted indices, a warp per unique row, the
// optimizer in the same kernel); a hot row is one warp's serial loop.

// One optimizer step on one entry (the elementwise optimizers); see embedding.h.
template <typename T, typename A>
__device__ __forceinline__ void update_entry(T* w, A* s1, A* s2, A g, RowUpdate u, A step_size) {
  const A lr = static_cast<A>(u.lr), wd = static_cast<A>(u.weight_decay), eps = static_cast<A>(u.eps);
  const A wc = static_cast<A>(*w);
  switch (u.kind) {
    case RowOptimizer::SGD: *w = static_cast<T>(wc - lr * (g + wd * wc)); break;
    case RowOptimizer::ADAGRAD: {
      const A gc = g + wd * wc, s = *s1 + gc * gc;
      *s1 = s;
      *w = static_cast<T>(wc - lr * gc / (sqrt(s) + eps));
      break;
    }
    default: {  // ADAM, ADAMW
      const bool decoupled = u.kind == RowOptimizer::ADAMW;
      const A b1 = static_cast<A>(u.beta1), b2 = static_cast<A>(u.beta2);
      const A gc = decoupled ? g : g + wd * wc;
      const A m = b1 * *s1 + (A(1) - b1) * gc, v = b2 * *s2 + (A(1) - b2) * gc * gc;
      *s1 = m;
      *s2 = v;
      *w = static_cast<T>(wc * (decoupled ? A(1) - lr * wd : A(1)) - step_size * m / (sqrt(v) + eps));
    }
  }
}

// The fused update's bound: per touched row, one read of each contribution's
// gradient row plus a read and a write of the weight row and its state (Adam:
// 3 rows in, 3 out). Never run on a GPU (no device lent so far), so no figure
// yet. Its sm_90 machine code (benchmarks/sass_check.py --table): float 1160
// instructions, 32 registers, no local memory; global loads 64 and 32 bits wide
// (a lane holds 2 of a 64-wide row's columns, not 4: 128-bit loads would need
// dim >= 128); the 13 calls inside loops are the FP division and sqrt slow
// paths of the optimizers and, in max mode, the 64-bit j % dim below. double
// has 1 local load.
// The contributions of a segment: sorted[q] its row, perm[q] the contribution
// (a position whose gradient row is src[perm[q]], times scale; or, max mode,
// an element of grad [bags, dim], which adds to its own column only).
template <typename T>
struct Contributions {
  const int64_t* sorted;
  const int64_t* perm;
  const T* grad;
  const int64_t* src;              // row mode: the gradient row of each position
  const cuda::acc_type<T>* scale;  // row mode: its scale, or null for 1
  bool elements;                   // max mode
  int64_t n, dim;

  // Column c of the segment starting at p (row `row`), summed in order.
  __device__ cuda::acc_type<T> sum(int64_t p, int64_t row, int64_t c) const {
    using A = cuda::acc_type<T>;
    A acc = 0;
    for (int64_t q = p; q < n && sorted[q] == row; ++q) {
      const int64_t j = perm[q];
      if (elements) {
        if (j % dim == c) acc += static_cast<A>(grad[j]);
      } else {
        acc += (scale ? scale[j] : A(1)) * static_cast<A>(grad[src[j] * dim + c]);
      }
    }
    return acc;
  }
};

template <typename T>
__global__ void __launch_bounds__(kThreads)
    update_rows_kernel(Contributions<T> in, RowUpdate u, cuda::acc_type<T> step_size, T* __restrict__ w,
                       cuda::acc_type<T>* __restrict__ s1, cuda::acc_type<T>* __restrict__ s2, int64_t num) {
  using A = cuda::acc_type<T>;
  constexpr int kWarp = 32;
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / kWarp);
  const int64_t dim = in.dim;
  for (int64_t p = static_cast<int64_t>(blockIdx.x) * (kThreads / kWarp) + threadIdx.x / kWarp; p < in.n; p += warps) {
    const int64_t row = in.sorted[p];
    if (row < 0 || row >= num || (p > 0 && in.sorted[p - 1] == row)) continue;  // skipped, or not a segment start
    T* wr = w + row * dim;
    if (u.kind == RowOptimizer::ROWWISE_ADAGRAD) {
      // The row's mean square first (a warp sum), then the step with it.
      A squares = 0;
      for (int64_t c = lane; c < dim; c += kWarp) {
        const A g = in.sum(p, row, c) + static_cast<A>(u.weight_decay) * static_cast<A>(wr[c]);
        squares += g * g;
      }
      squares = cuda::warp_sum(squares);
      const A s = s1[row] + (dim > 0 ? squares / static_cast<A>(dim) : A(0));
      __syncwarp();
      if (lane == 0) s1[row] = s;
      const A scale = static_cast<A>(u.lr) / (sqrt(s) + static_cast<A>(u.eps));
      for (int64_t c = lane; c < dim; c += kWarp) {
        const A g = in.sum(p, row, c) + static_cast<A>(u.weight_decay) * static_cast<A>(wr[c]);
        wr[c] = static_cast<T>(static_cast<A>(wr[c]) - scale * g);
      }
      continue;
    }
    for (int64_t c = lane; c < dim; c += kWarp) {
      update_entry<T, A>(wr + c, s1 ? s1 + row * dim + c : nullptr, s2 ? s2 + row * dim + c : nullptr,
                         in.sum(p, row, c), u, step_size);
    }
  }
}

template <typename T>
void launch_update(const at::Tensor& dest, const at::Tensor& grad, const at::Tensor& src, const at::Tensor& scale,
                   bool elements, const RowUpdate& u, at::Tensor& weight, at::Tensor& state1, at::Tensor& state2) {
  using A = cuda::acc_type<T>;
  const int64_t n = dest.numel();
  if (n == 0) return;
  auto [sorted, perm] = at::sort(dest, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const double bc1 = 1.0 - std::pow(u.beta1, static_cast<double>(u.step));
  const double bc2 = 1.0 - std::pow(u.beta2, static_cast<double>(u.step));
  const bool adam = u.kind == RowOptimizer::ADAM || u.kind == RowOptimizer::ADAMW;
  const A step_size = adam ? static_cast<A>(u.lr * std::sqrt(bc2) / bc1) : A(0);
  const Contributions<T> in{sorted.const_data_ptr<int64_t>(),
                            perm.const_data_ptr<int64_t>(),
                            grad.const_data_ptr<T>(),
                            src.defined() ? src.const_data_ptr<int64_t>() : nullptr,
                            scale.defined() ? scale.const_data_ptr<A>() : nullptr,
                            elements,
                            n,
                            weight.size(1)};
  const int64_t warps_per_block = kThreads / 32;
  update_rows_kernel<T><<<grid_for((n + warps_per_block - 1) / warps_per_block * kThreads), kThreads, 0,
                          at::cuda::getCurrentCUDAStream()>>>(
      in, u, step_size, weight.mutable_data_ptr<T>(), state1.numel() > 0 ? state1.mutable_data_ptr<A>() : nullptr,
      state2.numel() > 0 ? state2.mutable_data_ptr<A>() : nullptr, weight.size(0));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename index_t>
void validate(const at::Tensor& idx, int64_t num, const at::Tensor& off, EmbOp op) {
  const int64_t n = idx.numel(), noff = off.defined() ? off.numel() : 0;
  validate_kernel<index_t><<<grid_for(std::max(n, noff)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      idx.const_data_ptr<index_t>(), n, num, off.defined() ? off.const_data_ptr<int64_t>() : nullptr, noff, op);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Offsets as int64, contiguous (or undefined for 2-D indices): int64 offsets
// beside int32 indices must not wrap around (the CPU reads them as int64).
at::Tensor offsets_like(const BagInputs& in) {
  return in.offsets.has_value() ? in.offsets->to(at::kLong).contiguous() : at::Tensor();
}

BagBounds bounds_of(const BagInputs& in) {
  return {in.indices.numel(), in.args.bags, in.indices.dim() == 2 ? in.indices.size(1) : 0, in.include_last_offset};
}

// Each position's bag and destination row (-1: padding, or past the last
// bag), and for mean with padding each bag's count: what the backward and the
// fused update of sum and mean both start from.
struct BagPositions {
  at::Tensor bag_of, dest, counts;
};

BagPositions bag_positions(const BagInputs& in, const at::Tensor& off, const BagBounds& bb, cudaStream_t stream) {
  const auto long_opts = in.indices.options().dtype(at::kLong);
  const bool count = in.args.mode == BagMode::MEAN && in.args.padding >= 0;
  BagPositions bp{at::empty({bb.n}, long_opts), at::empty({bb.n}, long_opts),
                  count ? at::zeros({bb.bags}, long_opts.dtype(at::kInt)) : at::Tensor()};
  AT_DISPATCH_INDEX_TYPES(in.indices.scalar_type(), "embedding_bag_positions_cuda", [&] {
    positions_kernel<index_t><<<grid_for(bb.n), kThreads, 0, stream>>>(
        in.indices.const_data_ptr<index_t>(), off.defined() ? off.const_data_ptr<int64_t>() : nullptr, bb,
        in.args.padding, bp.bag_of.mutable_data_ptr<int64_t>(), bp.dest.mutable_data_ptr<int64_t>(),
        count ? bp.counts.mutable_data_ptr<int>() : nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return bp;
}

// Per-position scale in the accumulation type (mean's 1 / count, or the
// per-sample weight); undefined where every scale is 1 (sum without weights).
template <typename scalar_t>
at::Tensor bag_scale(const BagPositions& bp, const at::Tensor& off, const BagBounds& bb, BagMode mode,
                     const at::Tensor& pw, const at::Tensor& grad, cudaStream_t stream) {
  using A = cuda::acc_type<scalar_t>;
  if (mode != BagMode::MEAN && !pw.defined()) return at::Tensor();
  at::Tensor scale = at::empty({bb.n}, grad.options().dtype(std::is_same_v<A, double> ? at::kDouble : at::kFloat));
  scale_kernel<scalar_t><<<grid_for(bb.n), kThreads, 0, stream>>>(
      bp.bag_of.const_data_ptr<int64_t>(), off.defined() ? off.const_data_ptr<int64_t>() : nullptr, bb,
      bp.counts.defined() ? bp.counts.const_data_ptr<int>() : nullptr,
      pw.defined() ? pw.const_data_ptr<scalar_t>() : nullptr, scale.mutable_data_ptr<A>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return scale;
}

// per_sample_weights' gradient, <grad[bag], weight[row]>, for each position that counts.
template <typename scalar_t>
void launch_psw_grad(const at::Tensor& grad, const at::Tensor& weight, const BagPositions& bp, at::Tensor& gpsw,
                     cudaStream_t stream) {
  const int64_t n = bp.dest.numel();
  psw_grad_kernel<scalar_t><<<grid_for(n), kThreads, 0, stream>>>(
      grad.const_data_ptr<scalar_t>(), weight.const_data_ptr<scalar_t>(), bp.bag_of.const_data_ptr<int64_t>(),
      bp.dest.const_data_ptr<int64_t>(), n, weight.size(1), gpsw.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void embedding_kernel(const at::Tensor& weight, const at::Tensor& indices, at::Tensor& out) {
  const int64_t n = indices.numel(), num = weight.size(0), dim = weight.size(1);
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "embedding_cuda_idx", [&] {
    if (dim == 0) {
      validate<index_t>(indices, num, at::Tensor(), EmbOp::EMBEDDING);
      return;
    }
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_cuda", [&] {
      gather_kernel<scalar_t, index_t><<<grid_for(n * dim), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          weight.const_data_ptr<scalar_t>(), indices.const_data_ptr<index_t>(), out.mutable_data_ptr<scalar_t>(), n,
          num, dim);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void embedding_backward_kernel(const at::Tensor& grad, const at::Tensor& indices, int64_t padding, at::Tensor& gw) {
  const int64_t n = indices.numel();
  at::Tensor dest = at::empty({n}, indices.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "embedding_backward_cuda", [&] {
    embedding_dest_kernel<index_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        indices.const_data_ptr<index_t>(), n, gw.size(0), padding, EmbOp::EMBEDDING_BACKWARD,
        dest.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  scatter_rows(gw, dest, grad, at::Tensor(), at::Tensor(), ScatterReduction::ADD);
}

void embedding_bag_kernel(const BagInputs& in, at::Tensor& out, at::Tensor& argmax) {
  const at::Tensor off = offsets_like(in);
  const BagBounds bb = bounds_of(in);
  const int64_t dim = in.weight.size(1);
  const at::Tensor pw = in.psw.has_value() ? in.psw->contiguous() : at::Tensor();
  AT_DISPATCH_INDEX_TYPES(in.indices.scalar_type(), "embedding_bag_cuda_idx", [&] {
    validate<index_t>(in.indices, in.weight.size(0), off, EmbOp::BAG);
    if (bb.bags * dim == 0) return;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.weight.scalar_type(), "embedding_bag_cuda", [&] {
      bag_kernel<scalar_t, index_t><<<grid_for(bb.bags * dim), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          in.weight.const_data_ptr<scalar_t>(), in.indices.const_data_ptr<index_t>(),
          off.defined() ? off.const_data_ptr<int64_t>() : nullptr,
          pw.defined() ? pw.const_data_ptr<scalar_t>() : nullptr, bb, dim, in.args.mode, in.args.padding,
          out.mutable_data_ptr<scalar_t>(),
          in.args.mode == BagMode::MAX ? argmax.mutable_data_ptr<int64_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

void embedding_bag_backward_kernel(const BagInputs& in, const at::Tensor& grad, const at::Tensor& max_indices,
                                   at::Tensor& gw, at::Tensor& gpsw) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t num = in.weight.size(0), dim = in.weight.size(1);
  const at::Tensor off = offsets_like(in);
  const BagBounds bb = bounds_of(in);
  // The checks of the forward, in the backward too (max mode included): the
  // CPU backward raises on the same inputs.
  AT_DISPATCH_INDEX_TYPES(in.indices.scalar_type(), "embedding_bag_backward_cuda_validate",
                          [&] { validate<index_t>(in.indices, num, off, EmbOp::BAG_BACKWARD); });
  if (in.args.mode == BagMode::MAX) {
    const int64_t total = max_indices.numel();
    at::Tensor dest = at::empty({total}, max_indices.options());
    max_dest_kernel<<<grid_for(total), kThreads, 0, stream>>>(max_indices.const_data_ptr<int64_t>(), total, dim, num,
                                                              false, EmbOp::BAG_BACKWARD,
                                                              dest.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    at::Tensor gw1 = gw.view({num * dim, 1});
    scatter_rows(gw1, dest, grad.view({total, 1}), at::Tensor(), at::Tensor(), ScatterReduction::ADD);
    return;
  }
  const BagPositions bp = bag_positions(in, off, bb, stream);
  const at::Tensor pw = in.psw.has_value() ? in.psw->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "embedding_bag_backward_cuda", [&] {
    const at::Tensor scale = bag_scale<scalar_t>(bp, off, bb, in.args.mode, pw, grad, stream);
    scatter_rows(gw, bp.dest, grad, bp.bag_of, scale, ScatterReduction::ADD);
    if (pw.defined()) launch_psw_grad<scalar_t>(grad, in.weight, bp, gpsw, stream);
  });
}

void embedding_update_kernel(const at::Tensor& grad, const at::Tensor& indices, int64_t padding, const RowUpdate& u,
                             at::Tensor& weight, at::Tensor& state1, at::Tensor& state2) {
  const int64_t n = indices.numel();
  // Every index checked (a device-side assert) before the update kernel, which runs after it on the stream.
  at::Tensor dest = at::empty({n}, indices.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "embedding_update_cuda_idx", [&] {
    embedding_dest_kernel<index_t><<<grid_for(n), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
        indices.const_data_ptr<index_t>(), n, weight.size(0), padding, EmbOp::UPDATE, dest.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_update_cuda", [&] {
    launch_update<scalar_t>(dest, grad.view({n, weight.size(1)}), at::Tensor(), at::Tensor(), false, u, weight, state1,
                            state2);
  });
}

void embedding_bag_update_kernel(const BagInputs& in, const at::Tensor& grad, const at::Tensor& max_indices,
                                 const RowUpdate& u, at::Tensor& weight, at::Tensor& state1, at::Tensor& state2,
                                 at::Tensor& gpsw) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t num = weight.size(0), dim = weight.size(1);
  const at::Tensor off = offsets_like(in);
  const BagBounds bb = bounds_of(in);
  AT_DISPATCH_INDEX_TYPES(in.indices.scalar_type(), "embedding_bag_update_cuda_validate",
                          [&] { validate<index_t>(in.indices, num, off, EmbOp::BAG_UPDATE); });
  if (in.args.mode == BagMode::MAX) {
    const int64_t total = max_indices.numel();
    at::Tensor dest = at::empty({total}, max_indices.options());
    max_dest_kernel<<<grid_for(total), kThreads, 0, stream>>>(max_indices.const_data_ptr<int64_t>(), total, dim, num,
                                                              true, EmbOp::BAG_UPDATE,
                                                              dest.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_bag_update_max", [&] {
      launch_update<scalar_t>(dest, grad, at::Tensor(), at::Tensor(), true, u, weight, state1, state2);
    });
    return;
  }
  const BagPositions bp = bag_positions(in, off, bb, stream);
  const at::Tensor pw = in.psw.has_value() ? in.psw->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, weight.scalar_type(), "embedding_bag_update_cuda", [&] {
    const at::Tensor scale = bag_scale<scalar_t>(bp, off, bb, in.args.mode, pw, grad, stream);
    // From the weight before its update: this kernel runs first on the stream.
    if (gpsw.defined() && pw.defined()) launch_psw_grad<scalar_t>(grad, weight, bp, gpsw, stream);
    launch_update<scalar_t>(bp.dest, grad, bp.bag_of, scale, false, u, weight, state1, state2);
  });
}

}  // namespace teachcompute_ext::cuda_kernels

// ScatterND on CUDA, and the row scatter the embedding ops share (scatter_rows.h).
// 1. A kernel turns each index tuple into a destination row. An index out of
//    range is a device-side assert naming the op and the argument, as torch's
//    own CUDA index ops do (raising an exception would need a host sync); a
//    masked index gives -1 and its update is skipped.
// 2. add / mul / max / min: one thread per (update, element), an atomic on the
//    destination. The half types accumulate in a float copy of the output,
//    rounded once at the end, as the CPU and torch do (half atomics summed
//    1024 bfloat16 ones into 256). none: an atomicMax per destination finds
//    its last update, then only that update writes, so the last one wins, as
//    on the CPU and in ONNX. With torch.use_deterministic_algorithms(True) the
//    rows are sorted stably (at::sort) and one thread per (segment start,
//    element) folds its segment in index order: bitwise reproducible.
// Bound: memory (each update read once). Not yet run on a GPU.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <ATen/cuda/Atomic.cuh>

#include <cstring>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "scatter_nd/scatter_nd.h"
#include "scatter_nd/scatter_rows.h"

namespace teachcompute_ext::cuda_kernels {
namespace {

constexpr int kThreads = 256;

// data's leading sizes, by value (512 bytes of kernel parameters at most).
struct ShapeArg {
  int k;
  int64_t sizes[kMaxIndexDepth];
};

// The op's name in a device message.
enum class ScatterOp : int { SCATTER_ND, SCATTER_ND_, OF_SHAPE, MASKED };

ScatterOp scatter_op(const char* op) {
  if (std::strcmp(op, "scatter_nd_") == 0) return ScatterOp::SCATTER_ND_;
  if (std::strcmp(op, "scatter_nd_of_shape") == 0) return ScatterOp::OF_SHAPE;
  if (std::strcmp(op, "masked_scatter_nd_of_shape") == 0) return ScatterOp::MASKED;
  return ScatterOp::SCATTER_ND;
}

__device__ const char* op_name(ScatterOp op) {
  switch (op) {
    case ScatterOp::SCATTER_ND_: return "scatter_nd_";
    case ScatterOp::OF_SHAPE: return "scatter_nd_of_shape";
    case ScatterOp::MASKED: return "masked_scatter_nd_of_shape";
    default: return "scatter_nd";
  }
}

template <typename index_t>
__global__ void __launch_bounds__(kThreads)
    rows_kernel(const index_t* __restrict__ idx, int64_t n, ShapeArg sh, bool masked, int64_t masked_value,
                ScatterOp op, int64_t* __restrict__ rows) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const index_t* t = idx + i * sh.k;
    if (masked && static_cast<int64_t>(t[0]) == masked_value) {
      rows[i] = -1;
      continue;
    }
    int64_t row = 0;
    for (int d = 0; d < sh.k; ++d) {
      const int64_t v = static_cast<int64_t>(t[d]), size = sh.sizes[d];
      TCE_DEVICE_CHECK(v >= -size && v < size,
                       "teachcompute_ext.%s: index %lld out of range for dim %d of size %lld (argument 'indices', "
                       "entry %lld)\n",
                       op_name(op), static_cast<long long>(v), d, static_cast<long long>(size),
                       static_cast<long long>(i));
      row = row * size + (v < 0 ? v + size : v);
    }
    rows[i] = row;
  }
}

// add / mul / max / min into acc (the output, or its float copy for the half types).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    atomic_kernel(Acc* __restrict__ acc, const T* __restrict__ src, const int64_t* __restrict__ dest,
                  const int64_t* __restrict__ src_row, const Acc* __restrict__ scale, int64_t n, int64_t slice,
                  ScatterReduction red) {
  const int64_t total = n * slice;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = t / slice, c = t % slice, row = dest[i];
    if (row < 0) continue;
    Acc v = static_cast<Acc>(src[(src_row != nullptr ? src_row[i] : i) * slice + c]);
    if (scale != nullptr) v *= scale[i];
    Acc* dst = acc + row * slice + c;
    switch (red) {
      case ScatterReduction::ADD: gpuAtomicAdd(dst, v); break;
      case ScatterReduction::MUL: gpuAtomicMul(dst, v); break;
      case ScatterReduction::MAX: gpuAtomicMax(dst, v); break;
      default: gpuAtomicMin(dst, v); break;
    }
  }
}

// none, pass 1: last[row] = 1 + the largest update number aimed at row.
__global__ void __launch_bounds__(kThreads)
    last_update_kernel(const int64_t* __restrict__ dest, int64_t n, unsigned long long* __restrict__ last) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t row = dest[i];
    if (row >= 0) atomicMax(last + row, static_cast<unsigned long long>(i + 1));
  }
}

// none, pass 2: only the last update of each row writes it.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    store_last_kernel(T* __restrict__ out, const T* __restrict__ src, const int64_t* __restrict__ dest,
                      const int64_t* __restrict__ src_row, const unsigned long long* __restrict__ last, int64_t n,
                      int64_t slice) {
  const int64_t total = n * slice;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = t / slice, c = t % slice, row = dest[i];
    if (row < 0 || last[row] != static_cast<unsigned long long>(i + 1)) continue;
    out[row * slice + c] = src[(src_row != nullptr ? src_row[i] : i) * slice + c];
  }
}

// Integers wrap around as torch's do (unsigned: signed overflow is undefined).
template <typename A>
__device__ __forceinline__ A combine(A a, A b, ScatterReduction red) {
  if constexpr (std::is_integral_v<A> && !std::is_same_v<A, bool>) {
    using U = std::make_unsigned_t<A>;
    if (red == ScatterReduction::ADD) return static_cast<A>(static_cast<U>(a) + static_cast<U>(b));
    if (red == ScatterReduction::MUL) return static_cast<A>(static_cast<U>(a) * static_cast<U>(b));
  }
  switch (red) {
    case ScatterReduction::ADD: return a + b;
    case ScatterReduction::MUL: return a * b;
    case ScatterReduction::MAX: return (a != a || a > b) ? a : b;
    case ScatterReduction::MIN: return (a != a || a < b) ? a : b;
    default: return b;
  }
}

// Deterministic: sorted holds the destinations in ascending order (stable),
// perm their update numbers; the thread at each segment start folds it.
template <typename T, typename A>
__global__ void __launch_bounds__(kThreads)
    segment_kernel(T* __restrict__ out, const T* __restrict__ src, const int64_t* __restrict__ sorted,
                   const int64_t* __restrict__ perm, const int64_t* __restrict__ src_row, const A* __restrict__ scale,
                   int64_t n, int64_t slice, ScatterReduction red) {
  const int64_t total = n * slice;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t p = t / slice, c = t % slice, row = sorted[p];
    if (row < 0 || (p > 0 && sorted[p - 1] == row)) continue;  // not a segment start
    T* dst = out + row * slice + c;
    A acc = static_cast<A>(*dst);
    for (int64_t q = p; q < n && sorted[q] == row; ++q) {
      const int64_t u = perm[q];
      A v = static_cast<A>(src[(src_row != nullptr ? src_row[u] : u) * slice + c]);
      if (scale != nullptr) v *= scale[u];
      acc = combine<A>(acc, v, red);
    }
    *dst = static_cast<T>(acc);
  }
}

int64_t grid_for(int64_t work) { return cuda::capped_grid(work, kThreads); }

template <typename P>
const P* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<P>() : nullptr;
}

}  // namespace

void scatter_rows(at::Tensor& out, const at::Tensor& dest, const at::Tensor& src, const at::Tensor& src_row,
                  const at::Tensor& scale, ScatterReduction red) {
  const int64_t n = dest.numel();
  const int64_t n_rows = out.size(0);
  if (n == 0 || out.numel() == 0) return;
  const int64_t slice = out.numel() / n_rows;
  const int64_t total = n * slice;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t* dp = dest.const_data_ptr<int64_t>();
  const int64_t* rp = ptr_or_null<int64_t>(src_row);
  // Sorted segments, each folded in index order by one thread: deterministic.
  auto segments = [&](auto* o, const auto* up, const auto* sp) {
    using T = std::remove_pointer_t<decltype(o)>;
    using A = std::remove_cv_t<std::remove_pointer_t<decltype(sp)>>;
    auto [sorted, perm] = at::sort(dest, /*stable=*/true, /*dim=*/0, /*descending=*/false);
    segment_kernel<T, A><<<grid_for(total), kThreads, 0, stream>>>(
        o, up, sorted.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>(), rp, sp, n, slice, red);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  // none: the last update of each destination found with atomicMax, then only it writes.
  auto last_wins = [&](auto* o, const auto* up) {
    using T = std::remove_pointer_t<decltype(o)>;
    at::Tensor last = at::zeros({n_rows}, dest.options());
    auto* lp = reinterpret_cast<unsigned long long*>(last.mutable_data_ptr<int64_t>());
    last_update_kernel<<<grid_for(n), kThreads, 0, stream>>>(dp, n, lp);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    store_last_kernel<T><<<grid_for(total), kThreads, 0, stream>>>(o, up, dp, rp, lp, n, slice);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (at::isIntegralType(out.scalar_type(), /*includeBool=*/true)) {
    // Integer and bool data (ScatterND only, no scale): exact in the data's
    // type; there are no 8- and 16-bit atomics, so add / mul / max / min
    // always take the sorted segments.
    AT_DISPATCH_INTEGRAL_TYPES_AND(at::kBool, out.scalar_type(), "scatter_rows_int_cuda", [&] {
      scalar_t* o = out.mutable_data_ptr<scalar_t>();
      const scalar_t* up = src.const_data_ptr<scalar_t>();
      if (red == ScatterReduction::NONE && !at::globalContext().deterministicAlgorithms()) {
        last_wins(o, up);
      } else {
        segments(o, up, static_cast<const scalar_t*>(nullptr));
      }
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "scatter_rows_cuda", [&] {
    using A = cuda::acc_type<scalar_t>;
    const A* sp = ptr_or_null<A>(scale);
    const scalar_t* up = src.const_data_ptr<scalar_t>();
    if (at::globalContext().deterministicAlgorithms()) {
      segments(out.mutable_data_ptr<scalar_t>(), up, sp);
      return;
    }
    if (red == ScatterReduction::NONE) {
      last_wins(out.mutable_data_ptr<scalar_t>(), up);
      return;
    }
    // Half types combine in a float copy of out, rounded once at the end.
    at::Tensor acc = std::is_same_v<A, scalar_t> ? out : out.to(at::kFloat);
    atomic_kernel<scalar_t, A>
        <<<grid_for(total), kThreads, 0, stream>>>(acc.mutable_data_ptr<A>(), up, dp, rp, sp, n, slice, red);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (!std::is_same_v<A, scalar_t>) out.copy_(acc);
  });
}

void scatter_nd_kernel(const char* op, at::Tensor& out, at::IntArrayRef shape, const at::Tensor& indices,
                       const at::Tensor& updates, ScatterReduction red, const ScatterShape& s,
                       const int64_t* masked_value) {
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  at::Tensor rows = at::empty({s.n_updates}, indices.options().dtype(at::kLong));
  ShapeArg sh{};
  sh.k = static_cast<int>(s.k);
  for (int d = 0; d < sh.k; ++d) sh.sizes[d] = shape[d];
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "scatter_nd_rows_cuda", [&] {
    rows_kernel<index_t><<<grid_for(s.n_updates), kThreads, 0, stream>>>(
        indices.const_data_ptr<index_t>(), s.n_updates, sh, masked_value != nullptr,
        masked_value != nullptr ? *masked_value : 0, scatter_op(op), rows.mutable_data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  // The indices were checked even when there is nothing to write.
  if (s.slice == 0 || out.numel() == 0) return;
  at::Tensor out2d = out.view({s.n_rows, s.slice});
  scatter_rows(out2d, rows, updates.view({s.n_updates, s.slice}), at::Tensor(), at::Tensor(), red);
}

}  // namespace teachcompute_ext::cuda_kernels

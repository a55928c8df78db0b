// ScatterND family on CUDA.
// 1. A kernel turns each index tuple into a destination row. An out-of-range
//    index (or a masked one) gives -1 and its update is skipped: nothing is
//    read or written outside the tensor, and no error is raised, because
//    raising would need a host sync. The CPU path raises.
// 2. Default: one thread per (update, element) with an atomic add/mul/max/min
//    on the destination (plain stores for "none": one duplicate wins, unspecified).
//    With torch.use_deterministic_algorithms(True): the rows are sorted stably
//    (at::sort), and one thread per (segment start, element) folds its segment
//    in index order and writes once: bitwise reproducible, "none" keeps the last.
// Bound: memory (each update read once). Not yet run on a GPU.
#include <ATen/Context.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/Atomic.cuh>
#include <ATen/ops/empty.h>
#include <ATen/ops/sort.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include "common/cuda_utils.cuh"
#include "ops.h"
#include "scatter_nd/scatter_nd.h"

namespace teachcompute_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxK = 8;

struct ShapeArg {
  int k;
  int64_t sizes[kMaxK];
};

template <typename index_t>
__global__ void rows_kernel(const index_t* __restrict__ idx, int64_t n, ShapeArg sh, bool masked, int64_t masked_value,
                            int64_t* __restrict__ rows) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * kThreads) {
    const index_t* t = idx + i * sh.k;
    int64_t row = 0;
    bool ok = !(masked && static_cast<int64_t>(t[0]) == masked_value);
    for (int d = 0; d < sh.k && ok; ++d) {
      const int64_t v = static_cast<int64_t>(t[d]), size = sh.sizes[d];
      ok = v >= -size && v < size;
      row = row * size + (v < 0 ? v + size : v);
    }
    rows[i] = ok ? row : -1;
  }
}

template <typename T, typename A>
__device__ __forceinline__ A combine(A a, A b, int red) {
  switch (static_cast<ScatterReduction>(red)) {
    case ScatterReduction::ADD: return a + b;
    case ScatterReduction::MUL: return a * b;
    case ScatterReduction::MAX: return (a != a || a > b) ? a : b;
    case ScatterReduction::MIN: return (a != a || a < b) ? a : b;
    default: return b;
  }
}

template <typename T>
__global__ void atomic_kernel(T* __restrict__ out, const T* __restrict__ upd, const int64_t* __restrict__ rows,
                              int64_t n, int64_t slice, int red) {
  const int64_t total = n * slice;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = t / slice, c = t % slice, row = rows[i];
    if (row < 0) continue;
    T* dst = out + row * slice + c;
    const T v = upd[t];
    switch (static_cast<ScatterReduction>(red)) {
      case ScatterReduction::ADD: gpuAtomicAdd(dst, v); break;
      case ScatterReduction::MUL: gpuAtomicMul(dst, v); break;
      case ScatterReduction::MAX: gpuAtomicMax(dst, v); break;
      case ScatterReduction::MIN: gpuAtomicMin(dst, v); break;
      default: *dst = v; break;
    }
  }
}

// sorted: rows in ascending order (stable), perm: their update numbers.
template <typename T>
__global__ void segment_kernel(T* __restrict__ out, const T* __restrict__ upd, const int64_t* __restrict__ sorted,
                               const int64_t* __restrict__ perm, int64_t n, int64_t slice, int red) {
  using A = cuda::acc_type<T>;
  const int64_t total = n * slice;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t p = t / slice, c = t % slice, row = sorted[p];
    if (row < 0 || (p > 0 && sorted[p - 1] == row)) continue;  // not a segment start
    T* dst = out + row * slice + c;
    A acc = static_cast<A>(*dst);
    for (int64_t q = p; q < n && sorted[q] == row; ++q) {
      acc = combine<T, A>(acc, static_cast<A>(upd[perm[q] * slice + c]), red);
    }
    *dst = static_cast<T>(acc);
  }
}

int64_t grid_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 16LL * cuda::sm_count()));
}

void scatter_into(at::Tensor& out, at::IntArrayRef shape, const at::Tensor& indices_in, const at::Tensor& updates_in,
                  ScatterReduction red, const ScatterShape& s, bool masked, int64_t masked_value) {
  TORCH_CHECK(s.k <= kMaxK, "teachcompute_ext.scatter_nd: CUDA supports index depth k <= ", kMaxK, ", got ", s.k);
  if (s.n_updates == 0 || s.slice == 0 || out.numel() == 0) return;
  cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const at::Tensor indices = indices_in.contiguous();
  const at::Tensor updates = updates_in.contiguous();
  at::Tensor rows = at::empty({s.n_updates}, indices.options().dtype(at::kLong));
  ShapeArg sh{};
  sh.k = static_cast<int>(s.k);
  for (int d = 0; d < sh.k; ++d) sh.sizes[d] = shape[d];
  AT_DISPATCH_INDEX_TYPES(indices.scalar_type(), "scatter_nd_rows", [&] {
    rows_kernel<index_t><<<grid_for(s.n_updates), kThreads, 0, stream>>>(
        indices.const_data_ptr<index_t>(), s.n_updates, sh, masked, masked_value, rows.mutable_data_ptr<int64_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const bool deterministic = at::globalContext().deterministicAlgorithms();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "scatter_nd_cuda", [&] {
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    const scalar_t* u = updates.const_data_ptr<scalar_t>();
    const int64_t total = s.n_updates * s.slice;
    if (!deterministic) {
      atomic_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(o, u, rows.const_data_ptr<int64_t>(),
                                                                        s.n_updates, s.slice, static_cast<int>(red));
    } else {
      auto [sorted, perm] = at::sort(rows, /*stable=*/true, /*dim=*/0, /*descending=*/false);
      segment_kernel<scalar_t><<<grid_for(total), kThreads, 0, stream>>>(
          o, u, sorted.const_data_ptr<int64_t>(), perm.const_data_ptr<int64_t>(), s.n_updates, s.slice,
          static_cast<int>(red));
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace

at::Tensor scatter_nd_cuda(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                           c10::string_view reduction) {
  const ScatterReduction red = parse_reduction("scatter_nd", reduction);
  const ScatterShape s = check_scatter("scatter_nd", data.sizes(), data.scalar_type(), indices, updates, true);
  c10::cuda::CUDAGuard guard(data.device());
  at::Tensor out = data.clone(at::MemoryFormat::Contiguous);
  scatter_into(out, data.sizes(), indices, updates, red, s, false, 0);
  return out;
}

void scatter_nd__cuda(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                      c10::string_view reduction) {
  const ScatterReduction red = parse_reduction("scatter_nd_", reduction);
  const ScatterShape s = check_scatter("scatter_nd_", data.sizes(), data.scalar_type(), indices, updates, true);
  c10::cuda::CUDAGuard guard(data.device());
  at::Tensor out = data.is_contiguous() ? data : data.contiguous();
  scatter_into(out, data.sizes(), indices, updates, red, s, false, 0);
  if (!data.is_contiguous()) const_cast<at::Tensor&>(data).copy_(out);
}

at::Tensor scatter_nd_of_shape_cuda(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                    c10::string_view reduction) {
  const ScatterReduction red = parse_reduction("scatter_nd_of_shape", reduction);
  const at::IntArrayRef sh = C10_AS_INTARRAYREF_SLOW(shape);
  const ScatterShape s = check_scatter("scatter_nd_of_shape", sh, updates.scalar_type(), indices, updates, false);
  c10::cuda::CUDAGuard guard(updates.device());
  at::Tensor out = at::zeros(sh, updates.options());
  scatter_into(out, sh, indices, updates, red, s, false, 0);
  return out;
}

at::Tensor masked_scatter_nd_of_shape_cuda(c10::SymIntArrayRef shape, const at::Tensor& indices,
                                           const at::Tensor& updates, int64_t masked_value,
                                           c10::string_view reduction) {
  const char* op = "masked_scatter_nd_of_shape";
  const ScatterReduction red = parse_reduction(op, reduction);
  const at::IntArrayRef sh = C10_AS_INTARRAYREF_SLOW(shape);
  const ScatterShape s = check_masked_scatter(sh, indices, updates);
  c10::cuda::CUDAGuard guard(updates.device());
  at::Tensor out = at::zeros(sh, updates.options());
  scatter_into(out, sh, indices, updates, red, s, true, masked_value);
  return out;
}

}  // namespace teachcompute_ext

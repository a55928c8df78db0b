// embedding and embedding_bag on CUDA.
// Forward: one thread per output element (adjacent threads, adjacent columns:
// coalesced); embedding_bag loops over its bag's entries, so the gathered
// [num_indices, dim] matrix is never built. An out-of-range index reads
// nothing: its row counts as zeros (no error: raising would need a host sync).
// Backward: the scatter-add goes through the ScatterND CUDA path
// (masked_scatter_nd_of_shape: atomics, or sorted segments and bitwise
// reproducible under torch.use_deterministic_algorithms(True)). The bag
// backward first scales the gradient rows per index (materialized on CUDA).
// Not yet run on a GPU.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/searchsorted.h>
#include <ATen/ops/zeros.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/cuda/CUDAGuard.h>

#include <limits>

#include "common/cuda_utils.cuh"
#include "embedding/embedding.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

constexpr int kThreads = 256;

int64_t grid_for(int64_t work) {
  return std::max<int64_t>(1, std::min<int64_t>((work + kThreads - 1) / kThreads, 16LL * cuda::sm_count()));
}

template <typename T, typename index_t>
__global__ void gather_kernel(const T* __restrict__ w, const index_t* __restrict__ idx, T* __restrict__ out, int64_t n,
                              int64_t num, int64_t dim) {
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < n * dim;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t i = t / dim, c = t % dim, r = static_cast<int64_t>(idx[i]);
    out[t] = (r >= 0 && r < num) ? w[r * dim + c] : T(0);
  }
}

// begin of bag b: b * fixed_len (2-D indices) or offsets[b]; end of the last
// bag: offsets[bags] (include_last_offset) or n.
template <typename T, typename index_t>
__global__ void bag_kernel(const T* __restrict__ w, const index_t* __restrict__ idx, const index_t* __restrict__ off,
                           const T* __restrict__ psw, int64_t n, int64_t bags, int64_t fixed_len, bool last_offset,
                           int64_t num, int64_t dim, int mode, int64_t padding, T* __restrict__ out,
                           int64_t* __restrict__ argmax) {
  using A = cuda::acc_type<T>;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; t < bags * dim;
       t += static_cast<int64_t>(gridDim.x) * kThreads) {
    const int64_t b = t / dim, c = t % dim;
    const int64_t begin = off ? static_cast<int64_t>(off[b]) : b * fixed_len;
    // include_last_offset: the last offset ends the last bag (indices past it count for none).
    const int64_t end = off ? ((b + 1 < bags || last_offset) ? static_cast<int64_t>(off[b + 1]) : n) : begin + fixed_len;
    A acc = 0, best = 0;
    int64_t cnt = 0, arg = -1;
    for (int64_t i = begin; i < end && i < n; ++i) {
      const int64_t r = static_cast<int64_t>(idx[i]);
      if (r < 0 || r >= num || r == padding) continue;
      const A v = static_cast<A>(w[r * dim + c]);
      if (mode == static_cast<int>(BagMode::MAX)) {
        if (arg < 0 || v > best) {
          best = v;
          arg = r;
        }
      } else {
        acc += psw ? v * static_cast<A>(psw[i]) : v;
        ++cnt;
      }
    }
    if (mode == static_cast<int>(BagMode::MAX)) {
      out[t] = static_cast<T>(arg >= 0 ? best : A(0));
      argmax[t] = arg;
    } else {
      out[t] = static_cast<T>(mode == static_cast<int>(BagMode::MEAN) && cnt > 0 ? acc / static_cast<A>(cnt) : acc);
    }
  }
}

at::Tensor call_masked_scatter(int64_t num, int64_t dim, const at::Tensor& idx, const at::Tensor& updates,
                               int64_t masked) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("teachcompute_ext::masked_scatter_nd_of_shape", "")
                       .typed<at::Tensor(c10::SymIntArrayRef, const at::Tensor&, const at::Tensor&, int64_t,
                                         c10::string_view)>();
  const std::vector<c10::SymInt> shape{c10::SymInt(num), c10::SymInt(dim)};
  return op.call(shape, idx.reshape({-1, 1}), updates, masked, "add");
}

}  // namespace

at::Tensor embedding_cuda(const at::Tensor& weight, const at::Tensor& indices, std::optional<int64_t> padding_idx) {
  const char* op = "embedding";
  check_weight(op, weight);
  check_indices(op, indices);
  wrap_padding_idx(op, padding_idx, weight.size(0));
  c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous(), idx = indices.contiguous();
  std::vector<int64_t> shape(indices.sizes().begin(), indices.sizes().end());
  shape.push_back(w.size(1));
  at::Tensor out = at::empty(shape, w.options());
  const int64_t n = idx.numel(), dim = w.size(1);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "embedding_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_cuda_idx", [&] {
      gather_kernel<scalar_t, index_t><<<grid_for(n * dim), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          w.const_data_ptr<scalar_t>(), idx.const_data_ptr<index_t>(), out.mutable_data_ptr<scalar_t>(), n, w.size(0),
          dim);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor embedding_backward_cuda(const at::Tensor& grad, const at::Tensor& indices, int64_t num_weights,
                                   std::optional<int64_t> padding_idx) {
  const char* op = "embedding_backward";
  check_float_dtype(op, "grad", grad);
  check_indices(op, indices);
  const int64_t padding = wrap_padding_idx(op, padding_idx, num_weights);
  const int64_t dim = grad.size(-1);
  // No padding: mask a value no valid index has.
  const int64_t masked = padding >= 0 ? padding : std::numeric_limits<int64_t>::min();
  return call_masked_scatter(num_weights, dim, indices.to(at::kLong), grad.reshape({-1, dim}), masked);
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_forward_cuda(const at::Tensor& weight, const at::Tensor& indices,
                                                              const std::optional<at::Tensor>& offsets,
                                                              c10::string_view mode_s,
                                                              const std::optional<at::Tensor>& psw,
                                                              std::optional<int64_t> padding_idx,
                                                              bool include_last_offset) {
  const auto [mode, bags, padding] =
      check_bag_args("embedding_bag", weight, indices, offsets, mode_s, psw, padding_idx, include_last_offset);
  c10::cuda::CUDAGuard guard(weight.device());
  const at::Tensor w = weight.contiguous(), idx = indices.contiguous();
  const int64_t dim = w.size(1);
  at::Tensor out = at::zeros({bags, dim}, w.options());
  at::Tensor argmax = mode == BagMode::MAX ? at::full({bags, dim}, -1, idx.options().dtype(at::kLong))
                                           : at::empty({0}, idx.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, argmax};
  const at::Tensor off = offsets.has_value() ? offsets->to(idx.scalar_type()).contiguous() : at::Tensor();
  const at::Tensor pw = psw.has_value() ? psw->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, w.scalar_type(), "embedding_bag_cuda", [&] {
    AT_DISPATCH_INDEX_TYPES(idx.scalar_type(), "embedding_bag_cuda_idx", [&] {
      bag_kernel<scalar_t, index_t><<<grid_for(bags * dim), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
          w.const_data_ptr<scalar_t>(), idx.const_data_ptr<index_t>(),
          off.defined() ? off.const_data_ptr<index_t>() : nullptr, pw.defined() ? pw.const_data_ptr<scalar_t>() : nullptr,
          idx.numel(), bags, idx.dim() == 2 ? idx.size(1) : 0, include_last_offset, w.size(0), dim,
          static_cast<int>(mode), padding, out.mutable_data_ptr<scalar_t>(),
          mode == BagMode::MAX ? argmax.mutable_data_ptr<int64_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {out, argmax};
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward_cuda(
    const at::Tensor& grad, const at::Tensor& weight, const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets, const at::Tensor& max_indices, c10::string_view mode_s,
    const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx, bool include_last_offset) {
  const char* op = "embedding_bag_backward";
  check_float_dtype(op, "grad", grad);
  const auto [mode, bags, padding] =
      check_bag_args(op, weight, indices, offsets, mode_s, psw, padding_idx, include_last_offset);
  c10::cuda::CUDAGuard guard(grad.device());
  const int64_t num = weight.size(0), dim = weight.size(1);
  const at::Tensor idx = indices.reshape({-1}).to(at::kLong);
  const int64_t n = idx.numel();
  at::Tensor gpsw = psw.has_value() ? at::zeros(psw->sizes(), psw->options()) : at::empty({0}, grad.options());
  if (mode == BagMode::MAX) {
    // Each (bag, column) sends its gradient to (argmax row, column).
    const at::Tensor cols = at::arange(dim, max_indices.options()).unsqueeze(0);
    const at::Tensor flat = (max_indices * dim + cols).reshape({-1});
    const at::Tensor valid = max_indices.reshape({-1}).ge(0);
    const int64_t masked = -1;
    const at::Tensor target = flat.masked_fill(valid.logical_not(), masked);
    at::Tensor gw = call_masked_scatter(num * dim, 1, target, grad.reshape({-1, 1}), masked);
    return {gw.view({num, dim}), gpsw};
  }
  // Bag of every position (-1 past the last bag), the positions that count, and their scale.
  at::Tensor bag_of;
  if (indices.dim() == 2) {
    bag_of = at::arange(n, idx.options()).div(indices.size(1), "floor");
  } else {
    const at::Tensor off = offsets->to(at::kLong);
    bag_of = at::searchsorted(off.slice(0, 0, bags), at::arange(n, idx.options()), false, /*right=*/true) - 1;
    if (include_last_offset && bags > 0) {
      bag_of = bag_of.masked_fill(at::arange(n, idx.options()).ge(off.select(0, bags)), -1);
    }
  }
  at::Tensor counts = idx.ne(padding).logical_and(bag_of.ge(0));
  at::Tensor scale = counts.to(grad.scalar_type());
  if (psw.has_value()) scale = scale * psw->reshape({-1});
  if (mode == BagMode::MEAN) {
    const at::Tensor per_bag = at::zeros({bags}, grad.options()).index_add_(0, bag_of.clamp_min(0), scale);
    scale = scale / per_bag.index_select(0, bag_of.clamp_min(0)).clamp_min(1);
  }
  const at::Tensor rows = grad.index_select(0, bag_of.clamp_min(0)) * scale.unsqueeze(1);
  const int64_t masked = std::numeric_limits<int64_t>::min();
  at::Tensor gw = call_masked_scatter(num, dim, idx.masked_fill(counts.logical_not(), masked), rows, masked);
  if (psw.has_value()) {
    gpsw = (grad.index_select(0, bag_of.clamp_min(0)) * weight.index_select(0, idx.clamp(0, num - 1)))
               .sum(1)
               .mul(counts.to(grad.scalar_type()))
               .reshape(psw->sizes());
  }
  return {gw, gpsw};
}

}  // namespace teachcompute_ext

// embedding / embedding_bag: the semantics every device shares (the fake
// kernels in teachcompute_ext/ops/embedding.py mirror them), those of
// torch.nn.functional.embedding and embedding_bag, and the kernel signatures
// behind the stubs. The frontends are in embedding.cpp, the kernels in
// embedding_cpu_kernel.cpp and embedding_cuda.cu.
// Index and offset values are read by the kernels only: an index outside
// [0, num_embeddings), a first offset other than 0, a decreasing offset or one
// past the end of indices is an error on the CPU (an exception) and on CUDA (a
// device-side assert naming the op and the argument, as torch's own CUDA index
// ops: raising would need a host sync), in the forward and the backward alike.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <string_view>

#include "common/checks.h"
#include "common/stub.h"

namespace teachcompute_ext {

enum class BagMode { SUM = 0, MEAN = 1, MAX = 2 };

inline BagMode parse_bag_mode(std::string_view mode, const char* op = "embedding_bag") {
  if (mode == "sum") return BagMode::SUM;
  if (mode == "mean") return BagMode::MEAN;
  if (mode == "max") return BagMode::MAX;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.", op, ": unknown mode '", mode,
                    "' for argument 'mode' (expected one of sum, mean, max)");
}

inline void check_weight(const char* op, const at::Tensor& weight) {
  check_float_dtype(op, "weight", weight);
  TORCH_CHECK(weight.dim() == 2, "teachcompute_ext.", op, ": 'weight' must be 2-D [num_embeddings, dim], got shape ",
              weight.sizes());
}

inline void check_indices(const char* op, const at::Tensor& indices, const char* name = "indices") {
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, "teachcompute_ext.", op,
                   ": unsupported dtype ", dtype_name(indices.scalar_type()), " for argument '", name,
                   "' (expected int64 or int32)");
}

// padding_idx as torch: in [-num, num), negative counts from the end; -1 after wrapping means none.
inline int64_t wrap_padding_idx(const char* op, std::optional<int64_t> padding_idx, int64_t num) {
  if (!padding_idx.has_value()) return -1;
  const int64_t p = *padding_idx;
  TORCH_CHECK_INDEX(p >= -num && p < num, "teachcompute_ext.", op, ": padding_idx ", p,
                    " out of range for argument 'padding_idx' of a weight with ", num, " rows");
  return p < 0 ? p + num : p;
}

// Number of bags; checks the shapes of indices, offsets and per_sample_weights (not their values).
inline int64_t bag_count(const at::Tensor& indices, const std::optional<at::Tensor>& offsets, BagMode mode,
                         const std::optional<at::Tensor>& psw, bool include_last_offset,
                         const char* op = "embedding_bag") {
  check_indices(op, indices);
  int64_t bags;
  if (indices.dim() == 2) {
    TORCH_CHECK(!offsets.has_value(), "teachcompute_ext.", op,
                ": 'offsets' must be None when 'indices' is 2-D (fixed-length bags), got shape ", indices.sizes());
    bags = indices.size(0);
  } else {
    TORCH_CHECK(indices.dim() == 1, "teachcompute_ext.", op,
                ": 'indices' must be 1-D (with offsets) or 2-D, got shape ", indices.sizes());
    TORCH_CHECK(offsets.has_value(), "teachcompute_ext.", op, ": 'offsets' is required when 'indices' is 1-D");
    check_indices(op, *offsets, "offsets");
    TORCH_CHECK(offsets->dim() == 1, "teachcompute_ext.", op, ": 'offsets' must be 1-D, got shape ", offsets->sizes());
    bags = offsets->size(0) - (include_last_offset ? 1 : 0);
    TORCH_CHECK(bags >= 0, "teachcompute_ext.", op,
                ": 'offsets' is empty but include_last_offset=True needs at least one");
  }
  if (psw.has_value()) {
    TORCH_CHECK(mode == BagMode::SUM, "teachcompute_ext.", op,
                ": 'per_sample_weights' is only supported with mode='sum', got mode='",
                mode == BagMode::MEAN ? "mean" : "max", "'");
    TORCH_CHECK(psw->sizes() == indices.sizes(), "teachcompute_ext.", op, ": 'per_sample_weights' has shape ",
                psw->sizes(), " but 'indices' has shape ", indices.sizes());
  }
  return bags;
}

// The checked arguments of embedding_bag_forward / _backward (CPU and CUDA).
struct BagArgs {
  BagMode mode;
  int64_t bags;
  int64_t padding;  // wrapped; -1 for none
};

inline BagArgs check_bag_args(const char* op, const at::Tensor& weight, const at::Tensor& indices,
                              const std::optional<at::Tensor>& offsets, std::string_view mode_s,
                              const std::optional<at::Tensor>& psw, std::optional<int64_t> padding_idx,
                              bool include_last_offset, const char* layout_op = "embedding_bag") {
  // layout_op: the op named by the bag layout's errors (the backward reports them as its forward's)
  check_weight(op, weight);
  check_same_device(op, "indices", indices, "weight", weight);
  if (offsets.has_value()) check_same_device(op, "offsets", *offsets, "weight", weight);
  if (psw.has_value()) check_same_device(op, "per_sample_weights", *psw, "weight", weight);
  const BagMode mode = parse_bag_mode(mode_s, layout_op);
  const int64_t bags = bag_count(indices, offsets, mode, psw, include_last_offset, layout_op);
  if (psw.has_value()) {
    TORCH_CHECK_TYPE(psw->scalar_type() == weight.scalar_type(), "teachcompute_ext.", layout_op,
                     ": 'per_sample_weights' has dtype ", dtype_name(psw->scalar_type()), " but 'weight' has dtype ",
                     dtype_name(weight.scalar_type()));
  }
  return {mode, bags, wrap_padding_idx(op, padding_idx, weight.size(0))};
}

// ---- kernels ---------------------------------------------------------------------
// out [indices.shape..., dim] = weight[indices]; weight and indices contiguous,
// indices non-empty (each checked against weight's rows).
using EmbeddingFn = void(const at::Tensor& weight, const at::Tensor& indices, at::Tensor& out);
// gw [num, dim] (zeros on entry) += the rows of grad [n, dim] at indices (n of
// them, contiguous, non-empty), except those equal to padding (-1: none).
using EmbeddingBackwardFn = void(const at::Tensor& grad, const at::Tensor& indices, int64_t padding, at::Tensor& gw);

// The checked inputs of embedding_bag_forward / _backward.
struct BagInputs {
  const at::Tensor& weight;   // contiguous
  const at::Tensor& indices;  // contiguous
  const std::optional<at::Tensor>& offsets;
  const std::optional<at::Tensor>& psw;
  BagArgs args;
  bool include_last_offset;
};
// out [bags, dim] (zeros for max, else uninitialized: every row is written)
// and, for max, argmax [bags, dim] (-1 on entry): the row each maximum came from.
using EmbeddingBagFn = void(const BagInputs& in, at::Tensor& out, at::Tensor& argmax);
// gw [num, dim] and gpsw (psw's shape, or empty), zeros on entry, from grad
// [bags, dim] (contiguous); bags >= 1, dim >= 1, indices non-empty.
using EmbeddingBagBackwardFn = void(const BagInputs& in, const at::Tensor& grad, const at::Tensor& max_indices,
                                    at::Tensor& gw, at::Tensor& gpsw);

// ---- the backward fused with an optimizer step (embedding_update_, embedding_bag_update_) ----------
// The table's gradient is never built: the contributions are grouped by the
// row they go to (sorted by row, each row's in index order: the same bits for
// any thread count), each touched row's gradient summed once, and the
// optimizer applied to that row and its state in the same pass. Untouched rows
// (and their state) are not read or written: a lazy optimizer, as
// torch.optim.SparseAdam.
enum class RowOptimizer { SGD, ROWWISE_ADAGRAD, ADAGRAD, ADAM, ADAMW };

inline RowOptimizer parse_row_optimizer(const char* op, std::string_view name) {
  if (name == "sgd") return RowOptimizer::SGD;
  if (name == "rowwise_adagrad") return RowOptimizer::ROWWISE_ADAGRAD;
  if (name == "adagrad") return RowOptimizer::ADAGRAD;
  if (name == "adam") return RowOptimizer::ADAM;
  if (name == "adamw") return RowOptimizer::ADAMW;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.", op, ": unknown optimizer '", name,
                    "' for argument 'optimizer' (expected one of sgd, rowwise_adagrad, adagrad, adam, adamw)");
}

// One step of the optimizer on a row, g its gradient (summed contributions):
//   sgd              w -= lr (g + wd w)
//   rowwise_adagrad  s += mean((g + wd w)^2) (one float per row, FBGEMM's EXACT_ROWWISE_ADAGRAD);
//                    w -= lr (g + wd w) / (sqrt(s) + eps)
//   adagrad          s += (g + wd w)^2; w -= lr (g + wd w) / (sqrt(s) + eps)          (torch.optim.Adagrad)
//   adam             m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2, g' = g + wd w;
//                    w -= lr sqrt(1 - b2^step) / (1 - b1^step) m / (sqrt(v) + eps)   (torch.optim.SparseAdam)
//   adamw            w *= 1 - lr wd, then adam with g' = g                           (torch.optim.AdamW's decay)
// step: the global step (bias correction), counted by the caller.
struct RowUpdate {
  RowOptimizer kind;
  double lr, beta1, beta2, eps, weight_decay;
  int64_t step;
};

// weight [num, dim] contiguous, updated in place with state1 / state2 (the
// optimizer's, contiguous, of state_dtype(weight)); grad [indices.shape...,
// dim] contiguous; indices non-empty, each checked before anything is written.
using EmbeddingUpdateFn = void(const at::Tensor& grad, const at::Tensor& indices, int64_t padding, const RowUpdate& u,
                               at::Tensor& weight, at::Tensor& state1, at::Tensor& state2);
// The same for bags (grad [bags, dim]); gpsw, when defined (psw's shape, zeros
// on entry), gets per_sample_weights' gradient, read from the weight before it
// is updated.
using EmbeddingBagUpdateFn = void(const BagInputs& in, const at::Tensor& grad, const at::Tensor& max_indices,
                                  const RowUpdate& u, at::Tensor& weight, at::Tensor& state1, at::Tensor& state2,
                                  at::Tensor& gpsw);

TCE_DECLARE_KERNEL(EmbeddingFn, embedding_kernel)
TCE_DECLARE_KERNEL(EmbeddingUpdateFn, embedding_update_kernel)
TCE_DECLARE_KERNEL(EmbeddingBagUpdateFn, embedding_bag_update_kernel)
TCE_DECLARE_KERNEL(EmbeddingBackwardFn, embedding_backward_kernel)
TCE_DECLARE_KERNEL(EmbeddingBagFn, embedding_bag_kernel)
TCE_DECLARE_KERNEL(EmbeddingBagBackwardFn, embedding_bag_backward_kernel)

}  // namespace teachcompute_ext

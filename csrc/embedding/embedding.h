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

inline BagMode parse_bag_mode(std::string_view mode) {
  if (mode == "sum") return BagMode::SUM;
  if (mode == "mean") return BagMode::MEAN;
  if (mode == "max") return BagMode::MAX;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.embedding_bag: unknown mode '", mode,
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
                         const std::optional<at::Tensor>& psw, bool include_last_offset) {
  const char* op = "embedding_bag";
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
                              bool include_last_offset) {
  check_weight(op, weight);
  check_same_device(op, "indices", indices, "weight", weight);
  if (offsets.has_value()) check_same_device(op, "offsets", *offsets, "weight", weight);
  if (psw.has_value()) check_same_device(op, "per_sample_weights", *psw, "weight", weight);
  const BagMode mode = parse_bag_mode(mode_s);
  const int64_t bags = bag_count(indices, offsets, mode, psw, include_last_offset);
  if (psw.has_value()) {
    TORCH_CHECK_TYPE(psw->scalar_type() == weight.scalar_type(),
                     "teachcompute_ext.embedding_bag: ", "'per_sample_weights' has dtype ",
                     dtype_name(psw->scalar_type()), " but 'weight' has dtype ", dtype_name(weight.scalar_type()));
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

TCE_DECLARE_KERNEL(EmbeddingFn, embedding_kernel)
TCE_DECLARE_KERNEL(EmbeddingBackwardFn, embedding_backward_kernel)
TCE_DECLARE_KERNEL(EmbeddingBagFn, embedding_bag_kernel)
TCE_DECLARE_KERNEL(EmbeddingBagBackwardFn, embedding_bag_backward_kernel)

}  // namespace teachcompute_ext

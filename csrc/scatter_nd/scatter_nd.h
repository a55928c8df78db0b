// ScatterND (ONNX, opset 18) and its "of shape" forms: the semantics shared by
// the CPU and CUDA paths (the fake kernels in teachcompute_ext/ops/scatter_nd.py
// mirror them).
//   indices [..., k] (int64 or int32), 1 <= k <= rank(data)
//   updates  indices.shape[:-1] + data.shape[k:]
//   output   data with data[indices[i]] = reduction(data[indices[i]], updates[i])
// An index i in [-s, -1] means i + s; anything else outside [0, s) is an error
// (checked before any arithmetic, so values near 2^63 cannot wrap around).
// Duplicate destinations: add / mul / max / min combine all of them; none
// keeps the last one in the order of indices (deterministic on the CPU).
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "common/checks.h"

namespace teachcompute_ext {

enum class ScatterReduction { NONE, ADD, MUL, MAX, MIN };

inline ScatterReduction parse_reduction(const char* op, std::string_view r) {
  if (r == "none") return ScatterReduction::NONE;
  if (r == "add") return ScatterReduction::ADD;
  if (r == "mul") return ScatterReduction::MUL;
  if (r == "max") return ScatterReduction::MAX;
  if (r == "min") return ScatterReduction::MIN;
  TORCH_CHECK_VALUE(false, "teachcompute_ext.", op, ": unknown reduction '", r,
                    "' for argument 'reduction' (expected one of none, add, mul, max, min)");
}

struct ScatterShape {
  int64_t k;          // index depth
  int64_t n_updates;  // prod(indices.shape[:-1])
  int64_t n_rows;     // prod(data.shape[:k]): the destinations
  int64_t slice;      // prod(data.shape[k:]): elements per destination
};

// Checks dtypes and shapes; `shape` is data's shape (or the "of shape" argument).
inline ScatterShape check_scatter(const char* op, at::IntArrayRef shape, c10::ScalarType data_dtype,
                                  const at::Tensor& indices, const at::Tensor& updates, bool data_is_tensor) {
  if (data_is_tensor) {
    TORCH_CHECK_TYPE(is_supported_float(data_dtype), "teachcompute_ext.", op, ": unsupported dtype ",
                     dtype_name(data_dtype), " for argument 'data' (expected float32, float64, float16 or bfloat16)");
  }
  check_float_dtype(op, "updates", updates);
  TORCH_CHECK_TYPE(!data_is_tensor || updates.scalar_type() == data_dtype, "teachcompute_ext.", op,
                   ": 'updates' has dtype ", dtype_name(updates.scalar_type()), " but 'data' has dtype ",
                   dtype_name(data_dtype));
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, "teachcompute_ext.",
                   op, ": unsupported dtype ", dtype_name(indices.scalar_type()),
                   " for argument 'indices' (expected int64 or int32)");
  const int64_t rank = static_cast<int64_t>(shape.size());
  TORCH_CHECK(indices.dim() >= 1, "teachcompute_ext.", op, ": 'indices' must have at least one dim [..., k], got shape ",
              indices.sizes());
  const int64_t k = indices.size(-1);
  TORCH_CHECK(k >= 1 && k <= rank, "teachcompute_ext.", op, ": the last dim of 'indices' (k = ", k,
              ") must be in [1, rank of data = ", rank, "]; indices ", indices.sizes(), ", data ", shape);
  std::vector<int64_t> expected(indices.sizes().begin(), indices.sizes().end() - 1);
  for (int64_t d = k; d < rank; ++d) expected.push_back(shape[d]);
  TORCH_CHECK(updates.sizes().vec() == expected, "teachcompute_ext.", op, ": 'updates' has shape ", updates.sizes(),
              " but indices ", indices.sizes(), " and data ", shape, " need ", at::IntArrayRef(expected));
  ScatterShape s{k, 1, 1, 1};
  for (int64_t d = 0; d + 1 < indices.dim(); ++d) s.n_updates *= indices.size(d);
  for (int64_t d = 0; d < k; ++d) s.n_rows *= shape[d];
  for (int64_t d = k; d < rank; ++d) s.slice *= shape[d];
  return s;
}

// masked_scatter_nd_of_shape: the checks of scatter_nd_of_shape, and k == 1.
inline ScatterShape check_masked_scatter(at::IntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates) {
  const char* op = "masked_scatter_nd_of_shape";
  const ScatterShape s = check_scatter(op, shape, updates.scalar_type(), indices, updates, false);
  TORCH_CHECK(s.k == 1, "teachcompute_ext.", op, ": 'indices' must end in a dim of 1 (k = 1), got shape ",
              indices.sizes());
  return s;
}

}  // namespace teachcompute_ext

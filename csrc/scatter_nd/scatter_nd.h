// ScatterND (ONNX, opset 18) and its "of shape" forms: the semantics every
// device shares (the fake kernels in teachcompute_ext/ops/scatter_nd.py mirror
// them) and the kernel signature behind the stub. The frontends are in
// scatter_nd.cpp, the kernels in scatter_nd_cpu_kernel.cpp and scatter_nd_cuda.cu.
//   indices [..., k] (int64 or int32), 1 <= k <= rank(data)
//   updates  indices.shape[:-1] + data.shape[k:]
//   output   data with data[indices[i]] = reduction(data[indices[i]], updates[i])
// An index i in [-s, -1] means i + s; anything else outside [0, s) is an error
// (checked before any arithmetic, so values near 2^63 cannot wrap around): on
// the CPU an exception, on CUDA a device-side assert naming the op and the
// argument, as torch's own CUDA index ops do (raising would need a host sync).
// Duplicate destinations: add / mul / max / min combine all of them (half
// types in float, rounded once; integers exactly, add and mul wrapping around
// as torch's); none keeps the last one in the order of indices, on every
// device. Data: the floating dtypes, uint8, int8, int16, int32, int64, and
// bool with none only.
#pragma once

#include <ATen/core/Tensor.h>

#include <string_view>

#include "common/checks.h"
#include "common/stub.h"

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

inline const char* reduction_name(ScatterReduction r) {
  switch (r) {
    case ScatterReduction::NONE: return "none";
    case ScatterReduction::ADD: return "add";
    case ScatterReduction::MUL: return "mul";
    case ScatterReduction::MAX: return "max";
    default: return "min";
  }
}

// Index depth the kernels take (the CUDA kernel passes data's leading sizes by value).
constexpr int64_t kMaxIndexDepth = 64;

struct ScatterShape {
  int64_t k;          // index depth
  int64_t n_updates;  // prod(indices.shape[:-1])
  int64_t n_rows;     // prod(data.shape[:k]): the destinations
  int64_t slice;      // prod(data.shape[k:]): elements per destination
};

// Checks devices, dtypes and shapes; `shape` is data's shape (or the "of shape"
// argument), `data` is null for the "of shape" forms.
inline ScatterShape check_scatter(const char* op, at::IntArrayRef shape, c10::ScalarType data_dtype,
                                  const at::Tensor& indices, const at::Tensor& updates, const at::Tensor* data,
                                  ScatterReduction red) {
  const bool data_is_tensor = data != nullptr;
  if (data_is_tensor) {
    check_same_device(op, "indices", indices, "data", *data);
    check_same_device(op, "updates", updates, "data", *data);
  } else {
    check_same_device(op, "indices", indices, "updates", updates);
  }
  if (data_is_tensor) check_float_or_int_dtype(op, "data", *data);
  check_float_or_int_dtype(op, "updates", updates);
  // bool data: none only (torch's index_put_ with accumulate on bool is an "or", ONNX has no bool reductions).
  TORCH_CHECK_TYPE(updates.scalar_type() != at::kBool || red == ScatterReduction::NONE, "teachcompute_ext.", op,
                   ": reduction '", reduction_name(red),
                   "' is not supported for bool data (argument 'reduction'; "
                   "bool takes 'none' only)");
  TORCH_CHECK_TYPE(!data_is_tensor || updates.scalar_type() == data_dtype, "teachcompute_ext.", op,
                   ": 'updates' has dtype ", dtype_name(updates.scalar_type()), " but 'data' has dtype ",
                   dtype_name(data_dtype));
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, "teachcompute_ext.", op,
                   ": unsupported dtype ", dtype_name(indices.scalar_type()),
                   " for argument 'indices' (expected int64 or int32)");
  const int64_t rank = static_cast<int64_t>(shape.size());
  TORCH_CHECK(indices.dim() >= 1, "teachcompute_ext.", op,
              ": 'indices' must have at least one dim [..., k], got shape ", indices.sizes());
  const int64_t k = indices.size(-1);
  TORCH_CHECK(k >= 1 && k <= rank, "teachcompute_ext.", op, ": the last dim of 'indices' (k = ", k,
              ") must be in [1, rank of data = ", rank, "]; indices ", indices.sizes(), ", data ", shape);
  TORCH_CHECK(k <= kMaxIndexDepth, "teachcompute_ext.", op, ": the last dim of 'indices' (k = ", k,
              ") is more than the ", kMaxIndexDepth, " index dims supported");
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
inline ScatterShape check_masked_scatter(at::IntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                         ScatterReduction red) {
  const char* op = "masked_scatter_nd_of_shape";
  const ScatterShape s = check_scatter(op, shape, updates.scalar_type(), indices, updates, nullptr, red);
  TORCH_CHECK(s.k == 1, "teachcompute_ext.", op, ": 'indices' must end in a dim of 1 (k = 1), got shape ",
              indices.sizes());
  return s;
}

// Applies updates (contiguous) at indices (contiguous) to out (contiguous, of
// `shape`), n_updates >= 1: checks every index (out of range is an error
// naming op, see above), skips those whose first index equals *masked_value when it is not
// null, and writes nothing when slice or out is empty.
using ScatterFn = void(const char* op, at::Tensor& out, at::IntArrayRef shape, const at::Tensor& indices,
                       const at::Tensor& updates, ScatterReduction red, const ScatterShape& s,
                       const int64_t* masked_value);
TCE_DECLARE_KERNEL(ScatterFn, scatter_nd_kernel)

}  // namespace teachcompute_ext

// Argument checks shared by every op. Errors name the op and the argument and
// say what was expected and what was given, e.g.
//   teachcompute_ext.vector_sum: unsupported dtype torch.int64 for argument 'x'
//   (expected float32, float64, float16 or bfloat16)
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <string>

namespace teachcompute_ext {

// "torch.float32", as a Python user writes it (c10 would print "Float").
inline std::string dtype_name(c10::ScalarType t) { return "torch." + std::string(c10::getDtypeNames(t).first); }

inline bool is_supported_float(c10::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// The four floating dtypes every op of this package supports.
inline void check_float_dtype(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()), "teachcompute_ext.", op, ": unsupported dtype ",
                   dtype_name(t.scalar_type()), " for argument '", arg,
                   "' (expected float32, float64, float16 or bfloat16)");
}

// The integer and bool dtypes of the ops that torch also computes on them
// (sums, max/min, ScatterND): uint8, int8, int16, int32, int64, bool.
inline bool is_supported_int(c10::ScalarType t) {
  return t == at::kBool || t == at::kByte || t == at::kChar || t == at::kShort || t == at::kInt || t == at::kLong;
}

inline void check_float_or_int_dtype(const char* op, const char* arg, const at::Tensor& t) {
  TORCH_CHECK_TYPE(is_supported_float(t.scalar_type()) || is_supported_int(t.scalar_type()), "teachcompute_ext.", op,
                   ": unsupported dtype ", dtype_name(t.scalar_type()), " for argument '", arg,
                   "' (expected float32, float64, float16, bfloat16, uint8, int8, int16, int32, int64 or bool)");
}

// Every tensor argument must live on the device of the op's first tensor
// argument, as in torch: a CPU pointer handed to a CUDA kernel is an illegal
// address that loses the process's CUDA context. Torch's words, then ours.
inline void check_same_device(const char* op, const char* arg, const at::Tensor& t, const char* ref_arg,
                              const at::Tensor& ref) {
  TORCH_CHECK(t.device() == ref.device(), "teachcompute_ext.", op,
              ": Expected all tensors to be on the same device, but found at least two devices, ", ref.device(),
              " and ", t.device(), "! (argument '", arg, "' is on ", t.device(), ", '", ref_arg, "' is on ",
              ref.device(), ")");
}

}  // namespace teachcompute_ext

// CUDA helpers shared by every kernel: aligned vector loads and grid sizing.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <cstdint>
#include <type_traits>

namespace teachcompute_ext::cuda {

// N elements loaded with one 16-byte instruction (LDG.128) when the address
// is 16-byte aligned: a quarter of the load instructions of 4-byte loads.
template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

template <typename T>
constexpr int kPack16 = 16 / sizeof(T);

// Elements before the first 16-byte boundary at or after p.
template <typename T>
inline int64_t misaligned_head(const T* p, int64_t n) {
  const auto addr = reinterpret_cast<std::uintptr_t>(p);
  const int64_t head = static_cast<int64_t>(((16 - addr % 16) % 16) / sizeof(T));
  return head < n ? head : n;
}

// Accumulator type: float for float32 and the half types, double for float64.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline int sm_count() {
  return at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
}

}  // namespace teachcompute_ext::cuda

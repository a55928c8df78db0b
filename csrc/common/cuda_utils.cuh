// CUDA helpers shared by every kernel: aligned vector loads, grid sizing and
// device-side checks.
#pragma once

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cassert>
#include <cstdint>
#include <cstdio>
#include <type_traits>

// A check of data that only the device reads (an index, an offset), as torch's
// own CUDA index ops do it: the message (op, argument, value) is printed, then
// the kernel stops with a device-side assert, which the host sees as an error
// at its next synchronization. No host synchronization is added, so the CPU
// and CUDA paths refuse the same inputs without slowing the good ones.
#define TCE_DEVICE_CHECK(cond, ...)                                                  \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      printf(__VA_ARGS__);                                                           \
      __assert_fail(#cond, __FILE__, static_cast<unsigned int>(__LINE__), __func__); \
    }                                                                                \
  } while (0)

namespace teachcompute_ext::cuda {

constexpr int kWarp = 32;

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

inline __host__ __device__ bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// Calls f(value, index) for p[i], i = tid, tid + nthreads, ... < n, reading
// 16-byte packs when p is 16-byte aligned (a quarter of the load instructions
// for float32), then the tail element by element.
template <typename T, typename F>
__device__ __forceinline__ void for_each_packed(const T* __restrict__ p, int64_t n, int tid, int nthreads, F f) {
  constexpr int N = kPack16<T>;
  int64_t i0 = 0;
  if (aligned16(p)) {
    const int64_t np = n / N;
    const Pack<T, N>* packs = reinterpret_cast<const Pack<T, N>*>(p);
    for (int64_t j = tid; j < np; j += nthreads) {
      const Pack<T, N> v = packs[j];
#pragma unroll
      for (int k = 0; k < N; ++k) f(v.v[k], j * N + k);
    }
    i0 = np * N;
  }
  for (int64_t i = i0 + tid; i < n; i += nthreads) f(p[i], i);
}

// out[i] = f(a[i], b[i]) (b may be null: f gets T(0)), with 16-byte packs when
// all pointers are aligned.
template <typename T, typename F>
__device__ __forceinline__ void map_packed(const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ out,
                                           int64_t n, int tid, int nthreads, F f) {
  constexpr int N = kPack16<T>;
  int64_t i0 = 0;
  if (aligned16(a) && (b == nullptr || aligned16(b)) && aligned16(out)) {
    const int64_t np = n / N;
    for (int64_t j = tid; j < np; j += nthreads) {
      const Pack<T, N> va = reinterpret_cast<const Pack<T, N>*>(a)[j];
      Pack<T, N> vb;
      if (b != nullptr) vb = reinterpret_cast<const Pack<T, N>*>(b)[j];
      Pack<T, N> r;
#pragma unroll
      for (int k = 0; k < N; ++k) r.v[k] = f(va.v[k], b != nullptr ? vb.v[k] : T(0));
      reinterpret_cast<Pack<T, N>*>(out)[j] = r;
    }
    i0 = np * N;
  }
  for (int64_t i = i0 + tid; i < n; i += nthreads) out[i] = f(a[i], b != nullptr ? b[i] : T(0));
}

// Accumulator type: float for float32 and the half types, double for float64.
template <typename T>
using acc_type = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline int sm_count() { return at::cuda::getCurrentDeviceProperties()->multiProcessorCount; }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of `threads` for `work` items in a grid-stride loop, capped at
// blocks_per_sm per SM: the kernel loops over the rest.
inline int64_t capped_grid(int64_t work, int threads, int blocks_per_sm = 16) {
  return std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, threads), int64_t(blocks_per_sm) * sm_count()));
}

// Neighbouring outputs a reduction block covers in x (a power of two up to a
// warp); the rest of the block's threads reduce in y. A few outputs still get
// the whole block.
inline int outputs_per_block(int64_t outputs) {
  int bx = 1;
  while (bx < 32 && bx < outputs) bx *= 2;
  return bx;
}

// Pieces each reduction of `count` elements is cut into (gridDim.y) so that
// `blocks` blocks per piece fill the GPU (about 4 blocks per SM), with at
// least 16 elements per thread of a piece: few outputs and long reductions
// still use every SM.
inline int64_t pieces_to_fill(int64_t blocks, int64_t count, int64_t threads_per_output) {
  constexpr int64_t kMinPerThread = 16, kMaxGridY = 65535;
  const int64_t target = 4LL * sm_count();
  if (blocks >= target) return 1;
  const int64_t by_work = count / (threads_per_output * kMinPerThread);
  return std::max<int64_t>(1, std::min({target / std::max<int64_t>(blocks, 1), by_work, kMaxGridY}));
}

// Sum over a warp (every lane gets it).
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum over a block of kThreads threads (every thread gets it; all must call).
template <int kThreads, typename A>
__device__ __forceinline__ A block_sum(A v) {
  __shared__ A sh[kThreads / kWarp];
  v = warp_sum(v);
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  A r = 0;
#pragma unroll
  for (int w = 0; w < kThreads / kWarp; ++w) r += sh[w];
  __syncthreads();
  return r;
}

// Rows [r0, r1) of piece `piece` of a reduction cut into pieces of piece_len.
__device__ __forceinline__ void piece_rows(int64_t piece, int64_t piece_len, int64_t n, int64_t& r0, int64_t& r1) {
  r0 = piece * piece_len;
  r1 = r0 + piece_len < n ? r0 + piece_len : n;
}

}  // namespace teachcompute_ext::cuda

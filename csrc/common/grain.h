// How much work one at::parallel_for task gets. Waking the second thread and
// joining it costs a few microseconds on these machines, so a task must hold
// enough work to pay for it, and how much depends on the work per element.
// Measured per family: the op timed with 2 threads for task sizes of 2K to 32K
// elements (median of 11 interleaved rounds of 200 calls, float32 and
// bfloat16), and the size kept that lost nowhere to the others.
#pragma once

#include <algorithm>
#include <cstdint>

namespace teachcompute_ext {

// One pass of a few flops per element (reductions, rms_norm, rotary): a second
// thread pays from about 32K elements. reduce_sum over dim 1 of 4x1024
// float32: 1.9 us on one thread, 4.6 us split in 2K tasks; 64x300: 5.4 us at
// 32K, 6.7 us at 16K; rms_norm 8x1024: 7.6 us at 32K, 9.5 us at 4K.
constexpr int64_t kPassTaskWork = 32768;

// An exp (or erf) per element, in two or three passes (softmax, log_softmax,
// swiglu, geglu): 8K. softmax 16x1024 float32 15.7 us at 32K (one thread),
// 11.7 us at 8K, bfloat16 18.6 -> 13.6 us; 128x96 19.3 -> 15.5 us; swiglu
// 32x1024 float32 25.0 -> 16.8 us, 16x1024 14.1 -> 11.8 us. 8x1024 (8K
// elements, one task) gains nothing from smaller tasks.
constexpr int64_t kExpTaskWork = 8192;

// The grains below came with their kernels and were not re-measured when
// they moved here (no figure of their own yet); each says what it covers and
// how it relates to the two measured ones.

// Indices checked (or turned into rows) per task: a compare and a store each,
// the cheapest work there is, so four times kPassTaskWork's elements would
// be fairer; embedding's checks use 8K, scatter's destination rows 4K.
constexpr int64_t kIndexTaskItems = 8192;
constexpr int64_t kScatterRowTaskItems = 4096;

// Bytes of table rows copied per task by the embedding gather: 64 KB, the
// bytes of kPassTaskWork / 2 float32 elements (a copy has no flops at all).
constexpr int64_t kCopyTaskBytes = 65536;

// Weighted row sums per task (embedding_bag sum/mean forward, fused_linear's
// epilogue on rows of the GEMM output): a multiply-add per element, half of
// kPassTaskWork.
constexpr int64_t kRowSumTaskWork = 16384;

// Bags (or sorted index positions) per task when planning embedding_bag:
// a handful of integer operations each.
constexpr int64_t kBagPlanTaskItems = 256;

// Columns per task in the serial-over-rows passes (embedding_bag max
// backward: each column's writes stay in bag order) and reductions of
// partial sums down columns (fused_linear's bias gradient: 4K partial sums
// per task; rms_norm's weight gradient: kPassTaskWork of them).
constexpr int64_t kColumnTaskItems = 16;
constexpr int64_t kPartialSumTaskWork = 4096;

// Items per task so that each holds about task_work elements.
inline int64_t grain_for(int64_t work_per_item, int64_t task_work) {
  return std::max<int64_t>(1, task_work / std::max<int64_t>(1, work_per_item));
}

}  // namespace teachcompute_ext

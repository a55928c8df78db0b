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

// Items per task so that each holds about task_work elements.
inline int64_t grain_for(int64_t work_per_item, int64_t task_work) {
  return std::max<int64_t>(1, task_work / std::max<int64_t>(1, work_per_item));
}

}  // namespace teachcompute_ext

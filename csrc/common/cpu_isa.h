// Run-time choice among the per-ISA builds of the CPU kernels (see
// CMakeLists.txt: TCE_CPU_KERNEL_SOURCES is compiled once for DEFAULT, AVX2 and
// AVX512, each build in its own namespace teachcompute_ext::<ISA>; the stubs of
// common/stub.h hold one pointer per build). Follows torch's own choice, so
// ATEN_CPU_CAPABILITY=avx2 (or default) also steers our kernels, which keeps
// comparisons with torch fair.
#pragma once

namespace teachcompute_ext {

enum class CpuIsa { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The best ISA both this build and the machine (capped by torch's setting) support.
CpuIsa cpu_isa();

// The AVX2 / AVX512 build of a kernel, or null when this build has none.
#ifdef TCE_HAVE_ISA_AVX2
#define TCE_ISA_PTR_AVX2(name) (&AVX2::name)
#else
#define TCE_ISA_PTR_AVX2(name) (static_cast<decltype(&DEFAULT::name)>(nullptr))
#endif
#ifdef TCE_HAVE_ISA_AVX512
#define TCE_ISA_PTR_AVX512(name) (&AVX512::name)
#else
#define TCE_ISA_PTR_AVX512(name) (static_cast<decltype(&DEFAULT::name)>(nullptr))
#endif

}  // namespace teachcompute_ext

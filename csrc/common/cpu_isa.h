// Run-time choice among the per-ISA builds of a CPU kernel (see CMakeLists.txt:
// TCE_CPU_KERNEL_SOURCES is compiled once for DEFAULT, AVX2 and AVX512).
// Follows torch's own choice, so ATEN_CPU_CAPABILITY=avx2 (or default) also
// steers our kernels, which keeps comparisons with torch fair.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <type_traits>

namespace teachcompute_ext {

// One kernel struct per dtype (Fns<float>, ...), and the one for scalar_t.
template <template <typename> class Fns>
struct PerDtype {
  Fns<float> f32;
  Fns<double> f64;
  Fns<c10::Half> f16;
  Fns<c10::BFloat16> bf16;
};

template <typename scalar_t, template <typename> class Fns>
const Fns<scalar_t>& for_dtype(const PerDtype<Fns>& t) {
  if constexpr (std::is_same_v<scalar_t, float>) return t.f32;
  else if constexpr (std::is_same_v<scalar_t, double>) return t.f64;
  else if constexpr (std::is_same_v<scalar_t, c10::Half>) return t.f16;
  else return t.bf16;
}

enum class CpuIsa { DEFAULT = 0, AVX2 = 1, AVX512 = 2 };

// The best ISA both this build and the machine (capped by torch's setting) support.
CpuIsa cpu_isa();
const char* cpu_isa_name(CpuIsa isa);

// Picks the table compiled for cpu_isa(); Table is a struct of kernel pointers
// defined once per ISA as teachcompute_ext::<ISA>::<name>.
#define TCE_DECLARE_ISA_TABLE(Table, name) \
  namespace DEFAULT { extern const Table name; } \
  namespace AVX2 { extern const Table name; }    \
  namespace AVX512 { extern const Table name; }

template <typename Table>
const Table& select_isa_table(const Table& def, const Table* avx2, const Table* avx512) {
  switch (cpu_isa()) {
    case CpuIsa::AVX512:
      if (avx512) return *avx512;
      [[fallthrough]];
    case CpuIsa::AVX2:
      if (avx2) return *avx2;
      [[fallthrough]];
    default:
      return def;
  }
}

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

// The table of kernels for this machine, chosen once.
#define TCE_ISA_TABLE(name) select_isa_table(DEFAULT::name, TCE_ISA_PTR_AVX2(name), TCE_ISA_PTR_AVX512(name))

}  // namespace teachcompute_ext

#include "common/cpu_isa.h"

#include <ATen/Version.h>

#include <string>

namespace teachcompute_ext {

CpuIsa cpu_isa() {
  // at::get_cpu_capability() already combines cpuinfo with ATEN_CPU_CAPABILITY.
  static const CpuIsa isa = [] {
    const std::string cap = at::get_cpu_capability();
    if (cap == "AVX512") return CpuIsa::AVX512;
    if (cap == "AVX2") return CpuIsa::AVX2;
    return CpuIsa::DEFAULT;
  }();
  return isa;
}

}  // namespace teachcompute_ext

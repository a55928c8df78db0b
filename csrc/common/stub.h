// Kernel stubs: how a device-generic frontend reaches a device's kernel, in the
// shape of ATen's DispatchStub, extended to CUDA. A stub holds one function
// pointer per CPU ISA build (DEFAULT, AVX2, AVX512: TCE_CPU_KERNEL_SOURCES are
// compiled once per ISA, see CMakeLists.txt) and one for CUDA. Every pointer is
// a link-time constant, so a missing kernel is a link error, not a run-time
// surprise, and no static-initialization order is involved.
//
//   family.h          TCE_DECLARE_KERNEL(void(const at::Tensor&, at::Tensor&), foo_kernel)
//   family_cpu_kernel.cpp   namespace teachcompute_ext::CPU_CAPABILITY { void foo_kernel(...) {...} }
//   family_cuda.cu          namespace teachcompute_ext::cuda_kernels { void foo_kernel(...) {...} }
//   family.cpp        TCE_DEFINE_STUB(foo_stub, foo_kernel)
//                     ... foo_stub(x.device().type(), x, out);
#pragma once

#include <ATen/Config.h>
#include <c10/core/DeviceType.h>
#include <c10/util/Exception.h>

#include <utility>

#include "common/cpu_isa.h"

// The CPU kernel files launch with at::parallel_for, a header template that
// expands to `#pragma omp parallel`: compiled without -fopenmp, every loop
// would run on one thread, silently (it once cost 2-4x on every CPU op).
#if defined(CPU_CAPABILITY) && AT_PARALLEL_OPENMP && !defined(_OPENMP)
#error "the per-ISA CPU kernel files must be compiled with OpenMP (-fopenmp), as torch's thread pool is OpenMP"
#endif

namespace teachcompute_ext {

template <typename Fn>
struct KernelStub;

template <typename R, typename... Args>
struct KernelStub<R(Args...)> {
  using FnPtr = R (*)(Args...);
  const char* name;
  FnPtr cpu_default;
  FnPtr cpu_avx2;    // null when the build has no AVX2 objects
  FnPtr cpu_avx512;  // null when the build has no AVX512 objects
  FnPtr cuda;        // null when CUDA was not compiled

  template <typename... CallArgs>
  R operator()(c10::DeviceType device, CallArgs&&... args) const {
    return choose(device)(std::forward<CallArgs>(args)...);
  }

  FnPtr choose(c10::DeviceType device) const {
    if (device == c10::DeviceType::CPU) {
      switch (cpu_isa()) {
        case CpuIsa::AVX512:
          if (cpu_avx512) return cpu_avx512;
          [[fallthrough]];
        case CpuIsa::AVX2:
          if (cpu_avx2) return cpu_avx2;
          [[fallthrough]];
        default: return cpu_default;
      }
    }
    TORCH_CHECK(device == c10::DeviceType::CUDA && cuda != nullptr, "teachcompute_ext: kernel ", name,
                " has no implementation for device type ", device,
                device == c10::DeviceType::CUDA ? " (this build was compiled without CUDA)" : "");
    return cuda;
  }
};

// The CPU kernel in every ISA namespace and the CUDA one, declared for the stub.
#define TCE_DECLARE_KERNEL(Sig, name) \
  namespace DEFAULT {                 \
  Sig name;                           \
  }                                   \
  namespace AVX2 {                    \
  Sig name;                           \
  }                                   \
  namespace AVX512 {                  \
  Sig name;                           \
  }                                   \
  namespace cuda_kernels {            \
  Sig name;                           \
  }

#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
#define TCE_CUDA_PTR(name) (&cuda_kernels::name)
#else
#define TCE_CUDA_PTR(name) (static_cast<decltype(&DEFAULT::name)>(nullptr))
#endif

// The stub of a kernel declared with TCE_DECLARE_KERNEL: constant-initialized.
#define TCE_DEFINE_STUB(stub, name)                                                             \
  constinit const KernelStub<std::remove_pointer_t<decltype(&DEFAULT::name)>> stub {            \
    #name, &DEFAULT::name, TCE_ISA_PTR_AVX2(name), TCE_ISA_PTR_AVX512(name), TCE_CUDA_PTR(name) \
  }

}  // namespace teachcompute_ext

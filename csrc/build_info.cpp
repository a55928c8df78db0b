// What this library was built with, readable before any op is called
// (teachcompute_ext._loader reads it through ctypes to detect a library
// built for another torch, and to report the compiled backends).
#include <torch/headeronly/version.h>

#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

#define TCE_STR2(x) #x
#define TCE_STR(x) TCE_STR2(x)

extern "C" __attribute__((visibility("default"))) const char* teachcompute_ext_build_info() {
  // A flat "key=value;..." string: trivially parsed, no JSON library in C++.
  return "torch=" TCE_STR(TORCH_VERSION_MAJOR) "." TCE_STR(TORCH_VERSION_MINOR) "." TCE_STR(TORCH_VERSION_PATCH)
#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
      ";backends=CPU,CUDA;cuda=" TCE_STR(CUDART_VERSION)
#else
      ";backends=CPU;cuda="
#endif
          ;
}

// swiglu and geglu on the CPU, forward and backward, compiled once per ISA:
// act(gate) * up in one pass (read gate and up, write out: 3 streams), where
// eager F.silu(gate) * up writes and reads back an intermediate (5 streams). The
// backward writes both gradients in one pass from grad, gate and up (5
// streams; eager's mul and silu backwards take 9). float32 outputs too big to
// stay in the caches (> kStreamBytes) are streamed to memory: a cached store
// first reads its line (read-for-ownership), so 3 streams cost 4 transfers and
// 5 cost 7. 4096x11008 float32, 2 threads, allocator warm, same process:
// forward 30.7 -> 26.1 ms, forward+backward 79.1 -> 62.8 ms (eager 52.8 and
// 139.6 ms). gate and up are read
// through their row strides, so the two halves of one [..., 2 * I] GEMM output
// are read in place. The activation's math is common/vec_activation.h's, shared
// with fused_linear's epilogue. Bound: memory (erf/exp per element on top).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "common/grain.h"
#include "common/vec_activation.h"
#include "common/vec_io.h"
#include "llama/llama.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

// Columns of one task unit: rows are cut in pieces this long, so that one wide
// row (a single token of 11008 units) still splits across threads.
constexpr int64_t kGluPiece = 4096;

// In parallel over (row, piece of columns) units, kExpTaskWork elements per
// task; each task ends with the fence its streaming stores need.
template <typename F>
void for_each_piece(int64_t R, int64_t I, bool stream, F f) {
  const int64_t pieces = (I + kGluPiece - 1) / kGluPiece, width = std::min(I, kGluPiece);
  at::parallel_for(0, R * pieces, grain_for(width, kExpTaskWork), [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t r = u / pieces, c0 = (u % pieces) * kGluPiece;
      f(r, c0, std::min(I, c0 + kGluPiece) - c0);
    }
    stream_fence(stream);
  });
}

// Streams outputs of `bytes` in all (float32 only: stream_store has no 16-bit form).
template <typename T>
bool streams(int64_t bytes) {
  return std::is_same_v<T, float> && bytes > kStreamBytes;
}

template <typename T, Act act>
void forward_typed(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out) {
  const int64_t R = gate.size(0), I = gate.size(1), ldg = gate.stride(0), ldu = up.stride(0);
  const T* gp = gate.const_data_ptr<T>();
  const T* up_ = up.const_data_ptr<T>();
  T* op = out.mutable_data_ptr<T>();
  const bool stream = streams<T>(out.nbytes());
  for_each_piece(R, I, stream, [&](int64_t r, int64_t c0, int64_t n) {
    const T* g = gp + r * ldg + c0;
    const T* u = up_ + r * ldu + c0;
    write_vectors(op + r * I + c0, n, stream,
                  [&](int64_t i, int64_t c) { return act_forward(load_n(g + i, c), act) * load_n(u + i, c); });
  });
}

// A store of c (<= L) elements, non-temporal when asked and the address allows it.
template <typename T>
inline void store_n(T* p, const Vectorized<acc_t<T>>& v, int64_t c, bool stream) {
  if (c < IO<T>::L) {
    IO<T>::store_part(p, v, c);
  } else if (!(stream && reinterpret_cast<std::uintptr_t>(p) % (IO<T>::L * sizeof(T)) == 0 && stream_store(p, v))) {
    IO<T>::store(p, v);
  }
}

template <typename T, Act act>
void backward_typed(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up, at::Tensor& ggate,
                    at::Tensor& gup) {
  using V = Vectorized<acc_t<T>>;
  constexpr int64_t L = IO<T>::L;
  const int64_t R = gate.size(0), I = gate.size(1);
  const T* dp = grad.const_data_ptr<T>();
  const T* gp = gate.const_data_ptr<T>();
  const T* up_ = up.const_data_ptr<T>();
  T* ggp = ggate.mutable_data_ptr<T>();
  T* gup_ = gup.mutable_data_ptr<T>();
  const bool stream = streams<T>(2 * R * I * static_cast<int64_t>(sizeof(T)));
  for_each_piece(R, I, stream, [&](int64_t r, int64_t c0, int64_t n) {
    const T* d = dp + r * grad.stride(0) + c0;
    const T* g = gp + r * gate.stride(0) + c0;
    const T* u = up_ + r * up.stride(0) + c0;
    T* og = ggp + r * ggate.stride(0) + c0;
    T* ou = gup_ + r * gup.stride(0) + c0;
    for (int64_t i = 0; i < n; i += L) {
      const int64_t c = std::min(L, n - i);
      const V dv = load_n(d + i, c), gv = load_n(g + i, c);
      V f, df;
      act_and_derivative(gv, act, f, df);
      store_n(og + i, dv * load_n(u + i, c) * df, c, stream);
      store_n(ou + i, dv * f, c, stream);
    }
  });
}

// One instantiation per activation: the switch stays outside the loops.
template <template <typename, Act> class F, typename... Args>
void dispatch_act(at::ScalarType t, Act act, Args&&... args) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t, "glu", [&] {
    switch (act) {
      case Act::Silu: return F<scalar_t, Act::Silu>::run(args...);
      case Act::Gelu: return F<scalar_t, Act::Gelu>::run(args...);
      case Act::GeluTanh: return F<scalar_t, Act::GeluTanh>::run(args...);
      default: TORCH_INTERNAL_ASSERT(false, "glu: unexpected activation");
    }
  });
}

template <typename T, Act act>
struct Forward {
  static void run(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out) {
    forward_typed<T, act>(gate, up, out);
  }
};
template <typename T, Act act>
struct Backward {
  static void run(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up, at::Tensor& ggate,
                  at::Tensor& gup) {
    backward_typed<T, act>(grad, gate, up, ggate, gup);
  }
};

}  // namespace

void glu_kernel(const at::Tensor& gate, const at::Tensor& up, at::Tensor& out, Act act) {
  dispatch_act<Forward>(gate.scalar_type(), act, gate, up, out);
}

void glu_backward_kernel(const at::Tensor& grad, const at::Tensor& gate, const at::Tensor& up, at::Tensor& ggate,
                         at::Tensor& gup, Act act) {
  dispatch_act<Backward>(gate.scalar_type(), act, grad, gate, up, ggate, gup);
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

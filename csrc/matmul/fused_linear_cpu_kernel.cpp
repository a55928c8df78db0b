// fused_linear on the CPU, compiled once per ISA: act(x @ W^T + bias),
// forward and backward. The GEMMs are torch's BLAS (MKL here) through
// at::mm_out; what we fuse is everything around them. Forward: the output is
// computed tile by tile, each thread running a single-threaded GEMM on its
// tile and applying bias and activation right away, while the tile is still
// in its L2, so the [M, N] output is written once and never read back (eager:
// a bias copy, the GEMM, then gelu reading it and writing a second tensor).
// Backward: grad * act'(pre) and the bias gradient's column sums in one pass,
// then the grad_x and grad_weight GEMMs. Bound: the three GEMMs (6 M N K
// FLOPs), which MKL runs near this CPU's peak: they are 95% or more of eager's
// time, which caps what fusing the rest can gain
// (benchmarks/results/matmul-cpu.json). The epilogues' own bound is the
// activation's arithmetic (erf, tanh or exp per element with at::vec's
// Sleef-based vector functions), the tile being L2-resident.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/grain.h"
#include "common/vec_activation.h"
#include "common/vec_io.h"
#include "matmul/matmul.h"

namespace teachcompute_ext {
namespace CPU_CAPABILITY {
namespace {

using at::vec::Vectorized;
using namespace vec_io;

template <typename T, Act act>
void forward_rows(T* y, int64_t ldy, T* pre, int64_t ldp, const T* bias, int64_t rows, int64_t cols) {
  using IOT = IO<T>;
  using V = typename IOT::V;
  using A = typename IOT::A;
  constexpr int64_t L = IOT::L;
  for (int64_t r = 0; r < rows; ++r) {
    T* yr = y + r * ldy;
    T* pr = pre ? pre + r * ldp : nullptr;
    int64_t j = 0;
    for (; j + L <= cols; j += L) {
      V v = IOT::load(yr + j);
      if (bias) v = v + IOT::load(bias + j);
      if (pr) IOT::store(pr + j, v);
      IOT::store(yr + j, act_forward(v, act));
    }
    if (j < cols) {
      const int64_t c = cols - j;
      V v = IOT::load_part(yr + j, c, A(0));
      if (bias) v = v + IOT::load_part(bias + j, c, A(0));
      if (pr) IOT::store_part(pr + j, v, c);
      IOT::store_part(yr + j, act_forward(v, act), c);
    }
  }
}

template <typename T>
void forward(T* y, int64_t ldy, T* pre, int64_t ldp, const T* bias, int64_t rows, int64_t cols, Act act) {
  // The switch is outside the row loop so each activation gets its own
  // inner loop, with no per-vector branch.
  switch (act) {
    case Act::Relu: return forward_rows<T, Act::Relu>(y, ldy, pre, ldp, bias, rows, cols);
    case Act::Gelu: return forward_rows<T, Act::Gelu>(y, ldy, pre, ldp, bias, rows, cols);
    case Act::GeluTanh: return forward_rows<T, Act::GeluTanh>(y, ldy, pre, ldp, bias, rows, cols);
    case Act::Silu: return forward_rows<T, Act::Silu>(y, ldy, pre, ldp, bias, rows, cols);
    default: return forward_rows<T, Act::None>(y, ldy, pre, ldp, bias, rows, cols);
  }
}

template <typename T, Act act>
void backward_rows(const T* g, int64_t ldg, const T* aux, int64_t lda, T* dpre, int64_t ldd, int64_t rows, int64_t cols,
                   acc_t<T>* bias_acc) {
  using IOT = IO<T>;
  using V = typename IOT::V;
  using A = typename IOT::A;
  constexpr int64_t L = IOT::L;
  for (int64_t r = 0; r < rows; ++r) {
    const T* gr = g + r * ldg;
    const T* ar = act == Act::None ? nullptr : aux + r * lda;
    T* dr = act == Act::None ? nullptr : dpre + r * ldd;
    int64_t j = 0;
    for (; j + L <= cols; j += L) {
      V d = IOT::load(gr + j);
      if constexpr (act != Act::None) {
        d = act_backward(d, IOT::load(ar + j), act);
        IOT::store(dr + j, d);
      }
      if (bias_acc) (V::loadu(bias_acc + j) + d).store(bias_acc + j);
    }
    if (j < cols) {
      const int64_t c = cols - j;
      V d = IOT::load_part(gr + j, c, A(0));
      if constexpr (act != Act::None) {
        d = act_backward(d, IOT::load_part(ar + j, c, A(0)), act);
        IOT::store_part(dr + j, d, c);
      }
      if (bias_acc) (V::loadu(bias_acc + j, c) + d).store(bias_acc + j, c);
    }
  }
}

template <typename T>
void backward(const T* g, int64_t ldg, const T* aux, int64_t lda, T* dpre, int64_t ldd, int64_t rows, int64_t cols,
              Act act, void* bias_acc) {
  auto* acc = static_cast<acc_t<T>*>(bias_acc);
  switch (act) {
    case Act::Relu: return backward_rows<T, Act::Relu>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    case Act::Gelu: return backward_rows<T, Act::Gelu>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    case Act::GeluTanh: return backward_rows<T, Act::GeluTanh>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    case Act::Silu: return backward_rows<T, Act::Silu>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
    default: return backward_rows<T, Act::None>(g, ldg, aux, lda, dpre, ldd, rows, cols, acc);
  }
}

// Forward tile: 256 rows x 1024 columns of float32 is 1 MiB, the L2 of one
// core here, so the epilogue reads the GEMM's output tile from cache. Smaller
// tiles pay MKL's operand packing more often: x (2048, 1024) @ W (4096, 1024)^T
// measured 1.01x eager with 256 x 1024 tiles, 0.98x with 128 x 512, and 0.99x
// for one untiled GEMM followed by the epilogue pass.
constexpr int64_t kTileRows = 256;
constexpr int64_t kTileCols = 1024;
// Backward row block of the fused grad * act' pass: fixed by M alone, so the
// bias gradient's summation order does not depend on the thread count.
constexpr int64_t kBwdRows = 64;
// Below this many FLOPs one untiled GEMM with all threads wins (tiling would
// leave threads idle).
constexpr double kTileMinFlops = 64.0 * 1024 * 1024;

// A 2-D operand BLAS can read without a copy (one unit stride).
at::Tensor blas_ready(const at::Tensor& t) { return (t.stride(-1) == 1 || t.stride(-2) == 1) ? t : t.contiguous(); }

}  // namespace

void fused_linear_kernel(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, Act act,
                         at::Tensor& out, at::Tensor& pre) {
  const int64_t M = out.size(0), N = out.size(1), K = x.size(1);
  const at::Tensor x2 = blas_ready(x);
  const at::Tensor w = blas_ready(weight);
  const at::Tensor b = bias.defined() ? bias.contiguous() : at::Tensor();
  const bool keep_pre = pre.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_forward", [&] {
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    scalar_t* p = keep_pre ? pre.mutable_data_ptr<scalar_t>() : nullptr;
    // Half types: the bias goes into the GEMM (addmm, accumulated in float32),
    // so x @ W^T + b is rounded once, as F.linear does. Added after the GEMM's
    // rounding, a bias that nearly cancels x @ W^T gave an exact 0 where torch
    // keeps a tiny positive value, and relu's gradient lost those elements
    // (bfloat16 fwd+bwd 3e-2 to 7e-2 from float64, torch 2e-3; the size sweep).
    // float32 and float64 always add the bias in the epilogue, after mm_out:
    // addmm copies the bias into out, then runs a beta = 1 GEMM that reads it
    // back, which costs more than our pass over a cached out. F.linear (addmm)
    // / mm_out + our bias pass, float32, same process: 1x128 @ 64: 5.6 / 4.4
    // us; 32x96 @ 300: 29 / 17 us; 1024x1024 @ 5632: 55.4 / 54.0 ms.
    constexpr bool kHalfType = !std::is_same_v<scalar_t, float> && !std::is_same_v<scalar_t, double>;
    const bool bias_in_gemm = b.defined() && kHalfType;
    const scalar_t* bp = b.defined() && !bias_in_gemm ? b.const_data_ptr<scalar_t>() : nullptr;
    const bool epilogue = act != Act::None || bp != nullptr || p != nullptr;
    // Tiles only where every thread gets at least two: with fewer, the tiles'
    // single-threaded GEMMs leave threads idle (x 256x512, W 1000x512 is one
    // tile: one thread ran the whole GEMM, 0.43x F.linear + gelu in bfloat16).
    // Half types always take one GEMM: oneDNN's bfloat16 GEMM sets up each call,
    // and per tile that cost more than the cache reuse gave. bfloat16, ratio to
    // eager, tiled / one GEMM: 2048x1024 @ 4096 gelu 0.70x / 1.12x, relu 0.86x
    // / 1.04x; 512x1024 @ 4096 gelu 0.91x / 0.95x, relu 0.77x / 1.06x.
    // A bias alone is too little work to pay for the tiles' packing: one GEMM
    // on all threads, then the bias pass (x 1024x1024, W 5632x1024, float32,
    // ratio to F.linear: tiled 0.88x, one GEMM 0.99x).
    const int64_t tiles = ((M + kTileRows - 1) / kTileRows) * ((N + kTileCols - 1) / kTileCols);
    const bool tiled = 2.0 * M * N * K >= kTileMinFlops && tiles >= 2 * at::get_num_threads() && !kHalfType &&
                       (act != Act::None || p != nullptr);
    if (!tiled || !epilogue) {
      if (bias_in_gemm) {
        at::addmm_out(out, b, x2, w.t());
      } else {
        at::mm_out(out, x2, w.t());
      }
      if (!epilogue) return;
      at::parallel_for(0, M, grain_for(N, kRowSumTaskWork), [&](int64_t r0, int64_t r1) {
        forward<scalar_t>(y + r0 * N, N, p ? p + r0 * N : nullptr, N, bp, r1 - r0, N, act);
      });
      return;
    }
    // Column tiles outermost: a thread's consecutive tiles share the same
    // slice of W (nb x K), which stays cached while x's row blocks stream by.
    const int64_t row_tiles = (M + kTileRows - 1) / kTileRows;
    const int64_t col_tiles = (N + kTileCols - 1) / kTileCols;
    at::parallel_for(0, row_tiles * col_tiles, 1, [&](int64_t t0, int64_t t1) {
      // Worker threads do not inherit the caller's dispatch state: without
      // this guard the tile GEMM would go through autograd and refuse out=.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = (t / row_tiles) * kTileCols, r0 = (t % row_tiles) * kTileRows;
        const int64_t nc = std::min(kTileCols, N - c0), nr = std::min(kTileRows, M - r0);
        // Inside at::parallel_for this GEMM runs on the calling thread only
        // (MKL does not nest inside an OpenMP region).
        at::Tensor tile = out.narrow(0, r0, nr).narrow(1, c0, nc);
        if (bias_in_gemm) {
          at::addmm_out(tile, b.narrow(0, c0, nc), x2.narrow(0, r0, nr), w.narrow(0, c0, nc).t());
        } else {
          at::mm_out(tile, x2.narrow(0, r0, nr), w.narrow(0, c0, nc).t());
        }
        forward<scalar_t>(y + r0 * N + c0, N, p ? p + r0 * N + c0 : nullptr, N, bp ? bp + c0 : nullptr, nr, nc, act);
      }
    });
  });
}

void fused_linear_backward_kernel(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight,
                                  const at::Tensor& aux, LinearBackward& bw) {
  const LinearShape s = bw.s;
  const Act act = bw.act;
  const at::Tensor g2 = grad.contiguous();
  const at::Tensor w = blas_ready(weight);
  const bool fused_pass = act != Act::None || bw.want_b;
  at::Tensor dpre = act == Act::None ? g2 : at::empty({s.m, s.n}, x.options());
  const int64_t blocks = (s.m + kBwdRows - 1) / kBwdRows;
  // Per-block column sums, added in block order: from the same grad and aux,
  // the bias gradient is the same bits for any number of threads. (End to end
  // it is not: whether the forward tiles its GEMM follows the thread count, and
  // a tile's GEMM rounds differently from one GEMM, so aux, the saved
  // pre-activation, may differ in its last bits.) One block in float32/float64 sums straight
  // into the gradient: at 32 x 64, partial.sum(0) and a copy_ were 2 of the
  // backward's 7 us more than torch's.
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool direct = bw.want_b && blocks == 1 && x.scalar_type() == acc_dtype;
  at::Tensor partial = !bw.want_b ? at::Tensor()
                       : direct   ? bw.gb.view({1, s.n}).zero_()
                                  : at::zeros({blocks, s.n}, x.options().dtype(acc_dtype));
  if (fused_pass) {
    const at::Tensor a2 = act == Act::None ? g2 : aux.contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_backward", [&] {
      const scalar_t* gp = g2.const_data_ptr<scalar_t>();
      const scalar_t* ap = a2.const_data_ptr<scalar_t>();
      scalar_t* dp = act == Act::None ? nullptr : dpre.mutable_data_ptr<scalar_t>();
      const int64_t N = s.n;
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t r0 = blk * kBwdRows, nr = std::min(kBwdRows, s.m - r0);
          void* acc =
              bw.want_b ? static_cast<char*>(partial.mutable_data_ptr()) + blk * N * partial.element_size() : nullptr;
          backward<scalar_t>(gp + r0 * N, N, ap + r0 * N, N, dp ? dp + r0 * N : nullptr, N, nr, N, act, acc);
        }
      });
    });
  }
  // The two GEMMs run untiled with all threads: computing grad_x block by
  // block right after its dpre rows (while they are cached) measured 3%
  // slower than MKL's own blocking of the whole product.
  if (bw.want_x) at::mm_out(bw.gx, dpre, w);
  if (bw.want_w) at::mm_out(bw.gw, dpre.t(), blas_ready(x));
  if (bw.want_b && !direct) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_bias_grad", [&] {
      using acc = acc_t<scalar_t>;
      const acc* pp = partial.const_data_ptr<acc>();
      scalar_t* gb = bw.gb.mutable_data_ptr<scalar_t>();
      at::parallel_for(0, s.n, grain_for(blocks, kPartialSumTaskWork) + 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c) {
          acc sum = pp[c];
          for (int64_t blk = 1; blk < blocks; ++blk) sum += pp[blk * s.n + c];
          gb[c] = static_cast<scalar_t>(sum);
        }
      });
    });
  }
}

}  // namespace CPU_CAPABILITY
}  // namespace teachcompute_ext

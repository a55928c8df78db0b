// fused_linear on the CPU: act(x @ W^T + bias), forward and backward.
// The GEMMs are torch's BLAS (MKL here) through at::mm_out; what we fuse is
// everything around them. Forward: the output is computed tile by tile, each
// thread running a single-threaded GEMM on its tile and applying bias and
// activation right away, while the tile is still in its L2, so the [M, N]
// output is written once and never read back (eager: a bias copy, the GEMM,
// then gelu reading it and writing a second tensor). Backward: grad * act'(pre)
// and the bias gradient's column sums in one pass, then the grad_x and
// grad_weight GEMMs. Bound: the three GEMMs (6 M N K FLOPs), which MKL runs
// near this CPU's peak: they are 95% or more of eager's time, which caps what
// fusing the rest can gain (benchmarks/results/matmul-cpu.json).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/grad_mode.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "matmul/fused_linear.h"
#include "ops.h"

namespace teachcompute_ext {
namespace {

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
at::Tensor blas_ready(const at::Tensor& t) {
  return (t.stride(-1) == 1 || t.stride(-2) == 1) ? t : t.contiguous();
}

template <typename T>
const FusedLinearFns<T>& kernels() {
  return for_dtype<T>(TCE_ISA_TABLE(kFusedLinearKernels));
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> fused_linear_forward_cpu(const at::Tensor& x, const at::Tensor& weight,
                                                            const std::optional<at::Tensor>& bias,
                                                            c10::string_view activation, bool save_pre) {
  const char* op = "fused_linear";
  const LinearShape s = check_linear(op, x, weight, bias);
  const Act act = parse_activation(op, activation);
  const at::Tensor x2 = blas_ready(x.reshape({s.m, s.k}));
  const at::Tensor w = blas_ready(weight);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  at::Tensor out = at::empty({s.m, s.n}, x.options());
  const bool keep_pre = save_pre && act_needs_pre(act);
  at::Tensor pre = at::empty({keep_pre ? s.m : 0, keep_pre ? s.n : 0}, x.options());
  const auto out_shape = linear_out_shape(x, s.n);
  if (s.m == 0 || s.n == 0) return {out.view(out_shape), keep_pre ? pre.view(out_shape) : pre};

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_forward", [&] {
    const auto& k = kernels<scalar_t>();
    scalar_t* y = out.mutable_data_ptr<scalar_t>();
    scalar_t* p = keep_pre ? pre.mutable_data_ptr<scalar_t>() : nullptr;
    const scalar_t* bp = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    const int64_t N = s.n;
    if (2.0 * s.m * s.n * s.k < kTileMinFlops || at::get_num_threads() == 1) {
      at::mm_out(out, x2, w.t());
      at::parallel_for(0, s.m, std::max<int64_t>(1, 16384 / N), [&](int64_t r0, int64_t r1) {
        k.forward(y + r0 * N, N, p ? p + r0 * N : nullptr, N, bp, r1 - r0, N, act);
      });
      return;
    }
    // Column tiles outermost: a thread's consecutive tiles share the same
    // slice of W (nb x K), which stays cached while x's row blocks stream by.
    const int64_t row_tiles = (s.m + kTileRows - 1) / kTileRows;
    const int64_t col_tiles = (s.n + kTileCols - 1) / kTileCols;
    at::parallel_for(0, row_tiles * col_tiles, 1, [&](int64_t t0, int64_t t1) {
      // Worker threads do not inherit the caller's dispatch state: without
      // this guard the tile GEMM would go through autograd and refuse out=.
      at::AutoDispatchBelowADInplaceOrView below_autograd;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t c0 = (t / row_tiles) * kTileCols, r0 = (t % row_tiles) * kTileRows;
        const int64_t nc = std::min(kTileCols, N - c0), nr = std::min(kTileRows, s.m - r0);
        // Inside at::parallel_for this GEMM runs on the calling thread only
        // (MKL does not nest inside an OpenMP region).
        at::Tensor tile = out.narrow(0, r0, nr).narrow(1, c0, nc);
        at::mm_out(tile, x2.narrow(0, r0, nr), w.narrow(0, c0, nc).t());
        k.forward(y + r0 * N + c0, N, p ? p + r0 * N + c0 : nullptr, N, bp ? bp + c0 : nullptr, nr, nc, act);
      }
    });
  });
  return {out.view(out_shape), keep_pre ? pre.view(out_shape) : pre};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fused_linear_backward_cpu(
    const at::Tensor& grad, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& aux,
    c10::string_view activation, bool has_bias, std::array<bool, 3> output_mask) {
  LinearBackward bw("fused_linear_backward", grad, x, weight, aux, activation, has_bias, output_mask);
  if (bw.done()) return bw.result();
  const LinearShape s = bw.s;
  const Act act = bw.act;
  const bool want_x = bw.want_x, want_w = bw.want_w, want_b = bw.want_b;
  at::Tensor &gx = bw.gx, &gw = bw.gw, &gb = bw.gb;
  const at::Tensor g2 = grad.reshape({s.m, s.n}).contiguous();
  const at::Tensor w = blas_ready(weight);
  const bool fused_pass = act != Act::None || want_b;
  at::Tensor dpre = act == Act::None ? g2 : at::empty({s.m, s.n}, x.options());
  const int64_t blocks = (s.m + kBwdRows - 1) / kBwdRows;
  // Per-block column sums, added in block order: the bias gradient is the same
  // bits for any number of threads.
  const auto acc_dtype = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor partial = want_b ? at::zeros({blocks, s.n}, x.options().dtype(acc_dtype)) : at::Tensor();
  
  if (fused_pass) {
    const at::Tensor a2 = act == Act::None ? g2 : aux.reshape({s.m, s.n}).contiguous();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_linear_backward", [&] {
      const auto& k = kernels<scalar_t>();
      const scalar_t* gp = g2.const_data_ptr<scalar_t>();
      const scalar_t* ap = a2.const_data_ptr<scalar_t>();
      scalar_t* dp = act == Act::None ? nullptr : dpre.mutable_data_ptr<scalar_t>();
      const int64_t N = s.n;
      at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
        for (int64_t blk = b0; blk < b1; ++blk) {
          const int64_t r0 = blk * kBwdRows, nr = std::min(kBwdRows, s.m - r0);
          void* acc = want_b ? static_cast<char*>(partial.mutable_data_ptr()) + blk * N * partial.element_size()
                             : nullptr;
          k.backward(gp + r0 * N, N, ap + r0 * N, N, dp ? dp + r0 * N : nullptr, N, nr, N, act, acc);
        }
      });
    });
  }
  // The two GEMMs run untiled with all threads: computing grad_x block by
  // block right after its dpre rows (while they are cached) measured 3%
  // slower than MKL's own blocking of the whole product.
  if (want_x) at::mm_out(gx, dpre, w);
  if (want_w) at::mm_out(gw, dpre.t(), blas_ready(x.reshape({s.m, s.k})));
  if (want_b) gb.copy_(partial.sum(0));
  return bw.result();
}

at::Tensor fused_linear_composite(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                  c10::string_view activation) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("teachcompute_ext::fused_linear_forward", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                                 const std::optional<at::Tensor>&, c10::string_view,
                                                                 bool)>();
  // The pre-activation is kept only when a backward can follow: inference
  // writes one [M, N] tensor, not two.
  const bool grad = at::GradMode::is_enabled() &&
                    (x.requires_grad() || weight.requires_grad() || (bias.has_value() && bias->requires_grad()));
  return std::get<0>(op.call(x, weight, bias, activation, grad));
}

}  // namespace teachcompute_ext

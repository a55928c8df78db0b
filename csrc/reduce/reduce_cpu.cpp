// Reductions along dims on the CPU: the plan (reduce_dims.h) picks ROWS, COLS
// or GENERAL; the per-ISA kernels (reduce_cpu_kernel.cpp, and vector_sum's
// for sums) run under at::parallel_for over outputs (or tiles of 64 outputs).
// With fewer outputs than threads, each long row is split into fixed chunks
// whose partial results merge in order, so results do not depend on the
// thread count.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>

#include <cmath>
#include <limits>
#include <vector>

#include "common/rounding.h"
#include "ops.h"
#include "reduce/reduce_dims.h"
#include "reduce/reduce_kernels.h"
#include "reduce/vector_sum.h"

namespace teachcompute_ext {
namespace {

constexpr int64_t kRowChunk = 1 << 16;          // split unit of a long row
constexpr int64_t kMaxFloatIndex = 1LL << 24;   // float lanes hold exact indices below this

template <typename scalar_t>
const ReduceFns<scalar_t>& reduce_fns() {
  static const ReduceKernels& k = TCE_ISA_TABLE(kReduceKernels);
  return for_dtype<scalar_t>(k);
}

int64_t grain(int64_t per_item) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, per_item));
}

bool few_long_rows(const ReducePlan& p) {
  return p.nout < 2 * at::get_num_threads() && p.count >= 2 * kRowChunk;
}

// Calls f(u, offset_of_tile, c0, width) for each COLS unit in [u0, u1).
template <typename F>
void for_col_tiles(const ReducePlan& p, int64_t u0, int64_t u1, F f) {
  const int64_t C = p.kept.back().size;
  const int64_t tiles = (C + kReduceColTile - 1) / kReduceColTile;
  const std::vector<Dim> outer(p.kept.begin(), p.kept.end() - 1);
  for (int64_t u = u0; u < u1; ++u) {
    const int64_t o = u / tiles, c0 = (u % tiles) * kReduceColTile;
    f(o * C + c0, kept_offset(outer, o) + c0, std::min(kReduceColTile, C - c0));
  }
}

int64_t col_units(const ReducePlan& p) {
  const int64_t C = p.kept.back().size;
  return (p.nout / C) * ((C + kReduceColTile - 1) / kReduceColTile);
}

// Calls f(ptr, n, stride) for each innermost reduced row of the output at `base`.
template <typename T, typename F>
void for_red_rows(const ReducePlan& p, const T* base, F f) {
  if (p.red.empty()) {
    f(base, 1, 1);
    return;
  }
  const Dim inner = p.red.back();
  const int64_t nouter = static_cast<int64_t>(p.red.size()) - 1;
  int64_t rows = 1;
  for (int64_t d = 0; d < nouter; ++d) rows *= p.red[d].size;
  const std::vector<Dim> outer(p.red.begin(), p.red.end() - 1);
  for (int64_t r = 0; r < rows; ++r) f(base + kept_offset(outer, r), inner.size, inner.stride);
}

// ---- sum / mean -------------------------------------------------------------
at::Tensor sum_or_mean(const char* op, const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim, bool mean) {
  check_float_dtype(op, "x", x);
  const ReducePlan p = plan_reduction(op, x, dim, keepdim);
  if (p.count == 0) {
    return at::full(p.out_shape, mean ? std::numeric_limits<double>::quiet_NaN() : 0.0, x.options());
  }
  at::Tensor out = at::empty(p.out_shape, x.options());
  if (p.nout == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reduce_sum", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const double scale = mean ? 1.0 / static_cast<double>(p.count) : 1.0;
    auto finish = [&](double s) { return round_to<scalar_t>(mean ? s * scale : s); };
    const auto sum_fn = sum_kernel<scalar_t>();
    if (p.layout == ReduceLayout::ROWS && few_long_rows(p)) {
      for (int64_t o = 0; o < p.nout; ++o) op_[o] = finish(sum_dense(xp + kept_offset(p.kept, o), p.count));
    } else if (p.layout == ReduceLayout::ROWS) {
      at::parallel_for(0, p.nout, grain(p.count), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) op_[o] = finish(sum_fn(xp + kept_offset(p.kept, o), p.count, 1));
      });
    } else if (p.layout == ReduceLayout::COLS) {
      const auto& f = reduce_fns<scalar_t>();
      at::parallel_for(0, col_units(p), grain(p.count * kReduceColTile), [&](int64_t u0, int64_t u1) {
        double buf[kReduceColTile];
        for_col_tiles(p, u0, u1, [&](int64_t out0, int64_t off, int64_t width) {
          f.sum_cols(xp + off, p.red[0].size, p.red[0].stride, width, buf);
          for (int64_t c = 0; c < width; ++c) op_[out0 + c] = finish(buf[c]);
        });
      });
    } else {
      at::parallel_for(0, p.nout, grain(p.count), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          double s = 0;
          for_red_rows(p, xp + kept_offset(p.kept, o),
                       [&](const scalar_t* r, int64_t n, int64_t stride) { s += sum_fn(r, n, stride); });
          op_[o] = finish(s);
        }
      });
    }
  });
  return out;
}

// ---- max / min --------------------------------------------------------------
std::tuple<at::Tensor, at::Tensor> max_or_min(const char* op, const at::Tensor& x, int64_t dim, bool keepdim,
                                              bool is_max) {
  check_maxmin(op, x, dim);
  const ReducePlan p = plan_reduction(op, x, at::IntArrayRef{dim}, keepdim);
  at::Tensor values = at::empty(p.out_shape, x.options());
  at::Tensor indices = at::empty(p.out_shape, x.options().dtype(at::kLong));
  if (p.nout == 0) return {values, indices};
  const int64_t R = p.count;
  const int64_t S = p.red.empty() ? 1 : p.red[0].stride;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "reduce_max", [&] {
    using A = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* vp = values.mutable_data_ptr<scalar_t>();
    int64_t* ip = indices.mutable_data_ptr<int64_t>();
    const auto& f = reduce_fns<scalar_t>();
    const bool vec_ok = R < kMaxFloatIndex || std::is_same_v<A, double>;
    // Scalar fallback: any stride.
    auto scalar_one = [&](const scalar_t* r, int64_t begin, int64_t end, A& best, int64_t& bi) {
      for (int64_t i = begin; i < end; ++i) merge_candidate<A>(static_cast<A>(r[i * S]), i, is_max, best, bi);
    };
    if (p.layout == ReduceLayout::ROWS && vec_ok && few_long_rows(p)) {
      for (int64_t o = 0; o < p.nout; ++o) {
        const scalar_t* r = xp + kept_offset(p.kept, o);
        const int64_t nchunks = (R + kRowChunk - 1) / kRowChunk;
        std::vector<double> cv(nchunks);
        std::vector<int64_t> ci(nchunks);
        at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            f.maxmin_row(r + c * kRowChunk, std::min(kRowChunk, R - c * kRowChunk), is_max, &cv[c], &ci[c]);
            ci[c] += c * kRowChunk;
          }
        });
        A best = static_cast<A>(cv[0]);
        int64_t bi = ci[0];
        for (int64_t c = 1; c < nchunks; ++c) merge_candidate<A>(static_cast<A>(cv[c]), ci[c], is_max, best, bi);
        vp[o] = static_cast<scalar_t>(best);
        ip[o] = bi;
      }
    } else if (p.layout == ReduceLayout::ROWS && vec_ok) {
      at::parallel_for(0, p.nout, grain(R), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          double v;
          f.maxmin_row(xp + kept_offset(p.kept, o), R, is_max, &v, &ip[o]);
          vp[o] = static_cast<scalar_t>(v);
        }
      });
    } else if (p.layout == ReduceLayout::COLS && vec_ok) {
      at::parallel_for(0, col_units(p), grain(R * kReduceColTile), [&](int64_t u0, int64_t u1) {
        double vb[kReduceColTile];
        for_col_tiles(p, u0, u1, [&](int64_t out0, int64_t off, int64_t width) {
          f.maxmin_cols(xp + off, R, S, width, is_max, vb, ip + out0);
          for (int64_t c = 0; c < width; ++c) vp[out0 + c] = static_cast<scalar_t>(vb[c]);
        });
      });
    } else {
      at::parallel_for(0, p.nout, grain(R), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          const scalar_t* r = xp + kept_offset(p.kept, o);
          A best = static_cast<A>(r[0]);
          int64_t bi = 0;
          scalar_one(r, 1, R, best, bi);
          vp[o] = static_cast<scalar_t>(best);
          ip[o] = bi;
        }
      });
    }
  });
  return {values, indices};
}

// ---- logsumexp ----------------------------------------------------------------
// Merge of two (max, sum of exp(x - max)) pairs.
void lse_merge(double& m, double& s, double m2, double s2) {
  const double M = (std::isnan(m2) || m2 > m || std::isnan(m)) ? (std::isnan(m) ? m : m2) : m;
  if (M == -std::numeric_limits<double>::infinity()) {
    m = M;
    s = 0;
    return;
  }
  const double a = m == -std::numeric_limits<double>::infinity() ? 0.0 : s * std::exp(m - M);
  const double b = m2 == -std::numeric_limits<double>::infinity() ? 0.0 : s2 * std::exp(m2 - M);
  m = M;
  s = a + b;
}

// As torch.logsumexp: -inf for all -inf (or nothing), +inf when +inf is there, NaN with NaN.
double lse_finish(double m, double s) {
  if (std::isnan(m) || std::isinf(m)) return m;
  return m + std::log(s);
}

at::Tensor logsumexp_impl(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  const char* op = "logsumexp";
  check_float_dtype(op, "x", x);
  const ReducePlan p = plan_reduction(op, x, dim, keepdim);
  if (p.count == 0) return at::full(p.out_shape, -std::numeric_limits<double>::infinity(), x.options());
  at::Tensor out = at::empty(p.out_shape, x.options());
  if (p.nout == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "logsumexp", [&] {
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* op_ = out.mutable_data_ptr<scalar_t>();
    const auto& f = reduce_fns<scalar_t>();
    auto scalar_rows = [&](const scalar_t* base, double& m, double& s) {
      for_red_rows(p, base, [&](const scalar_t* r, int64_t n, int64_t stride) {
        for (int64_t i = 0; i < n; ++i) lse_merge(m, s, static_cast<double>(r[i * stride]), 1.0);
      });
    };
    if (p.layout == ReduceLayout::ROWS && few_long_rows(p)) {
      for (int64_t o = 0; o < p.nout; ++o) {
        const scalar_t* r = xp + kept_offset(p.kept, o);
        const int64_t nchunks = (p.count + kRowChunk - 1) / kRowChunk;
        std::vector<double> cm(nchunks), cs(nchunks);
        at::parallel_for(0, nchunks, 1, [&](int64_t c0, int64_t c1) {
          for (int64_t c = c0; c < c1; ++c) {
            f.lse_row(r + c * kRowChunk, std::min(kRowChunk, p.count - c * kRowChunk), &cm[c], &cs[c]);
          }
        });
        double m = cm[0], s = cs[0];
        for (int64_t c = 1; c < nchunks; ++c) lse_merge(m, s, cm[c], cs[c]);
        op_[o] = round_to<scalar_t>(lse_finish(m, s));
      }
    } else if (p.layout == ReduceLayout::ROWS) {
      at::parallel_for(0, p.nout, grain(p.count), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          double m, s;
          f.lse_row(xp + kept_offset(p.kept, o), p.count, &m, &s);
          op_[o] = round_to<scalar_t>(lse_finish(m, s));
        }
      });
    } else if (p.layout == ReduceLayout::COLS) {
      at::parallel_for(0, col_units(p), grain(p.count * kReduceColTile), [&](int64_t u0, int64_t u1) {
        double mb[kReduceColTile], sb[kReduceColTile];
        for_col_tiles(p, u0, u1, [&](int64_t out0, int64_t off, int64_t width) {
          f.lse_cols(xp + off, p.red[0].size, p.red[0].stride, width, mb, sb);
          for (int64_t c = 0; c < width; ++c) op_[out0 + c] = round_to<scalar_t>(lse_finish(mb[c], sb[c]));
        });
      });
    } else {
      at::parallel_for(0, p.nout, grain(p.count), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          double m = -std::numeric_limits<double>::infinity(), s = 0;
          scalar_rows(xp + kept_offset(p.kept, o), m, s);
          op_[o] = round_to<scalar_t>(lse_finish(m, s));
        }
      });
    }
  });
  return out;
}

}  // namespace

at::Tensor reduce_sum_cpu(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return sum_or_mean("reduce_sum", x, dim, keepdim, false);
}
at::Tensor reduce_mean_cpu(const at::Tensor& x, at::OptionalIntArrayRef dim, bool keepdim) {
  return sum_or_mean("reduce_mean", x, dim, keepdim, true);
}
std::tuple<at::Tensor, at::Tensor> reduce_max_cpu(const at::Tensor& x, int64_t dim, bool keepdim) {
  return max_or_min("reduce_max", x, dim, keepdim, true);
}
std::tuple<at::Tensor, at::Tensor> reduce_min_cpu(const at::Tensor& x, int64_t dim, bool keepdim) {
  return max_or_min("reduce_min", x, dim, keepdim, false);
}
at::Tensor logsumexp_cpu(const at::Tensor& x, at::IntArrayRef dim, bool keepdim) {
  return logsumexp_impl(x, dim, keepdim);
}

}  // namespace teachcompute_ext

// The reduce family (vector_sum, reduce_sum, reduce_mean, reduce_max,
// reduce_min, logsumexp, softmax, log_softmax and their backwards): the
// semantics every device shares (checks, plans, output shapes; the fake
// kernels in teachcompute_ext/ops/reduce.py mirror them) and the kernel
// signatures behind the stubs. The frontends are in reduce.cpp, the kernels in
// *_cpu_kernel.cpp (one build per CPU ISA) and *_cuda.cu.
//
// Reductions along dims are planned from x's strides, with no transposing copy:
//   kept    the dims that stay, in output order, neighbours merged when they
//           are contiguous with each other in x
//   red     the reduced dims, ordered by stride and merged (reduction order
//           only changes rounding)
// Kernels pick a layout from the plan: ROWS when the reduced elements of an
// output are one contiguous span, COLS when the innermost kept dim is
// contiguous (a tile of neighbouring outputs is loaded as one vector per
// reduced element), GENERAL otherwise.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/OptionalArrayRef.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/checks.h"
#include "common/layout.h"
#include "common/stub.h"

namespace teachcompute_ext {

// ---- vector_sum -----------------------------------------------------------------
// Sum of every element of a non-empty x into the 0-dim out (x's dtype).
using VectorSumFn = void(const at::Tensor& x, at::Tensor& out);
TCE_DECLARE_KERNEL(VectorSumFn, vector_sum_kernel)

// ---- reductions along dims ----------------------------------------------------------
enum class ReduceLayout { ROWS, COLS, GENERAL };
enum class ReduceOp { SUM, MEAN, MAX, MIN, LOGSUMEXP };

// The CUDA kernels take a layout's dims by value in fixed arrays of this many;
// a layout that does not collapse to this many dims is copied once into
// kept-then-reduced order, where it collapses to two.
constexpr int kMaxReduceDims = 10;

struct ReducePlan {
  std::vector<int64_t> out_shape;  // keepdim applied
  std::vector<Dim> kept;           // output order; empty for a single output
  std::vector<Dim> red;            // empty when nothing is reduced (count == 1)
  int64_t nout = 1;                // number of outputs
  int64_t count = 1;               // reduced elements per output
  ReduceLayout layout = ReduceLayout::GENERAL;
};

// Wraps and checks the dims; a 0-dim tensor accepts 0 and -1. No dims (None or
// an empty list) reduces every dim, as torch.sum.
inline std::vector<bool> reduced_mask(const char* op, const at::Tensor& x, at::OptionalIntArrayRef dims) {
  const int64_t ndim = x.dim();
  const int64_t wrap = std::max<int64_t>(ndim, 1);
  std::vector<bool> mask(ndim, false);
  if (!dims.has_value() || dims->empty()) {
    std::fill(mask.begin(), mask.end(), true);
    return mask;
  }
  std::vector<bool> seen(wrap, false);
  for (int64_t d : *dims) {
    TORCH_CHECK_INDEX(d >= -wrap && d < wrap, "teachcompute_ext.", op, ": dim ", d,
                      " out of range for argument 'dim' of a ", ndim, "-d tensor (expected in [", -wrap, ", ", wrap - 1,
                      "])");
    const int64_t w = d < 0 ? d + wrap : d;
    TORCH_CHECK(!seen[w], "teachcompute_ext.", op, ": dim ", w, " appears more than once in argument 'dim' ", *dims);
    seen[w] = true;
    if (ndim > 0) mask[w] = true;
  }
  return mask;
}

inline ReducePlan plan_from_mask(const at::Tensor& x, const std::vector<bool>& mask, bool keepdim) {
  ReducePlan p;
  std::vector<Dim> red;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (mask[d]) {
      if (keepdim) p.out_shape.push_back(1);
      p.count *= x.size(d);
      if (x.size(d) != 1) red.push_back({x.size(d), x.stride(d)});
    } else {
      p.out_shape.push_back(x.size(d));
      p.nout *= x.size(d);
      if (x.size(d) == 1) continue;
      if (!p.kept.empty() && p.kept.back().stride == x.stride(d) * x.size(d)) {
        p.kept.back().size *= x.size(d);
        p.kept.back().stride = x.stride(d);
      } else {
        p.kept.push_back({x.size(d), x.stride(d)});
      }
    }
  }
  std::stable_sort(red.begin(), red.end(), [](const Dim& a, const Dim& b) { return a.stride > b.stride; });
  for (const Dim& d : red) {
    if (!p.red.empty() && p.red.back().stride == d.stride * d.size) {
      p.red.back().size *= d.size;
      p.red.back().stride = d.stride;
    } else {
      p.red.push_back(d);
    }
  }
  if (p.red.size() == 1 && p.red[0].stride == 1) {
    p.layout = ReduceLayout::ROWS;
  } else if (p.red.size() == 1 && !p.kept.empty() && p.kept.back().stride == 1) {
    p.layout = ReduceLayout::COLS;
  } else if (p.red.empty()) {
    p.layout = ReduceLayout::ROWS;  // count == 1: a span of one element
  }
  return p;
}

// The plan of x reduced over dims. When the layout needs more than
// kMaxReduceDims dims, x is replaced by a copy in kept-then-reduced order
// (x.permute(kept..., reduced...).contiguous(), then viewed back in x's dim
// order so that dims and out_shape keep their meaning).
inline ReducePlan plan_reduction(const char* op, at::Tensor& x, at::OptionalIntArrayRef dims, bool keepdim) {
  const std::vector<bool> mask = reduced_mask(op, x, dims);
  ReducePlan p = plan_from_mask(x, mask, keepdim);
  if (static_cast<int>(p.kept.size()) <= kMaxReduceDims && static_cast<int>(p.red.size()) <= kMaxReduceDims) {
    return p;
  }
  std::vector<int64_t> order;
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (!mask[d]) order.push_back(d);
  }
  for (int64_t d = 0; d < x.dim(); ++d) {
    if (mask[d]) order.push_back(d);
  }
  std::vector<int64_t> inverse(order.size());
  for (size_t i = 0; i < order.size(); ++i) inverse[order[i]] = static_cast<int64_t>(i);
  x = x.permute(order).contiguous().permute(inverse);
  return plan_from_mask(x, mask, keepdim);
}

// Offset in x of output number o (row-major over the kept dims).
inline int64_t kept_offset(const std::vector<Dim>& kept, int64_t o) {
  int64_t off = 0;
  for (int64_t d = static_cast<int64_t>(kept.size()) - 1; d >= 0; --d) {
    off += (o % kept[d].size) * kept[d].stride;
    o /= kept[d].size;
  }
  return off;
}

// max/min: one dim, and it must not be empty.
inline void check_maxmin(const char* op, const at::Tensor& x, int64_t dim) {
  check_float_or_int_dtype(op, "x", x);
  const int64_t wrap = std::max<int64_t>(x.dim(), 1);
  TORCH_CHECK_INDEX(dim >= -wrap && dim < wrap, "teachcompute_ext.", op, ": dim ", dim,
                    " out of range for argument 'dim' of a ", x.dim(), "-d tensor (expected in [", -wrap, ", ",
                    wrap - 1, "])");
  const int64_t w = dim < 0 ? dim + wrap : dim;
  TORCH_CHECK_INDEX(x.dim() == 0 || x.size(w) > 0, "teachcompute_ext.", op, ": cannot reduce over dim ", w,
                    " of size 0 (argument 'dim'); the maximum or minimum of nothing is undefined");
}

// Merge of (value, index) candidates in a fixed order: NaN first, then the
// better value, then the lower index.
template <typename A>
inline void merge_candidate(A v, int64_t i, bool is_max, A& best, int64_t& best_i) {
  const bool vn = std::isnan(v), bn = std::isnan(best);
  bool take;
  if (vn || bn) {
    take = vn && (!bn || i < best_i);
  } else if (v == best) {
    take = i < best_i;
  } else {
    take = is_max ? v > best : v < best;
  }
  if (take) {
    best = v;
    best_i = i;
  }
}

// out (and, for MAX/MIN, indices) of x under plan p, count >= 1 and nout >= 1.
// Rounds once to x's dtype; MEAN divides by p.count. Integer and bool x (SUM,
// MAX, MIN only): sums into an int64 out, as torch.sum.
using ReduceFn = void(const at::Tensor& x, const ReducePlan& p, ReduceOp op, at::Tensor& out, at::Tensor& indices);
TCE_DECLARE_KERNEL(ReduceFn, reduce_kernel)

// ---- softmax / log_softmax ------------------------------------------------------------
// x is viewed as (outer, n, inner) around `dim`: n is the normalized length,
// inner the contiguous stride between two of its elements. The result is
// contiguous, of x's dtype; half types compute in float32.
struct SoftmaxShape {
  int64_t outer;
  int64_t n;
  int64_t inner;
};

// Wraps a negative dim; a 0-dim tensor accepts dim 0 and -1 (as torch does).
inline SoftmaxShape softmax_shape(const char* op, const at::Tensor& x, int64_t dim) {
  const int64_t ndim = std::max<int64_t>(x.dim(), 1);
  TORCH_CHECK_INDEX(dim >= -ndim && dim < ndim, "teachcompute_ext.", op, ": dim ", dim,
                    " out of range for argument 'dim' of a ", x.dim(), "-d tensor (expected in [", -ndim, ", ",
                    ndim - 1, "])");
  if (dim < 0) dim += ndim;
  SoftmaxShape s{1, 1, 1};
  if (x.dim() == 0) return s;
  for (int64_t d = 0; d < dim; ++d) s.outer *= x.size(d);
  s.n = x.size(dim);
  for (int64_t d = dim + 1; d < x.dim(); ++d) s.inner *= x.size(d);
  return s;
}

inline void check_softmax_backward(const char* op, const at::Tensor& grad, const at::Tensor& out) {
  check_float_dtype(op, "grad", grad);
  check_same_device(op, "out", out, "grad", grad);
  TORCH_CHECK(grad.sizes() == out.sizes(), "teachcompute_ext.", op, ": argument 'grad' has shape ", grad.sizes(),
              " but 'out' has shape ", out.sizes());
  TORCH_CHECK(grad.scalar_type() == out.scalar_type(), "teachcompute_ext.", op, ": argument 'grad' has dtype ",
              dtype_name(grad.scalar_type()), " but 'out' has dtype ", dtype_name(out.scalar_type()));
}

// y = softmax or log_softmax of the contiguous, non-empty x.
using SoftmaxFn = void(const at::Tensor& x, at::Tensor& y, const SoftmaxShape& sh, bool log);
// gx from the contiguous, non-empty grad and out (the forward's result).
using SoftmaxBackwardFn = void(const at::Tensor& grad, const at::Tensor& out, at::Tensor& gx, const SoftmaxShape& sh,
                               bool log);
TCE_DECLARE_KERNEL(SoftmaxFn, softmax_kernel)
TCE_DECLARE_KERNEL(SoftmaxBackwardFn, softmax_backward_kernel)

}  // namespace teachcompute_ext

// The Llama family's frontends, one per op for every device: checks (every
// tensor's device too), the row views, the empty cases and the outputs, then
// the device's kernel through its stub (llama.h). Registered for CPU and CUDA
// alike (registration.cpp).
#include <ATen/DeviceGuard.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>

#include "llama/llama.h"
#include "ops.h"

namespace teachcompute_ext {

TCE_DEFINE_STUB(rms_norm_stub, rms_norm_kernel);
TCE_DEFINE_STUB(rms_norm_backward_stub, rms_norm_backward_kernel);
TCE_DEFINE_STUB(rotary_stub, rotary_kernel);
TCE_DEFINE_STUB(glu_stub, glu_kernel);
TCE_DEFINE_STUB(glu_backward_stub, glu_backward_kernel);

at::Tensor row_view(const at::Tensor& t, int64_t cols) {
  const int64_t rows = t.numel() / cols;
  if (t.dim() >= 1 && (t.stride(-1) == 1 || t.size(-1) == 1)) {
    // The leading dims collapse when each one's stride is the next one's
    // stride times its size (size-1 dims say nothing).
    int64_t row_stride = cols, expect = -1;
    bool collapses = true;
    for (int64_t d = t.dim() - 2; d >= 0 && collapses; --d) {
      if (t.size(d) == 1) continue;
      if (expect < 0) {
        row_stride = t.stride(d);
      } else {
        collapses = t.stride(d) == expect;
      }
      expect = t.stride(d) * t.size(d);
    }
    if (collapses) return t.as_strided({rows, cols}, {row_stride, 1}, t.storage_offset());
  }
  return t.contiguous().view({rows, cols});
}

namespace {

// ---- rms_norm / add_rms_norm ---------------------------------------------------------

std::vector<int64_t> row_shape(const at::Tensor& x) {
  return std::vector<int64_t>(x.sizes().begin(), x.sizes().end() - 1);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> norm_forward(const char* op, const at::Tensor& x,
                                                            const at::Tensor* residual,
                                                            const std::optional<at::Tensor>& weight, double eps) {
  check_rms_norm(op, x, weight, eps);
  if (residual != nullptr) {
    check_same_device(op, "residual", *residual, "x", x);
    check_dtype_eq(op, "residual", *residual, "x", x);
    check_shape_eq(op, "residual", *residual, "x", x);
  }
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  at::Tensor out = at::empty(x.sizes(), x.options());
  at::Tensor h = residual != nullptr ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor rstd = at::empty(row_shape(x), x.options().dtype(acc));
  const int64_t D = x.size(-1);
  if (x.numel() == 0) {
    rstd.fill_(1.0 / std::sqrt(eps));  // rows of nothing: mean 0
    return {out, h, rstd};
  }
  at::Tensor w;
  if (weight.has_value()) {
    // A weight of another dtype is widened once (a [D] copy) to the accumulator.
    const bool native = weight->scalar_type() == x.scalar_type() || weight->scalar_type() == acc;
    w = native ? weight->contiguous() : weight->to(acc).contiguous();
  }
  at::Tensor out2 = out.view({-1, D}), h2 = residual != nullptr ? h.view({-1, D}) : at::Tensor();
  at::Tensor rstd1 = rstd.view({-1});
  rms_norm_stub(x.device().type(), row_view(x, D), residual != nullptr ? row_view(*residual, D) : at::Tensor(), w, eps,
                out2, h2, rstd1);
  return {out, h, rstd};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rms_norm_forward(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                                                    double eps) {
  auto [out, h, rstd] = norm_forward("rms_norm", x, nullptr, weight, eps);
  return {out, rstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> add_rms_norm_forward(const at::Tensor& x, const at::Tensor& residual,
                                                                    const std::optional<at::Tensor>& weight,
                                                                    double eps) {
  return norm_forward("add_rms_norm", x, &residual, weight, eps);
}

std::tuple<at::Tensor, at::Tensor> rms_norm_backward(const at::Tensor& grad, const at::Tensor& x,
                                                     const std::optional<at::Tensor>& weight, const at::Tensor& rstd,
                                                     const std::optional<at::Tensor>& grad_add,
                                                     std::array<bool, 2> output_mask) {
  const char* op = "rms_norm_backward";
  check_rms_norm(op, x, weight, 1.0);
  check_same_device(op, "grad", grad, "x", x);
  check_same_device(op, "rstd", rstd, "x", x);
  check_shape_eq(op, "grad", grad, "x", x);
  check_dtype_eq(op, "grad", grad, "x", x);
  const at::ScalarType acc = acc_dtype(x.scalar_type());
  TORCH_CHECK(rstd.sizes() == at::IntArrayRef(row_shape(x)) && rstd.scalar_type() == acc, "teachcompute_ext.", op,
              ": argument 'rstd' has shape ", rstd.sizes(), " and dtype ", dtype_name(rstd.scalar_type()),
              " (expected x's rows ", at::IntArrayRef(row_shape(x)), " in ", dtype_name(acc), ")");
  if (grad_add.has_value()) {
    check_same_device(op, "grad_add", *grad_add, "x", x);
    check_shape_eq(op, "grad_add", *grad_add, "x", x);
    check_dtype_eq(op, "grad_add", *grad_add, "x", x);
  }
  const at::OptionalDeviceGuard guard(at::device_of(x));
  const int64_t D = x.size(-1);
  const bool want_w = output_mask[1] && weight.has_value();
  at::Tensor gx = output_mask[0] ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor gw_acc = want_w ? at::empty({D}, x.options().dtype(acc)) : at::Tensor();
  if (x.numel() == 0) {
    if (want_w) gw_acc.zero_();
  } else {
    at::Tensor w;
    if (weight.has_value()) {
      const bool native = weight->scalar_type() == x.scalar_type() || weight->scalar_type() == acc;
      w = native ? weight->contiguous() : weight->to(acc).contiguous();
    }
    at::Tensor gx2 = output_mask[0] ? gx.view({-1, D}) : at::Tensor();
    rms_norm_backward_stub(x.device().type(), row_view(grad, D), row_view(x, D), w, rstd.reshape({-1}),
                           grad_add.has_value() ? row_view(*grad_add, D) : at::Tensor(), gx2, gw_acc);
  }
  at::Tensor gw = want_w ? gw_acc.to(weight->scalar_type()) : at::empty({0}, x.options());
  return {gx, gw};
}

// ---- rotary_embedding -------------------------------------------------------------

namespace {

// The plan of x's rows against out, cos and sin (strides of cos and sin are 0
// where they broadcast). Size-1 dims are dropped and neighbours collapsed.
RotaryPlan rotary_plan(const at::Tensor& x, const at::Tensor& out, const at::Tensor& cos, const at::Tensor& sin) {
  RotaryPlan p;
  p.head_dim = x.size(-1);
  p.half = cos.size(-1);
  p.rows = x.numel() / std::max<int64_t>(p.head_dim, 1);
  const int64_t nd = x.dim() - 1, lead = cos.dim() - nd - 1;  // lead <= 0: cos has fewer dims
  // Rows walked in x's memory order: x is read front to back, and the writes
  // into the contiguous out jump between rows instead, which costs less
  // (bfloat16 q and k of 2x32x1024x128 as a [b, s, h, d] view: 12.2 ms walked
  // in the view's order, 5.9 ms in x's; torch.compile 9.7 ms).
  std::vector<int64_t> order;
  for (int64_t d = 0; d < nd; ++d) {
    if (x.size(d) != 1) order.push_back(d);
  }
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return x.stride(a) > x.stride(b); });
  for (const int64_t d : order) {
    const int64_t cd = d + lead;
    const bool bc = cd < 0 || cos.size(cd) == 1;
    const int64_t cs = bc ? 0 : cos.stride(cd), ss = bc ? 0 : sin.stride(cd);
    const size_t k = p.sizes.size();
    if (k > 0 && p.x_strides[k - 1] == x.stride(d) * x.size(d) && p.out_strides[k - 1] == out.stride(d) * x.size(d) &&
        p.cos_strides[k - 1] == cs * x.size(d) && p.sin_strides[k - 1] == ss * x.size(d)) {
      p.sizes[k - 1] *= x.size(d);
      p.x_strides[k - 1] = x.stride(d);
      p.out_strides[k - 1] = out.stride(d);
      p.cos_strides[k - 1] = cs;
      p.sin_strides[k - 1] = ss;
    } else {
      p.sizes.push_back(x.size(d));
      p.x_strides.push_back(x.stride(d));
      p.out_strides.push_back(out.stride(d));
      p.cos_strides.push_back(cs);
      p.sin_strides.push_back(ss);
    }
  }
  return p;
}

at::Tensor rotary_impl(const char* op, const at::Tensor& input, const at::Tensor& cos_in, const at::Tensor& sin_in,
                       bool interleaved, bool inverse) {
  const char* xname = inverse ? "grad" : "x";
  check_float_dtype(op, xname, input);
  check_same_device(op, "cos", cos_in, xname, input);
  check_same_device(op, "sin", sin_in, xname, input);
  check_dtype_eq(op, "cos", cos_in, xname, input);
  check_dtype_eq(op, "sin", sin_in, xname, input);
  check_shape_eq(op, "sin", sin_in, "cos", cos_in);
  TORCH_CHECK(input.dim() >= 1, "teachcompute_ext.", op, ": argument '", xname,
              "' must have at least 1 dim [..., head_dim] (got a 0-d tensor)");
  TORCH_CHECK(cos_in.dim() >= 1 && cos_in.dim() <= input.dim(), "teachcompute_ext.", op, ": argument 'cos' has shape ",
              cos_in.sizes(), ", which cannot broadcast to ", xname, "'s shape ", input.sizes(),
              " (expected [..., rotary_dim / 2] with at most ", input.dim(), " dims)");
  const int64_t half = cos_in.size(-1), head_dim = input.size(-1);
  TORCH_CHECK(2 * half <= head_dim, "teachcompute_ext.", op, ": rotary_dim ", 2 * half,
              " (twice the last dim of 'cos') is larger than head_dim ", head_dim, " (", xname, "'s last dim)");
  const int64_t lead = input.dim() - cos_in.dim();
  for (int64_t d = 0; d + 1 < cos_in.dim(); ++d) {
    TORCH_CHECK(cos_in.size(d) == 1 || cos_in.size(d) == input.size(d + lead), "teachcompute_ext.", op,
                ": argument 'cos' has shape ", cos_in.sizes(), ", which cannot broadcast to ", xname, "'s shape ",
                input.sizes(), " (dim ", d, " is ", cos_in.size(d), ", expected 1 or ", input.size(d + lead), ")");
  }
  const at::OptionalDeviceGuard guard(at::device_of(input));
  // The kernels read rows of contiguous head_dim in any layout of the rows
  // ([b, h, s, d] or a transposed [b, s, h, d] view: no copy). The output is
  // contiguous whatever x's layout: a layout that followed x's (empty_like)
  // could not be predicted by the fake kernel under symbolic shapes.
  at::Tensor x = input.stride(-1) == 1 || input.size(-1) <= 1 ? input : input.contiguous();
  at::Tensor out = at::empty(x.sizes(), x.options());
  if (x.numel() == 0) return out;
  at::Tensor cos = cos_in.stride(-1) == 1 || half <= 1 ? cos_in : cos_in.contiguous();
  at::Tensor sin = sin_in.stride(-1) == 1 || half <= 1 ? sin_in : sin_in.contiguous();
  RotaryPlan p = rotary_plan(x, out, cos, sin);
  if (static_cast<int64_t>(p.sizes.size()) > kRotaryMaxDims) {
    // Layouts no kernel argument holds: everything contiguous collapses to one dim.
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.push_back(half);
    x = x.contiguous();
    out = at::empty(x.sizes(), x.options());
    cos = cos.expand(shape).contiguous();
    sin = sin.expand(shape).contiguous();
    p = rotary_plan(x, out, cos, sin);
  }
  rotary_stub(x.device().type(), x, cos, sin, out, p, interleaved, inverse);
  return out;
}

}  // namespace

at::Tensor rotary_embedding(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool interleaved) {
  return rotary_impl("rotary_embedding", x, cos, sin, interleaved, false);
}

at::Tensor rotary_embedding_backward(const at::Tensor& grad, const at::Tensor& cos, const at::Tensor& sin,
                                     bool interleaved) {
  return rotary_impl("rotary_embedding_backward", grad, cos, sin, interleaved, true);
}

// ---- swiglu / geglu ------------------------------------------------------------------

namespace {

// The [R, I] row views of gate and up (up absent: the halves of gate).
std::pair<at::Tensor, at::Tensor> glu_operands(const char* op, const at::Tensor& gate,
                                               const std::optional<at::Tensor>& up) {
  check_float_dtype(op, "gate", gate);
  if (up.has_value()) {
    check_same_device(op, "up", *up, "gate", gate);
    check_dtype_eq(op, "up", *up, "gate", gate);
    check_shape_eq(op, "up", *up, "gate", gate);
    const int64_t I = gate.dim() == 0 ? 1 : gate.size(-1);
    if (gate.numel() == 0) return {at::Tensor(), at::Tensor()};
    return {row_view(gate.dim() == 0 ? gate.view({1}) : gate, I), row_view(up->dim() == 0 ? up->view({1}) : *up, I)};
  }
  TORCH_CHECK(gate.dim() >= 1, "teachcompute_ext.", op,
              ": argument 'gate' must have at least 1 dim when 'up' is None (got a 0-d tensor)");
  TORCH_CHECK(gate.size(-1) % 2 == 0, "teachcompute_ext.", op, ": argument 'gate' has an odd last dim ", gate.size(-1),
              " (with 'up' None, gate is [..., 2 * I], split in two halves)");
  const int64_t I = gate.size(-1) / 2;
  if (gate.numel() == 0) return {at::Tensor(), at::Tensor()};
  const at::Tensor both = row_view(gate, 2 * I);
  return {both.narrow(1, 0, I), both.narrow(1, I, I)};
}

std::vector<int64_t> glu_out_shape(const at::Tensor& gate, bool split) {
  std::vector<int64_t> shape(gate.sizes().begin(), gate.sizes().end());
  if (split) shape.back() /= 2;
  return shape;
}

at::Tensor glu_forward(const char* op, const at::Tensor& gate, const std::optional<at::Tensor>& up, Act act) {
  auto [g, u] = glu_operands(op, gate, up);
  const at::OptionalDeviceGuard guard(at::device_of(gate));
  at::Tensor out = at::empty(glu_out_shape(gate, !up.has_value()), gate.options());
  if (!g.defined() || out.numel() == 0) return out;
  at::Tensor out2 = out.view({g.size(0), g.size(1)});
  glu_stub(gate.device().type(), g, u, out2, act);
  return out;
}

}  // namespace

at::Tensor swiglu(const at::Tensor& gate, const std::optional<at::Tensor>& up) {
  return glu_forward("swiglu", gate, up, Act::Silu);
}

at::Tensor geglu(const at::Tensor& gate, const std::optional<at::Tensor>& up, c10::string_view approximate) {
  return glu_forward("geglu", gate, up, parse_gelu_approximate("geglu", approximate));
}

std::tuple<at::Tensor, at::Tensor> glu_backward(const at::Tensor& grad, const at::Tensor& gate,
                                                const std::optional<at::Tensor>& up, c10::string_view activation) {
  const char* op = "glu_backward";
  const Act act = parse_glu_activation(op, activation);
  auto [g, u] = glu_operands(op, gate, up);
  check_same_device(op, "grad", grad, "gate", gate);
  check_dtype_eq(op, "grad", grad, "gate", gate);
  const std::vector<int64_t> out_shape = glu_out_shape(gate, !up.has_value());
  TORCH_CHECK(grad.sizes() == at::IntArrayRef(out_shape), "teachcompute_ext.", op, ": argument 'grad' has shape ",
              grad.sizes(), " (expected the output's shape ", at::IntArrayRef(out_shape), ")");
  const at::OptionalDeviceGuard guard(at::device_of(gate));
  at::Tensor ggate = at::empty(gate.sizes(), gate.options());
  at::Tensor gup = up.has_value() ? at::empty(gate.sizes(), gate.options()) : at::empty({0}, gate.options());
  if (!g.defined() || grad.numel() == 0) return {ggate, gup};
  const int64_t R = g.size(0), I = g.size(1);
  // One-tensor form: the two gradients are the halves of one [R, 2I] buffer.
  at::Tensor gg = up.has_value() ? ggate.view({R, I}) : ggate.view({R, 2 * I}).narrow(1, 0, I);
  at::Tensor gu = up.has_value() ? gup.view({R, I}) : ggate.view({R, 2 * I}).narrow(1, I, I);
  glu_backward_stub(gate.device().type(), row_view(grad.dim() == 0 ? grad.view({1}) : grad, I), g, u, gg, gu, act);
  return {ggate, gup};
}

}  // namespace teachcompute_ext

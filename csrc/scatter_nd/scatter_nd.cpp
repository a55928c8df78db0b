// The ScatterND family's frontends, one per op for every device: checks, the
// output (a contiguous copy of data, or zeros of `shape`), then the device's
// kernel through its stub (scatter_nd.h). Registered for CPU and CUDA alike.
#include <ATen/DeviceGuard.h>
#include <ATen/ops/zeros.h>

#include "ops.h"
#include "scatter_nd/scatter_nd.h"

namespace teachcompute_ext {

TCE_DEFINE_STUB(scatter_nd_stub, scatter_nd_kernel);

namespace {

void scatter_into(const char* op, at::Tensor& out, at::IntArrayRef shape, const at::Tensor& indices,
                  const at::Tensor& updates, ScatterReduction red, const ScatterShape& s, const int64_t* masked_value) {
  // No update: nothing to check or write. Otherwise the kernel checks every
  // index, even when there is nothing to write (an empty slice or output).
  if (s.n_updates == 0) return;
  scatter_nd_stub(out.device().type(), op, out, shape, indices.contiguous(), updates.contiguous(), red, s,
                  masked_value);
}

}  // namespace

at::Tensor scatter_nd(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                      c10::string_view reduction) {
  const char* op = "scatter_nd";
  const ScatterReduction red = parse_reduction(op, reduction);
  const ScatterShape s = check_scatter(op, data.sizes(), data.scalar_type(), indices, updates, &data, red);
  const at::OptionalDeviceGuard guard(at::device_of(data));
  at::Tensor out = data.clone(at::MemoryFormat::Contiguous);
  scatter_into(op, out, data.sizes(), indices, updates, red, s, nullptr);
  return out;
}

void scatter_nd_(const at::Tensor& data, const at::Tensor& indices, const at::Tensor& updates,
                 c10::string_view reduction) {
  const char* op = "scatter_nd_";
  const ScatterReduction red = parse_reduction(op, reduction);
  const ScatterShape s = check_scatter(op, data.sizes(), data.scalar_type(), indices, updates, &data, red);
  const at::OptionalDeviceGuard guard(at::device_of(data));
  if (data.is_contiguous()) {
    at::Tensor out = data;
    scatter_into(op, out, data.sizes(), indices, updates, red, s, nullptr);
  } else {
    at::Tensor out = data.contiguous();
    scatter_into(op, out, data.sizes(), indices, updates, red, s, nullptr);
    const_cast<at::Tensor&>(data).copy_(out);
  }
}

at::Tensor scatter_nd_of_shape(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                               c10::string_view reduction) {
  const char* op = "scatter_nd_of_shape";
  const ScatterReduction red = parse_reduction(op, reduction);
  const at::IntArrayRef sh = C10_AS_INTARRAYREF_SLOW(shape);
  const ScatterShape s = check_scatter(op, sh, updates.scalar_type(), indices, updates, nullptr, red);
  const at::OptionalDeviceGuard guard(at::device_of(updates));
  at::Tensor out = at::zeros(sh, updates.options());
  scatter_into(op, out, sh, indices, updates, red, s, nullptr);
  return out;
}

at::Tensor masked_scatter_nd_of_shape(c10::SymIntArrayRef shape, const at::Tensor& indices, const at::Tensor& updates,
                                      int64_t masked_value, c10::string_view reduction) {
  const char* op = "masked_scatter_nd_of_shape";
  const ScatterReduction red = parse_reduction(op, reduction);
  const at::IntArrayRef sh = C10_AS_INTARRAYREF_SLOW(shape);
  const ScatterShape s = check_masked_scatter(sh, indices, updates, red);
  const at::OptionalDeviceGuard guard(at::device_of(updates));
  at::Tensor out = at::zeros(sh, updates.options());
  scatter_into(op, out, sh, indices, updates, red, s, &masked_value);
  return out;
}

}  // namespace teachcompute_ext

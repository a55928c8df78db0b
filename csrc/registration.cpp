// Every schema of teachcompute_ext, one comment each, and the kernels behind
// them: one frontend per op registered for CPU and CUDA alike (it reaches the
// device's kernel through a stub), the autocast kernels and the composites.
// The autograd kernels (hand-built nodes in C++: csrc/README.md says why) are
// registered next to their Nodes, at the end of each <family>_autograd.cpp;
// fake kernels and vmap rules from Python, in teachcompute_ext/ops/<family>.py.
#include <torch/library.h>

#include "common/autocast.h"
#include "ops.h"

namespace {

// Layout contracts, read by Inductor when it picks the strides of an op's inputs:
//   kAnyStrides  the kernels read any strides in place (reductions plan from
//                strides; the GEMMs take row- or column-major operands): no copy
//                is needed, Inductor keeps whatever layout it makes;
//   kContiguous  the frontend makes its inputs contiguous (a copy when they are
//                not): Inductor writes them contiguous in the first place, so
//                that copy never runs (tests/test_torch_paths.py shows it);
//   kComposite   decomposed before Inductor sees it.
const std::vector<at::Tag> kAnyStrides = {at::Tag::pt2_compliant_tag, at::Tag::flexible_layout};
const std::vector<at::Tag> kContiguous = {at::Tag::pt2_compliant_tag, at::Tag::needs_contiguous_strides};
const std::vector<at::Tag> kComposite = {at::Tag::pt2_compliant_tag};

}  // namespace

TORCH_LIBRARY(teachcompute_ext, m) {
  // ---- reduce -------------------------------------------------------------
  // Sum of every element of x (any shape, any strides) as a 0-dim tensor of x's dtype.
  m.def("vector_sum(Tensor x) -> Tensor", kAnyStrides);
  // Sum over dims (torch.sum); None or [] reduces every dim.
  m.def("reduce_sum(Tensor x, int[1]? dim=None, bool keepdim=False) -> Tensor", kAnyStrides);
  // Mean over dims (torch.mean); NaN over an empty dim.
  m.def("reduce_mean(Tensor x, int[1]? dim=None, bool keepdim=False) -> Tensor", kAnyStrides);
  // Max along one dim and the index of its first occurrence (torch.max(x, dim)); NaN wins.
  m.def("reduce_max(Tensor x, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)", kAnyStrides);
  // Min along one dim and the index of its first occurrence (torch.min(x, dim)); NaN wins.
  m.def("reduce_min(Tensor x, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)", kAnyStrides);
  // log(sum(exp(x))) over dims (torch.logsumexp), one online pass.
  m.def("logsumexp(Tensor x, int[1] dim, bool keepdim=False) -> Tensor", kAnyStrides);
  // softmax of x along dim (torch.softmax); one pass for max and sum, one for the output.
  m.def("softmax(Tensor x, int dim) -> Tensor", kContiguous);
  // log_softmax of x along dim (torch.log_softmax).
  m.def("log_softmax(Tensor x, int dim) -> Tensor", kContiguous);
  // Gradient of softmax given its output: out * (grad - sum(grad * out, dim)), fused.
  m.def("softmax_backward(Tensor grad, Tensor out, int dim) -> Tensor", kContiguous);
  // Gradient of log_softmax given its output: grad - exp(out) * sum(grad, dim), fused.
  m.def("log_softmax_backward(Tensor grad, Tensor out, int dim) -> Tensor", kContiguous);

  // ---- scatter_nd -----------------------------------------------------------
  // ONNX ScatterND (opset 18) on a copy of data; reduction: none, add, mul, max, min.
  m.def("scatter_nd(Tensor data, Tensor indices, Tensor updates, str reduction=\"none\") -> Tensor", kContiguous);
  // The same, in place on data.
  m.def("scatter_nd_(Tensor(a!) data, Tensor indices, Tensor updates, str reduction=\"none\") -> ()", kAnyStrides);
  // ScatterND into zeros of `shape`: the backward of a gather or an embedding.
  m.def("scatter_nd_of_shape(SymInt[] shape, Tensor indices, Tensor updates, str reduction=\"add\") -> Tensor",
        kContiguous);
  // scatter_nd_of_shape that skips the updates whose index equals masked_value (padding rows).
  m.def(
      "masked_scatter_nd_of_shape(SymInt[] shape, Tensor indices, Tensor updates, int masked_value, "
      "str reduction=\"add\") -> Tensor",
      kContiguous);

  // ---- embedding ------------------------------------------------------------
  // weight[indices] (torch.nn.functional.embedding); padding_idx gets no gradient.
  m.def("embedding(Tensor weight, Tensor indices, int? padding_idx=None) -> Tensor", kContiguous);
  // Dense weight gradient of embedding: a deterministic scatter-add of grad rows.
  m.def("embedding_backward(Tensor grad, Tensor indices, SymInt num_weights, int? padding_idx=None) -> Tensor",
        kContiguous);
  // Bags of embeddings reduced by sum, mean or max (torch.nn.functional.embedding_bag).
  m.def(
      "embedding_bag(Tensor weight, Tensor indices, Tensor? offsets=None, str mode=\"mean\", "
      "Tensor? per_sample_weights=None, int? padding_idx=None, bool include_last_offset=False) -> Tensor",
      kComposite);
  // embedding_bag and the argmax rows of max mode (empty for sum and mean), kept for the backward.
  m.def(
      "embedding_bag_forward(Tensor weight, Tensor indices, Tensor? offsets, str mode, Tensor? per_sample_weights, "
      "int? padding_idx, bool include_last_offset) -> (Tensor, Tensor)",
      kContiguous);
  // Gradients of embedding_bag for weight (dense) and per_sample_weights (empty when None).
  m.def(
      "embedding_bag_backward(Tensor grad, Tensor weight, Tensor indices, Tensor? offsets, Tensor max_indices, "
      "str mode, Tensor? per_sample_weights, int? padding_idx, bool include_last_offset) -> (Tensor, Tensor)",
      kContiguous);

  // The backward of embedding fused with an optimizer step (sgd, rowwise_adagrad, adagrad, adam, adamw): every
  // row the indices touch is updated in place, once, with the sum of its gradient rows, and so is its optimizer
  // state (state1, state2: which each optimizer keeps is in embedding.h); the table's gradient is never built.
  m.def(
      "embedding_update_(Tensor(a!) weight, Tensor(b!) state1, Tensor(c!) state2, Tensor grad, Tensor indices, "
      "int? padding_idx, str optimizer, float lr, float beta1, float beta2, float eps, float weight_decay, int step) "
      "-> ()",
      kContiguous);
  // The same for embedding_bag (every mode, per_sample_weights, padding_idx); returns per_sample_weights'
  // gradient when psw_grad (from the weight before its update), else an empty tensor. (bag_mode, not mode: a
  // mutating op's arguments reach torch's functionalization as keywords, where "mode" collides with its own.)
  m.def(
      "embedding_bag_update_(Tensor(a!) weight, Tensor(b!) state1, Tensor(c!) state2, Tensor grad, Tensor indices, "
      "Tensor? offsets, Tensor max_indices, str bag_mode, Tensor? per_sample_weights, int? padding_idx, "
      "bool include_last_offset, bool psw_grad, str optimizer, float lr, float beta1, float beta2, float eps, "
      "float weight_decay, int step) -> Tensor",
      kContiguous);

  // ---- matmul -----------------------------------------------------------------
  // alpha * op(a) @ op(b), op transposing the last two dims; batch dims broadcast and 1-D operands
  // as in torch.matmul (a flag on a 1-D operand is ignored).
  m.def("fused_matmul(Tensor a, Tensor b, float alpha=1.0, bool trans_a=False, bool trans_b=False) -> Tensor",
        kAnyStrides);
  // act(x @ weight.T + bias), act in none, relu, gelu, gelu_tanh, silu (F.linear then the activation;
  // a 1-D weight as F.linear's: no out_features dim, a 0-d bias).
  m.def("fused_linear(Tensor x, Tensor weight, Tensor? bias=None, str activation=\"none\") -> Tensor", kComposite);
  // fused_linear and its pre-activation (empty unless save_pre and the activation's backward needs it).
  m.def(
      "fused_linear_forward(Tensor x, Tensor weight, Tensor? bias, str activation, bool save_pre) -> (Tensor, Tensor)",
      kAnyStrides);
  // Gradients of fused_linear for x, weight, bias from grad and aux (the pre-activation, or the
  // output for relu); grad * act' and the bias sums fused in one pass. Masked-out ones are empty.
  m.def(
      "fused_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor aux, str activation, bool has_bias, "
      "bool[3] output_mask) -> (Tensor, Tensor, Tensor)",
      kContiguous);

  // ---- llama --------------------------------------------------------------------
  // F.rms_norm over the last dim: x * rsqrt(mean(x^2) + eps) * weight, one pass over x.
  m.def("rms_norm(Tensor x, Tensor? weight=None, float eps=1e-06) -> Tensor", kComposite);
  // rms_norm and rstd = rsqrt(mean(x^2) + eps) per row (float32 for half x), kept for the backward.
  m.def("rms_norm_forward(Tensor x, Tensor? weight, float eps) -> (Tensor, Tensor)", kAnyStrides);
  // The Llama residual pattern: h = x + residual; (rms_norm(h), h), one pass.
  m.def("add_rms_norm(Tensor x, Tensor residual, Tensor? weight=None, float eps=1e-06) -> (Tensor, Tensor)",
        kComposite);
  // add_rms_norm and the rstd of h, kept for the backward.
  m.def("add_rms_norm_forward(Tensor x, Tensor residual, Tensor? weight, float eps) -> (Tensor, Tensor, Tensor)",
        kAnyStrides);
  // Gradients of rms_norm for x (plus grad_add, the gradient of h when it is also an output) and weight,
  // fused: one pass per row, the weight's a deterministic sum over rows. Masked-out ones are empty.
  m.def(
      "rms_norm_backward(Tensor grad, Tensor x, Tensor? weight, Tensor rstd, Tensor? grad_add, bool[2] output_mask) "
      "-> (Tensor, Tensor)",
      kAnyStrides);
  // Rotary position embedding of x [..., head_dim] by cos and sin [..., rotary_dim / 2] (broadcast to x's rows):
  // rotate-half pairs (i, i + rotary_dim / 2) as Llama and transformers, or interleaved (2i, 2i + 1) as GPT-J.
  m.def("rotary_embedding(Tensor x, Tensor cos, Tensor sin, bool interleaved=False) -> Tensor", kAnyStrides);
  // Gradient of rotary_embedding for x: the inverse rotation.
  m.def("rotary_embedding_backward(Tensor grad, Tensor cos, Tensor sin, bool interleaved) -> Tensor", kAnyStrides);
  // silu(gate) * up; with up None, gate is [..., 2 * I] split in two halves (one GEMM's output).
  m.def("swiglu(Tensor gate, Tensor? up=None) -> Tensor", kAnyStrides);
  // gelu(gate, approximate) * up, the same forms as swiglu.
  m.def("geglu(Tensor gate, Tensor? up=None, str approximate=\"none\") -> Tensor", kAnyStrides);
  // Gradients of swiglu (activation silu) and geglu (gelu, gelu_tanh) for gate and up in one pass; the
  // one-tensor form's gradient is one [..., 2 * I] tensor (the second output is empty).
  m.def("glu_backward(Tensor grad, Tensor gate, Tensor? up, str activation) -> (Tensor, Tensor)", kAnyStrides);
}

TORCH_LIBRARY_IMPL(teachcompute_ext, CompositeImplicitAutograd, m) {
  m.impl("embedding_bag", &teachcompute_ext::embedding_bag_composite);
  m.impl("fused_linear", &teachcompute_ext::fused_linear_composite);
  m.impl("rms_norm", &teachcompute_ext::rms_norm_composite);
  m.impl("add_rms_norm", &teachcompute_ext::add_rms_norm_composite);
}

namespace {

// The frontends: one per op, the same for every device (each calls its
// device's kernel through a stub, common/stub.h).
void register_frontends(torch::Library& m) {
  using namespace teachcompute_ext;
  m.impl("vector_sum", &vector_sum);
  m.impl("reduce_sum", &reduce_sum);
  m.impl("reduce_mean", &reduce_mean);
  m.impl("reduce_max", &reduce_max);
  m.impl("reduce_min", &reduce_min);
  m.impl("logsumexp", &teachcompute_ext::logsumexp);
  m.impl("softmax", &teachcompute_ext::softmax);
  m.impl("log_softmax", &teachcompute_ext::log_softmax);
  m.impl("softmax_backward", &softmax_backward);
  m.impl("log_softmax_backward", &log_softmax_backward);
  m.impl("scatter_nd", &scatter_nd);
  m.impl("scatter_nd_", &scatter_nd_);
  m.impl("scatter_nd_of_shape", &scatter_nd_of_shape);
  m.impl("masked_scatter_nd_of_shape", &masked_scatter_nd_of_shape);
  m.impl("embedding", &teachcompute_ext::embedding);
  m.impl("embedding_backward", &teachcompute_ext::embedding_backward);
  m.impl("embedding_bag_forward", &embedding_bag_forward);
  m.impl("embedding_bag_backward", &embedding_bag_backward);
  m.impl("embedding_update_", &embedding_update_);
  m.impl("embedding_bag_update_", &embedding_bag_update_);
  m.impl("fused_matmul", &fused_matmul);
  m.impl("fused_linear_forward", &fused_linear_forward);
  m.impl("fused_linear_backward", &fused_linear_backward);
  m.impl("rms_norm_forward", &rms_norm_forward);
  m.impl("add_rms_norm_forward", &add_rms_norm_forward);
  m.impl("rms_norm_backward", &rms_norm_backward);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("rotary_embedding_backward", &rotary_embedding_backward);
  m.impl("swiglu", &swiglu);
  m.impl("geglu", &geglu);
  m.impl("glu_backward", &glu_backward);
}

}  // namespace

TORCH_LIBRARY_IMPL(teachcompute_ext, CPU, m) { register_frontends(m); }

#ifdef TEACHCOMPUTE_EXT_WITH_CUDA
TORCH_LIBRARY_IMPL(teachcompute_ext, CUDA, m) { register_frontends(m); }
#endif

// Autocast: torch's policy for each op's counterpart (common/autocast.h says which).
namespace {

// The fused elementwise ops: under autocast a Linear's lower-precision output
// meets float32 tables and residuals, and they promote as x + r and q * cos do.
constexpr const char* kPromoteOps[] = {"add_rms_norm_forward", "rotary_embedding", "swiglu", "geglu"};
// The GEMMs run in the autocast dtype, as torch.matmul and F.linear.
constexpr const char* kLowerOps[] = {"fused_matmul", "fused_linear_forward"};
// Softmaxes, logsumexp and sums run in float32 on CUDA (torch's CUDA float32 list; the CPU has none).
constexpr const char* kFloat32CudaOps[] = {"softmax", "log_softmax", "logsumexp", "vector_sum", "reduce_sum"};

template <c10::DeviceType kDevice>
void register_autocast(torch::Library& m) {
  using teachcompute_ext::AutocastTo;
  constexpr auto kLower = &teachcompute_ext::autocast_boxed<kDevice, AutocastTo::LOWER_PRECISION>;
  constexpr auto kPromote = &teachcompute_ext::autocast_promote_boxed<kDevice>;
  for (const char* op : kLowerOps) m.impl(op, torch::CppFunction::makeFromBoxedFunction<kLower>());
  for (const char* op : kPromoteOps) m.impl(op, torch::CppFunction::makeFromBoxedFunction<kPromote>());
  if constexpr (kDevice == c10::DeviceType::CUDA) {
    constexpr auto kFloat32 = &teachcompute_ext::autocast_boxed<kDevice, AutocastTo::FLOAT32>;
    for (const char* op : kFloat32CudaOps) m.impl(op, torch::CppFunction::makeFromBoxedFunction<kFloat32>());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(teachcompute_ext, AutocastCPU, m) { register_autocast<c10::DeviceType::CPU>(m); }

TORCH_LIBRARY_IMPL(teachcompute_ext, AutocastCUDA, m) { register_autocast<c10::DeviceType::CUDA>(m); }

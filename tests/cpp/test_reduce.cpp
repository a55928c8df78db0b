// Reductions along dims and the softmax family called from C++ through the
// dispatcher (CPU), against ATen's own ops.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

namespace {

template <typename Sig>
c10::TypedOperatorHandle<Sig> op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

TEST(Reduce, SumMeanLogsumexpOverInnerOuterAndSeveralDims) {
  at::manual_seed(4);
  const at::Tensor x = at::randn({37, 130, 5});
  auto sum = op<at::Tensor(const at::Tensor&, at::OptionalIntArrayRef, bool)>("teachcompute_ext::reduce_sum");
  auto mean = op<at::Tensor(const at::Tensor&, at::OptionalIntArrayRef, bool)>("teachcompute_ext::reduce_mean");
  auto lse = op<at::Tensor(const at::Tensor&, at::IntArrayRef, bool)>("teachcompute_ext::logsumexp");
  for (std::vector<int64_t> dims : {std::vector<int64_t>{2}, {0}, {0, 2}, {1}}) {
    for (bool keepdim : {false, true}) {
      EXPECT_TRUE(at::allclose(sum.call(x, dims, keepdim), x.sum(dims, keepdim), 1e-5, 1e-4));
      EXPECT_TRUE(at::allclose(mean.call(x, dims, keepdim), x.mean(dims, keepdim), 1e-5, 1e-6));
      EXPECT_TRUE(at::allclose(lse.call(x, dims, keepdim), x.logsumexp(dims, keepdim), 1e-5, 1e-5));
    }
  }
  EXPECT_TRUE(
      at::allclose(sum.call(x.transpose(0, 2), std::vector<int64_t>{1}, false), x.transpose(0, 2).sum(1), 1e-5, 1e-4));
}

TEST(Reduce, MaxMinValuesAndFirstIndices) {
  const at::Tensor ties = at::randint(0, 4, {70, 150}).to(at::kFloat);
  auto mx = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool)>("teachcompute_ext::reduce_max");
  auto mn = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool)>("teachcompute_ext::reduce_min");
  for (int64_t dim : {0, 1}) {
    auto [v, i] = mx.call(ties, dim, false);
    auto [ev, ei] = at::max(ties, dim);
    EXPECT_TRUE(at::equal(v, ev));
    EXPECT_TRUE(at::equal(i, ei));
    auto [v2, i2] = mn.call(ties, dim, true);
    auto [ev2, ei2] = at::min(ties, dim, true);
    EXPECT_TRUE(at::equal(v2, ev2));
    EXPECT_TRUE(at::equal(i2, ei2));
  }
}

TEST(Reduce, MaxOverEmptyDimIsAnErrorNamingTheOp) {
  auto mx = op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, int64_t, bool)>("teachcompute_ext::reduce_max");
  try {
    mx.call(at::empty({3, 0}), 1, false);
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("teachcompute_ext.reduce_max: cannot reduce over dim 1 of size 0"),
              std::string::npos)
        << e.what();
  }
}

TEST(Softmax, ForwardAndFusedBackwardMatchATen) {
  at::manual_seed(5);
  auto sm = op<at::Tensor(const at::Tensor&, int64_t)>("teachcompute_ext::softmax");
  auto smb = op<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t)>("teachcompute_ext::softmax_backward");
  auto lsm = op<at::Tensor(const at::Tensor&, int64_t)>("teachcompute_ext::log_softmax");
  for (int64_t dim : {1, 0}) {
    const at::Tensor x = at::randn({40, 300});
    const at::Tensor g = at::randn({40, 300});
    const at::Tensor y = sm.call(x, dim);
    EXPECT_TRUE(at::allclose(y, at::softmax(x, dim), 1e-5, 1e-6));
    EXPECT_TRUE(at::allclose(lsm.call(x, dim), at::log_softmax(x, dim), 1e-5, 1e-5));
    const at::Tensor ref = y * (g - (g * y).sum(dim, true));
    EXPECT_TRUE(at::allclose(smb.call(g, y, dim), ref, 1e-5, 1e-6));
  }
}

}  // namespace

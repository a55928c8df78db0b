// vector_sum called from C++ through the dispatcher, as a libtorch user would.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <gtest/gtest.h>

#include <cmath>

namespace {

at::Tensor vector_sum(const at::Tensor& x) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("teachcompute_ext::vector_sum", "")
                       .typed<at::Tensor(const at::Tensor&)>();
  return op.call(x);
}

void expect_close_to_double_sum(const at::Tensor& x, double rtol) {
  const at::Tensor out = vector_sum(x);
  EXPECT_EQ(out.dim(), 0);
  EXPECT_EQ(out.scalar_type(), x.scalar_type());
  const double ref = x.to(at::kDouble).sum().item<double>();
  const double abs_sum = x.to(at::kDouble).abs().sum().item<double>();
  EXPECT_NEAR(out.to(at::kDouble).item<double>(), ref, rtol * abs_sum + 1e-12) << "numel " << x.numel();
}

TEST(VectorSum, ContiguousAllDtypes) {
  at::manual_seed(1);
  for (int64_t n : {1, 7, 1000, 1025, 65537, 300001}) {
    const at::Tensor x = at::randn({n}, at::kDouble);
    expect_close_to_double_sum(x.to(at::kFloat), 1e-6);
    expect_close_to_double_sum(x, 1e-14);
    expect_close_to_double_sum(x.to(at::kHalf), 2e-3);
    expect_close_to_double_sum(x.to(at::kBFloat16), 1e-2);
  }
}

TEST(VectorSum, NonContiguousViews) {
  at::manual_seed(2);
  const at::Tensor x = at::randn({301, 257});
  expect_close_to_double_sum(x.t(), 1e-6);                               // transposed
  expect_close_to_double_sum(x.slice(1, 3, 200, 3), 1e-6);               // sliced, strided
  expect_close_to_double_sum(x.select(1, 5), 1e-6);                      // a column
  expect_close_to_double_sum(x.slice(0, 0, 1).expand({64, 257}), 1e-6);  // broadcast
  expect_close_to_double_sum(x.view({-1}).slice(0, 1, 10000), 1e-6);     // misaligned start
}

TEST(VectorSum, EmptyIsZero) {
  const at::Tensor out = vector_sum(at::empty({3, 0, 2}));
  EXPECT_EQ(out.dim(), 0);
  EXPECT_EQ(out.item<float>(), 0.0f);
}

TEST(VectorSum, IntegersSumExactlyIntoInt64) {
  // torch.sum's result dtype; 3 * 2^40 int32-overflowing partial sums stay exact in int64.
  const at::Tensor x = at::full({3000}, 1LL << 30, at::kInt);
  const at::Tensor out = vector_sum(x);
  EXPECT_EQ(out.scalar_type(), at::kLong);
  EXPECT_EQ(out.item<int64_t>(), 3000LL << 30);
  EXPECT_EQ(vector_sum(at::ones({7}, at::kBool)).item<int64_t>(), 7);
}

TEST(VectorSum, RejectsComplexDtypeNamingOpAndArgument) {
  try {
    vector_sum(at::ones({4}, at::kComplexFloat));
    FAIL() << "expected an error";
  } catch (const c10::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("teachcompute_ext.vector_sum"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'x'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("torch.complex64"), std::string::npos) << msg;
  }
}

TEST(VectorSum, SameBitsForAnyThreadCount) {
  at::manual_seed(3);
  const at::Tensor x = at::rand({3000000});
  const int saved = at::get_num_threads();
  at::set_num_threads(1);
  const float one = vector_sum(x).item<float>();
  at::set_num_threads(std::max(2, saved));
  const float many = vector_sum(x).item<float>();
  at::set_num_threads(saved);
  EXPECT_EQ(one, many);
}

}  // namespace

// The LibTorch op wrapper on CPU: results against a dense FP64 product, and its validation.
#include <torch/torch.h>

#include "gtest/gtest.h"
#include "models/ks_ops.h"

namespace ksserve::models {
namespace {

// Reference: densify the factor in FP64 from the support definition and multiply.
torch::Tensor DenseReference(const torch::Tensor& x, const torch::Tensor& w) {
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  // K[(i,r,j), (i',s,j')] = W[i,r,s,j] · δ(i,i') · δ(j,j')
  torch::Tensor dense = torch::einsum(
      "irsj,ik,jl->irjksl", {w.to(torch::kFloat64), torch::eye(a, torch::kFloat64), torch::eye(d, torch::kFloat64)});
  dense = dense.reshape({a * b * d, a * c * d});
  return x.to(torch::kFloat64).matmul(dense.t());
}

double RelativeError(const torch::Tensor& got, const torch::Tensor& ref) {
  return (got.to(torch::kFloat64) - ref).norm().item<double>() / ref.norm().item<double>();
}

TEST(KsFactorForwardTest, MatchesDenseReferenceOnCpu) {
  for (const auto& [pattern, batch] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
           {{2, 48, 192, 1}, 17}, {{1, 192, 48, 2}, 3}, {{3, 5, 7, 2}, 1}, {{5, 1, 3, 7}, 196}}) {
    torch::Tensor w = torch::rand(pattern) * 2 - 1;
    torch::Tensor x = torch::randn({batch, pattern[0] * pattern[2] * pattern[3]});
    absl::StatusOr<torch::Tensor> y = KsFactorForward(x, w);
    ASSERT_TRUE(y.ok()) << y.status();
    ASSERT_EQ(y->sizes(), (std::vector<int64_t>{batch, pattern[0] * pattern[1] * pattern[3]}));
    EXPECT_LE(RelativeError(*y, DenseReference(x, w)), 1e-5) << c10::str(pattern);
  }
}

TEST(KsFactorForwardTest, RejectsBadTensorsWithClearErrors) {
  const torch::Tensor w = torch::randn({2, 3, 4, 5});
  const torch::Tensor x = torch::randn({7, 2 * 4 * 5});
  struct BadCase {
    torch::Tensor x, w;
    std::string expected_message;
  } cases[] = {
      {x, torch::randn({2, 3, 4}), "[a, b, c, d]"},
      {torch::randn({7, 41}), w, "x must be [batch, 40]"},
      {x.to(torch::kFloat64), w, "float32"},
      {x, w.to(torch::kBFloat16), "float32"},
      {torch::randn({40, 7}).t(), w, "contiguous"},
      {x, torch::randn({2, 0, 4, 5}), "positive"},
      {torch::Tensor(), w, "defined"},
  };
  for (const BadCase& bad : cases) {
    const absl::StatusOr<torch::Tensor> y = KsFactorForward(bad.x, bad.w);
    ASSERT_FALSE(y.ok()) << bad.expected_message;
    EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(y.status().message().find(bad.expected_message), std::string::npos) << y.status();
  }
}

}  // namespace
}  // namespace ksserve::models

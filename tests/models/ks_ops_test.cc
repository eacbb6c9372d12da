// The LibTorch op wrappers on CPU: results against torch's own FP64 arithmetic (an independent
// path: einsum over the factors, torch's GELU/ReLU), and validation of bad tensors.
#include <torch/torch.h>

#include "gtest/gtest.h"
#include "models/ks_ops.h"
#include "tests/testing/torch_reference.h"

namespace ksserve::models {
namespace {

using kernels::Activation;
using testing::TorchChainReference;
using testing::TorchRelativeError;

TEST(KsChainForwardTest, MatchesTorchFp64OnCpuForEveryDType) {
  const std::vector<std::pair<std::vector<std::vector<int64_t>>, int64_t>> cases = {
      {{{2, 48, 192, 1}}, 17}, {{{5, 1, 3, 7}}, 196}, {{{6, 64, 64, 1}, {1, 768, 192, 2}}, 3},
      {{{1, 2, 2, 4}, {2, 2, 2, 2}, {4, 2, 2, 1}}, 5}};
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& [patterns, batch] : cases) {
      for (const Activation activation : {Activation::kNone, Activation::kGeluTanh, Activation::kGeluErf, Activation::kRelu}) {
        std::vector<torch::Tensor> weights;
        for (const auto& p : patterns) weights.push_back(((torch::rand(p) * 2 - 1) / std::sqrt(p[2])).to(dtype));
        const auto& last = patterns.back();
        const torch::Tensor x = torch::randn({batch, patterns[0][0] * patterns[0][2] * patterns[0][3]}).to(dtype);
        const std::optional<torch::Tensor> bias =
            activation == Activation::kNone ? std::nullopt : std::optional(torch::randn({last[0] * last[1] * last[3]}).to(dtype));
        absl::StatusOr<torch::Tensor> y = KsChainForward(x, weights, bias, activation);
        ASSERT_TRUE(y.ok()) << y.status();
        EXPECT_EQ(y->scalar_type(), dtype);
        const torch::Tensor reference = TorchChainReference(x, weights, bias, activation);
        EXPECT_LE(TorchRelativeError(*y, reference), dtype == torch::kFloat32 ? 1e-5 : 1e-2)
            << c10::toString(dtype) << " " << c10::str(patterns) << " activation "
            << static_cast<int>(activation);
        // Batch-last: x and y as [features, batch].
        absl::StatusOr<torch::Tensor> y_last =
            KsChainForward(x.t().contiguous(), weights, bias, activation, kernels::BatchLayout::kBatchLast);
        ASSERT_TRUE(y_last.ok()) << y_last.status();
        EXPECT_TRUE(y_last->is_contiguous());
        EXPECT_LE(TorchRelativeError(y_last->t(), reference), dtype == torch::kFloat32 ? 1e-5 : 1e-2)
            << "batch-last " << c10::toString(dtype) << " " << c10::str(patterns);
      }
    }
  }
}

// The CPU path runs on LibTorch's intra-op threads: every thread count gives the reference
// result, for a chain with one intermediate and one with ping-ponged intermediates.
TEST(KsChainForwardTest, MatchesTorchFp64AtEveryThreadCount) {
  const int threads_before = torch::get_num_threads();
  // Two factors (one intermediate) and four (ping-pong intermediates).
  const std::vector<std::vector<std::vector<int64_t>>> chains = {
      {{6, 64, 64, 1}, {1, 768, 192, 2}}, {{1, 4, 4, 16}, {4, 4, 4, 4}, {16, 4, 4, 1}, {2, 32, 32, 1}}};
  for (const auto& chain : chains) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      std::vector<torch::Tensor> weights;
      for (const auto& p : chain) weights.push_back(((torch::rand(p) * 2 - 1) / std::sqrt(p[2])).to(dtype));
      const auto& first = chain.front();
      const auto& last = chain.back();
      const torch::Tensor x = torch::randn({1009, first[0] * first[2] * first[3]}).to(dtype);
      const torch::Tensor bias = torch::randn({last[0] * last[1] * last[3]}).to(dtype);
      const torch::Tensor reference = TorchChainReference(x, weights, bias, Activation::kGeluTanh);
      for (const int threads : {1, 2, 3, 8}) {
        torch::set_num_threads(threads);
        absl::StatusOr<torch::Tensor> y = KsChainForward(x, weights, bias, Activation::kGeluTanh);
        ASSERT_TRUE(y.ok()) << y.status();
        EXPECT_EQ(y->scalar_type(), dtype);
        EXPECT_TRUE(y->is_contiguous());
        EXPECT_LE(TorchRelativeError(*y, reference), dtype == torch::kFloat32 ? 1e-5 : 1e-2)
            << c10::str(chain) << " " << c10::toString(dtype) << " " << threads << " threads";
      }
    }
  }
  torch::set_num_threads(threads_before);
}

TEST(KsFactorForwardTest, RejectsBadTensorsWithClearErrors) {
  const torch::Tensor w = torch::randn({2, 3, 4, 5});
  const torch::Tensor x = torch::randn({7, 2 * 4 * 5});
  struct BadCase {
    torch::Tensor x, w;
    std::optional<torch::Tensor> bias;
    std::string expected_message;
  } cases[] = {
      {x, torch::randn({2, 3, 4}), std::nullopt, "[a, b, c, d]"},
      {torch::randn({7, 41}), w, std::nullopt, "x must be [batch, 40]"},
      {x.to(torch::kFloat64), w.to(torch::kFloat64), std::nullopt, "float32, bfloat16 or float16"},
      {x, w.to(torch::kBFloat16), std::nullopt, "share one dtype"},
      {torch::randn({40, 7}).t(), w, std::nullopt, "x must be contiguous"},
      {x, torch::randn({2, 0, 4, 5}), std::nullopt, "positive"},
      {torch::Tensor(), w, std::nullopt, "x must be defined"},
      {x, w, torch::randn({29}), "bias must be [30]"},
      {x, w, torch::randn({30}).to(torch::kFloat16), "share one dtype"},
  };
  for (const BadCase& bad : cases) {
    const absl::StatusOr<torch::Tensor> y = KsFactorForward(bad.x, bad.w, bad.bias);
    ASSERT_FALSE(y.ok()) << bad.expected_message;
    EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(y.status().message().find(bad.expected_message), std::string::npos) << y.status();
  }
  // Batch-last wants [features, batch].
  const absl::StatusOr<torch::Tensor> rotated =
      KsFactorForward(x, w, std::nullopt, Activation::kNone, kernels::BatchLayout::kBatchLast);
  ASSERT_FALSE(rotated.ok());
  EXPECT_NE(rotated.status().message().find("x must be [40, batch]"), std::string::npos) << rotated.status();
  const absl::StatusOr<torch::Tensor> mismatched = KsChainForward(x, {w, torch::randn({1, 4, 4, 1})});
  EXPECT_EQ(mismatched.status().code(), absl::StatusCode::kInvalidArgument);
}

// Grouped weights are w[i][r][s][j] at [i·d + j][r][s]; the chain takes them (the CPU path
// computes from the interchange weights) and refuses ones of the wrong count, shape or dtype.
TEST(KsGroupWeightsTest, GroupsPerIAndJAndIsValidatedByTheChain) {
  const torch::Tensor w = torch::randn({2, 3, 4, 5});
  const absl::StatusOr<torch::Tensor> grouped = KsGroupWeights(w);
  ASSERT_TRUE(grouped.ok()) << grouped.status();
  ASSERT_EQ(grouped->sizes(), (std::vector<int64_t>{10, 3, 4}));
  EXPECT_TRUE(grouped->is_contiguous());
  for (int64_t i = 0; i < 2; ++i) {
    for (int64_t j = 0; j < 5; ++j) {
      EXPECT_TRUE(torch::equal((*grouped)[i * 5 + j], w.select(0, i).select(2, j))) << i << " " << j;
    }
  }
  EXPECT_EQ(KsGroupWeights(torch::randn({2, 3, 4})).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(KsGroupWeights(torch::Tensor()).status().code(), absl::StatusCode::kInvalidArgument);

  const torch::Tensor x = torch::randn({7, 2 * 4 * 5});
  const absl::StatusOr<torch::Tensor> y =
      KsChainForward(x, {w}, std::nullopt, Activation::kNone, kernels::BatchLayout::kBatchFirst, {*grouped});
  ASSERT_TRUE(y.ok()) << y.status();
  EXPECT_LE(TorchRelativeError(*y, TorchChainReference(x, {w}, std::nullopt, Activation::kNone)), 1e-5);
  struct BadCase {
    std::vector<torch::Tensor> grouped;
    std::string expected_message;
  } cases[] = {
      {{*grouped, *grouped}, "2 grouped weight tensors for a chain of 1"},
      {{grouped->view({2, 5, 3, 4})}, "must be [10, 3, 4]"},
      {{grouped->transpose(1, 2).contiguous()}, "must be [10, 3, 4]"},
      {{grouped->to(torch::kBFloat16)}, "share one dtype"},
      {{torch::Tensor()}, "must be defined"},
  };
  for (const BadCase& bad : cases) {
    const absl::StatusOr<torch::Tensor> rejected = KsChainForward(
        x, {w}, std::nullopt, Activation::kNone, kernels::BatchLayout::kBatchFirst, bad.grouped);
    ASSERT_FALSE(rejected.ok()) << bad.expected_message;
    EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(rejected.status().message().find(bad.expected_message), std::string::npos) << rejected.status();
  }
}

}  // namespace
}  // namespace ksserve::models

// CPU KS factor product against an independent dense FP64 reference.
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/ks_matmul.h"

namespace ksserve::kernels {
namespace {

// Dense K (out × in) in FP64, built from the support definition (not from the kernel's loops).
std::vector<double> Densify(const KsPattern& p, const std::vector<float>& w) {
  const int64_t in = p.in_features(), out = p.out_features();
  std::vector<double> dense(static_cast<size_t>(out * in), 0.0);
  for (int64_t i = 0; i < p.a; ++i)
    for (int64_t r = 0; r < p.b; ++r)
      for (int64_t s = 0; s < p.c; ++s)
        for (int64_t j = 0; j < p.d; ++j) {
          const int64_t row = (i * p.b + r) * p.d + j, col = (i * p.c + s) * p.d + j;
          dense[static_cast<size_t>(row * in + col)] = w[static_cast<size_t>(((i * p.b + r) * p.c + s) * p.d + j)];
        }
  return dense;
}

// ‖y − x·Kᵀ‖_F / ‖x·Kᵀ‖_F with the reference in FP64; NaN if any y is not finite.
double RelativeError(const KsPattern& p, int64_t batch, const std::vector<float>& x,
                     const std::vector<float>& w, const std::vector<float>& y) {
  const std::vector<double> dense = Densify(p, w);
  const int64_t in = p.in_features(), out = p.out_features();
  double err = 0.0, norm = 0.0;
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double ref = 0.0;
      for (int64_t k = 0; k < in; ++k) ref += static_cast<double>(x[static_cast<size_t>(n * in + k)]) * dense[static_cast<size_t>(o * in + k)];
      const double got = y[static_cast<size_t>(n * out + o)];
      if (!std::isfinite(got)) return std::numeric_limits<double>::quiet_NaN();
      err += (got - ref) * (got - ref);
      norm += ref * ref;
    }
  return norm == 0.0 ? std::sqrt(err) : std::sqrt(err / norm);
}

struct Case {
  KsPattern pattern;
  int64_t batch;
};

class KsFactorCpuTest : public ::testing::TestWithParam<Case> {};

TEST_P(KsFactorCpuTest, MatchesDenseFp64Reference) {
  const auto [pattern, batch] = GetParam();
  const unsigned seed = std::random_device{}();
  SCOPED_TRACE(::testing::Message() << "pattern " << PatternToString(pattern) << " batch " << batch << " seed " << seed);
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(-1.0f / static_cast<float>(pattern.c), 1.0f / static_cast<float>(pattern.c));
  std::vector<float> x(static_cast<size_t>(batch * pattern.in_features()));
  std::vector<float> w(static_cast<size_t>(pattern.nonzeros()));
  std::vector<float> y(static_cast<size_t>(batch * pattern.out_features()), std::numeric_limits<float>::quiet_NaN());
  for (float& v : x) v = normal(rng);
  for (float& v : w) v = uniform(rng);

  const KsFactorParams params{.x = x.data(), .w = w.data(), .y = y.data(), .batch = batch, .pattern = pattern};
  ASSERT_TRUE(KsFactorForwardCpu(params).ok());
  EXPECT_LE(RelativeError(pattern, batch, x, w, y), 1e-5);  // NaN (unwritten output) fails too
}

INSTANTIATE_TEST_SUITE_P(
    Patterns, KsFactorCpuTest,
    ::testing::Values(Case{{1, 1, 1, 1}, 1}, Case{{2, 3, 5, 7}, 3}, Case{{7, 5, 3, 1}, 17},
                      Case{{3, 1, 7, 5}, 2}, Case{{1, 2, 2, 8}, 5},              // a butterfly factor
                      Case{{2, 48, 192, 1}, 3}, Case{{1, 192, 48, 2}, 3},        // ViT-S/16 attention
                      Case{{6, 64, 64, 1}, 2}, Case{{1, 128, 128, 3}, 2}));      // ViT-S/16 MLP

TEST(KsFactorCpuTest, ZeroBatchIsANoOp) {
  const KsFactorParams params{.batch = 0, .pattern = {2, 3, 4, 5}};
  EXPECT_TRUE(KsFactorForwardCpu(params).ok());
}

TEST(KsPatternTest, RejectsNonPositiveSizes) {
  for (const KsPattern& p : {KsPattern{0, 1, 1, 1}, KsPattern{1, -2, 1, 1}, KsPattern{1, 1, 0, 1}, KsPattern{1, 1, 1, -1}}) {
    const absl::Status status = ValidatePattern(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << PatternToString(p);
    EXPECT_NE(status.message().find("positive"), std::string::npos) << status;
  }
}

TEST(KsPatternTest, RejectsOverflow) {
  const int64_t big = int64_t{1} << 32;
  EXPECT_EQ(ValidatePattern({big, big, 2, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidatePattern({big, 1, 1, 1}).ok());
}

TEST(KsFactorParamsTest, RejectsBadBatchAndNullPointers) {
  float buffer[8] = {};
  KsFactorParams params{.x = buffer, .w = buffer, .y = buffer, .batch = -1, .pattern = {1, 1, 1, 1}};
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);
  params.batch = 1;
  params.w = nullptr;
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);
  params = {.x = buffer, .w = buffer, .y = buffer, .batch = int64_t{1} << 62, .pattern = {1, 4, 4, 1}};
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace ksserve::kernels

namespace ksserve::kernels {
namespace {

TEST(KsFactorCudaTest, CpuBuildAnswersFailedPrecondition) {
  if (GetKernelBuildInfo().cuda_enabled) GTEST_SKIP() << "CUDA build: covered by gpu_test";
  float buffer[1] = {};
  const KsFactorParams params{.x = buffer, .w = buffer, .y = buffer, .batch = 1, .pattern = {1, 1, 1, 1}};
  EXPECT_EQ(KsFactorForwardCuda(params, nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(ListCudaDevices().empty());
}

}  // namespace
}  // namespace ksserve::kernels

// The CUDA kernels through LibTorch: CUDA tensors in every dtype, epilogues and chains, against
// the FP64 reference computed by torch on the CPU. Skips cleanly without CUDA (build or device).
#include <torch/cuda.h>
#include <torch/torch.h>

#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/ks_matmul.h"
#include "models/ks_ops.h"
#include "tests/testing/ks_reference.h"
#include "tests/testing/torch_reference.h"

#if KSSERVE_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace ksserve::models {
namespace {

using kernels::Activation;
using testing::TorchChainReference;
using testing::TorchRelativeError;

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kernels::GetKernelBuildInfo().cuda_enabled) GTEST_SKIP() << "built without CUDA";
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
  const torch::Device cuda_{torch::kCUDA, 0};
};

double Tolerance(torch::ScalarType dtype) { return dtype == torch::kFloat32 ? 1e-5 : 1e-2; }

TEST_F(CudaTest, DevicesAreListed) {
  const std::vector<kernels::CudaDeviceInfo> devices = kernels::ListCudaDevices();
  ASSERT_EQ(static_cast<int64_t>(devices.size()), static_cast<int64_t>(torch::cuda::device_count()));
  EXPECT_FALSE(devices[0].name.empty());
  EXPECT_GT(devices[0].multiprocessor_count, 0);
}

// Model patterns, butterflies, odd shapes and the batch sizes of the correctness suite.
TEST_F(CudaTest, ChainsMatchFp64ReferenceForEveryDTypeAndEpilogue) {
  const std::vector<std::pair<std::vector<std::vector<int64_t>>, int64_t>> cases = {
      {{{2, 48, 192, 1}, {1, 192, 48, 2}}, 196},     // ViT-S/16 attention projection
      {{{6, 64, 64, 1}, {1, 768, 192, 2}}, 17},      // ViT-S/16 MLP up
      {{{6, 64, 256, 1}, {1, 128, 128, 3}}, 1568},   // ViT-S/16 MLP down
      {{{1, 2, 2, 8}, {2, 2, 2, 4}, {4, 2, 2, 2}, {8, 2, 2, 1}}, 10007},  // butterfly, prime batch
      {{{13, 5, 7, 3}}, 2}, {{{3, 96, 48, 7}}, 3}, {{{1, 1, 1, 1}}, 1}, {{{16, 64, 64, 4}}, 25088}};
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (const auto& [patterns, batch] : cases) {
      for (const Activation activation : {Activation::kNone, Activation::kGeluTanh, Activation::kGeluErf, Activation::kRelu}) {
        std::vector<torch::Tensor> weights;
        for (const auto& p : patterns) weights.push_back(((torch::rand(p, cuda_) * 2 - 1) / std::sqrt(p[2])).to(dtype));
        const auto& last = patterns.back();
        const torch::Tensor x = torch::randn({batch, patterns[0][0] * patterns[0][2] * patterns[0][3]}, cuda_).to(dtype);
        const std::optional<torch::Tensor> bias =
            activation == Activation::kNone ? std::nullopt
                                            : std::optional(torch::randn({last[0] * last[1] * last[3]}, cuda_).to(dtype));
        absl::StatusOr<torch::Tensor> y = KsChainForward(x, weights, bias, activation);
        ASSERT_TRUE(y.ok()) << y.status();
        ASSERT_TRUE(y->is_cuda());
        const torch::Tensor reference = TorchChainReference(x, weights, bias, activation);
        EXPECT_LE(TorchRelativeError(*y, reference), Tolerance(dtype))
            << c10::toString(dtype) << " " << c10::str(patterns) << " batch " << batch << " activation "
            << static_cast<int>(activation);
        absl::StatusOr<torch::Tensor> y_last =
            KsChainForward(x.t().contiguous(), weights, bias, activation, kernels::BatchLayout::kBatchLast);
        ASSERT_TRUE(y_last.ok()) << y_last.status();
        EXPECT_LE(TorchRelativeError(y_last->t(), reference), Tolerance(dtype))
            << "batch-last " << c10::toString(dtype) << " " << c10::str(patterns) << " batch " << batch;
        // With the weights grouped at load time: the tiles' and bmm's variants that read them.
        std::vector<torch::Tensor> grouped;
        for (const torch::Tensor& w : weights) grouped.push_back(*KsGroupWeights(w));
        absl::StatusOr<torch::Tensor> y_grouped =
            KsChainForward(x, weights, bias, activation, kernels::BatchLayout::kBatchFirst, grouped);
        ASSERT_TRUE(y_grouped.ok()) << y_grouped.status();
        EXPECT_LE(TorchRelativeError(*y_grouped, reference), Tolerance(dtype))
            << "grouped " << c10::toString(dtype) << " " << c10::str(patterns) << " batch " << batch;
        absl::StatusOr<torch::Tensor> y_grouped_last = KsChainForward(
            x.t().contiguous(), weights, bias, activation, kernels::BatchLayout::kBatchLast, grouped);
        ASSERT_TRUE(y_grouped_last.ok()) << y_grouped_last.status();
        EXPECT_LE(TorchRelativeError(y_grouped_last->t(), reference), Tolerance(dtype))
            << "grouped batch-last " << c10::toString(dtype) << " " << c10::str(patterns) << " batch "
            << batch;
      }
    }
  }
}

// The paper's patterns (every 27th of 648), batch sizes cycled over them: all outputs finite,
// sampled rows against torch's FP64.
TEST_F(CudaTest, PaperPatternSampleMatchesFp64Reference) {
  ASSERT_EQ(testing::LoadPaperPatterns(KSSERVE_PAPER_PATTERNS).size(), 648u);
  const std::vector<kernels::KsPattern> sample = testing::PaperPatternSample(KSSERVE_PAPER_PATTERNS);
  ASSERT_EQ(sample.size(), 24u);
  const int64_t batches[] = {1, 2, 3, 17, 196, 1568, 25088, 10007};
  std::mt19937 rng(std::random_device{}());
  for (size_t k = 0; k < sample.size(); ++k) {
    const kernels::KsPattern& p = sample[k];
    const int64_t batch = batches[k % std::size(batches)];
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      const torch::Tensor w = ((torch::rand({p.a, p.b, p.c, p.d}, cuda_) * 2 - 1) / p.c).to(dtype);
      const torch::Tensor x = torch::randn({batch, p.in_features()}, cuda_).to(dtype);
      absl::StatusOr<torch::Tensor> y = KsFactorForward(x, w);
      ASSERT_TRUE(y.ok()) << y.status();
      ASSERT_TRUE(torch::isfinite(*y).all().item<bool>()) << kernels::PatternToString(p);
      const std::vector<int64_t> rows = testing::SampleRows(batch, 30, rng);
      const torch::Tensor index = torch::tensor(rows, torch::kInt64).to(cuda_);
      EXPECT_LE(TorchRelativeError(y->index_select(0, index),
                                   TorchChainReference(x.index_select(0, index), {w}, std::nullopt, Activation::kNone)),
                Tolerance(dtype))
          << kernels::PatternToString(p) << " batch " << batch << " " << c10::toString(dtype);
    }
  }
}

#if KSSERVE_WITH_CUDA
TEST_F(CudaTest, KernelWritesEveryOutputElement) {
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    const std::vector<int64_t> pattern = {3, 7, 5, 3};
    const int64_t batch = 17;
    const torch::Tensor w = torch::randn(pattern, cuda_).to(dtype);
    const torch::Tensor x = torch::randn({batch, 3 * 5 * 3}, cuda_).to(dtype);
    torch::Tensor y = torch::full({batch, 3 * 7 * 3}, std::numeric_limits<float>::quiet_NaN(), cuda_).to(dtype);
    kernels::KsFactorParams params{.x = x.const_data_ptr(), .w = w.const_data_ptr(), .y = y.mutable_data_ptr(),
                                   .batch = batch, .pattern = {3, 7, 5, 3}};
    params.dtype = dtype == torch::kFloat32 ? kernels::DType::kFloat32
                   : dtype == torch::kBFloat16 ? kernels::DType::kBFloat16 : kernels::DType::kFloat16;
    ASSERT_TRUE(kernels::KsFactorForwardCuda(params, c10::cuda::getCurrentCUDAStream().stream()).ok());
    EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << c10::toString(dtype);
    EXPECT_LE(TorchRelativeError(y, TorchChainReference(x, {w}, std::nullopt, Activation::kNone)), Tolerance(dtype));
  }
}
#endif

TEST_F(CudaTest, MixedDevicesAreRejected) {
  const torch::Tensor w = torch::randn({2, 3, 4, 5});
  const torch::Tensor x = torch::randn({7, 40}, cuda_);
  const absl::StatusOr<torch::Tensor> y = KsFactorForward(x, w);
  ASSERT_FALSE(y.ok());
  EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(y.status().message().find("different devices"), std::string::npos) << y.status();
}

}  // namespace
}  // namespace ksserve::models

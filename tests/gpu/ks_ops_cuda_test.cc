// The CUDA kernel through LibTorch: CUDA tensors in, results against the FP64 CPU reference.
// Skips cleanly on machines (or builds) without a CUDA device.
#include <torch/cuda.h>
#include <torch/torch.h>

#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/ks_matmul.h"
#include "models/ks_ops.h"

#if KSSERVE_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace ksserve::models {
namespace {

class CudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!kernels::GetKernelBuildInfo().cuda_enabled) GTEST_SKIP() << "built without CUDA";
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

torch::Tensor DenseReference(const torch::Tensor& x, const torch::Tensor& w) {
  const torch::Tensor x64 = x.cpu().to(torch::kFloat64), w64 = w.cpu().to(torch::kFloat64);
  const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
  const torch::Tensor xs = x64.reshape({x.size(0), a, c, d});
  return torch::einsum("nisj,irsj->nirj", {xs, w64}).reshape({x.size(0), a * b * d});
}

double RelativeError(const torch::Tensor& got, const torch::Tensor& ref) {
  return (got.cpu().to(torch::kFloat64) - ref).norm().item<double>() / ref.norm().item<double>();
}

TEST_F(CudaTest, DevicesAreListed) {
  const std::vector<kernels::CudaDeviceInfo> devices = kernels::ListCudaDevices();
  ASSERT_EQ(static_cast<int64_t>(devices.size()), static_cast<int64_t>(torch::cuda::device_count()));
  EXPECT_FALSE(devices[0].name.empty());
  EXPECT_GT(devices[0].multiprocessor_count, 0);
}

TEST_F(CudaTest, OpMatchesDenseFp64Reference) {
  const torch::Device cuda(torch::kCUDA, 0);
  for (const auto& [pattern, batch] : std::vector<std::pair<std::vector<int64_t>, int64_t>>{
           {{2, 48, 192, 1}, 197}, {{1, 192, 48, 2}, 1}, {{6, 64, 64, 1}, 1568}, {{1, 768, 192, 2}, 3},
           {{3, 5, 7, 2}, 10007}, {{16, 2, 2, 16}, 25088}}) {
    const torch::Tensor w = (torch::rand(pattern, cuda) * 2 - 1) / pattern[2];
    const torch::Tensor x = torch::randn({batch, pattern[0] * pattern[2] * pattern[3]}, cuda);
    absl::StatusOr<torch::Tensor> y = KsFactorForward(x, w);
    ASSERT_TRUE(y.ok()) << y.status();
    ASSERT_TRUE(y->is_cuda());
    EXPECT_LE(RelativeError(*y, DenseReference(x, w)), 1e-5) << c10::str(pattern) << " batch " << batch;
  }
}

#if KSSERVE_WITH_CUDA
TEST_F(CudaTest, KernelWritesEveryOutputElement) {
  const torch::Device cuda(torch::kCUDA, 0);
  const std::vector<int64_t> pattern = {3, 7, 5, 3};
  const int64_t batch = 17;
  const torch::Tensor w = torch::randn(pattern, cuda);
  const torch::Tensor x = torch::randn({batch, 3 * 5 * 3}, cuda);
  torch::Tensor y = torch::full({batch, 3 * 7 * 3}, std::numeric_limits<float>::quiet_NaN(), cuda);
  const kernels::KsFactorParams params{.x = x.const_data_ptr<float>(), .w = w.const_data_ptr<float>(),
                                       .y = y.mutable_data_ptr<float>(), .batch = batch,
                                       .pattern = {3, 7, 5, 3}};
  ASSERT_TRUE(kernels::KsFactorForwardCuda(params, c10::cuda::getCurrentCUDAStream().stream()).ok());
  EXPECT_TRUE(torch::isfinite(y).all().item<bool>());
  EXPECT_LE(RelativeError(y, DenseReference(x, w)), 1e-5);
}
#endif

TEST_F(CudaTest, MixedDevicesAreRejected) {
  const torch::Tensor w = torch::randn({2, 3, 4, 5});
  const torch::Tensor x = torch::randn({7, 40}, torch::Device(torch::kCUDA, 0));
  const absl::StatusOr<torch::Tensor> y = KsFactorForward(x, w);
  ASSERT_FALSE(y.ok());
  EXPECT_EQ(y.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(y.status().message().find("different devices"), std::string::npos) << y.status();
}

}  // namespace
}  // namespace ksserve::models

#include "tests/testing/torch_reference.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>

#include "tests/testing/ks_reference.h"

namespace ksserve::testing {

torch::Tensor TorchChainReference(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                  const std::optional<torch::Tensor>& bias, kernels::Activation activation) {
  torch::Tensor y = x.cpu().to(torch::kFloat64);
  for (const torch::Tensor& w : weights) {
    const int64_t a = w.size(0), b = w.size(1), c = w.size(2), d = w.size(3);
    y = torch::einsum("nisj,irsj->nirj", {y.reshape({y.size(0), a, c, d}), w.cpu().to(torch::kFloat64)})
            .reshape({y.size(0), a * b * d});
  }
  if (bias.has_value()) y = y + bias->cpu().to(torch::kFloat64);
  switch (activation) {
    case kernels::Activation::kRelu:
      return torch::relu(y);
    case kernels::Activation::kGeluTanh:
      return torch::gelu(y, "tanh");
    case kernels::Activation::kGeluErf:
      return torch::gelu(y);
    case kernels::Activation::kNone:
      break;
  }
  return y;
}

double TorchRelativeError(const torch::Tensor& got, const torch::Tensor& ref) {
  const torch::Tensor got64 = got.cpu().to(torch::kFloat64);
  if (!torch::isfinite(got64).all().item<bool>()) return std::numeric_limits<double>::quiet_NaN();
  const double error = (got64 - ref).norm().item<double>(), norm = ref.norm().item<double>();
  // As RelativeError: tiny outputs are judged on their absolute error.
  return error / std::max(norm, kErrorScaleFloor * std::sqrt(static_cast<double>(ref.numel())));
}

}  // namespace ksserve::testing

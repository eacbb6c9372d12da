// FP64 reference for the LibTorch-level tests, through torch's own ops (einsum per factor,
// torch's GELU/ReLU): independent of the kernels under test.
#pragma once

#include <torch/types.h>

#include <optional>
#include <vector>

#include "kernels/ks_params.h"

namespace ksserve::testing {

// act(x · (K_L ⋯ K_1)ᵀ + bias) in FP64 on the CPU; weights rightmost first.
torch::Tensor TorchChainReference(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                  const std::optional<torch::Tensor>& bias, kernels::Activation activation);

// ‖got − ref‖_F / ‖ref‖_F with got moved to the CPU in FP64, ‖ref‖ floored as in RelativeError
// (ks_reference.h); NaN if got has a non-finite element.
double TorchRelativeError(const torch::Tensor& got, const torch::Tensor& ref);

}  // namespace ksserve::testing

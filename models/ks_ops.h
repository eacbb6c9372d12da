// LibTorch entry points to the KS layers: validate tensors once here, then run on the tensors'
// device: CUDA through the raw-pointer kernels on the current stream; CPU as batched GEMMs
// through LibTorch (its BLAS and intra-op threads).
#pragma once

#include <torch/types.h>

#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/ks_params.h"

namespace ksserve::models {

// y = act(x · Kᵀ + bias) for one Kronecker-sparse factor K with weights `w` of shape [a, b, c, d].
// x: [batch, a·c·d] (batch-last: [a·c·d, batch]); bias: [a·b·d] or absent. All float32, bfloat16
// or float16 (one dtype), contiguous, on one device (CPU or CUDA). Returns [batch, a·b·d]
// (batch-last: [a·b·d, batch]); INVALID_ARGUMENT on a wrong device, dtype, layout or shape.
absl::StatusOr<torch::Tensor> KsFactorForward(
    const torch::Tensor& x, const torch::Tensor& w, const std::optional<torch::Tensor>& bias = std::nullopt,
    kernels::Activation activation = kernels::Activation::kNone,
    kernels::BatchLayout layout = kernels::BatchLayout::kBatchFirst);

// A chain of factors, `weights` rightmost first (applied first); bias and activation apply after
// the last factor. `grouped_weights`: empty, or KsGroupWeights of each factor, converted once at
// load time, which the CUDA kernels read instead of transposing or converting the interchange
// weights per call (the CPU path reads the interchange weights).
absl::StatusOr<torch::Tensor> KsChainForward(const torch::Tensor& x,
                                             const std::vector<torch::Tensor>& weights,
                                             const std::optional<torch::Tensor>& bias = std::nullopt,
                                             kernels::Activation activation = kernels::Activation::kNone,
                                             kernels::BatchLayout layout = kernels::BatchLayout::kBatchFirst,
                                             const std::vector<torch::Tensor>& grouped_weights = {});

// One factor's weights [a, b, c, d] grouped as [a·d, b, c] (w[i][r][s][j] at [i·d + j][r][s]):
// the layout the tensor-core tiles and bmm read. Same dtype and device as w, contiguous.
absl::StatusOr<torch::Tensor> KsGroupWeights(const torch::Tensor& w);

}  // namespace ksserve::models

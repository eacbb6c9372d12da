// LibTorch entry points to the kernel library: validate tensors once here, then call the
// raw-pointer kernels on the tensor's device and current stream.
#pragma once

#include <torch/types.h>

#include "absl/status/statusor.h"

namespace ksserve::models {

// y = x · Kᵀ for one Kronecker-sparse factor K with weights `w` of shape [a, b, c, d].
// x: [batch, a·c·d] float32, contiguous, on the same device as w (CPU or CUDA).
// Returns [batch, a·b·d]; INVALID_ARGUMENT on a wrong device, dtype, layout or shape.
absl::StatusOr<torch::Tensor> KsFactorForward(const torch::Tensor& x, const torch::Tensor& w);

}  // namespace ksserve::models

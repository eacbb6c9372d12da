// Kronecker-sparse matrix multiplication: the public, CUDA-free and LibTorch-free API.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "kernels/ks_params.h"

struct CUstream_st;

namespace ksserve::kernels {

// cudaStream_t without the CUDA headers; nullptr is the legacy default stream.
using CudaStream = CUstream_st*;

// OK for a pattern of positive sizes whose products fit in int64.
absl::Status ValidatePattern(const KsPattern& pattern);
std::string PatternToString(const KsPattern& pattern);

// Validates pointers, sizes and overflow of batch × features; shared by every backend.
absl::Status ValidateFactorParams(const KsFactorParams& params);

// FP32 factor product on the CPU (blocked loops, one thread).
absl::Status KsFactorForwardCpu(const KsFactorParams& params);

// FP32 factor product on the current CUDA device, enqueued on `stream`; pointers are device
// memory. FAILED_PRECONDITION when ksserve was built without CUDA.
absl::Status KsFactorForwardCuda(const KsFactorParams& params, CudaStream stream);

}  // namespace ksserve::kernels

// Internal: launchers implemented in .cu files. Each checks its launch and returns the CUDA
// error; ks_matmul.cc turns that into an absl::Status.
#pragma once

#include <cuda_runtime_api.h>

#include "kernels/ks_params.h"

namespace ksserve::kernels::cuda {

// One thread per output element, any dtype and epilogue: the always-correct CUDA path and the
// baseline the tuned kernels are checked against.
cudaError_t LaunchKsFactorNaive(const KsFactorParams& params, cudaStream_t stream);

}  // namespace ksserve::kernels::cuda

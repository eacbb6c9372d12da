// Random device buffers for ksbench.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ks_params.h"

namespace ksserve::bench {

// out[k] = scale · (N(0, 1) if normal else U[-1, 1]), rounded to dtype; deterministic in seed.
cudaError_t FillRandom(void* out, int64_t count, kernels::DType dtype, uint64_t seed, bool normal, float scale,
                       cudaStream_t stream);

}  // namespace ksserve::bench

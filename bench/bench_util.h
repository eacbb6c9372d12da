// What every part of ksbench shares: fatal errors, device buffers, event timing, and the two
// ceilings (copy bandwidth, GEMM rate per dtype) measured once per run.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/ks_params.h"

namespace ksserve::bench {

[[noreturn]] void Die(const std::string& message);
void CheckCuda(cudaError_t err, const char* what);

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;

// nullptr when the device is out of memory (the case is then skipped and said so).
DeviceBuffer TryAllocate(int64_t bytes);

// Median milliseconds of `run` over `repetitions` after one warm-up, timed with events on
// `stream`. With `l2_flush` (l2_flush_bytes of scratch), the L2 is overwritten before each timed
// run, outside the timed region.
double MedianMs(int repetitions, cudaStream_t stream, const std::function<void()>& run, void* l2_flush = nullptr,
                int64_t l2_flush_bytes = 0);

struct Ceilings {
  double bandwidth_bytes_per_s = 0;  // read + write of a large device-to-device copy
  double gemm_flops_per_s[3] = {};   // by DType

  // max(bytes / bandwidth, flops / GEMM rate of dtype), in milliseconds.
  double FloorMs(double bytes, double flops, kernels::DType dtype) const;
};

Ceilings MeasureCeilings(const std::vector<kernels::DType>& dtypes, cudaStream_t stream);

}  // namespace ksserve::bench

#include "kernels/device.h"

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"

#if KSSERVE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ksserve::kernels {

KernelBuildInfo GetKernelBuildInfo() {
  KernelBuildInfo info;
#if KSSERVE_WITH_CUDA
  info.cuda_enabled = true;
  info.cuda_architectures = absl::StrSplit(KSSERVE_CUDA_ARCHITECTURES, ',', absl::SkipEmpty());
  int version = 0;
  if (cudaRuntimeGetVersion(&version) == cudaSuccess) {
    info.cuda_runtime_version = absl::StrFormat("%d.%d", version / 1000, (version % 1000) / 10);
  }
#endif
  return info;
}

std::vector<CudaDeviceInfo> ListCudaDevices() {
  std::vector<CudaDeviceInfo> devices;
#if KSSERVE_WITH_CUDA
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // no driver or no device: clear the sticky-free error and report none
    return devices;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) {
      cudaGetLastError();
      continue;
    }
    devices.push_back({.index = i,
                       .name = prop.name,
                       .compute_capability_major = prop.major,
                       .compute_capability_minor = prop.minor,
                       .multiprocessor_count = prop.multiProcessorCount,
                       .memory_total_bytes = static_cast<uint64_t>(prop.totalGlobalMem)});
  }
#endif
  return devices;
}

}  // namespace ksserve::kernels

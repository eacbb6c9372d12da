// What the kernel library was built for and which CUDA devices it can use. CUDA-free header.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ksserve::kernels {

struct CudaDeviceInfo {
  int index = 0;
  std::string name;
  int compute_capability_major = 0;
  int compute_capability_minor = 0;
  int multiprocessor_count = 0;
  uint64_t memory_total_bytes = 0;
};

struct KernelBuildInfo {
  bool cuda_enabled = false;
  std::vector<std::string> cuda_architectures;  // e.g. {"90a", "80"}
  std::string cuda_runtime_version;             // e.g. "13.0"; empty without CUDA
};

KernelBuildInfo GetKernelBuildInfo();

// CUDA devices visible to this process; empty when built without CUDA, or when no driver or
// device is present (never an error: a CPU-only machine is a valid place to run).
std::vector<CudaDeviceInfo> ListCudaDevices();

}  // namespace ksserve::kernels

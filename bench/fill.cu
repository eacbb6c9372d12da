// Device-side random fill for ksbench: counter-based hashing, so gigabytes of inputs take
// milliseconds and the same seed gives the same values.
#include <algorithm>

#include "bench/fill.h"
#include "kernels/cuda/convert.cuh"

namespace ksserve::bench {
namespace {

__device__ inline uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// Uniform in (0, 1].
__device__ inline float Unit(uint64_t bits) { return (static_cast<float>(bits >> 40) + 1.0f) * (1.0f / 16777216.0f); }

template <typename T>
__global__ void FillKernel(T* out, int64_t count, uint64_t seed, bool normal, float scale) {
  for (int64_t k = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; k < count; k += int64_t{gridDim.x} * blockDim.x) {
    const uint64_t bits = SplitMix64(seed ^ SplitMix64(static_cast<uint64_t>(k)));
    float v;
    if (normal) {
      const float u1 = Unit(bits), u2 = Unit(SplitMix64(bits));
      v = sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
    } else {
      v = 2.0f * Unit(bits) - 1.0f;
    }
    out[k] = kernels::cuda::FromFloat<T>(v * scale);
  }
}

}  // namespace

cudaError_t FillRandom(void* out, int64_t count, kernels::DType dtype, uint64_t seed, bool normal, float scale,
                       cudaStream_t stream) {
  const unsigned blocks = static_cast<unsigned>(std::clamp<int64_t>((count + 255) / 256, 1, 65536));
  kernels::cuda::WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    FillKernel<<<blocks, 256, 0, stream>>>(static_cast<T*>(out), count, seed, normal, scale);
    return 0;
  });
  return cudaGetLastError();
}

}  // namespace ksserve::bench

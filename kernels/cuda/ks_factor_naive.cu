#include <algorithm>

#include "kernels/cuda/launch.h"

namespace ksserve::kernels::cuda {
namespace {

__global__ void KsFactorNaiveFp32Kernel(KsFactorParams p) {
  const int64_t b = p.pattern.b, c = p.pattern.c, d = p.pattern.d;
  const int64_t out = p.pattern.out_features(), in = p.pattern.in_features();
  const int64_t total = p.batch * out;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    // idx = ((n·a + i)·b + r)·d + j
    const int64_t j = idx % d;
    const int64_t r = (idx / d) % b;
    const int64_t i = (idx / (b * d)) % p.pattern.a;
    const int64_t n = idx / out;
    const float* x = p.x + n * in + i * c * d + j;
    const float* w = p.w + (i * b + r) * c * d + j;
    float acc = 0.0f;
    for (int64_t s = 0; s < c; ++s) acc = fmaf(x[s * d], w[s * d], acc);
    p.y[idx] = acc;
  }
}

}  // namespace

cudaError_t LaunchKsFactorNaiveFp32(const KsFactorParams& params, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = params.batch * params.pattern.out_features();
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20);
  KsFactorNaiveFp32Kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace ksserve::kernels::cuda

#include <algorithm>

#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

template <typename T>
__global__ void KsFactorNaiveKernel(KsFactorParams p) {
  const int64_t b = p.pattern.b, c = p.pattern.c, d = p.pattern.d;
  const int64_t out = p.pattern.out_features(), in = p.pattern.in_features();
  const int64_t total = p.batch * out;
  const T* x_base = static_cast<const T*>(p.x);
  const T* w_base = static_cast<const T*>(p.w);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  const bool batch_last = p.layout == BatchLayout::kBatchLast;
  for (int64_t idx = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; idx < total;
       idx += int64_t{gridDim.x} * blockDim.x) {
    // idx = n·out + feature batch-first, feature·batch + n batch-last (consecutive threads write
    // consecutive y); feature = (i·b + r)·d + j.
    const int64_t feature = batch_last ? idx / p.batch : idx % out;
    const int64_t n = batch_last ? idx % p.batch : idx / out;
    const int64_t j = feature % d;
    const int64_t r = (feature / d) % b;
    const int64_t i = feature / (b * d);
    const T* x = batch_last ? x_base + (i * c * d + j) * p.batch + n : x_base + n * in + i * c * d + j;
    const int64_t x_step = batch_last ? d * p.batch : d;  // from s to s + 1
    const T* w = w_base + (i * b + r) * c * d + j;
    float acc = 0.0f;
    for (int64_t s = 0; s < c; ++s) acc = fmaf(ToFloat(x[s * x_step]), ToFloat(w[s * d]), acc);
    if (bias != nullptr) acc += ToFloat(bias[feature]);
    y[idx] = FromFloat<T>(ApplyActivation(acc, p.activation));
  }
}

}  // namespace

cudaError_t LaunchKsFactorNaive(const KsFactorParams& params, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t total = params.batch * params.pattern.out_features();
  const unsigned blocks = static_cast<unsigned>(std::min<int64_t>((total + kThreads - 1) / kThreads, int64_t{1} << 20));
  WithStorageType(params.dtype, [&](auto zero) {
    KsFactorNaiveKernel<decltype(zero)><<<blocks, kThreads, 0, stream>>>(params);
    return 0;
  });
  return cudaGetLastError();
}

}  // namespace ksserve::kernels::cuda

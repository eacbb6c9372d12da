// Layout conversions for the cuBLAS-based algorithms: weight packing (once, at load time) and
// the activation permutes and epilogue of each call. Each kernel writes its output in order
// (coalesced) and gathers its input; every output element is written exactly once.
#include <algorithm>

#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

constexpr int kThreads = 256;

unsigned GridFor(int64_t total) {
  return static_cast<unsigned>(std::clamp<int64_t>((total + kThreads - 1) / kThreads, 1, int64_t{1} << 20));
}

#define KSSERVE_GRID_STRIDE_LOOP(index, total)                                       \
  for (int64_t index = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; index < (total); \
       index += int64_t{gridDim.x} * blockDim.x)

// packed[(i·d + j)][r][s] = w[i][r][s][j]
template <typename T>
__global__ void PackGroupedKernel(const T* __restrict__ w, T* __restrict__ packed, KsPattern p) {
  const int64_t total = p.nonzeros();
  KSSERVE_GRID_STRIDE_LOOP(idx, total) {
    const int64_t s = idx % p.c, r = (idx / p.c) % p.b, g = idx / (p.b * p.c);
    const int64_t i = g / p.d, j = g % p.d;
    packed[idx] = w[((i * p.b + r) * p.c + s) * p.d + j];
  }
}

// dense[row][col], row = (i·b + r)·d + j, col = (i'·c + s)·d + j': w[i][r][s][j] where i' = i and
// j' = j, zero elsewhere.
template <typename T>
__global__ void DensifyKernel(const T* __restrict__ w, T* __restrict__ dense, KsPattern p) {
  const int64_t in = p.in_features(), total = p.out_features() * in;
  KSSERVE_GRID_STRIDE_LOOP(idx, total) {
    const int64_t row = idx / in, col = idx % in;
    const int64_t j = row % p.d, r = (row / p.d) % p.b, i = row / (p.b * p.d);
    const int64_t j_in = col % p.d, s = (col / p.d) % p.c, i_in = col / (p.c * p.d);
    dense[idx] = (i == i_in && j == j_in) ? w[((i * p.b + r) * p.c + s) * p.d + j] : T(0.0f);
  }
}

// grouped[(i·d + j)][n][s] = x[n][(i·c + s)·d + j]; x has rows of a·c·d features.
template <typename T>
__global__ void ToGroupsKernel(const T* __restrict__ x, T* __restrict__ grouped, int64_t batch, int64_t a,
                               int64_t c, int64_t d) {
  const int64_t total = batch * a * c * d;
  KSSERVE_GRID_STRIDE_LOOP(idx, total) {
    const int64_t s = idx % c, n = (idx / c) % batch, g = idx / (c * batch);
    const int64_t i = g / d, j = g % d;
    grouped[idx] = x[n * (a * c * d) + (i * c + s) * d + j];
  }
}

// y[n][(i·b + r)·d + j] = act(grouped[(i·d + j)][n][r] + bias)
template <typename T>
__global__ void FromGroupsKernel(const T* __restrict__ grouped, const T* __restrict__ bias, T* __restrict__ y,
                                 int64_t batch, int64_t a, int64_t b, int64_t d, Activation activation) {
  const int64_t out = a * b * d, total = batch * out;
  KSSERVE_GRID_STRIDE_LOOP(idx, total) {
    const int64_t feature = idx % out, n = idx / out;
    const int64_t j = feature % d, r = (feature / d) % b, i = feature / (b * d);
    float v = ToFloat(grouped[((i * d + j) * batch + n) * b + r]);
    if (bias != nullptr) v += ToFloat(bias[feature]);
    y[idx] = FromFloat<T>(ApplyActivation(v, activation));
  }
}

template <typename T>
__global__ void EpilogueKernel(T* __restrict__ y, const T* __restrict__ bias, int64_t batch, int64_t out,
                               Activation activation) {
  const int64_t total = batch * out;
  KSSERVE_GRID_STRIDE_LOOP(idx, total) {
    float v = ToFloat(y[idx]);
    if (bias != nullptr) v += ToFloat(bias[idx % out]);
    y[idx] = FromFloat<T>(ApplyActivation(v, activation));
  }
}

}  // namespace

cudaError_t LaunchPackGrouped(const void* w, void* packed, const KsPattern& pattern, DType dtype,
                              cudaStream_t stream) {
  WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    PackGroupedKernel<T><<<GridFor(pattern.nonzeros()), kThreads, 0, stream>>>(static_cast<const T*>(w),
                                                                                static_cast<T*>(packed), pattern);
    return 0;
  });
  return cudaGetLastError();
}

cudaError_t LaunchDensify(const void* w, void* dense, const KsPattern& pattern, DType dtype, cudaStream_t stream) {
  WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    DensifyKernel<T><<<GridFor(pattern.out_features() * pattern.in_features()), kThreads, 0, stream>>>(
        static_cast<const T*>(w), static_cast<T*>(dense), pattern);
    return 0;
  });
  return cudaGetLastError();
}

cudaError_t LaunchToGroups(const void* x, void* grouped, int64_t batch, const KsPattern& pattern, DType dtype,
                           cudaStream_t stream) {
  WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    ToGroupsKernel<T><<<GridFor(batch * pattern.in_features()), kThreads, 0, stream>>>(
        static_cast<const T*>(x), static_cast<T*>(grouped), batch, pattern.a, pattern.c, pattern.d);
    return 0;
  });
  return cudaGetLastError();
}

cudaError_t LaunchFromGroups(const void* grouped, const void* bias, void* y, int64_t batch, const KsPattern& pattern,
                             DType dtype, Activation activation, cudaStream_t stream) {
  WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    FromGroupsKernel<T><<<GridFor(batch * pattern.out_features()), kThreads, 0, stream>>>(
        static_cast<const T*>(grouped), static_cast<const T*>(bias), static_cast<T*>(y), batch, pattern.a,
        pattern.b, pattern.d, activation);
    return 0;
  });
  return cudaGetLastError();
}

cudaError_t LaunchEpilogue(void* y, const void* bias, int64_t batch, int64_t features, DType dtype,
                           Activation activation, cudaStream_t stream) {
  WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    EpilogueKernel<T><<<GridFor(batch * features), kThreads, 0, stream>>>(
        static_cast<T*>(y), static_cast<const T*>(bias), batch, features, activation);
    return 0;
  });
  return cudaGetLastError();
}

}  // namespace ksserve::kernels::cuda

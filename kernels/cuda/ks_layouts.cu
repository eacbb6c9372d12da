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

// The per-call kernels below index a 2-D grid of (column, row) instead of dividing a flat index
// per element: x-blocks cover the columns, y-blocks stride over the rows (and z over groups), and
// each thread has kRowsInFlight independent loads in flight.
constexpr int kRowsInFlight = 4;

// About 8192 blocks in all: enough to fill the device, few enough that each does real work.
unsigned RowBlocks(int64_t rows, int64_t other_blocks) {
  const int64_t wanted = std::min((rows + kRowsInFlight - 1) / kRowsInFlight, (8192 + other_blocks - 1) / other_blocks);
  return static_cast<unsigned>(std::clamp<int64_t>(wanted, 1, 65535));
}

// store(n, load(n)) for this block's rows n, kRowsInFlight at a time.
template <typename Load, typename Store>
__device__ __forceinline__ void ForEachRow(int64_t rows, Load load, Store store) {
  for (int64_t n0 = blockIdx.y * int64_t{kRowsInFlight}; n0 < rows; n0 += int64_t{gridDim.y} * kRowsInFlight) {
    float v[kRowsInFlight];
#pragma unroll
    for (int q = 0; q < kRowsInFlight; ++q) {
      if (n0 + q < rows) v[q] = load(n0 + q);
    }
#pragma unroll
    for (int q = 0; q < kRowsInFlight; ++q) {
      if (n0 + q < rows) store(n0 + q, v[q]);
    }
  }
}

// grouped[(i·d + j)][n][s] = x[n][(i·c + s)·d + j]; x has rows of a·c·d features.
template <typename T>
__global__ void ToGroupsKernel(const T* __restrict__ x, T* __restrict__ grouped, int64_t batch, int64_t a,
                               int64_t c, int64_t d) {
  const int64_t s = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (s >= c) return;
  const int64_t in = a * c * d;
  for (int64_t g = blockIdx.z; g < a * d; g += gridDim.z) {
    const int64_t i = g / d, j = g % d;
    const T* source = x + (i * c + s) * d + j;
    T* target = grouped + g * batch * c + s;
    ForEachRow(
        batch, [&](int64_t n) { return ToFloat(source[n * in]); },
        [&](int64_t n, float v) { target[n * c] = FromFloat<T>(v); });
  }
}

// y[n][(i·b + r)·d + j] = act(grouped[(i·d + j)][n][r] + bias); grouped holds T or FP32 (S).
template <typename T, typename S>
__global__ void FromGroupsKernel(const S* __restrict__ grouped, const T* __restrict__ bias, T* __restrict__ y,
                                 int64_t batch, int64_t a, int64_t b, int64_t d, Activation activation) {
  const int64_t out = a * b * d, feature = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (feature >= out) return;
  const int64_t j = feature % d, r = (feature / d) % b, i = feature / (b * d);
  const S* source = grouped + (i * d + j) * batch * b + r;
  const float bias_value = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
  ForEachRow(
      batch, [&](int64_t n) { return ToFloat(source[n * b]); },
      [&](int64_t n, float v) { y[n * out + feature] = FromFloat<T>(ApplyActivation(v + bias_value, activation)); });
}

// On [batch][features]: y = act(product + bias), product in T (then y itself) or FP32 (S). Not
// __restrict__: product and y alias when in place.
template <typename T, typename S>
__global__ void EpilogueKernel(const S* product, const T* __restrict__ bias, T* y, int64_t batch, int64_t out,
                               Activation activation) {
  const int64_t feature = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (feature >= out) return;
  const float bias_value = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
  ForEachRow(
      batch, [&](int64_t n) { return ToFloat(product[n * out + feature]); },
      [&](int64_t n, float v) {
        y[n * out + feature] = FromFloat<T>(ApplyActivation(v + bias_value, activation));
      });
}

// The same on [features][batch], consecutive threads on consecutive n.
template <typename T, typename S>
__global__ void EpilogueBatchLastKernel(const S* product, const T* __restrict__ bias, T* y, int64_t batch,
                                        int64_t out, Activation activation) {
  const int64_t n = blockIdx.x * int64_t{blockDim.x} + threadIdx.x;
  if (n >= batch) return;
  for (int64_t feature = blockIdx.y; feature < out; feature += gridDim.y) {
    const float bias_value = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
    const int64_t at = feature * batch + n;
    y[at] = FromFloat<T>(ApplyActivation(ToFloat(product[at]) + bias_value, activation));
  }
}

// f(T{}, S{}) for y's storage type T and a product stored as T or as FP32.
template <typename F>
void WithProductTypes(DType dtype, bool float_product, F f) {
  WithStorageType(dtype, [&](auto zero) {
    if (float_product) {
      f(zero, 0.0f);
    } else {
      f(zero, zero);
    }
    return 0;
  });
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
  // Rows of c values: blocks no wider than a row (rounded to warps).
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, (pattern.c + 31) / 32 * 32));
  const int64_t column_blocks = (pattern.c + threads - 1) / threads;
  if (column_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const int64_t group_blocks = std::min<int64_t>(pattern.a * pattern.d, 64);
  const dim3 grid(static_cast<unsigned>(column_blocks), RowBlocks(batch, column_blocks * group_blocks),
                  static_cast<unsigned>(group_blocks));
  WithStorageType(dtype, [&](auto zero) {
    using T = decltype(zero);
    ToGroupsKernel<T><<<grid, threads, 0, stream>>>(static_cast<const T*>(x), static_cast<T*>(grouped), batch,
                                                     pattern.a, pattern.c, pattern.d);
    return 0;
  });
  return cudaGetLastError();
}

cudaError_t LaunchFromGroups(const void* grouped, bool float_product, const void* bias, void* y,
                             int64_t batch, const KsPattern& pattern, DType dtype, Activation activation,
                             cudaStream_t stream) {
  const int64_t column_blocks = (pattern.out_features() + kThreads - 1) / kThreads;
  if (column_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(column_blocks), RowBlocks(batch, column_blocks));
  WithProductTypes(dtype, float_product, [&](auto zero, auto product_zero) {
    using T = decltype(zero);
    using S = decltype(product_zero);
    FromGroupsKernel<T, S><<<grid, kThreads, 0, stream>>>(static_cast<const S*>(grouped),
                                                          static_cast<const T*>(bias), static_cast<T*>(y),
                                                          batch, pattern.a, pattern.b, pattern.d, activation);
  });
  return cudaGetLastError();
}

cudaError_t LaunchEpilogue(const void* product, bool float_product, const void* bias, void* y, int64_t batch,
                           int64_t features, DType dtype, BatchLayout layout, Activation activation,
                           cudaStream_t stream) {
  const bool batch_last = layout == BatchLayout::kBatchLast;
  // Batch-first: x-blocks over the features, y-blocks over the rows; batch-last: x-blocks over the
  // batch, y-blocks striding over the features.
  const int64_t column_blocks = ((batch_last ? batch : features) + kThreads - 1) / kThreads;
  if (column_blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  const dim3 grid(static_cast<unsigned>(column_blocks),
                  batch_last ? static_cast<unsigned>(std::min<int64_t>(features, 65535))
                             : RowBlocks(batch, column_blocks));
  WithProductTypes(dtype, float_product, [&](auto zero, auto product_zero) {
    using T = decltype(zero);
    using S = decltype(product_zero);
    if (batch_last) {
      EpilogueBatchLastKernel<T, S>
          <<<grid, kThreads, 0, stream>>>(static_cast<const S*>(product), static_cast<const T*>(bias),
                                          static_cast<T*>(y), batch, features, activation);
    } else {
      EpilogueKernel<T, S><<<grid, kThreads, 0, stream>>>(static_cast<const S*>(product),
                                                          static_cast<const T*>(bias), static_cast<T*>(y),
                                                          batch, features, activation);
    }
  });
  return cudaGetLastError();
}

}  // namespace ksserve::kernels::cuda

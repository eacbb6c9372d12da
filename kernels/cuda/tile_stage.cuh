// Global → register staging of one K-step of a fused-kernel tile, shared by the CUDA-core and
// tensor-core kernels. A tile holds, for `kRows` rows (batch rows n of x, or output rows r of w),
// BK values of s times JT consecutive j. In memory, (s, j) of one row is at s·d + j: loads walk
// that flattened index so consecutive threads read consecutive addresses, kVec elements at a
// time where the host found the layout and pointers aligned for it (see VectorWidth).
#pragma once

#include <cstdint>

#include "kernels/cuda/convert.cuh"

namespace ksserve::kernels::cuda {

template <typename T, int kVec>
struct alignas(sizeof(T) * kVec) Vector {
  T v[kVec];
};

// Widest kVec in {8, 4, 2, 1} (capped at max_vec) for which every vector of a step lies inside
// one contiguous, in-range and aligned run: for JT = 1 and d = 1, runs along s (c % kVec == 0);
// for JT > 1, runs along j (JT and d multiples of kVec); never for JT = 1 with d > 1.
inline int VectorWidth(const KsFactorParams& p, int jt, int element_bytes, int max_vec) {
  const auto aligned = [&](const void* ptr, int vec) {
    return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(vec * element_bytes) == 0;
  };
  for (int vec = max_vec; vec > 1; vec /= 2) {
    const bool layout = jt == 1 ? (p.pattern.d == 1 && p.pattern.c % vec == 0)
                                : (jt % vec == 0 && p.pattern.d % vec == 0);
    if (layout && aligned(p.x, vec) && aligned(p.w, vec)) return vec;
  }
  return 1;
}

template <typename T, int kThreads, int kRows, int BK, int JT, int kVec>
struct Stage {
  static constexpr int kFlat = BK * JT;  // elements of one row in one step
  static_assert(kFlat % kVec == 0);
  static constexpr int kVectors = kRows * kFlat / kVec;
  static constexpr int kLoads = (kVectors + kThreads - 1) / kThreads;

  Vector<T, kVec> values[kLoads];

  // Row `row` of the source starts at base + row·row_stride.
  __device__ __forceinline__ void Load(const T* __restrict__ base, int64_t row_stride, int64_t rows_valid,
                                       int64_t s0, int64_t c, int64_t j0, int64_t d) {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int e = threadIdx.x + l * kThreads;
      const int row = e / (kFlat / kVec), f = (e % (kFlat / kVec)) * kVec;
      const int k = f / JT, jj = f % JT;
      const int64_t s = s0 + k, j = j0 + jj;
      if ((kVectors % kThreads == 0 || e < kVectors) && row < rows_valid && s < c && j < d) {
        values[l] = *reinterpret_cast<const Vector<T, kVec>*>(base + row * row_stride + s * d + j);
      } else {
#pragma unroll
        for (int q = 0; q < kVec; ++q) values[l].v[q] = T(0.0f);
      }
    }
  }

  // Calls store(row, k, jj, value) for every staged element.
  template <typename StoreFn>
  __device__ __forceinline__ void Store(StoreFn store) const {
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int e = threadIdx.x + l * kThreads;
      if (kVectors % kThreads != 0 && e >= kVectors) break;
      const int row = e / (kFlat / kVec), f = (e % (kFlat / kVec)) * kVec;
#pragma unroll
      for (int q = 0; q < kVec; ++q) store(row, (f + q) / JT, (f + q) % JT, values[l].v[q]);
    }
  }

  // Calls store(row, k, vector) for every staged vector; only for JT = 1, where a vector holds
  // kVec consecutive k of one row.
  template <typename StoreFn>
  __device__ __forceinline__ void StoreVectors(StoreFn store) const {
    static_assert(JT == 1);
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int e = threadIdx.x + l * kThreads;
      if (kVectors % kThreads != 0 && e >= kVectors) break;
      store(e / (kFlat / kVec), (e % (kFlat / kVec)) * kVec, values[l]);
    }
  }
};

}  // namespace ksserve::kernels::cuda

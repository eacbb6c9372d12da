// Warp-level tensor-core and asynchronous-copy primitives (sm_80 and later) shared by the
// tensor-core kernels: mma.sync m16n8k16 with FP32 accumulation, ldmatrix, cp.async.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/convert.cuh"

namespace ksserve::kernels::cuda {

// acc += a · b for one m16n8k16 fragment (A row-major, B column-major), T = BF16 or FP16.
template <typename T>
__device__ __forceinline__ void Mma(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
}

// Four 8×8 16-bit matrices from shared memory; lane l gives the address of row l % 8 of matrix l / 8.
__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], const void* row) {
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

// The A fragment of a 16×16 row-major tile at `tile` (row pitch in elements, rows 16-byte aligned).
template <typename T>
__device__ __forceinline__ void LoadFragmentA(uint32_t (&a)[4], const T* tile, int pitch, int lane) {
  LdMatrixX4(a, tile + (lane % 16) * pitch + (lane / 16) * 8);
}

// B fragments of two adjacent n8 blocks from a [n][k] tile (k contiguous): 16 n × 16 k.
template <typename T>
__device__ __forceinline__ void LoadFragmentsB(uint32_t (&b0)[2], uint32_t (&b1)[2], const T* tile, int pitch,
                                               int lane) {
  uint32_t r[4];
  LdMatrixX4(r, tile + (lane % 8 + (lane / 16) * 8) * pitch + ((lane / 8) % 2) * 8);
  b0[0] = r[0];
  b0[1] = r[1];
  b1[0] = r[2];
  b1[1] = r[3];
}

// Copies kBytes (16, 8 or 4) global → shared without registers; !valid zero-fills and reads nothing
// (the address is not dereferenced then, so it may lie outside the tensor).
template <int kBytes>
__device__ __forceinline__ void CpAsync(void* shared, const void* global, bool valid) {
  static_assert(kBytes == 16 || kBytes == 8 || kBytes == 4);
  const unsigned address = static_cast<unsigned>(__cvta_generic_to_shared(shared));
  const int source_bytes = valid ? kBytes : 0;
  if constexpr (kBytes == 16) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(address), "l"(global), "r"(source_bytes));
  } else {
    asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(address), "l"(global), "n"(kBytes),
                 "r"(source_bytes));
  }
}

__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void CpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
}

}  // namespace ksserve::kernels::cuda

// Hopper warpgroup tensor-core primitives (sm_90a): wgmma.mma_async with both operands in shared
// memory, its fences, and the shared-memory matrix descriptor. Operands are K-major without
// swizzle: 8-row × 16-byte core matrices (128 contiguous bytes), the two 8-value k halves of a
// row group 128 bytes apart (LBO), row groups `row_group_bytes` apart (SBO).
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/convert.cuh"

namespace ksserve::kernels::cuda {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ == 900 && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define KSSERVE_WGMMA 1
#else
#define KSSERVE_WGMMA 0
#endif

// Element offset of (row, k) in an operand tile of BK values per row (k a multiple of 8).
template <int BK>
__device__ __forceinline__ constexpr int CoreMatrixOffset(int row, int k) {
  return ((row / 8) * (BK / 8) + k / 8) * 64 + (row % 8) * 8;
}

__device__ __forceinline__ uint64_t SharedMatrixDescriptor(const void* tile, uint32_t row_group_bytes) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  return uint64_t{(address & 0x3ffff) >> 4} | uint64_t{128 >> 4} << 16 |
         uint64_t{(row_group_bytes >> 4) & 0x3fff} << 32;
}

// A K-major operand tile as the tensor memory accelerator writes it with 128-byte swizzle: rows
// of 64 16-bit values (128 bytes), 8-row groups 1024 bytes apart, the tile 1024-byte aligned. The
// next k16 of the same rows starts 32 bytes on (2 in the address field).
__device__ __forceinline__ uint64_t SharedMatrixDescriptorSwizzle128(const void* tile) {
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  return uint64_t{(address & 0x3ffff) >> 4} | uint64_t{1} << 16 | uint64_t{1024 >> 4} << 32 |
         uint64_t{1} << 62;
}

// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before later
// reads by the async proxy (wgmma); then a barrier makes them visible to the warpgroup.
__device__ __forceinline__ void FenceProxyAsync() {
#if KSSERVE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaFence() {
#if KSSERVE_WGMMA
  asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}

__device__ __forceinline__ void WgmmaCommit() {
#if KSSERVE_WGMMA
  asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}

template <int kPending>
__device__ __forceinline__ void WgmmaWait() {
#if KSSERVE_WGMMA
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(kPending) : "memory");
#endif
}

// One wgmma.mma_async m64n128k16 with FP32 accumulators d[64] and operand type TYPE (bf16, f16).
#define KSSERVE_WGMMA_M64N128K16(TYPE)                                                                  \
  asm volatile(                                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"                                                      \
      "wgmma.mma_async.sync.aligned.m64n128k16.f32." TYPE "." TYPE                                      \
      " "                                                                                               \
      "{"                                                                                               \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                          \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                \
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                \
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "               \
      "%64, %65, p, 1, 1, 0, 0;\n}\n"                                                                   \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),        \
        "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),      \
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),      \
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]),      \
        "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]),      \
        "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]),      \
        "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),      \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])       \
      : "l"(desc_a), "l"(desc_b), "r"(1))

// d += a · bᵀ for a 64 × 16 A and a 128 × 16 B (both K-major), FP32 accumulators in the mma.sync
// fragment order: d[4·i + q] is element q of n8 block i of the warp's 16 rows.
template <typename T>
__device__ __forceinline__ void WgmmaM64N128K16(float (&d)[64], uint64_t desc_a, uint64_t desc_b) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
#if KSSERVE_WGMMA
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    KSSERVE_WGMMA_M64N128K16("bf16");
  } else {
    KSSERVE_WGMMA_M64N128K16("f16");
  }
#else
  __trap();  // never launched: the launcher runs these tiles on sm_90 only
#endif
}

// The same for a 64 × 16 A and a 64 × 16 B: d[32], n8 block i in d[4·i .. 4·i + 3]; !accumulate:
// d = a · bᵀ (rather than zeroing the accumulators in a loop, which makes the compiler wait for
// them after every wgmma).
#define KSSERVE_WGMMA_M64N64K16(TYPE)                                                                   \
  asm volatile(                                                                                         \
      "{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"                                                      \
      "wgmma.mma_async.sync.aligned.m64n64k16.f32." TYPE "." TYPE                                       \
      " "                                                                                               \
      "{"                                                                                               \
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                          \
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "               \
      "%32, %33, p, 1, 1, 0, 0;\n}\n"                                                                   \
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), \
        "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]),        \
        "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]),      \
        "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]),      \
        "+f"(d[29]), "+f"(d[30]), "+f"(d[31])                                                           \
      : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)))

template <typename T>
__device__ __forceinline__ void WgmmaM64N64K16(float (&d)[32], uint64_t desc_a, uint64_t desc_b,
                                               bool accumulate) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
#if KSSERVE_WGMMA
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    KSSERVE_WGMMA_M64N64K16("bf16");
  } else {
    KSSERVE_WGMMA_M64N64K16("f16");
  }
#else
  __trap();
#endif
}

#undef KSSERVE_WGMMA_M64N128K16
#undef KSSERVE_WGMMA_M64N64K16

}  // namespace ksserve::kernels::cuda

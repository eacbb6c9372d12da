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

// The two 8-value k halves of a row group 128 bytes apart (LBO); row_group_bytes: the 8-row groups
// (SBO).
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

// The same with rows of kRowBytes = 32 or 64 bytes (16 or 32 values), as TMA writes them with that
// swizzle: 8-row groups 8·kRowBytes apart, the tile aligned to 8·kRowBytes; the next k16 of the same
// rows (64-byte rows) starts 32 bytes on.
template <int kRowBytes>
__device__ __forceinline__ uint64_t SharedMatrixDescriptorSwizzle(const void* tile) {
  static_assert(kRowBytes == 32 || kRowBytes == 64);
  constexpr uint64_t kLayout = kRowBytes == 32 ? 3 : 2;
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(tile));
  return uint64_t{(address & 0x3ffff) >> 4} | uint64_t{1} << 16 | uint64_t{8 * kRowBytes >> 4} << 32 |
         kLayout << 62;
}

// A descriptor `units` × 16 bytes further on: one 32-bit add on its address half (shared addresses
// are below 256 KB, so the 14-bit address field never carries into the rest).
__device__ __forceinline__ uint64_t DescriptorPlus(uint64_t descriptor, uint32_t units) {
  return (descriptor & ~uint64_t{0xffffffff}) | (static_cast<uint32_t>(descriptor) + units);
}

// Orders this thread's generic-proxy shared-memory writes (st.shared, cp.async) before later
// reads by the async proxy (wgmma, TMA stores); then a barrier makes them visible to the warpgroup.
__device__ __forceinline__ void FenceProxyAsync() {
#if KSSERVE_WGMMA
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}

// Waits for the 128 threads of one warpgroup only (named barrier 1 + warpgroup; 0 is __syncthreads).
__device__ __forceinline__ void WarpgroupBarrier(int warpgroup) {
  asm volatile("bar.sync %0, 128;\n" ::"r"(1 + warpgroup) : "memory");
}

// Named barrier `id` (past the warpgroup barriers) of `threads` threads: this thread waits until
// all have come (Sync), or counts itself and goes on (Arrive).
__device__ __forceinline__ void NamedBarrierSync(int id, int threads) {
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}
__device__ __forceinline__ void NamedBarrierArrive(int id, int threads) {
  asm volatile("bar.arrive %0, %1;\n" ::"r"(id), "r"(threads) : "memory");
}

// Sets this warpgroup's register count per thread (sm_90): producers give registers back,
// consumers take them; every thread of the warpgroup executes it.
template <int kRegisters, bool kIncrease>
__device__ __forceinline__ void SetMaxRegisters() {
#if KSSERVE_WGMMA
  if constexpr (kIncrease) {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
  } else {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kRegisters));
  }
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

// wgmma.mma_async m64nNk16 (N = 64 or 128) with FP32 accumulators d[N / 2] and operand
// type TYPE (bf16, f16): REGS names the N / 2 accumulator operands, SCALE the operand that says
// whether to accumulate. With scale-d 0 the instruction overwrites d, rather than the caller
// zeroing the accumulators in a loop, which makes the compiler wait for them after every wgmma.
#define KSSERVE_WGMMA_M64K16(SHAPE, TYPE, REGS, DESCRIPTORS, SCALE, ...)                             \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\nwgmma.mma_async.sync.aligned." SHAPE \
               ".f32." TYPE "." TYPE " {" REGS "}, " DESCRIPTORS ", p, 1, 1, 0, 0;\n}\n"             \
               : __VA_ARGS__                                                                         \
               : "l"(desc_a), "l"(desc_b), "r"(static_cast<int>(accumulate)))
#define KSSERVE_F4(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3])
#define KSSERVE_F16(i) KSSERVE_F4(i), KSSERVE_F4(i + 4), KSSERVE_F4(i + 8), KSSERVE_F4(i + 12)
#define KSSERVE_F32(i) KSSERVE_F16(i), KSSERVE_F16(i + 16)
#define KSSERVE_R0                                                         \
  "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
  "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define KSSERVE_R1                                                                   \
  "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
  "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"

// d (+)= a · bᵀ for a 64 × 16 A and an N × 16 B, both in shared memory (descriptors), FP32
// accumulators in the mma.sync fragment order: d[4·i + q] is element q of n8 block i of the
// warp's 16 rows; !accumulate: d = a · bᵀ.
template <typename T, int N>
__device__ __forceinline__ void WgmmaM64K16(float (&d)[N / 2], uint64_t desc_a, uint64_t desc_b,
                                            bool accumulate) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
  static_assert(N == 64 || N == 128);
#if KSSERVE_WGMMA
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 64) {
    if constexpr (kBf16) {
      KSSERVE_WGMMA_M64K16("m64n64k16", "bf16", KSSERVE_R0, "%32, %33", "%34", KSSERVE_F32(0));
    } else {
      KSSERVE_WGMMA_M64K16("m64n64k16", "f16", KSSERVE_R0, "%32, %33", "%34", KSSERVE_F32(0));
    }
  } else if constexpr (N == 128) {
    if constexpr (kBf16) {
      KSSERVE_WGMMA_M64K16("m64n128k16", "bf16", KSSERVE_R0 ", " KSSERVE_R1, "%64, %65", "%66",
                           KSSERVE_F32(0), KSSERVE_F32(32));
    } else {
      KSSERVE_WGMMA_M64K16("m64n128k16", "f16", KSSERVE_R0 ", " KSSERVE_R1, "%64, %65", "%66", KSSERVE_F32(0),
                           KSSERVE_F32(32));
    }
  }
#else
  __trap();  // never launched: the launchers run these tiles on sm_90 only
#endif
}

// wgmma.mma_async m64nNk16 (N = 32, 64 or 128) with A from registers: four 32-bit registers per
// thread in the mma.sync m16n8k16 A-fragment order for the warp's 16 rows of the 64. The registers
// must stay unchanged until the wgmma has completed (wgmma.wait_group).
#define KSSERVE_WGMMA_RS(SHAPE, TYPE, REGS, A, B, SCALE, ...)                                        \
  asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, " SCALE ", 0;\nwgmma.mma_async.sync.aligned." SHAPE \
               ".f32." TYPE "." TYPE " {" REGS "}, {" A "}, " B ", p, 1, 1, 0;\n}\n"                 \
               : __VA_ARGS__                                                                         \
               : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(desc_b), "r"(static_cast<int>(accumulate)))
#define KSSERVE_R16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"

template <typename T, int N>
__device__ __forceinline__ void WgmmaM64K16Rs(float (&d)[N / 2], const uint32_t (&a)[4], uint64_t desc_b,
                                              bool accumulate) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>);
  static_assert(N == 32 || N == 64 || N == 128);
#if KSSERVE_WGMMA
  constexpr bool kBf16 = std::is_same_v<T, __nv_bfloat16>;
  if constexpr (N == 32) {
    if constexpr (kBf16) {
      KSSERVE_WGMMA_RS("m64n32k16", "bf16", KSSERVE_R16, "%16, %17, %18, %19", "%20", "%21", KSSERVE_F16(0));
    } else {
      KSSERVE_WGMMA_RS("m64n32k16", "f16", KSSERVE_R16, "%16, %17, %18, %19", "%20", "%21", KSSERVE_F16(0));
    }
  } else if constexpr (N == 64) {
    if constexpr (kBf16) {
      KSSERVE_WGMMA_RS("m64n64k16", "bf16", KSSERVE_R0, "%32, %33, %34, %35", "%36", "%37", KSSERVE_F32(0));
    } else {
      KSSERVE_WGMMA_RS("m64n64k16", "f16", KSSERVE_R0, "%32, %33, %34, %35", "%36", "%37", KSSERVE_F32(0));
    }
  } else {
    if constexpr (kBf16) {
      KSSERVE_WGMMA_RS("m64n128k16", "bf16", KSSERVE_R0 ", " KSSERVE_R1, "%64, %65, %66, %67", "%68", "%69",
                       KSSERVE_F32(0), KSSERVE_F32(32));
    } else {
      KSSERVE_WGMMA_RS("m64n128k16", "f16", KSSERVE_R0 ", " KSSERVE_R1, "%64, %65, %66, %67", "%68", "%69",
                       KSSERVE_F32(0), KSSERVE_F32(32));
    }
  }
#else
  __trap();  // never launched: the launchers run these tiles on sm_90 only
#endif
}

#undef KSSERVE_WGMMA_RS
#undef KSSERVE_R16
#undef KSSERVE_WGMMA_M64K16
#undef KSSERVE_F4
#undef KSSERVE_F16
#undef KSSERVE_F32
#undef KSSERVE_R0
#undef KSSERVE_R1

}  // namespace ksserve::kernels::cuda

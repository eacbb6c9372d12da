// Hopper tensor memory accelerator (sm_90): 2-D tile loads into shared memory that complete on an
// mbarrier, and the host-side tensor map for a row-major 16-bit matrix. Unlike per-thread
// cp.async, a whole tile is one instruction and its bytes in flight are not bounded by the
// load/store unit's per-thread request slots, which is what starves DRAM-bound kernels.
#pragma once

#include <cuda.h>  // CUtensorMap (the driver function itself is looked up at run time)
#include <cuda_runtime_api.h>

#include <cstdint>

namespace ksserve::kernels::cuda {

// A tensor map over rows × columns 16-bit values (row pitch `columns`) read in boxes of
// box_rows × 64 columns, written to shared memory with 128-byte swizzle; what lies outside the
// matrix reads as zeros. TMA stores through it take boxes in that same layout and clip at the edges.
cudaError_t MakeTensorMap16(CUtensorMap* map, const void* base, bool bfloat16, int64_t rows, int64_t columns,
                            int box_rows);

// A tensor map over a rank-dimensional view of 16-bit values: dims[0] is contiguous, dims[k] lies
// strides[k − 1] bytes apart (multiples of 16, in any order), read in boxes of box[] values that
// land in shared memory densely, dimension 0 fastest; outside reads as zeros. swizzle_bytes: 0 (none),
// 32, 64 or 128, the box's rows (dimension 0) then being that many bytes or fewer.
cudaError_t MakeTensorMap16(CUtensorMap* map, const void* base, bool bfloat16, int rank, const int64_t* dims,
                            const int64_t* strides, const int* box, int swizzle_bytes = 0);

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define KSSERVE_TMA 1
#else
#define KSSERVE_TMA 0
#endif

__device__ __forceinline__ uint32_t SharedAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void MbarrierInit(uint64_t* barrier, uint32_t arrivals) {
#if KSSERVE_TMA
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SharedAddress(barrier)), "r"(arrivals));
#endif
}

// Makes initialized barriers visible to the async proxy (the TMA unit completes on them).
__device__ __forceinline__ void FenceMbarrierInit() {
#if KSSERVE_TMA
  asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}

// Arrives once and expects `bytes` more of transactions before the phase completes.
__device__ __forceinline__ void MbarrierArriveExpectTx(uint64_t* barrier, uint32_t bytes) {
#if KSSERVE_TMA
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SharedAddress(barrier)),
               "r"(bytes)
               : "memory");
#endif
}

// Arrives once, with no transaction bytes.
__device__ __forceinline__ void MbarrierArrive(uint64_t* barrier) {
#if KSSERVE_TMA
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(SharedAddress(barrier)) : "memory");
#endif
}

// Arrives once on `barrier` when every cp.async this thread has issued so far has landed; the
// arrival is one of those the barrier was initialized to expect.
__device__ __forceinline__ void CpAsyncMbarrierArrive(uint64_t* barrier) {
#if KSSERVE_TMA
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(SharedAddress(barrier))
               : "memory");
#endif
}

// This block's rank in its thread-block cluster.
__device__ __forceinline__ uint32_t ClusterCtaRank() {
  uint32_t rank = 0;
#if KSSERVE_TMA
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(rank));
#endif
  return rank;
}

// Every thread of every block of the cluster arrives, then waits for all the others: shared memory
// and barriers of the other blocks may be used after the first, and no block leaves while the others
// still reach into its shared memory when it is the last thing before exit.
__device__ __forceinline__ void ClusterSync() {
#if KSSERVE_TMA
  asm volatile("barrier.cluster.arrive.release;\nbarrier.cluster.wait.acquire;\n" ::: "memory");
#endif
}

// Arrives once on the barrier at the same shared-memory offset in block `cta` of the cluster (with
// the default release semantics: a cluster-scope release would fence all of device memory).
__device__ __forceinline__ void MbarrierArriveRemote(uint64_t* barrier, uint32_t cta) {
#if KSSERVE_TMA
  asm volatile(
      "{\n.reg .b32 remote;\nmapa.shared::cluster.u32 remote, %0, %1;\n"
      "mbarrier.arrive.shared::cluster.b64 _, [remote];\n}\n" ::"r"(SharedAddress(barrier)),
      "r"(cta)
      : "memory");
#endif
}

// Blocks until the barrier's phase with parity `parity` has completed. The retry loop lives inside
// the asm (labels are local to its braces), so the compiler sees no divergent branch here: one
// before wgmma would make it serialize them.
__device__ __forceinline__ void MbarrierWait(uint64_t* barrier, uint32_t parity) {
#if KSSERVE_TMA
  asm volatile(
      "{\n.reg .pred done;\nwait:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra wait;\n}\n" ::"r"(SharedAddress(barrier)),
      "r"(parity)
      : "memory");
#endif
}

// The box of `map` at (column, row) into shared memory at `to` (1024-byte aligned), completing
// its bytes on `barrier`.
__device__ __forceinline__ void TmaLoad2d(void* to, const CUtensorMap* map, int column, int row,
                                          uint64_t* barrier) {
#if KSSERVE_TMA
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], "
      "[%4];\n" ::"r"(SharedAddress(to)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(column), "r"(row), "r"(SharedAddress(barrier))
      : "memory");
#endif
}

// The box of `map` at coords into shared memory at `to` (16-byte aligned, or to its swizzle's
// span), completing on `barrier`.
__device__ __forceinline__ void TmaLoad3d(void* to, const CUtensorMap* map, int c0, int c1, int c2,
                                          uint64_t* barrier) {
#if KSSERVE_TMA
  asm volatile(
      "cp.async.bulk.tensor.3d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
      "%4}], [%5];\n" ::"r"(SharedAddress(to)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(SharedAddress(barrier))
      : "memory");
#endif
}

__device__ __forceinline__ void TmaLoad4d(void* to, const CUtensorMap* map, int c0, int c1, int c2, int c3,
                                          uint64_t* barrier) {
#if KSSERVE_TMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, "
      "%4, "
      "%5}], [%6];\n" ::"r"(SharedAddress(to)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(SharedAddress(barrier))
      : "memory");
#endif
}

// TmaLoad4d into the same shared-memory offset of every block of the cluster in cta_mask, each
// completing on its own barrier at `barrier`'s offset.
__device__ __forceinline__ void TmaLoad4dMulticast(void* to, const CUtensorMap* map, int c0, int c1, int c2,
                                                   int c3, uint64_t* barrier, uint16_t cta_mask) {
#if KSSERVE_TMA
  asm volatile(
      "cp.async.bulk.tensor.4d.shared::cluster.global.tile.mbarrier::complete_tx::bytes.multicast::cluster "
      "[%0], [%1, {%2, %3, %4, %5}], [%6], %7;\n" ::"r"(SharedAddress(to)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(SharedAddress(barrier)),
      "h"(cta_mask)
      : "memory");
#endif
}

// Asks L2 to fetch the box of `map` at (column, row), without waiting or writing shared memory.
__device__ __forceinline__ void TmaPrefetch2d(const CUtensorMap* map, int column, int row) {
#if KSSERVE_TMA
  asm volatile("cp.async.bulk.prefetch.tensor.2d.L2.global.tile [%0, {%1, %2}];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(column), "r"(row)
               : "memory");
#endif
}

// The box of `map` at (column, row) from shared memory at `from` (laid out as TmaLoad2d would land
// it) into global memory; what lies outside the matrix is not written. Asynchronous: BulkCommit
// closes this thread's group of stores so far, BulkWaitRead<N> waits until at most N of its groups
// still read shared memory, BulkWait<N> until at most N are still writing.
__device__ __forceinline__ void TmaStore2d(const CUtensorMap* map, const void* from, int column, int row) {
#if KSSERVE_TMA
  asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"(
                   reinterpret_cast<uint64_t>(map)),
               "r"(SharedAddress(from)), "r"(column), "r"(row)
               : "memory");
#endif
}

__device__ __forceinline__ void BulkCommit() {
#if KSSERVE_TMA
  asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
#endif
}

template <int kGroups>
__device__ __forceinline__ void BulkWaitRead() {
#if KSSERVE_TMA
  asm volatile("cp.async.bulk.wait_group.read %0;\n" ::"n"(kGroups) : "memory");
#endif
}

template <int kGroups>
__device__ __forceinline__ void BulkWait() {
#if KSSERVE_TMA
  asm volatile("cp.async.bulk.wait_group %0;\n" ::"n"(kGroups) : "memory");
#endif
}

}  // namespace ksserve::kernels::cuda

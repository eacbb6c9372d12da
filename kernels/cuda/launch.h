// Internal: launchers implemented in .cu files. Each checks its launch and returns the CUDA
// error; ks_matmul.cc turns that into an absl::Status.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/ks_params.h"

namespace ksserve::kernels::cuda {

// One thread per output element, any dtype and epilogue: the always-correct CUDA path and the
// baseline the tuned kernels are checked against.
cudaError_t LaunchKsFactorNaive(const KsFactorParams& params, cudaStream_t stream);

// The fused output-stationary kernel with one of its tile shapes; any pattern, batch, dtype and
// epilogue. packed_w: the tile's packed weights (FusedTileReadsPackedWeights), or null.
cudaError_t LaunchKsFactorFused(const KsFactorParams& params, FusedTile tile, const void* packed_w,
                                cudaStream_t stream);
// The tensor-core tiles (FusedTileUsesTensorCores); BF16 and FP16 only.
cudaError_t LaunchKsFactorFusedMma(const KsFactorParams& params, FusedTile tile, const void* packed_w,
                                   cudaStream_t stream);
// The pipelined tensor-core tiles (kTc*); BF16 and FP16 only. packed_w: [(i·d + j)][r][s] or null.
cudaError_t LaunchKsFactorTc(const KsFactorParams& params, FusedTile tile, const void* packed_w,
                             cudaStream_t stream);

// The persistent TMA + warpgroup-MMA tile (kWgTma, ks_factor_wgmma.cu): whether it runs these
// params on this device (else LaunchKsFactorTc runs kTcM64N64K16), and its launch.
bool KsFactorWgmmaRuns(const KsFactorParams& params, const void* packed_w);
// kPairX (kWgTmaPairX): where d is 2, 4 or 8, clusters of two blocks on adjacent r tiles sharing x
// by TMA multicast; elsewhere it runs as kPlain (kWgTma).
enum class WgTmaVariant { kPlain, kPairX };
cudaError_t LaunchKsFactorWgmma(const KsFactorParams& params, const void* packed_w, cudaStream_t stream,
                                WgTmaVariant variant = WgTmaVariant::kPlain);

// Two factors in one kernel (ks_pair_tc.cu): first.d = 1, both c multiples of 8, x, w1 and
// w2_grouped 16-byte aligned; BF16 and FP16. w2_grouped is [(i·d + j)][r][s] (LaunchPackGrouped).
struct KsPairArgs {
  const void* x = nullptr;
  const void* w1 = nullptr;
  const void* w2_grouped = nullptr;
  const void* bias = nullptr;
  void* y = nullptr;
  int64_t batch = 0;
  KsPattern first, second;
  DType dtype = DType::kBFloat16;
  Activation activation = Activation::kNone;
};
// Dynamic shared memory of one block of `tile` (not kRule).
int64_t KsPairSharedBytes(const KsPattern& first, const KsPattern& second, PairTile tile);
cudaError_t LaunchKsPairTc(const KsPairArgs& params, PairTile tile, cudaStream_t stream);

// The warpgroup-MMA pair (ks_pair_wgmma.cu), for the kWg* tiles.
bool PairTileUsesWgmma(PairTile tile);
// On this device, for this second factor (sm_90, second.d <= 4).
bool KsPairWgmmaRuns(const KsPattern& second);
int64_t KsPairWgmmaSharedBytes(const KsPattern& first, const KsPattern& second, PairTile tile);
// The warpgroup-MMA block shape the rule takes for a pair (kWgM64 or kWgPingPong).
PairTile KsPairWgmmaTile(const KsPattern& first, const KsPattern& second, Activation activation,
                         const void* y);
cudaError_t LaunchKsPairWgmma(const KsPairArgs& params, PairTile tile, cudaStream_t stream);

// `ptr` is a multiple of `bytes`: what vector copies and TMA need of their pointers.
inline bool Aligned(const void* ptr, int bytes) { return reinterpret_cast<uintptr_t>(ptr) % bytes == 0; }

// The current device runs the sm_90a code (wgmma) of the fat binary.
bool DeviceRunsWgmma();

// Raises `kernel`'s dynamic shared-memory limit to at least `bytes` on the current device (once).
cudaError_t AllowDynamicShared(const void* kernel, int bytes);

// Layouts of the cuBLAS algorithms. Grouped weights: [(i·d + j)][r][s] (a·d row-major b×c
// matrices); grouped activations: [(i·d + j)][n][s or r].
cudaError_t LaunchPackGrouped(const void* w, void* packed, const KsPattern& pattern, DType dtype, cudaStream_t stream);
cudaError_t LaunchDensify(const void* w, void* dense, const KsPattern& pattern, DType dtype, cudaStream_t stream);
cudaError_t LaunchToGroups(const void* x, void* grouped, int64_t batch, const KsPattern& pattern, DType dtype,
                           cudaStream_t stream);
// Scatters grouped outputs (of the call's dtype, or FP32 where float_product) back to
// [batch][a·b·d] with the bias and activation applied, rounding once to dtype.
cudaError_t LaunchFromGroups(const void* grouped, bool float_product, const void* bias, void* y,
                             int64_t batch, const KsPattern& pattern, DType dtype, Activation activation,
                             cudaStream_t stream);
// y = act(product + bias) on y's layout, rounding once to dtype. The product is of dtype (then it
// may be y itself: in place) or FP32 where float_product.
cudaError_t LaunchEpilogue(const void* product, bool float_product, const void* bias, void* y, int64_t batch,
                           int64_t features, DType dtype, BatchLayout layout, Activation activation,
                           cudaStream_t stream);

}  // namespace ksserve::kernels::cuda

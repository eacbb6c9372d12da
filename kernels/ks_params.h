// Plain parameter structs shared by the kernel API and the CUDA sources. No CUDA, LibTorch or
// Abseil here, and C++17: .cu files include this and nothing heavier.
#pragma once

#include <cstdint>

namespace ksserve::kernels {

// A Kronecker-sparse pattern (a, b, c, d): the support I_a ⊗ 1_{b×c} ⊗ I_d of an
// (a·b·d) × (a·c·d) factor with a·b·c·d nonzeros, as in Gonon et al., "Fast Inference with
// Kronecker-Sparse Matrices" (ICML 2025).
struct KsPattern {
  int64_t a = 1;
  int64_t b = 1;
  int64_t c = 1;
  int64_t d = 1;

  constexpr int64_t in_features() const { return a * c * d; }
  constexpr int64_t out_features() const { return a * b * d; }
  constexpr int64_t nonzeros() const { return a * b * c * d; }
  friend constexpr bool operator==(const KsPattern& x, const KsPattern& y) {
    return x.a == y.a && x.b == y.b && x.c == y.c && x.d == y.d;
  }
};

// Element type of x, w, bias and y. Products accumulate in FP32 for every type; FP32 is strict
// (no TF32).
enum class DType : uint8_t { kFloat32, kBFloat16, kFloat16 };

constexpr int64_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Applied to y after the bias, in FP32, before the one rounding to the output type: in the fused
// kernels' epilogue; after a cuBLAS product (dense, bmm) in a second pass, which for 16-bit types
// reads the product in FP32 from the workspace (CublasProductInFp32).
enum class Activation : uint8_t { kNone, kRelu, kGeluTanh, kGeluErf };

// Where the batch index runs in x and y. Batch-first, [batch][features], is how the models hold
// activations; batch-last, [features][batch], makes every (i, j) block of a factor a plain
// strided matrix, so that cuBLAS runs it with no permutes.
enum class BatchLayout : uint8_t { kBatchFirst, kBatchLast };

// One factor with an optional epilogue:
//   y[n, i, r, j] = act( Σ_s x[n, i, s, j] · w[i, r, s, j]  + bias[i, r, j] )
struct KsFactorParams {
  const void* x = nullptr;     // [batch, a·c·d] row-major, or [a·c·d, batch] batch-last
  const void* w = nullptr;     // [a][b][c][d], the interchange layout
  const void* bias = nullptr;  // [a·b·d] or null
  void* y = nullptr;           // [batch, a·b·d] or [a·b·d, batch] as x; must not alias x, w or bias
  int64_t batch = 0;
  KsPattern pattern;
  DType dtype = DType::kFloat32;
  Activation activation = Activation::kNone;
  BatchLayout layout = BatchLayout::kBatchFirst;
};

// CUDA algorithms for one factor.
enum class KsAlgorithm : uint8_t {
  kNaive,  // one thread per output: no tiling, the cross-check for the others
  kFused,  // output-stationary tiles straight from x and w, one pass over memory
  kDense,  // cuBLAS GEMM on the densified (a·b·d) × (a·c·d) matrix
  kBmm,    // x permuted to (a·d, batch, c), cuBLAS batched GEMM, permuted back
};

// Tile shapes of the fused kernel: JT consecutive j × BM batch rows × BN output rows r per block.
enum class FusedTile : uint8_t {
  kJ1M16N64,
  kJ1M128N128,
  kJ1M128N64,
  kJ2M128N64,
  kJ4M64N64,
  kJ4M64N64Async,    // the same with a cp.async pipeline (FP32 with d a multiple of 4; else kJ4M64N64)
  kJ4M64N64AsyncT,   // the pipelined tile with operands moved to the float4 layout in shared memory (ditto)
  kJ4M128N64AsyncJ,  // pipelined, a thread owning all 4 j of its 8 × 4 output rows (ditto)
  kJ8M32N32,
  kJ16M16N16,
  kJ32M16N8,
  // Tensor cores (mma.sync): BF16 and FP16 only.
  kMmaJ1M128N64,
  kMmaJ1M128N128,
  kMmaJ4M64N64,
  kMmaJ8M32N32,
  // Tensor cores with a cp.async pipeline (BF16 and FP16 only): BM × BN per j, the j group chosen
  // at launch from d (1 when d = 1; else the widest power of two up to 8, within the tile's warps,
  // that divides d, 2 only when d = 2). Where none fits (d = 3, 6, odd d), c is not a multiple of
  // 8 or pointers are not aligned to the copies, the register-staged mma tile runs instead.
  // With d > 1 they read weights packed k-contiguous per j (PackedWeightBytes), or transpose them
  // in shared memory where none are given.
  kTcM128N128,
  kTcM128N64,
  kTcM64N64,
  kTcM64N64K16,     // s steps of 16: two blocks per SM where kTcM64N64 fits one
  kTcM64N128K16,    // twice as wide in r, one block of up to 16 warps: x crosses L2 half as often
  kTcWgM64N128K16,  // the same with one wgmma warpgroup per j (sm_90; elsewhere the mma tile runs)
  kTcM64N32,
  kTcM32N32,
  // Warpgroup MMA fed by TMA, persistent, 128 rows × 256 outputs (JT = d or 8) per tile (sm_90; c a
  // multiple of 8, d in {2, 4} or a multiple of 8, packed weights; elsewhere kTcM64N64K16 runs).
  kWgTma,
  kWgTmaPairX,  // the same where d is 2, 4 or 8 with clusters of two blocks sharing x (TMA multicast)
};
inline constexpr FusedTile kAllFusedTiles[] = {
    FusedTile::kJ1M16N64,       FusedTile::kJ1M128N128,      FusedTile::kJ1M128N64,
    FusedTile::kJ2M128N64,      FusedTile::kJ4M64N64,        FusedTile::kJ4M64N64Async,
    FusedTile::kJ4M64N64AsyncT, FusedTile::kJ4M128N64AsyncJ, FusedTile::kJ8M32N32,
    FusedTile::kJ16M16N16,      FusedTile::kJ32M16N8,        FusedTile::kMmaJ1M128N64,
    FusedTile::kMmaJ1M128N128,  FusedTile::kMmaJ4M64N64,     FusedTile::kMmaJ8M32N32,
    FusedTile::kTcM128N128,     FusedTile::kTcM128N64,       FusedTile::kTcM64N64,
    FusedTile::kTcM64N64K16,    FusedTile::kTcM64N128K16,    FusedTile::kTcWgM64N128K16,
    FusedTile::kTcM64N32,       FusedTile::kTcM32N32,        FusedTile::kWgTma,
    FusedTile::kWgTmaPairX};

// The register-staged tensor-core tile for a pattern: the rule's choice where the pipelined tiles
// cannot run, and what those tiles hand such layouts to.
constexpr FusedTile RegisterStagedMmaTile(const KsPattern& pattern) {
  if (pattern.d >= 8) return FusedTile::kMmaJ8M32N32;
  if (pattern.d >= 4) return FusedTile::kMmaJ4M64N64;
  return pattern.b > 64 ? FusedTile::kMmaJ1M128N128 : FusedTile::kMmaJ1M128N64;
}

// Block shapes of the fused pair (KsFusedPairForwardCuda): batch rows × outputs per K-step.
// k64: K-steps of 64 instead of 32. kWg*: warpgroup MMA with 64 or 128 batch rows per block
// (sm_90, second.d <= 4; elsewhere the rule's mma.sync shape runs instead).
enum class PairTile : uint8_t {
  kRule,
  kM64N64,
  kM64N64K64,
  kM64N128,
  kM64N128K64,
  kM128N128,
  kWgM64,
  kWgM128,
  kWgPingPong,  // wg-m128 whose two warpgroups take turns on the tensor cores, a chunk each
};
inline constexpr PairTile kAllPairTiles[] = {PairTile::kM64N64,     PairTile::kM64N64K64, PairTile::kM64N128,
                                             PairTile::kM64N128K64, PairTile::kM128N128,  PairTile::kWgM64,
                                             PairTile::kWgM128,     PairTile::kWgPingPong};

// What runs one factor call: the algorithm and, for kFused, its tile.
struct KsKernelChoice {
  KsAlgorithm algorithm = KsAlgorithm::kFused;
  FusedTile tile = FusedTile::kJ1M128N128;
  friend constexpr bool operator==(const KsKernelChoice& x, const KsKernelChoice& y) {
    return x.algorithm == y.algorithm && (x.algorithm != KsAlgorithm::kFused || x.tile == y.tile);
  }
};

}  // namespace ksserve::kernels

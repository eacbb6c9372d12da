// Kronecker-sparse matrix multiplication: the public, CUDA-free and LibTorch-free API.
//
// A KS linear layer is a chain W = K_1 ⋯ K_L applied right to left; as in the paper, chain
// lists start with the rightmost factor (applied first). Adjacent factors must agree:
// a_{l+1}·b_{l+1}·d_{l+1} = a_l·c_l·d_l (zero-based: the output of chain[l] feeds chain[l+1]).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/ks_params.h"

struct CUstream_st;

namespace ksserve::kernels {

// cudaStream_t without the CUDA headers; nullptr is the legacy default stream.
using CudaStream = CUstream_st*;

// OK for a pattern of positive sizes whose products fit in int64.
absl::Status ValidatePattern(const KsPattern& pattern);
std::string PatternToString(const KsPattern& pattern);
std::string DTypeName(DType dtype);
std::string BatchLayoutName(BatchLayout layout);  // "batch-first", "batch-last"

// Each pattern valid, at least one, and each factor's output the next one's input.
absl::Status ValidateChain(absl::Span<const KsPattern> chain);

// Validates pointers, sizes and overflow of batch × features; shared by every backend.
absl::Status ValidateFactorParams(const KsFactorParams& params);

// One factor on the CPU (blocked loops, FP32 accumulation, one thread).
absl::Status KsFactorForwardCpu(const KsFactorParams& params);

// One factor on the current CUDA device, enqueued on `stream`; pointers are device memory.
// Runs what DefaultKernelChoice picks, on the interchange weights alone, or with `grouped_w`, the
// same weights grouped as [(i·d + j)][r][s] (GroupedWeightBytes, PackGroupedWeightsCuda, once at
// load time; null for d = 1, where they already are), and a workspace of RuleWorkspaceBytes (null
// where that is 0).
// Grouped weights are what the tc tiles, wg-tma and bmm read: on the interchange weights the tc
// tiles transpose w in shared memory and wg-tma hands over to tc-m64n64k16, 0.64-0.91x as fast in
// BF16 (median per batch size, bench/results/h200-ksbench.csv: rule_ms / rule_interchange_ms),
// and bmm is out of reach (where the rule takes it with d > 1). FAILED_PRECONDITION when
// ksserve was built without CUDA.
absl::Status KsFactorForwardCuda(const KsFactorParams& params, CudaStream stream);
absl::Status KsFactorForwardCuda(const KsFactorParams& params, const void* grouped_w, void* workspace,
                                 CudaStream stream);
// The workspace the call with grouped weights needs where its pick is bmm: the permuted x and y
// (batch-first), the FP32 product (16-bit with bias or activation).
absl::StatusOr<int64_t> RuleWorkspaceBytes(const KsFactorParams& params);

// The grouped weight layout [(i·d + j)][r][s] that bmm, the tc tiles and wg-tma read: its size
// (0 for d = 1: the interchange weights already are grouped) and the conversion into it.
absl::StatusOr<int64_t> GroupedWeightBytes(const KsPattern& pattern, DType dtype);
absl::Status PackGroupedWeightsCuda(const KsPattern& pattern, DType dtype, const void* w, void* grouped,
                                    CudaStream stream);

// The rule's pick: bmm where d = 1, cuBLAS takes the sizes (the blocks are read where they lie)
// and its epilogue needs no FP32 product (FP32, or no bias and no activation); with grouped
// weights (`grouped`; and a workspace of RuleWorkspaceBytes) also bmm for d > 1 batch-last, and
// batch-first where cuBLAS beats the fused tiles (by dtype, batch size and pattern, as measured:
// GroupedBmmBeatsFusedTiles in ks_matmul.cc); else batch-first the fused kernel with DefaultFusedTile,
// batch-last the naive kernel. Tiles that read grouped weights (the tc tiles, wg-tma) run their
// variant for interchange weights when none are given.
KsKernelChoice DefaultKernelChoice(const KsFactorParams& params, bool grouped = false);

// The fused tile chosen by rule for a pattern, batch and dtype.
FusedTile DefaultFusedTile(const KsPattern& pattern, int64_t batch, DType dtype);

// How many consecutive j one block of `tile` covers (1 for the tc tiles, which choose theirs from d).
int FusedTileJ(FusedTile tile);
// Tensor-core tiles take BF16 and FP16 only: FP32 is strict.
bool FusedTileUsesTensorCores(FusedTile tile);
// The cp.async-pipelined CUDA-core tiles: FP32 with d a multiple of 4 (and 16-byte aligned x and
// w); elsewhere they run the register-staged j4m64n64.
bool FusedTileIsPipelinedFp32(FusedTile tile);

// "fused/j4m64n64", "dense", "bmm", "naive", and back.
std::string KernelChoiceName(const KsKernelChoice& choice);
absl::StatusOr<KsKernelChoice> ParseKernelChoice(std::string_view name);

// Whether a kernel choice takes a batch layout: every one takes batch-first; batch-last runs on
// naive, dense and bmm (cuBLAS on strided blocks, no permutes), not on the fused tiles.
bool KernelTakesLayout(const KsKernelChoice& choice, BatchLayout layout);

// Whether a fused tile reads weights packed at load time (the pipelined tensor-core tiles, d > 1).
bool FusedTileReadsPackedWeights(FusedTile tile);

// Two-phase use of an explicit kernel: at load time, convert the interchange weights once into
// the layout it reads (PackedWeightBytes == 0: it reads them in place); per call, pass both and a
// workspace of FactorWorkspaceBytes (same device). The fused tiles also run without their packed
// weights (null), only slower.
absl::StatusOr<int64_t> PackedWeightBytes(const KsKernelChoice& choice, const KsPattern& pattern,
                                          DType dtype);
// The workspace of one call (its pointers are not read): bmm's grouped x and y (batch-first,
// d > 1), and the FP32 product of dense and bmm where CublasProductInFp32.
absl::StatusOr<int64_t> FactorWorkspaceBytes(KsAlgorithm algorithm, const KsFactorParams& params);
// Whether dense and bmm write their product in FP32 to the workspace before the epilogue: for
// 16-bit types with a bias or activation, so that y is rounded once, as the fused tiles round it.
bool CublasProductInFp32(const KsFactorParams& params);
// Whether cuBLAS's 32-bit sizes and leading dimensions hold this call for kDense or kBmm (they
// refuse it otherwise; naive and the fused tiles take any size).
bool CublasSizesFit(const KsFactorParams& params, KsAlgorithm algorithm);
// Where the bmm algorithm's grouped output starts in its workspace (after grouped x, 256-aligned).
int64_t BmmOutputOffset(int64_t batch, const KsPattern& pattern, DType dtype);
absl::Status PackWeightsCuda(const KsKernelChoice& choice, const KsPattern& pattern, DType dtype,
                             const void* w, void* packed, CudaStream stream);
absl::Status KsFactorForwardCuda(const KsFactorParams& params, const KsKernelChoice& choice, const void* packed_w,
                                 void* workspace, CudaStream stream);

// A whole chain y = act(x · (K_1 ⋯ K_L)ᵀ + bias). Intermediates are rounded to `dtype`, as
// between two factor calls, and live in `workspace` (ChainWorkspaceBytes; same memory space as
// x and y). Bias and activation apply to the last factor only.
struct KsChainParams {
  const void* x = nullptr;
  void* y = nullptr;
  const void* bias = nullptr;             // [out_features] of the chain, or null
  std::vector<KsPattern> patterns;        // rightmost factor first
  std::vector<const void*> weights;       // one [a][b][c][d] tensor per pattern
  // Optional: empty, or per pattern the weights grouped (PackGroupedWeightsCuda; null for d = 1),
  // which the CUDA chain reads instead of converting or transposing them per call.
  std::vector<const void*> grouped_weights = {};
  void* workspace = nullptr;
  int64_t batch = 0;
  DType dtype = DType::kFloat32;
  Activation activation = Activation::kNone;
  BatchLayout layout = BatchLayout::kBatchFirst;  // of x, y and the intermediates
};

// The workspace a chain in `layout` needs: its intermediates; batch-last, room for one factor's
// weights grouped per call where none are given (KsChainForwardCuda runs those with d > 1 as
// bmm); then the largest RuleWorkspaceBytes of its factors, the last sized as if it had a bias or
// activation (for 16-bit types an FP32 product). The rooms past the intermediates are for the CUDA
// chain; the CPU needs none.
absl::StatusOr<int64_t> ChainWorkspaceBytes(absl::Span<const KsPattern> chain, int64_t batch, DType dtype,
                                            BatchLayout layout);
absl::Status KsChainForwardCpu(const KsChainParams& params);
absl::Status KsChainForwardCuda(const KsChainParams& params, CudaStream stream);

// A chain of two factors in one kernel on tensor cores (BF16/FP16): a block computes its batch
// rows of the intermediate into shared memory and the output from there, so the intermediate never
// touches device memory (it is still rounded to the dtype, as between two factor calls).
// OK when the chain has two factors, the first (rightmost) with d = 1 and both with c a multiple
// of 8, in BF16 or FP16; otherwise says why (run the chain factor by factor then).
absl::Status FusedPairSupported(absl::Span<const KsPattern> chain, DType dtype);
// The second factor's weights are read grouped, [(i·d + j)][r][s]: converted once at load time
// into `packed` of FusedPairPackedBytes (0 when d = 1: read in place).
absl::StatusOr<int64_t> FusedPairPackedBytes(absl::Span<const KsPattern> chain, DType dtype);
absl::Status PackFusedPairWeightsCuda(absl::Span<const KsPattern> chain, DType dtype, const void* second_w,
                                      void* packed, CudaStream stream);
// y = act(x · (K_2 K_1)ᵀ + bias) in one launch; params.workspace is not used. x and the weights
// must be 16-byte aligned. kRule picks the block shape; an explicit tile whose intermediate does
// not fit in shared memory is INVALID_ARGUMENT.
absl::Status KsFusedPairForwardCuda(const KsChainParams& params, const void* packed, CudaStream stream,
                                    PairTile tile = PairTile::kRule);
// "rule", "m64n64", ...
std::string PairTileName(PairTile tile);

}  // namespace ksserve::kernels

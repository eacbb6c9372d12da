// The fused KS factor kernel on tensor cores with an asynchronous multi-stage pipeline: BF16/FP16
// operands, FP32 accumulation, mma.sync m16n8k16 fed by cp.async and ldmatrix (sm_80 and later).
//
// A block owns, for one i, a group of JT consecutive j (from d at launch: 1 when d = 1, else d
// itself or a power of two dividing it, up to 8), BM batch rows and BN output rows r, and walks
// s in steps of BK. Operands are copied global → shared with cp.async, kStages − 1 steps ahead.
// x is copied exactly as it lies in memory: a tile row (batch row n) holds the step's BK values
// of s times JT values of j, s-major (k·JT + jj), one contiguous run when JT = d and runs of JT
// values otherwise, so every copy moves a whole 16-byte chunk (8 bytes for runs of 4). With
// JT > 1 the block transposes each landed step into a k-contiguous [jj][row][k] tile (8 k × JT
// j blocks through registers and byte permutes) one step ahead of the tensor cores, into one of
// two buffers, so a step needs a single barrier. Weights packed at load time as [(i·d + j)][r][s]
// land k-contiguous and need no transpose; weights read in place are transposed with x. Every
// warp then loads its fragments with ldmatrix. The finished tile goes through shared memory once
// more so y is written as whole runs too. Tile shapes are compile-time constants, so the
// per-copy index arithmetic needs no division at run time.
#include <algorithm>
#include <cstdint>
#include <map>
#include <mutex>
#include <type_traits>
#include <utility>

#include "kernels/block_order.h"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

constexpr int kThreadsPerSm = 512;  // the occupancy the tiles aim for: 16 warps, 128 registers each
constexpr int kSharedPerSm = 228 * 1024;  // sm_90; each resident block also reserves 1 KB
constexpr int kSharedPerBlock = 227 * 1024;

// BK_: the s step for j groups up to 4 (8 take 16). A step of 16 halves the shared memory of a
// stage, so two blocks of a wide j group fit on an SM, at one barrier per 16 s.
// kMaxThreads_: the block size a j group may grow to; 512 makes one block as wide as two.
// kWgmma_: each j's 64 × 128 tile is one warpgroup's wgmma (sm_90) instead of four warps' mma.sync;
// a warp then holds 16 rows × 128 outputs, in the same fragment order.
template <int BM_, int BN_, int WM_, int WN_, int BK_ = 32, int kMaxThreads_ = 256, bool kWgmma_ = false>
struct TcTile {
  static constexpr int BM = BM_, BN = BN_, WM = WM_, WN = WN_, BK = BK_, kMaxThreads = kMaxThreads_;
  static constexpr bool kWgmma = kWgmma_;
  static_assert(!kWgmma || (BM == 64 && BN == 128 && WM == 16 && WN == 128), "one m64n128 wgmma per j");
  static constexpr int kWarpsN = BN / WN;
  static constexpr int kWarpsPerJ = (BM / WM) * kWarpsN;
  static constexpr int kMaxJ = kMaxThreads / (32 * kWarpsPerJ);  // a block has JT × kWarpsPerJ warps
  static constexpr int kMi = WM / 16, kNi = WN / 8;
  static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 16 == 0, "ldmatrix.x4 loads B in pairs");
  static_assert(kMaxJ >= 1 && (BK == 16 || BK == 32) && kMaxThreads <= kThreadsPerSm);
};

// Everything that follows from the tile, JT, the copy width and the weight layout at compile time.
template <typename TileT, int JT_, int kChunk_, bool kPackedW_>
struct TcConfig {
  static constexpr int JT = JT_, kChunk = kChunk_;
  static constexpr bool kPackedW = kPackedW_ && JT_ > 1;  // with JT = 1 (d = 1) packing is the identity
  static constexpr int BM = TileT::BM, BN = TileT::BN;
  static constexpr int kThreads = 32 * TileT::kWarpsPerJ * JT;
  static constexpr int BK = JT >= 8 ? 16 : TileT::BK;
  // Landed rows: BK·JT values + 16 bytes, so ldmatrix (JT = 1) and the transpose's 16-byte reads
  // of consecutive rows fall in different banks.
  static constexpr int kRawPitch = BK * JT + 8;
  static constexpr int kTPitch = BK + 8;                                    // k-contiguous [jj][row][k] tiles
  static constexpr int kRawRows = kPackedW ? BM : BM + BN;                  // rows landed as in memory
  static constexpr int kPackedElements = kPackedW ? JT * BN * kTPitch : 0;  // w, landed k-contiguous
  static constexpr int kStageElements = kRawRows * kRawPitch + kPackedElements;
  static constexpr bool kWgmma = TileT::kWgmma;
  static constexpr int kTRows = JT > 1 ? kRawRows : 0;      // rows the block transposes
  static constexpr int kTElements = JT * kTRows * kTPitch;  // one of two transposed buffers
  static constexpr int kYElements = BM * (BN * JT + 8);
  static constexpr int SharedBytes(int stages) {
    return 2 * std::max(stages * kStageElements + 2 * kTElements, kYElements);
  }
  // As many blocks per SM as shared memory holds with three stages, up to 16 warps (registers are
  // then capped at 128): latency, not issue, limits these short-K tiles. Four stages where they fit.
  static constexpr int BlocksPerSm() {
    for (int blocks = std::max(1, kThreadsPerSm / kThreads); blocks > 1; --blocks) {
      if (blocks * (SharedBytes(3) + 1024) <= kSharedPerSm) return blocks;
    }
    return 1;
  }
  static constexpr int kMinBlocks = BlocksPerSm();
  static constexpr int kStages = kMinBlocks * (SharedBytes(4) + 1024) <= kSharedPerSm ? 4 : 3;
  static constexpr int kSharedBytes = SharedBytes(kStages);
  static constexpr int kChunksPerRow = BK * JT / kChunk;
  static constexpr int kRawCopies = (kRawRows * kChunksPerRow + kThreads - 1) / kThreads;
  static_assert(JT == 1 || JT == 2 || JT == 4 || JT == 8);
  static_assert(JT <= TileT::kMaxJ);
  static_assert(kChunk == 8 || (kChunk == 4 && JT == 4), "16-byte chunks, or runs of 4 values");
  static_assert(kSharedBytes <= kSharedPerBlock);
  static_assert(!kWgmma || JT > 1 || kChunk == 8, "k-contiguous rows land in 16-byte chunks");

  // Where 8 k-contiguous values (row, k..k+7) of a tensor-core operand go in its tile: rows of
  // kTPitch for ldmatrix, core matrices for wgmma (which fit in the same space).
  static __device__ __forceinline__ int OperandOffset(int row, int k) {
    if constexpr (kWgmma) {
      return CoreMatrixOffset<BK>(row, k);
    } else {
      return row * kTPitch + k;
    }
  }
};

// Word w of the 8-k vector of j = jj, from a block of 8 k × JT j stored s-major in `words` (JT
// 16-byte chunks): values (k = 2w, jj) and (k = 2w + 1, jj), element f being half f % 2 of word
// f / 2. All indices are compile-time: one byte permute.
template <int JT, int jj, int w>
__device__ __forceinline__ uint32_t TransposedWord(const uint32_t* words) {
  constexpr int f0 = 2 * w * JT + jj, f1 = (2 * w + 1) * JT + jj;
  constexpr unsigned kSelector = (f0 % 2 ? 0x32u : 0x10u) | (f1 % 2 ? 0x7600u : 0x5400u);
  return __byte_perm(words[f0 / 2], words[f1 / 2], kSelector);
}

// Stores the 8-k vector of every j of the block to out(jj).
template <int JT, typename Out, int... kJ>
__device__ __forceinline__ void StoreTransposed(const uint32_t* words, Out out,
                                                std::integer_sequence<int, kJ...>) {
  (out(kJ, make_uint4(TransposedWord<JT, kJ, 0>(words), TransposedWord<JT, kJ, 1>(words),
                      TransposedWord<JT, kJ, 2>(words), TransposedWord<JT, kJ, 3>(words))),
   ...);
}

template <int kVec, typename T>
__device__ __forceinline__ void CopyVector(T* dst, const T* src) {
  if constexpr (kVec == 8) {
    *reinterpret_cast<uint4*>(dst) = *reinterpret_cast<const uint4*>(src);
  } else if constexpr (kVec == 4) {
    *reinterpret_cast<uint2*>(dst) = *reinterpret_cast<const uint2*>(src);
  } else if constexpr (kVec == 2) {
    *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(src);
  } else {
    *dst = *src;
  }
}

struct TcLaunch {
  const void* packed_w = nullptr;  // [(i·d + j)][r][s] when the config reads packed weights
  int y_vec = 1;                   // elements per output store: 8, 4, 2 or 1
};

template <typename T, typename TileT, typename Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, Cfg::kMinBlocks)
    KsFactorTcKernel(KsFactorParams p, BlockGrid grid, TcLaunch launch) {
  constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, JT = Cfg::JT, kChunk = Cfg::kChunk;
  constexpr int kStages = Cfg::kStages, kRawRows = Cfg::kRawRows, kTRows = Cfg::kTRows;
  constexpr int WM = TileT::WM, WN = TileT::WN, kMi = TileT::kMi, kNi = TileT::kNi;
  constexpr int kRawPitch = Cfg::kRawPitch, kTPitch = Cfg::kTPitch;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  // [kStages][kRawRows][kRawPitch, then packed w as [JT][BN][kTPitch]], then two [JT][kTRows][kTPitch].
  T* const raw = reinterpret_cast<T*>(shared_bytes);
  T* const transposed = raw + kStages * Cfg::kStageElements;

  const int64_t b = p.pattern.b, c = p.pattern.c, d = p.pattern.d;
  const int64_t in = p.pattern.in_features(), out = p.pattern.out_features(), cd = c * d;
  const BlockCoords block = DecodeBlock(grid, blockIdx.x);
  const int64_t i = block.i, j0 = block.jg * JT, r0 = block.rt * BN, n0 = block.nt * BM;
  const int rows_x = static_cast<int>(min(p.batch - n0, int64_t{BM}));
  const int rows_w = static_cast<int>(min(b - r0, int64_t{BN}));
  const int steps = static_cast<int>((c + BK - 1) / BK);
  const bool whole = JT == d;

  // Row starts of the tile at s = 0. Rows beyond the batch or b, and steps beyond c, are
  // zero-filled. A chunk never straddles an edge: c·d, and JT when not whole, are multiples of
  // kChunk; c of 8.
  const T* const x_rows = static_cast<const T*>(p.x) + n0 * in + i * cd + j0;
  const T* const w_rows = static_cast<const T*>(p.w) + (i * b + r0) * cd + j0;
  const T* const packed_rows =
      Cfg::kPackedW ? static_cast<const T*>(launch.packed_w) + ((i * d + j0) * b + r0) * c : nullptr;
  // Each thread copies the same chunks of every step: chunk f of rows copy_row + l·kRowsPerPass
  // (x rows first, then w rows when weights are read in place) and, for packed weights, (j, r)
  // rows copy_q + l·kQPerPass. Their source pointers and the rows that exist are worked out once;
  // a step costs one bound check and one pointer increment per copy.
  constexpr int kRowsPerPass = Cfg::kThreads / Cfg::kChunksPerRow;
  static_assert(Cfg::kThreads % Cfg::kChunksPerRow == 0 && BM % kRowsPerPass == 0 &&
                kRawRows % kRowsPerPass == 0 && Cfg::kRawCopies * kRowsPerPass == kRawRows);
  const int copy_row = threadIdx.x / Cfg::kChunksPerRow, copy_f = (threadIdx.x % Cfg::kChunksPerRow) * kChunk;
  const int copy_k = copy_f / JT;
  // A chunk's first s (or, when JT = d, its first flat (s, j) index) is checked against its bound.
  const int64_t copy_s_bound = whole ? cd : c;
  static_assert(Cfg::kRawCopies <= 32);
  const T* raw_source[Cfg::kRawCopies];
  uint32_t raw_rows_valid = 0;  // bit l: the row of copy l exists
#pragma unroll
  for (int l = 0; l < Cfg::kRawCopies; ++l) {
    const bool is_x = l * kRowsPerPass < BM;  // copy_row < kRowsPerPass: known at compile time
    const int tile_row = copy_row + l * kRowsPerPass - (is_x ? 0 : BM);
    raw_source[l] = (is_x ? x_rows + tile_row * in : w_rows + tile_row * cd) + copy_k * d + copy_f % JT;
    if (tile_row < (is_x ? rows_x : rows_w)) raw_rows_valid |= 1u << l;
  }
  constexpr int kUnitsPerRow = BK / 8;  // packed weights: runs of 8 s
  constexpr int kPackedChunks = Cfg::kPackedW ? JT * BN * kUnitsPerRow : 0;
  constexpr int kPackedCopies = kPackedChunks / Cfg::kThreads;
  constexpr int kQPerPass = Cfg::kThreads / kUnitsPerRow;
  static_assert(kPackedChunks % Cfg::kThreads == 0 && Cfg::kThreads % kUnitsPerRow == 0);
  const int copy_u = threadIdx.x % kUnitsPerRow, copy_q = threadIdx.x / kUnitsPerRow;
  const T* packed_source[kPackedCopies > 0 ? kPackedCopies : 1];
  uint32_t packed_rows_valid = 0;
#pragma unroll
  for (int l = 0; l < kPackedCopies; ++l) {
    const int q = copy_q + l * kQPerPass, row = q % BN, jj = q / BN;
    packed_source[l] = packed_rows + (jj * b + row) * c + copy_u * 8;
    if (row < rows_w) packed_rows_valid |= 1u << l;
  }
  // Steps are loaded in order, so the copies' sources and bounds advance by one step each time.
  int64_t copy_s = whole ? copy_f : copy_k;            // the next step's first s (or flat index)
  const int64_t copy_s_advance = whole ? BK * d : BK;  // per step, in the units of copy_s
  int64_t packed_s = copy_u * 8;                       // packed weights: the next run's first s
  const auto load_step = [&](int buffer) {
    T* const stage = raw + buffer * Cfg::kStageElements;
    const bool s_valid = copy_s < copy_s_bound;
#pragma unroll
    for (int l = 0; l < Cfg::kRawCopies; ++l) {
      const bool valid = s_valid && (raw_rows_valid >> l & 1u);
      // JT = 1: rows land k-contiguous, ready for the tensor cores; else as in memory.
      T* const target = JT == 1 ? stage + Cfg::OperandOffset(copy_row + l * kRowsPerPass, copy_f)
                                : stage + (copy_row + l * kRowsPerPass) * kRawPitch + copy_f;
      CpAsync<kChunk * sizeof(T)>(target, raw_source[l], valid);
      raw_source[l] += BK * d;
    }
    copy_s += copy_s_advance;
    if constexpr (Cfg::kPackedW) {
      // Runs of 8 s of one (j, r) row, straight into the k-contiguous layout.
      T* const packed_tile = stage + kRawRows * kRawPitch;
      const bool u_valid = packed_s < c;
#pragma unroll
      for (int l = 0; l < kPackedCopies; ++l) {
        const int q = copy_q + l * kQPerPass;
        const bool valid = u_valid && (packed_rows_valid >> l & 1u);
        CpAsync<16>(packed_tile + (q / BN) * BN * kTPitch + Cfg::OperandOffset(q % BN, copy_u * 8), packed_source[l],
                    valid);
        packed_source[l] += BK;
      }
      packed_s += BK;
    }
  };
  // Units of (row, 8 k): consecutive threads take consecutive rows, whose 16-byte reads and
  // writes then fall in different banks (both pitches are odd multiples of 16 bytes).
  const auto transpose_step = [&](int buffer, int t_buffer) {
    if constexpr (JT > 1) {
      const T* const stage = raw + buffer * Cfg::kStageElements;
      T* const t_tile = transposed + t_buffer * Cfg::kTElements;
      constexpr int kUnits = kTRows * (BK / 8);
#pragma unroll
      for (int l = 0; l < (kUnits + Cfg::kThreads - 1) / Cfg::kThreads; ++l) {
        const int u = threadIdx.x + l * Cfg::kThreads;
        if (kUnits % Cfg::kThreads != 0 && u >= kUnits) break;
        const int row = u % kTRows, k8 = u / kTRows;
        uint4 block[JT];
        const uint4* src = reinterpret_cast<const uint4*>(stage + row * kRawPitch + k8 * 8 * JT);
#pragma unroll
        for (int q = 0; q < JT; ++q) block[q] = src[q];
        StoreTransposed<JT>(
            reinterpret_cast<const uint32_t*>(block),
            [&](int q, uint4 v) {
              *reinterpret_cast<uint4*>(t_tile + q * kTRows * kTPitch + Cfg::OperandOffset(row, k8 * 8)) = v;
            },
            std::make_integer_sequence<int, JT>{});
      }
    }
  };

#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    if (st < steps) load_step(st);
    CpAsyncCommit();
  }
  if constexpr (JT > 1) {
    CpAsyncWait<kStages - 2>();
    __syncthreads();
    transpose_step(0, 0);
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // the mma fragment coordinates
  const int jj = warp / TileT::kWarpsPerJ;
  const int warp_n = (warp % TileT::kWarpsPerJ) % TileT::kWarpsN;
  const int warp_m = (warp % TileT::kWarpsPerJ) / TileT::kWarpsN;
  float acc[kMi][kNi][4] = {};

  int buffer = 0;
  for (int step = 0; step < steps; ++step) {
    // JT = 1: this step has landed. JT > 1: the next one has (this one was transposed in the
    // previous iteration). After the barrier every warp is also done with the buffers the next
    // copy and transpose overwrite (read in the previous iteration).
    if constexpr (JT > 1) {
      CpAsyncWait<kStages - 3>();
    } else {
      CpAsyncWait<kStages - 2>();
    }
    if constexpr (Cfg::kWgmma) FenceProxyAsync();  // wgmma reads through the async proxy
    __syncthreads();
    {
      const int next = step + kStages - 1;
      int next_buffer = buffer + kStages - 1;
      if (next_buffer >= kStages) next_buffer -= kStages;
      if (next < steps) load_step(next_buffer);
      CpAsyncCommit();
    }
    const T* stage = raw + buffer * Cfg::kStageElements;
    const T* t_tile = nullptr;  // this j's transposed rows: x, then w unless packed
    if constexpr (JT > 1) {
      if (step + 1 < steps) transpose_step(buffer + 1 == kStages ? 0 : buffer + 1, (step + 1) & 1);
      t_tile = transposed + (step & 1) * Cfg::kTElements + jj * kTRows * kTPitch;
    }
    if constexpr (Cfg::kWgmma) {
      // The j's warpgroup multiplies its 64 x rows by its 128 w rows, 16 s at a time.
      const T* a_tile = stage;
      const T* b_tile = stage + Cfg::OperandOffset(BM, 0);
      if constexpr (JT > 1) {
        a_tile = t_tile;
        b_tile = Cfg::kPackedW ? stage + kRawRows * kRawPitch + jj * BN * kTPitch : t_tile + Cfg::OperandOffset(BM, 0);
      }
      constexpr uint32_t kRowGroupBytes = BK / 8 * 128;
      float(&d)[64] = reinterpret_cast<float(&)[64]>(acc);
      WgmmaFence();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        WgmmaM64K16<T, 128>(d, SharedMatrixDescriptor(a_tile + kk / 8 * 64, kRowGroupBytes),
                            SharedMatrixDescriptor(b_tile + kk / 8 * 64, kRowGroupBytes), /*accumulate=*/true);
      }
      WgmmaCommit();
      WgmmaWait<0>();  // the next transpose and copies overwrite what it reads
    } else {
      const T* xs;
      const T* ws;
      int pitch = kTPitch;
      if constexpr (JT > 1) {
        xs = t_tile + warp_m * WM * kTPitch;
        ws = Cfg::kPackedW ? stage + kRawRows * kRawPitch + (jj * BN + warp_n * WN) * kTPitch
                           : t_tile + (BM + warp_n * WN) * kTPitch;
      } else {
        pitch = kRawPitch;
        xs = stage + warp_m * WM * kRawPitch;
        ws = stage + (BM + warp_n * WN) * kRawPitch;
      }
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        uint32_t af[kMi][4], bf[kNi][2];
#pragma unroll
        for (int mi = 0; mi < kMi; ++mi) LoadFragmentA(af[mi], xs + mi * 16 * pitch + kk, pitch, lane);
#pragma unroll
        for (int ni = 0; ni < kNi; ni += 2)
          LoadFragmentsB(bf[ni], bf[ni + 1], ws + ni * 8 * pitch + kk, pitch, lane);
#pragma unroll
        for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
          for (int ni = 0; ni < kNi; ++ni) Mma<T>(acc[mi][ni], af[mi], bf[ni]);
        }
      }
    }
    if (++buffer == kStages) buffer = 0;
  }
  CpAsyncWait<0>();
  __syncthreads();  // the pipeline buffers become the output tile

  // Epilogue in FP32, rounded once, staged as [m][r·JT + jj]: the layout of y's runs.
  constexpr int kYPitch = BN * JT + 8;
  T* const y_tile = raw;
  const T* const bias = static_cast<const T*>(p.bias);
  float bias_value[kNi][2];
#pragma unroll
  for (int ni = 0; ni < kNi; ++ni) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int rr = warp_n * WN + ni * 8 + quad * 2 + e;
      const bool has_bias = bias != nullptr && r0 + rr < b;
      bias_value[ni][e] = has_bias ? ToFloat(bias[(i * b + r0 + rr) * d + j0 + jj]) : 0.0f;
    }
  }
  WithActivation(p.activation, [&](auto activation) {
#pragma unroll
    for (int ni = 0; ni < kNi; ++ni) {
      const int rr = warp_n * WN + ni * 8 + quad * 2;
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
        for (int upper = 0; upper < 2; ++upper) {
          const int m = warp_m * WM + mi * 16 + group + upper * 8;
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            y_tile[m * kYPitch + (rr + e) * JT + jj] =
                FromFloat<T>(ApplyActivationFor16Bit<decltype(activation)::value>(acc[mi][ni][upper * 2 + e] +
                                                                                  bias_value[ni][e]));
          }
        }
      }
    }
  });
  __syncthreads();

  // Row m of the tile, element f = rr·JT + jj, goes to y[n0 + m][(i·b + r0 + rr)·d + j0 + jj].
  T* const y = static_cast<T*>(p.y) + (i * b + r0) * d + j0;
  const auto store = [&](auto vec_constant) {
    constexpr int kVec = decltype(vec_constant)::value;
    constexpr int kVectorsPerRow = BN * JT / kVec;
    for (int e = threadIdx.x; e < BM * kVectorsPerRow; e += Cfg::kThreads) {
      const int m = e / kVectorsPerRow;
      const int f = (e % kVectorsPerRow) * kVec;
      const int rr = f / JT;
      if (m >= rows_x || r0 + rr >= b) continue;
      CopyVector<kVec>(y + (n0 + m) * out + rr * d + f % JT, y_tile + m * kYPitch + f);
    }
  };
  WithVectorWidth<8>(launch.y_vec, store);
}

template <typename T, typename TileT, int JT, int kChunk, bool kPackedW>
cudaError_t LaunchConfig(const KsFactorParams& p, const void* packed_w, cudaStream_t stream) {
  using Cfg = TcConfig<TileT, JT, kChunk, kPackedW>;
  TcLaunch launch;
  launch.packed_w = packed_w;
  // Output runs: the whole (r, j) row of the tile when JT = d, else JT values.
  for (int vec : {8, 4, 2}) {
    const bool runs = JT == p.pattern.d ? (p.pattern.b * p.pattern.d) % vec == 0 : JT % vec == 0;
    if (runs && Aligned(p.y, vec * static_cast<int>(sizeof(T)))) {
      launch.y_vec = vec;
      break;
    }
  }
  const int shared_bytes = Cfg::kSharedBytes;  // 16-bit types only
  const BlockGrid block_grid = MakeBlockGrid(p.pattern, p.batch, JT, Cfg::BM, Cfg::BN, sizeof(T));
  if (block_grid.blocks() > int64_t{0x7fffffff}) return cudaErrorInvalidConfiguration;
  const auto kernel = KsFactorTcKernel<T, TileT, Cfg>;
  if (cudaError_t err = AllowDynamicShared(reinterpret_cast<const void*>(kernel), shared_bytes);
      err != cudaSuccess) {
    return err;
  }
  kernel<<<static_cast<unsigned>(block_grid.blocks()), Cfg::kThreads, shared_bytes, stream>>>(p, block_grid,
                                                                                              launch);
  return cudaGetLastError();
}

// The j group for a tile: 1 for d = 1, d itself when it is a power of two up to the tile's
// limit, else the widest such power of two that divides d; 0 when none does.
int ChooseJ(int64_t d, int max_j) {
  for (int jt = std::min(max_j, 8); jt >= 1; jt /= 2) {
    if (d % jt == 0 && (jt > 1 || d == 1)) return jt;
  }
  return 0;
}

template <typename T, typename TileT, int JT, int kChunk>
cudaError_t LaunchLayout(const KsFactorParams& p, const void* packed_w, cudaStream_t stream) {
  if (JT > 1 && packed_w != nullptr) return LaunchConfig<T, TileT, JT, kChunk, true>(p, packed_w, stream);
  return LaunchConfig<T, TileT, JT, kChunk, false>(p, nullptr, stream);
}

template <typename T, typename TileT>
cudaError_t LaunchTc(const KsFactorParams& p, const void* packed_w, cudaStream_t stream, bool* ran) {
  *ran = false;
  if (TileT::kWgmma && !DeviceRunsWgmma()) return cudaSuccess;
  const KsPattern& k = p.pattern;
  const int jt = ChooseJ(k.d, TileT::kMaxJ);
  if (jt == 0 || k.c % 8 != 0) return cudaSuccess;  // c % 8: whole steps of 16-byte runs along s
  const bool whole = jt == k.d;
  // 16-byte copies need runs of 8 values: JT = d (c·d is then a multiple of 8) or JT = 8. Runs of
  // 4 (JT = 4 dividing d) copy 8 bytes at a time; shorter runs are left to the fallback. Packed
  // weights are copied in runs of 8 s.
  const int chunk = whole || jt == 8 ? 8 : jt;
  const int chunk_bytes = chunk * static_cast<int>(sizeof(T));
  if (chunk < 4 || !Aligned(p.x, chunk_bytes)) return cudaSuccess;
  if (packed_w != nullptr && !Aligned(packed_w, 16)) packed_w = nullptr;
  if (packed_w == nullptr && !Aligned(p.w, chunk_bytes)) return cudaSuccess;
  *ran = true;
  if constexpr (TileT::kMaxJ >= 8) {
    if (jt == 8) return LaunchLayout<T, TileT, 8, 8>(p, packed_w, stream);
  }
  if constexpr (TileT::kMaxJ >= 4) {
    if (jt == 4) {
      return chunk == 8 ? LaunchLayout<T, TileT, 4, 8>(p, packed_w, stream)
                        : LaunchLayout<T, TileT, 4, 4>(p, packed_w, stream);
    }
  }
  if constexpr (TileT::kMaxJ >= 2) {
    if (jt == 2) return LaunchLayout<T, TileT, 2, 8>(p, packed_w, stream);
  }
  return LaunchConfig<T, TileT, 1, 8, false>(p, nullptr, stream);
}

template <typename TileT>
cudaError_t LaunchTcTile(const KsFactorParams& p, const void* packed_w, cudaStream_t stream, bool* ran) {
  *ran = true;  // FP32 is an error, not a layout for the fallback
  return With16BitStorageType(
      p.dtype, [&](auto zero) { return LaunchTc<decltype(zero), TileT>(p, packed_w, stream, ran); });
}

}  // namespace

// wgmma needs sm_90 (the sm_90a code in the fat binary).
bool DeviceRunsWgmma() {
  int device = 0, major = 0;
  return cudaGetDevice(&device) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess && major == 9;
}

cudaError_t AllowDynamicShared(const void* kernel, int bytes) {
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, int> allowed;  // (device, kernel) → bytes
  int device = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  const std::lock_guard<std::mutex> lock(mutex);
  int& current = allowed[{device, kernel}];
  if (bytes <= current) return cudaSuccess;
  if (cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
      err != cudaSuccess) {
    return err;
  }
  current = bytes;
  return cudaSuccess;
}

cudaError_t LaunchKsFactorTc(const KsFactorParams& params, FusedTile tile, const void* packed_w,
                             cudaStream_t stream) {
  bool ran = false;
  cudaError_t err = cudaErrorInvalidValue;
  switch (tile) {
    case FusedTile::kTcM128N128:
      err = LaunchTcTile<TcTile<128, 128, 64, 32>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcM128N64:
      err = LaunchTcTile<TcTile<128, 64, 64, 32>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcM64N64:
      err = LaunchTcTile<TcTile<64, 64, 64, 32>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcM64N64K16:
      err = LaunchTcTile<TcTile<64, 64, 64, 32, 16>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcM64N128K16:
      err = LaunchTcTile<TcTile<64, 128, 64, 32, 16, 512>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcWgM64N128K16:
      err = LaunchTcTile<TcTile<64, 128, 16, 128, 16, 512, true>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcM64N32:
      err = LaunchTcTile<TcTile<64, 32, 64, 32>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kTcM32N32:
      err = LaunchTcTile<TcTile<32, 32, 32, 32>>(params, packed_w, stream, &ran);
      break;
    case FusedTile::kWgTma:
    case FusedTile::kWgTmaPairX:
      if (KsFactorWgmmaRuns(params, packed_w)) {
        return LaunchKsFactorWgmma(params, packed_w, stream,
                                   tile == FusedTile::kWgTmaPairX ? WgTmaVariant::kPairX : WgTmaVariant::kPlain);
      }
      err = LaunchTcTile<TcTile<64, 64, 64, 32, 16>>(params, packed_w, stream, &ran);
      break;
    default:
      return cudaErrorInvalidValue;
  }
  if (ran || err != cudaSuccess) return err;
  // No j group fits d (d = 3, 6, odd d), c is not a multiple of 8, or the pointers are not
  // aligned to the copies: the register-staged tile takes it.
  return LaunchKsFactorFusedMma(params, RegisterStagedMmaTile(params.pattern), nullptr, stream);
}

}  // namespace ksserve::kernels::cuda

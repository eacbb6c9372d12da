// The KS factor on Hopper warpgroup MMA fed by the tensor memory accelerator (sm_90a; BF16/FP16,
// FP32 accumulation), for c a multiple of 8 and d in {2, 4} or a multiple of 8.
//
// A block of two consumer warpgroups and one producer warpgroup walks output tiles persistently.
// A tile is, for one i, 128 batch rows × JT consecutive j (JT = d in {2, 4, 8}, else 8 of d) ×
// BN = 256 / JT outputs r; the warpgroups take rows 0–63 and 64–127, so every consumer thread
// holds 128 FP32 accumulators. The producer fills a ring of stages of 16·kK16 values of s:
//   x as [8-s block][row][8 s × JT j], the rows as they lie in memory 8 s at a time: one TMA box
//     when JT = d (XLoad::kTmaWhole); else (XLoad::kCopy) x's runs along j are 16 bytes, too short
//     for TMA to move at speed, and the producer warpgroup copies them with cp.async instead;
//   w, packed [(i·d + j)][r][s] at load time, as one TMA box of [j][r][16·kK16 s]: K-major rows
//     of 32 or 64 bytes (whole sectors), swizzled the way wgmma reads them.
// wgmma cannot read j-interleaved x from shared memory, so each consumer thread gathers its A
// fragments itself: one 16-byte load holds the (2 s × 4 j) or (1 s × 8 j) values that the
// fragments of several j need, and byte permutes split them per j; B goes by descriptor. The
// 16-byte loads of a quarter warp fall in distinct banks (for JT = 8 some threads read their two
// s in the other order, see GatherFragments), so there are no bank conflicts and no swizzle.
// A thread ends a tile holding the JT outputs of one (row, r), or the 2·JT of (row, r, r + 1)
// when JT = d: contiguous in y, they go out with bias and activation as one predicated store. For
// d = 8 they go through shared memory instead and out by TMA, whole lines (but for a tile whose r
// range passes b): direct 16-byte stores there fill half sectors, and the warps wait on each
// store's registers for most of the epilogue.
// The producer runs on into the next tile while the consumers store, so loads never pause.
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>

#include "kernels/block_order.h"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/tma_sm90.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

constexpr int kConsumerThreads = 256;  // two warpgroups; the producer warpgroup follows
constexpr int kBlockThreads = kConsumerThreads + 128;
constexpr int kMaxStages = 8;
constexpr int kSharedBudget = 232448;  // opt-in shared memory per block on sm_90
constexpr int kAlign = 1024;           // of a stage: w's swizzle pattern repeats every 8 rows

enum class XLoad { kTmaWhole, kCopy };

// kPairX_ (kTmaWhole only): two blocks of a cluster take adjacent r tiles of the same rows and
// share x: each loads half of a stage's 8-s blocks and multicasts them to both, so x crosses L2
// once per 2·BN outputs r.
template <int JT_, XLoad kLoad_, bool kPairX_ = false>
struct WgFactorTile {
  static constexpr int JT = JT_;  // j per consumer warpgroup
  static constexpr XLoad kLoad = kLoad_;
  static constexpr bool kPairX = kPairX_;
  static constexpr int kClusterBlocks = kPairX ? 2 : 1;
  static constexpr int BM = 128;                 // batch rows per tile
  static constexpr int BN = 256 / JT;            // wgmma N: 128 accumulators per thread
  static constexpr int kK16 = JT == 8 ? 1 : 2;   // k16 steps per stage
  static constexpr int kKBlocks = 2 * kK16;      // 8-s blocks per stage
  // x in a stage: [8-s block][row][8 s × JT j].
  static constexpr int kXPitch = 8 * JT;
  static constexpr int kXBytes = kKBlocks * BM * kXPitch * 2;
  static constexpr int kWRowBytes = 32 * kK16;  // w: [j][r][16·kK16 s], 32- or 64-byte swizzled rows
  static constexpr int kWBytes = JT * BN * kWRowBytes;
  static constexpr int kStageBytes = kXBytes + kWBytes;
  static constexpr int kFixedBytes = kAlign + 16 * kMaxStages;  // alignment, full and empty barriers
  // JT = d = 8: a warpgroup's 64 rows × 256 outputs of a tile go out through shared memory by TMA,
  // as 4 boxes of 64 rows × 64 outputs (128-byte rows, swizzled). (Staged, d = 2 and 4 ran 7–10×
  // slower: ptxas then serialized their wgmma.)
  static constexpr bool kStaging = kLoad == XLoad::kTmaWhole && JT == 8;
  static constexpr int kBoxes = BN * JT / 64;
  static constexpr int kStagingBytes = kStaging ? 2 * kBoxes * 64 * 128 : 0;
  static constexpr int kStages =
      std::min(kMaxStages, (kSharedBudget - kFixedBytes - kStagingBytes) / kStageBytes);
  static constexpr int kSharedBytes = kFixedBytes + kStagingBytes + kStages * kStageBytes;
  static_assert(JT == 2 || JT == 4 || JT == 8);
  static_assert(kLoad == XLoad::kTmaWhole || JT == 8);
  static_assert(kXBytes % kAlign == 0 && kWBytes % kAlign == 0 && kStages >= 3);
  static_assert(BN % 8 == 0);
  static_assert(!kPairX || (kLoad == XLoad::kTmaWhole && kKBlocks % 2 == 0));
};

// A fragments of one k16 step for every j of the warpgroup: a[jj][q] is register q of the
// m16n8k16 A fragment of its j jj (q: row group, +8 rows, then the same for s + 8). x_step: the
// step's first 8-s block; row: the thread's first row in the tile. JT = 8: the thread reads
// s = 2·quad + flip first, then the other one, and the permutes flip_lo and flip_hi pair the halves
// accordingly. flip is the row parity, so that the eight threads of a quarter warp hit distinct
// banks (a row is 128 bytes, its s 16 bytes apart).
template <typename Tile>
__device__ __forceinline__ void GatherFragments(const uint16_t* x_step, int row, int quad, int flip,
                                                uint32_t flip_lo, uint32_t flip_hi,
                                                uint32_t (&a)[Tile::JT][4]) {
  constexpr int JT = Tile::JT;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    // Block q / 2 (s + 8 for q >= 2), row + 8 for odd q.
    const uint16_t* const rows = x_step + ((q / 2) * Tile::BM + row + 8 * (q % 2)) * Tile::kXPitch;
    if constexpr (JT == 8) {
      // Two 16-byte loads, of s = 2·quad + flip and the other one: 8 j each.
      const uint4 u = *reinterpret_cast<const uint4*>(rows + (2 * quad + flip) * 8);
      const uint4 v = *reinterpret_cast<const uint4*>(rows + (2 * quad + 1 - flip) * 8);
      const uint32_t uw[4] = {u.x, u.y, u.z, u.w}, vw[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
      for (int jj = 0; jj < 8; ++jj)
        a[jj][q] = __byte_perm(uw[jj / 2], vw[jj / 2], jj % 2 ? flip_hi : flip_lo);
    } else if constexpr (JT == 4) {
      // One 16-byte load: s = 2·quad, 2·quad + 1 (words 0–1, 2–3), 4 j each.
      const uint4 u = *reinterpret_cast<const uint4*>(rows + quad * 8);
      const uint32_t w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
      for (int jj = 0; jj < 4; ++jj)
        a[jj][q] = __byte_perm(w[jj / 2], w[jj / 2 + 2], jj % 2 ? 0x7632 : 0x5410);
    } else {
      // One 8-byte load: s = 2·quad, 2·quad + 1, 2 j each.
      const uint2 u = *reinterpret_cast<const uint2*>(rows + quad * 4);
      a[0][q] = __byte_perm(u.x, u.y, 0x5410);
      a[1][q] = __byte_perm(u.x, u.y, 0x7632);
    }
  }
}

// The producer warpgroup's share of a stage's x (kCopy, JT = 8): [8-s block][row][8 s][8 j], 16
// bytes per (block, row, s); thread `producer` copies s = producer % 8 of (block, row) pairs
// producer / 8 + 16·l. Rows past the batch and s past c are zero-filled.
template <typename Tile, typename T>
__device__ __forceinline__ void CopyXStage(const KsFactorParams& p, T* x_stage, int producer, int n0, int i,
                                           int j0, int block) {
  static_assert(Tile::JT == 8);
  const int64_t c = p.pattern.c, d = p.pattern.d, in = p.pattern.in_features();
  const int s8 = producer % 8;
  const T* const x = static_cast<const T*>(p.x) + i * c * d + j0;
#pragma unroll 4
  for (int l = 0; l < Tile::kKBlocks * Tile::BM / 16; ++l) {
    const int block_row = producer / 8 + 16 * l;
    const int kb = block_row / Tile::BM, row = block_row % Tile::BM;
    const int64_t n = n0 + row, s = (block + kb) * 8 + s8;
    const bool valid = n < p.batch && s < c;
    CpAsync<16>(x_stage + block_row * Tile::kXPitch + s8 * 8, valid ? x + n * in + s * d : x, valid);
  }
}

template <typename T, typename Tile>
__global__ void __launch_bounds__(kBlockThreads, 1)
    KsFactorWgmmaKernel(KsFactorParams p, BlockGrid grid, const __grid_constant__ CUtensorMap x_map,
                        const __grid_constant__ CUtensorMap w_map,
                        const __grid_constant__ CUtensorMap y_map) {
  constexpr int JT = Tile::JT, BM = Tile::BM, BN = Tile::BN, kK16 = Tile::kK16, kStages = Tile::kStages;
  constexpr bool kWholeJ = Tile::kLoad == XLoad::kTmaWhole;
  extern __shared__ __align__(kAlign) unsigned char shared_bytes[];
  // Rounded up by an offset into the shared array, so the compiler keeps shared loads on it.
  const uint32_t misalignment = SharedAddress(shared_bytes) % kAlign;
  unsigned char* const stages = shared_bytes + (misalignment == 0 ? 0 : kAlign - misalignment);
  unsigned char* const staging = stages + kStages * Tile::kStageBytes;  // kStaging: per warpgroup, the boxes
  uint64_t* const stage_full = reinterpret_cast<uint64_t*>(staging + Tile::kStagingBytes);
  uint64_t* const stage_empty = stage_full + kMaxStages;  // every consumer warp is done with it
  // A stage is full when its boxes have landed and, for x copied by the producer warpgroup, when
  // each of its 128 threads has seen its copies land.
  // With kPairX a stage is empty once the consumer warps of both blocks are done with it (the
  // producers write x into both).
  constexpr int kFullArrivals = kWholeJ ? 1 : 1 + 128;
  if (threadIdx.x == 0) {
    for (int st = 0; st < kStages; ++st) {
      MbarrierInit(&stage_full[st], kFullArrivals);
      MbarrierInit(&stage_empty[st], Tile::kClusterBlocks * kConsumerThreads / 32);
    }
    FenceMbarrierInit();
  }
  const uint32_t rank = Tile::kPairX ? ClusterCtaRank() : 0;  // the block's r tile of the pair
  if constexpr (Tile::kPairX) {
    ClusterSync();  // the other block's barriers are initialized
  } else {
    __syncthreads();
  }

  // With kPairX the grid's r tiles are pairs: tile t of the grid is run by both blocks of a cluster.
  const int64_t tiles = grid.blocks();
  const int64_t first_tile = blockIdx.x / Tile::kClusterBlocks, tile_step = gridDim.x / Tile::kClusterBlocks;
  const int steps = static_cast<int>((p.pattern.c + 16 * kK16 - 1) / (16 * kK16));
  if (threadIdx.x >= kConsumerThreads) {
    SetMaxRegisters<40, false>();
    // The producer fills each stage as soon as every consumer warp has released it: one thread
    // issues the boxes, the whole warpgroup copies x where TMA does not.
    const int producer = threadIdx.x - kConsumerThreads;
    const int d = static_cast<int>(p.pattern.d);
    uint32_t empty_phases = 0;  // bit s: the parity of stage s's next release
    int buffer = 0;
    int64_t issued = 0;
    for (int64_t tile = first_tile; tile < tiles && (!kWholeJ || producer == 0); tile += tile_step) {
      const BlockCoords at = DecodeBlock(grid, tile);
      const int i = static_cast<int>(at.i), j0 = static_cast<int>(at.jg) * JT;
      const int r0 = static_cast<int>(at.rt * Tile::kClusterBlocks + rank) * BN;
      const int n0 = static_cast<int>(at.nt) * BM;
      for (int step = 0; step < steps; ++step, ++issued) {
        if (issued >= kStages) {
          MbarrierWait(&stage_empty[buffer], empty_phases >> buffer & 1u);
          empty_phases ^= 1u << buffer;
        }
        unsigned char* const stage = stages + buffer * Tile::kStageBytes;
        uint64_t* const full = &stage_full[buffer];
        const int block = step * Tile::kKBlocks;  // first 8-s block
        if (producer == 0) {
          MbarrierArriveExpectTx(full, kWholeJ ? Tile::kStageBytes : Tile::kWBytes);
          if constexpr (Tile::kPairX) {
            constexpr int kHalf = Tile::kKBlocks / 2;  // this block's 8-s blocks, into both blocks
            TmaLoad4dMulticast(stage + rank * (Tile::kXBytes / 2), &x_map, 0, n0, block + rank * kHalf, i,
                               full, 0b11);
          } else if constexpr (kWholeJ) {
            TmaLoad4d(stage, &x_map, 0, n0, block, i, full);
          }
          TmaLoad3d(stage + Tile::kXBytes, &w_map, step * 16 * kK16, r0, i * d + j0, full);
        }
        if constexpr (!kWholeJ) {
          CopyXStage<Tile>(p, reinterpret_cast<T*>(stage), producer, n0, i, j0, block);
          CpAsyncMbarrierArrive(full);
        }
        if (++buffer == kStages) buffer = 0;
      }
    }
    if constexpr (Tile::kPairX) ClusterSync();
    return;
  }

  SetMaxRegisters<232, true>();
  const int warpgroup = threadIdx.x / 128, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  // The thread's rows: row and row + 8.
  const int row = 64 * warpgroup + 16 * warp + group;
  const int flip = JT == 8 ? group % 2 : 0;
  const uint32_t flip_lo = flip ? 0x1054 : 0x5410, flip_hi = flip ? 0x3276 : 0x7632;
  const int64_t b = p.pattern.b, d = p.pattern.d, out = p.pattern.out_features();
  const T* const bias = static_cast<const T*>(p.bias);
  T* const y = static_cast<T*>(p.y);

  float acc[JT][BN / 2];
  uint32_t full_phases = 0;  // bit s: the parity of stage s's next completion
  int buffer = 0;
  using Fragments = uint32_t[kK16][JT][4];
  // Waits for the stage in `buffer` and gathers its A fragments.
  const auto gather = [&](Fragments& a) {
    MbarrierWait(&stage_full[buffer], full_phases >> buffer & 1u);
    full_phases ^= 1u << buffer;
    const uint16_t* const x_stage = reinterpret_cast<const uint16_t*>(stages + buffer * Tile::kStageBytes);
#pragma unroll
    for (int kk = 0; kk < kK16; ++kk) {
      GatherFragments<Tile>(x_stage + 2 * kk * BM * Tile::kXPitch, row, quad, flip, flip_lo, flip_hi, a[kk]);
    }
  };
  // Issues the wgmma of the stage in `buffer` and moves on to the next stage; returns the stage.
  const auto issue = [&](const Fragments& a, bool first_step) {
    const uint64_t w_desc =
        SharedMatrixDescriptorSwizzle<Tile::kWRowBytes>(stages + buffer * Tile::kStageBytes + Tile::kXBytes);
    WgmmaFence();
#pragma unroll
    for (int kk = 0; kk < kK16; ++kk) {
#pragma unroll
      for (int jj = 0; jj < JT; ++jj) {
        // Descriptor addresses count 16 bytes: j's BN rows follow each other; the second k16 of a
        // 64-byte row starts 32 bytes on.
        constexpr uint64_t kJStep = BN * Tile::kWRowBytes / 16;
        WgmmaM64K16Rs<T, BN>(acc[jj], a[kk][jj], w_desc + jj * kJStep + 2 * kk,
                             /*accumulate=*/!first_step || kk > 0);
      }
    }
    WgmmaCommit();
    const int issued = buffer;
    if (++buffer == kStages) buffer = 0;
    return issued;
  };
  // The stage's wgmma are done (they read its w and their fragments' registers): release it.
  const auto release = [&](int stage) {
    WgmmaWait<0>();
    __syncwarp();
    if (lane == 0) {
      MbarrierArrive(&stage_empty[stage]);
      if constexpr (Tile::kPairX) MbarrierArriveRemote(&stage_empty[stage], rank ^ 1);
    }
  };
  // Two sets of fragment registers: the next step's are gathered while this step's wgmma run.
  Fragments a0, a1;
  for (int64_t tile = first_tile; tile < tiles; tile += tile_step) {
    gather(a0);
    for (int step = 0;;) {
      int issued = issue(a0, step == 0);
      if (step + 1 < steps) gather(a1);
      release(issued);
      if (++step == steps) break;
      issued = issue(a1, false);
      if (step + 1 < steps) gather(a0);
      release(issued);
      if (++step == steps) break;
    }

    // Accumulator element 4·nb + 2·upper + e of j is row row + 8·upper of the tile and output
    // r0 + 8·nb + 2·quad + e. The thread's outputs go out in runs contiguous in y: run k is, for
    // JT = d, all d of r and r + 1 (b is even) with r = r_first + 8·k; for JT = 8, the 8 j of
    // r = r_first + 8·(k / 2) + k % 2. Each run is one predicated store with no branch (guarded
    // stores written in C++ become branches that recompute each address), for JT = d at a constant
    // offset from its row's address.
    const BlockCoords at = DecodeBlock(grid, tile);
    const int64_t i = at.i, j0 = at.jg * JT, n0 = at.nt * BM;
    const int64_t r0 = (at.rt * Tile::kClusterBlocks + rank) * BN;  // past b with an odd pair: nothing stored
    const int64_t r_first = r0 + 2 * quad;
    constexpr int kRunWords = JT < 8 ? JT : 4;
    constexpr int kRuns = JT < 8 ? BN / 8 : BN / 4;
    constexpr auto run_r = [](int k) { return JT < 8 ? 8 * k : 8 * (k / 2) + k % 2; };
    const bool row_ok[2] = {n0 + row < p.batch, n0 + row + 8 < p.batch};
    T* const out_row[2] = {y + (n0 + row) * out + (i * b + r_first) * d + j0,
                           y + (n0 + row + 8) * out + (i * b + r_first) * d + j0};
    // Staged where every output r of the tile lies inside b (TMA clips rows past the batch, not
    // outputs of the next i). Output (m, 8·rr + j) of the warpgroup's rows is box rr / 8, row m,
    // 16-byte unit rr % 8 swizzled with m % 8 (the lane's group).
    const bool staged = Tile::kStaging && r0 + BN <= b;
    const bool issuer = threadIdx.x % 128 == 0;
    const uint32_t boxes_address = SharedAddress(staging) + warpgroup * (Tile::kStagingBytes / 2);
    if (staged) {
      if (issuer) BulkWaitRead<0>();  // the last tile's stores have read the boxes
      WarpgroupBarrier(warpgroup);
    }
    WithActivation(p.activation, [&](auto activation) {
      constexpr Activation kActivation = decltype(activation)::value;
      const auto finish = [&](auto with_bias, auto staged_constant) {
        constexpr bool kBias = decltype(with_bias)::value, kStaged = decltype(staged_constant)::value;
        StaticFor<kRuns>([&](auto k_constant) {
          constexpr int k = decltype(k_constant)::value, e0 = JT < 8 ? 0 : k % 2, nb = JT < 8 ? k : k / 2;
          const int64_t r = r_first + run_r(k);
          // Where r is past b nothing is stored: the bias of the last run inside b stands in (r = b - 2
          // where a run holds r and r + 1), so no load is guarded and none passes the bias.
          [[maybe_unused]] const T* const run_bias =
              kBias ? bias + (i * b + std::min<int64_t>(r, b - (JT < 8 ? 2 : 1))) * d + j0 : nullptr;
#pragma unroll
          for (int upper = 0; upper < 2; ++upper) {
            uint32_t words[kRunWords];
#pragma unroll
            for (int w = 0; w < kRunWords; ++w) {
              float v[2];
#pragma unroll
              for (int h = 0; h < 2; ++h) {
                const int f = 2 * w + h;  // the run's value f: j f % JT of r + e
                float value = acc[f % JT][4 * nb + 2 * upper + e0 + (JT < 8 ? f / JT : 0)];
                if constexpr (kBias) value += ToFloat(run_bias[f]);
                v[h] = ApplyActivationFor16Bit<kActivation>(value);
              }
              words[w] = PackPair<T>(v[0], v[1]);
            }
            [[maybe_unused]] const bool store = row_ok[upper] && r < b;  // staged: TMA clips
            if constexpr (kStaged) {
              const int m = 16 * warp + group + 8 * upper, rr = 2 * quad + run_r(k);  // r - r0
              StoreSharedWords<kRunWords>(
                  boxes_address + rr / 8 * (64 * 128) + m * 128 + (rr % 8 ^ group) * 16, words);
            } else if constexpr (kWholeJ) {
              constexpr int kOffsetBytes = run_r(k) * JT * static_cast<int>(sizeof(T));
              StoreGlobalWordsIf<kRunWords, kOffsetBytes>(out_row[upper], words, store);
            } else {
              StoreGlobalWordsIf<kRunWords, 0>(out_row[upper] + run_r(k) * d, words, store);
            }
          }
        });
      };
      const auto finish_staged_or_not = [&](auto with_bias) {
        if constexpr (Tile::kStaging) {
          if (staged) return finish(with_bias, std::true_type{});
        }
        finish(with_bias, std::false_type{});
      };
      if (bias != nullptr) {
        finish_staged_or_not(std::true_type{});
      } else {
        finish_staged_or_not(std::false_type{});
      }
    });
    if (staged) {
      FenceProxyAsync();  // the shared stores, before the TMA unit reads them
      WarpgroupBarrier(warpgroup);
      if (issuer) {
        for (int box = 0; box < Tile::kBoxes; ++box) {
          TmaStore2d(&y_map, staging + warpgroup * (Tile::kStagingBytes / 2) + box * (64 * 128),
                     static_cast<int>((i * b + r0) * d) + 64 * box, static_cast<int>(n0) + 64 * warpgroup);
        }
        BulkCommit();
      }
    }
  }
  if (Tile::kStaging && threadIdx.x % 128 == 0) BulkWait<0>();  // the last stores, before the block ends
  if constexpr (Tile::kPairX) ClusterSync();  // the other block no longer reaches into this one
}

template <typename T, typename Tile>
cudaError_t Launch(const KsFactorParams& p, const void* packed_w, cudaStream_t stream) {
  const auto kernel = KsFactorWgmmaKernel<T, Tile>;
  if (cudaError_t err = AllowDynamicShared(reinterpret_cast<const void*>(kernel), Tile::kSharedBytes);
      err != cudaSuccess) {
    return err;
  }
  int device = 0, sms = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      err != cudaSuccess) {
    return err;
  }
  const KsPattern& k = p.pattern;
  constexpr bool kBFloat16 = std::is_same_v<T, __nv_bfloat16>;
  CUtensorMap x_map{}, w_map{}, y_map{};  // x_map: kTmaWhole only; y_map: kStaging only
  if constexpr (Tile::kLoad == XLoad::kTmaWhole) {
    // (8 s × d values of an 8-s block, row, 8-s block, i)
    const int64_t dims[4] = {8 * k.d, p.batch, k.c / 8, k.a};
    const int64_t strides[3] = {k.in_features() * 2, 16 * k.d, k.c * k.d * 2};
    const int box[4] = {8 * Tile::JT, Tile::BM, Tile::kKBlocks / Tile::kClusterBlocks, 1};
    if (cudaError_t err = MakeTensorMap16(&x_map, p.x, kBFloat16, 4, dims, strides, box);
        err != cudaSuccess) {
      return err;
    }
  }
  {
    // Packed w: (s, r, i·d + j), rows of 16·kK16 s (whole 32-byte sectors), swizzled as wgmma reads them.
    const int64_t dims[3] = {k.c, k.b, k.a * k.d};
    const int64_t strides[2] = {k.c * 2, k.b * k.c * 2};
    const int box[3] = {16 * Tile::kK16, Tile::BN, Tile::JT};
    if (cudaError_t err =
            MakeTensorMap16(&w_map, packed_w, kBFloat16, 3, dims, strides, box, Tile::kWRowBytes);
        err != cudaSuccess) {
      return err;
    }
  }
  if constexpr (Tile::kStaging) {
    // Boxes of 64 rows × 64 outputs, 128-byte swizzled; every box starts on 16 bytes (d = 8).
    if (cudaError_t err = MakeTensorMap16(&y_map, p.y, kBFloat16, p.batch, k.out_features(), 64);
        err != cudaSuccess) {
      return err;
    }
  }
  const BlockGrid grid = MakeBlockGrid(k, p.batch, Tile::JT, Tile::BM, Tile::BN * Tile::kClusterBlocks, 2);
  if constexpr (Tile::kPairX) {
    // Clusters of two blocks, as many as can be resident at once.
    cudaLaunchAttribute cluster{};
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = 2;
    cluster.val.clusterDim.y = 1;
    cluster.val.clusterDim.z = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = dim3(2 * static_cast<unsigned>(std::max(1, sms / 2)));
    config.blockDim = dim3(kBlockThreads);
    config.dynamicSmemBytes = Tile::kSharedBytes;
    config.stream = stream;
    config.attrs = &cluster;
    config.numAttrs = 1;
    int clusters = 0;
    if (cudaError_t err = cudaOccupancyMaxActiveClusters(&clusters, kernel, &config); err != cudaSuccess) {
      return err;
    }
    if (clusters < 1) return cudaErrorInvalidConfiguration;
    config.gridDim = dim3(2 * static_cast<unsigned>(std::min<int64_t>(grid.blocks(), clusters)));
    return cudaLaunchKernelEx(&config, kernel, p, grid, x_map, w_map, y_map);
  } else {
    const int64_t blocks = std::min<int64_t>(grid.blocks(), sms);
    kernel<<<static_cast<unsigned>(blocks), kBlockThreads, Tile::kSharedBytes, stream>>>(p, grid, x_map,
                                                                                         w_map, y_map);
    return cudaGetLastError();
  }
}

}  // namespace

bool KsFactorWgmmaRuns(const KsFactorParams& p, const void* packed_w) {
  const KsPattern& k = p.pattern;
  if (p.dtype == DType::kFloat32 || packed_w == nullptr || !DeviceRunsWgmma()) return false;
  // Rows of x and packed w 16-byte aligned (c % 8); whole-run stores need b even when JT = d.
  const bool whole = k.d == 2 || k.d == 4 || k.d == 8;
  if (k.c % 8 != 0 || !(whole || k.d % 8 == 0) || (whole && k.d < 8 && k.b % 2 != 0)) return false;
  // Coordinates of the boxes are 32-bit.
  if (p.batch > int64_t{0x7fffffff} || k.a * k.d * k.b > int64_t{0x7fffffff}) return false;
  return Aligned(p.x, 16) && Aligned(p.y, 16) && Aligned(packed_w, 16) &&
         (p.bias == nullptr || Aligned(p.bias, 16));
}

cudaError_t LaunchKsFactorWgmma(const KsFactorParams& params, const void* packed_w, cudaStream_t stream,
                                WgTmaVariant variant) {
  if (!KsFactorWgmmaRuns(params, packed_w)) return cudaErrorInvalidValue;
  const bool pair_x = variant == WgTmaVariant::kPairX;
  return With16BitStorageType(params.dtype, [&](auto zero) {
    using T = decltype(zero);
    switch (params.pattern.d) {
      case 2:
        return pair_x ? Launch<T, WgFactorTile<2, XLoad::kTmaWhole, true>>(params, packed_w, stream)
                      : Launch<T, WgFactorTile<2, XLoad::kTmaWhole>>(params, packed_w, stream);
      case 4:
        return pair_x ? Launch<T, WgFactorTile<4, XLoad::kTmaWhole, true>>(params, packed_w, stream)
                      : Launch<T, WgFactorTile<4, XLoad::kTmaWhole>>(params, packed_w, stream);
      case 8:
        return pair_x ? Launch<T, WgFactorTile<8, XLoad::kTmaWhole, true>>(params, packed_w, stream)
                      : Launch<T, WgFactorTile<8, XLoad::kTmaWhole>>(params, packed_w, stream);
      default:
        return Launch<T, WgFactorTile<8, XLoad::kCopy>>(params, packed_w, stream);
    }
  });
}

}  // namespace ksserve::kernels::cuda

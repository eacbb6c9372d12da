// The fused pair on Hopper warpgroup MMA (sm_90; BF16/FP16, FP32 accumulation).
//
// Same chain and intermediate as ks_pair_tc.cu, built for throughput. A block of one or two
// warpgroups owns 64 batch rows per warpgroup and walks row tiles persistently. Each warpgroup
// holds up to four 64 × 64 FP32 accumulator tiles ("slots"), so one K-step feeds each warpgroup
// up to sixteen m64n64k16 wgmma:
//   phase 1, per (i1, 256 rows of K_1): slot q holds rows r0 + 64q, all against the same x slice;
//     where b1 <= 64, per group of blocks instead: slot q holds block i1 + q, each with its x slice;
//   phase 2, per (i2, 64·(4/d2) rows of K_2): slot q holds (sub = q / d2, j2 = q % d2), so
//     every j2 of an output row is in registers at once and the thread's 2·d2 outputs for two
//     adjacent r are contiguous in y. A chunk's outputs go out through a swizzled staging area and
//     TMA stores where y allows a tensor map and the staging leaves enough stages; else (and for
//     a chunk that ends past b2) each thread's 2·d2 outputs as one predicated store.
// The intermediate is kept as K-major core matrices per (i2, j2) so that phase 2 reads it
// straight from shared memory with wgmma. x and the weights come in by TMA (one thread issues a
// step's boxes; they land 128-byte swizzled, the layout wgmma reads), as many stages as fit, each
// completing on its own mbarrier; the pipeline runs on across phases and row tiles, and where a
// block's x slice is longer than the pipeline, x is asked into L2 a few steps ahead of its boxes.
// A step's wgmma keep running while the next step's boxes are asked for; the block waits for
// them only before an epilogue. With two warpgroups they may take turns instead, a chunk each
// (PairTile::kWgPingPong), so that one's epilogue overlaps the other's wgmma. Boxes that reach
// past a matrix read zeros there; where they reach into a neighbouring i or j instead, the other
// operand is zero there or the outputs are not stored. (So where c1 is not a multiple of 64, a
// non-finite x value can reach the outputs of the neighbouring i1 through 0 · inf; the model
// patterns have c1 % 64 == 0.)
#include <cudaTypedefs.h>

#include <algorithm>
#include <limits>

#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/tma_sm90.cuh"
#include "kernels/cuda/wgmma_sm90.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

constexpr int kSlots = 4;      // 64 × 64 accumulator tiles per warpgroup
constexpr int kSlotRows = 64;  // weight rows (outputs) per slot
constexpr int kBK = 64;        // K per step: four k16 wgmma per slot
constexpr int kMaxStages = 8;
constexpr int kPrefetchSteps = 4;          // how far x is asked into L2 ahead of its boxes
constexpr int64_t kSharedBudget = 232448;  // opt-in shared memory per block on sm_90
constexpr int kMaxSecondD = kSlots;        // every j2 of a row in one step
constexpr int kAlign = 1024;               // of a swizzled TMA box in shared memory
// Zero entries past the end of the bias and feature tables: an epilogue reads a whole chunk's
// entries, also those of rows r past b, without a test per value.
constexpr int kTablePad = kSlots * kSlotRows;
// A warpgroup's output staging for TMA stores: a phase-2 chunk's 64 rows × (up to) 256 outputs as
// four boxes of 64 × 64, each with 128-byte swizzle.
constexpr int kBoxElements = kSlotRows * 64;
constexpr int kStagingElements = kSlots * kBoxElements;
constexpr int kMinStagesWithStaging = 3;  // the staging takes the place of stages only down to this
constexpr int kMinStagesGrouped = 4;      // phase-1 blocks are grouped only down to this

struct WgPairGeometry {
  int mid_pitch = 0;       // c2 rounded up to kBK: K of one (i2, j2) intermediate tile
  int subs1 = 0;           // slots of a phase-1 chunk per block i1 (64 rows of K_1 each)
  // Blocks i1 per phase-1 chunk, each with its own x box: where b1 <= 64, a step then feeds more
  // than one slot's wgmma.
  int blocks1 = 1;
  int subs2 = 0;           // 64-row slices of K_2 per phase-2 chunk (each with all d2 slots)
  int stage_elements = 0;  // one stage: [blocks1 × BM × kBK of x (phase 1)][slots × 64 × kBK of w]
  int stages = 2;          // as many as fit next to the intermediate, up to kMaxStages
  int64_t row_tiles = 0;
  int64_t shared_bytes = 0;    // dynamic shared memory of a block
  bool vector_stores = false;  // y 16-byte aligned and b2 even: a thread's 2·d2 outputs as one store
  // Two warpgroups that take turns on the tensor cores, a chunk each (one's epilogue runs during the
  // other's wgmma); only where ChunksFitStages.
  bool alternate = false;
  // x asked into L2 ahead of its boxes, only where a block's x slice is longer than the pipeline:
  // where the stages cover it, the prefetches only add work for the TMA unit (measured slower).
  bool prefetch_x = false;
  // Phase-2 chunks go out through shared memory and TMA stores (full lines, asynchronous, bounds
  // left to the TMA unit), where y allows a tensor map and the staging leaves enough stages.
  bool staging = false;
};

// Shared memory of a block, in this order: the stages (1024-byte aligned), the output staging (if
// any), the intermediate, the bias in FP32 (zeros without one), the feature table (padded to 8
// bytes), the stage barriers. want_staging: y allows TMA stores.
template <int kWarpGroups>
WgPairGeometry Geometry(const KsPattern& first, const KsPattern& second, int64_t batch, bool want_staging) {
  constexpr int BM = 64 * kWarpGroups;
  WgPairGeometry g;
  g.mid_pitch = static_cast<int>((second.c + kBK - 1) / kBK * kBK);
  g.subs1 = static_cast<int>(std::min<int64_t>(kSlots, (first.b + kSlotRows - 1) / kSlotRows));
  g.subs2 = static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>(kSlots / std::max<int64_t>(second.d, 1), (second.b + kSlotRows - 1) / kSlotRows)));
  g.row_tiles = (batch + BM - 1) / BM;
  // Only chunks that lie inside b2 go out through the staging: some must (the first one does
  // where a whole chunk fits in b2, or where b2 is a multiple of 64).
  want_staging = want_staging && (g.subs2 * kSlotRows <= second.b || second.b % kSlotRows == 0);
  const int64_t fixed_bytes = kAlign + 2 * second.a * second.d * BM * g.mid_pitch +
                              4 * (second.out_features() + 1 + kTablePad) +
                              4 * (second.in_features() + 1 + kTablePad) +
                              16 * kMaxStages;  // full and empty barriers
  const int64_t staging_bytes = 2 * int64_t{kWarpGroups} * kStagingElements;
  // The most blocks per phase-1 chunk that leave kMinStagesGrouped stages.
  for (g.blocks1 = g.subs1 == 1 ? static_cast<int>(std::min<int64_t>(kSlots, first.a)) : 1;; --g.blocks1) {
    g.stage_elements =
        std::max(g.blocks1 * (BM + g.subs1 * kSlotRows), g.subs2 * static_cast<int>(second.d) * kSlotRows) *
        kBK;
    g.staging =
        want_staging && (kSharedBudget - fixed_bytes - staging_bytes) / (2 * int64_t{g.stage_elements}) >=
                            kMinStagesWithStaging;
    const int64_t budget = kSharedBudget - fixed_bytes - (g.staging ? staging_bytes : 0);
    g.stages = static_cast<int>(std::clamp<int64_t>(budget / (2 * int64_t{g.stage_elements}), 2, kMaxStages));
    if (g.blocks1 == 1 || g.stages >= kMinStagesGrouped) break;
  }
  g.shared_bytes = fixed_bytes + (g.staging ? staging_bytes : 0) + 2 * int64_t{g.stages} * g.stage_elements;
  g.prefetch_x = first.c > g.stages * kBK;
  return g;
}

// TMA stores need y 16-byte aligned and every box's first column too: a staged chunk's boxes start
// at (i2·b2 + r0)·d2 + 64·k with r0 a multiple of 64, so b2·d2 (a row of y per i2) must be a multiple
// of 8 outputs. Elsewhere a TMA store faults as an illegal instruction.
bool YAllowsStaging(const void* y, const KsPattern& second) {
  return reinterpret_cast<uintptr_t>(y) % 16 == 0 && second.b * second.d % 8 == 0;
}

// Whether two warpgroups can take turns on the tensor cores: only where a chunk's K-steps fit in
// the stages (the one waiting for its turn holds none of the next chunk's).
bool ChunksFitStages(const WgPairGeometry& g, const KsPattern& first, const KsPattern& second) {
  return (std::max(first.c, second.c) + kBK - 1) / kBK <= g.stages;
}

// Phase 2: where in a warpgroup's accumulators output o (0 <= o < 2·D2, in y order: r + o / D2,
// j2 = o % D2) of a thread's (slice sub, column block nb, row upper) lies.
template <int D2>
__device__ __forceinline__ constexpr int OutputIndex(int sub, int nb, int upper, int o) {
  return (sub * D2 + o % D2) * 32 + nb * 4 + upper * 2 + o / D2;
}

// Those 2·D2 outputs rounded to T, two per word, in y order.
template <typename T, int D2>
__device__ __forceinline__ void PackOutputs(const float* acc, int sub, int nb, int upper,
                                            uint32_t (&words)[D2]) {
#pragma unroll
  for (int w = 0; w < D2; ++w) {
    words[w] = PackPair<T>(acc[OutputIndex<D2>(sub, nb, upper, 2 * w)],
                           acc[OutputIndex<D2>(sub, nb, upper, 2 * w + 1)]);
  }
}

// Calls fn(std::integral_constant<int, D>{}) for D = d in 1..kMaxSecondD.
template <typename Fn>
__device__ __forceinline__ void WithSecondD(int d, Fn&& fn) {
  switch (d) {
    case 1:
      return fn(std::integral_constant<int, 1>{});
    case 2:
      return fn(std::integral_constant<int, 2>{});
    case 3:
      return fn(std::integral_constant<int, 3>{});
    default:
      return fn(std::integral_constant<int, 4>{});
  }
}

template <typename T, int kWarpGroups>
__global__ void __launch_bounds__(128 * kWarpGroups + 128, 1)
    KsPairWgmmaKernel(KsPairArgs p, WgPairGeometry g, const __grid_constant__ CUtensorMap x_map,
                      const __grid_constant__ CUtensorMap w1_map, const __grid_constant__ CUtensorMap w2_map,
                      const __grid_constant__ CUtensorMap y_map) {
  // Consumer warpgroups, then a producer warpgroup (one thread of it issues the boxes). The
  // producer hands its registers to the consumers (setmaxnreg), which hold 128 accumulators each.
  constexpr int BM = 64 * kWarpGroups, kThreads = 128 * kWarpGroups, kBlockThreads = kThreads + 128;
  constexpr int kSlotElements = kSlotRows * kBK;
  constexpr uint32_t kXBoxBytes = BM * kBK * 2, kSlotBoxBytes = kSlotElements * 2;
  extern __shared__ __align__(128) unsigned char shared_bytes[];
  const int a1 = static_cast<int>(p.first.a), b1 = static_cast<int>(p.first.b),
            c1 = static_cast<int>(p.first.c);
  const int a2 = static_cast<int>(p.second.a), b2 = static_cast<int>(p.second.b);
  const int c2 = static_cast<int>(p.second.c), d2 = static_cast<int>(p.second.d);
  const int out2 = a2 * b2 * d2, mid_pitch = g.mid_pitch;
  const int mid_tile = BM * mid_pitch;  // elements of one (i2, j2) intermediate tile
  // Rounded up by an offset into the shared array, not through an integer: the compiler then still
  // knows these are shared-memory pointers and uses shared loads and stores on them.
  const uint32_t misalignment = SharedAddress(shared_bytes) % kAlign;
  T* const stages = reinterpret_cast<T*>(shared_bytes + (misalignment == 0 ? 0 : kAlign - misalignment));
  T* const staging = stages + g.stages * g.stage_elements;  // per warpgroup: [4 boxes][64 rows][64 outputs]
  T* const mid = staging + (g.staging ? kWarpGroups * kStagingElements : 0);  // [(i2·d2 + j2)][BM × mid_pitch
                                                                              // core matrices]
  float* const bias_values = reinterpret_cast<float*>(mid + a2 * d2 * mid_tile);
  // Where intermediate feature f (row 0) lies in `mid`: the phase-1 epilogue looks it up rather
  // than dividing by c2 and d2 for every value.
  int* const feature_offset = reinterpret_cast<int*>(bias_values + out2 + out2 % 2 + kTablePad);
  uint64_t* const stage_full =
      reinterpret_cast<uint64_t*>(feature_offset + a1 * b1 + (a1 * b1) % 2 + kTablePad);
  uint64_t* const stage_empty = stage_full + kMaxStages;  // every consumer warp is done with it
  if (threadIdx.x == 0) {
    for (int st = 0; st < g.stages; ++st) {
      MbarrierInit(&stage_full[st], 1);
      MbarrierInit(&stage_empty[st], kThreads / 32);
    }
    FenceMbarrierInit();
  }

  // wgmma reads K up to the next multiple of kBK past c2; those columns must hold finite zeros.
  for (int e = threadIdx.x * 8; e < a2 * d2 * mid_tile; e += kBlockThreads * 8) {
    *reinterpret_cast<uint4*>(mid + e) = make_uint4(0, 0, 0, 0);
  }
  const T* const bias = static_cast<const T*>(p.bias);
  for (int f = threadIdx.x; f < out2 + kTablePad; f += kBlockThreads)
    bias_values[f] = bias != nullptr && f < out2 ? ToFloat(bias[f]) : 0.0f;
  for (int f = threadIdx.x; f < a1 * b1 + kTablePad; f += kBlockThreads) {
    const int i2 = f / (c2 * d2), rest = f - i2 * c2 * d2, s2 = rest / d2, j = rest - s2 * d2;
    feature_offset[f] = f < a1 * b1 ? (i2 * d2 + j) * mid_tile + (s2 / 8) * 64 + s2 % 8 : 0;
  }

  const int chunk1 = g.subs1 * kSlotRows, chunk2 = g.subs2 * kSlotRows;
  // The 64-row slices of a chunk whose weight rows start inside b: a prefix of the chunk.
  const auto active_subs = [](int subs, int b, int r0) {
    return min(subs, (b - r0 + kSlotRows - 1) / kSlotRows);
  };
  FenceProxyAsync();  // the zeros of the intermediate, before wgmma reads them
  __syncthreads();    // the barriers, the bias and the table are ready

  // Producer and consumers walk the same schedule: per row tile, phase 1 then phase 2; per phase,
  // i, then chunks of weight rows r0, then K-steps k0, one pipeline stage each.
  if (threadIdx.x >= kThreads) {
    SetMaxRegisters<40, false>();
    // The producer: one thread fills each stage as soon as every consumer warp has released it,
    // so no consumer waits on box issue. Nothing below waits for this warp.
    if (threadIdx.x == kThreads) {
      // x boxes into L2 kPrefetchSteps steps ahead of their loads (where g.prefetch_x): DRAM latency
      // is longer than the pipeline covers, and boxes asked for much earlier would leave L2 again
      // before their loads. The weights stay in L2 anyway.
      struct {
        int64_t tile;
        int phase, i, r0, k0;
      } ahead = {blockIdx.x, 1, 0, 0, 0};
      const auto prefetch = [&] {
        if (!g.prefetch_x || ahead.tile >= g.row_tiles) return;
        const bool first_phase = ahead.phase == 1;
        if (first_phase && ahead.r0 == 0) {
          for (int b = 0; b < min(g.blocks1, a1 - ahead.i); ++b) {
            TmaPrefetch2d(&x_map, (ahead.i + b) * c1 + ahead.k0, static_cast<int>(ahead.tile * BM));
          }
        }
        if ((ahead.k0 += kBK) < (first_phase ? c1 : c2)) return;
        ahead.k0 = 0;
        if ((ahead.r0 += first_phase ? chunk1 : chunk2) < (first_phase ? b1 : b2)) return;
        ahead.r0 = 0;
        if ((ahead.i += first_phase ? g.blocks1 : 1) < (first_phase ? a1 : a2)) return;
        ahead.i = 0;
        ahead.phase = first_phase ? 2 : 1;
        if (!first_phase) ahead.tile += gridDim.x;
      };
      for (int n = 0; n < kPrefetchSteps; ++n) prefetch();
      int buffer = 0;
      bool wrapped = false;       // every stage filled once: wait for its release from now on
      uint32_t empty_phases = 0;  // bit s: the parity of stage s's next release
      // The stage to fill next, once free, and its barrier armed for `bytes`.
      const auto acquire = [&](uint32_t bytes) {
        if (wrapped) {
          MbarrierWait(&stage_empty[buffer], empty_phases >> buffer & 1u);
          empty_phases ^= 1u << buffer;
        }
        MbarrierArriveExpectTx(&stage_full[buffer], bytes);
        return stages + buffer * g.stage_elements;
      };
      const auto next = [&] {
        if (++buffer == g.stages) {
          buffer = 0;
          wrapped = true;
        }
        prefetch();
      };
      for (int64_t tile = blockIdx.x; tile < g.row_tiles; tile += gridDim.x) {
        const int row = static_cast<int>(tile * BM);
        for (int i = 0; i < a1; i += g.blocks1) {
          const int blocks = min(g.blocks1, a1 - i);
          for (int r0 = 0; r0 < b1; r0 += chunk1) {
            const int subs = active_subs(g.subs1, b1, r0);
            for (int k0 = 0; k0 < c1; k0 += kBK) {
              T* const stage = acquire(blocks * (subs * kSlotBoxBytes + kXBoxBytes));
              for (int b = 0; b < blocks; ++b) {
                TmaLoad2d(stage + b * BM * kBK, &x_map, (i + b) * c1 + k0, row, &stage_full[buffer]);
                for (int q = 0; q < subs; ++q) {
                  TmaLoad2d(stage + g.blocks1 * BM * kBK + (b * subs + q) * kSlotElements, &w1_map, k0,
                            (i + b) * b1 + r0 + q * kSlotRows, &stage_full[buffer]);
                }
              }
              next();
            }
          }
        }
        for (int i = 0; i < a2; ++i) {
          for (int r0 = 0; r0 < b2; r0 += chunk2) {
            const int subs = active_subs(g.subs2, b2, r0);
            for (int k0 = 0; k0 < c2; k0 += kBK) {
              T* const stage = acquire(subs * d2 * kSlotBoxBytes);
              for (int sub = 0; sub < subs; ++sub) {
                for (int j = 0; j < d2; ++j) {
                  TmaLoad2d(stage + (sub * d2 + j) * kSlotElements, &w2_map, k0,
                            (i * d2 + j) * b2 + r0 + sub * kSlotRows, &stage_full[buffer]);
                }
              }
              next();
            }
          }
        }
      }
    }
    return;
  }

  SetMaxRegisters<kWarpGroups == 1 ? 240 : 232, true>();
  // The warpgroup index through a shuffle: the compiler then knows it is the same in the whole warp
  // and keeps the wgmma descriptors built from it in uniform registers.
  const int warpgroup = __shfl_sync(0xffffffffu, static_cast<int>(threadIdx.x / 128), 0);
  const int warp = (threadIdx.x % 128) / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  T* const y = static_cast<T*>(p.y);
  // Slot q (64 outputs) in acc[32·q ...]: phase 1, K_1 rows r0 + 64q; phase 2, rows r0 + 64·sub of
  // j2 in slot sub·d2 + j2. The first wgmma of a chunk overwrites, the rest accumulate.
  float acc[kSlots * 32];

  // Descriptors of stage 0 (stage s is s · stage_units further on) and of the warpgroup's rows of
  // the intermediate; address fields count 16 bytes.
  const uint32_t stage_units = static_cast<uint32_t>(g.stage_elements * 2 / 16);
  const uint64_t x_descriptor = SharedMatrixDescriptorSwizzle128(stages + 64 * warpgroup * kBK);
  const uint64_t w1_descriptor = SharedMatrixDescriptorSwizzle128(stages + g.blocks1 * BM * kBK);
  // Phase 1: slot q reads x box q where blocks are grouped, else the one x box.
  const uint32_t x_slot_units = g.blocks1 > 1 ? BM * kBK * 2 / 16 : 0;
  const uint64_t w2_descriptor = SharedMatrixDescriptorSwizzle128(stages);
  const uint64_t mid_descriptor = SharedMatrixDescriptor(mid + 8 * warpgroup * (mid_pitch / 8) * 64,
                                                         static_cast<uint32_t>(mid_pitch / 8 * 128));
  const uint32_t mid_tile_units = static_cast<uint32_t>(mid_tile * 2 / 16);  // one (i2, j2) tile on

  int buffer = 0, previous = -1;  // the stage of this step and of the one before
  uint32_t phases = 0;            // bit s: the parity of stage s's next completion
  // One K-step: once its stage is full, the wgmma of its `slots` active slots (a prefix), each a
  // base plus a constant; then the previous step's stage goes back to the producer.
  const auto mma_step = [&](auto first_phase_constant, int slots, uint64_t a_base, uint64_t b_base,
                            bool overwrite) {
    constexpr bool kFirstPhase = decltype(first_phase_constant)::value;
    MbarrierWait(&stage_full[buffer], phases >> buffer & 1u);
    phases ^= 1u << buffer;
    b_base = DescriptorPlus(b_base, buffer * stage_units);
    if constexpr (kFirstPhase) a_base = DescriptorPlus(a_base, buffer * stage_units);
    // Each count of active slots has its own straight run of wgmma, so that no branch lies between
    // them (the compiler would fence the warpgroup before every one). One m64n64k16 per slot and
    // k16: wider ones over adjacent slots make ptxas serialize the wgmma of some mixes of counts.
    const auto issue = [&](auto slots_constant) {
      constexpr int kActive = decltype(slots_constant)::value;
      // The next k16 is 32 bytes on in a swizzled box, 256 bytes on in the intermediate; K past c
      // reads zeros from one side or the other.
      constexpr uint32_t kAStep = kFirstPhase ? 2 : 16, kSlotStep = kSlotElements * 2 / 16;
      WgmmaFence();
#pragma unroll
      for (int q = 0; q < kActive; ++q) {
        uint64_t a_descriptor;
        if constexpr (kFirstPhase) {
          a_descriptor = DescriptorPlus(a_base, q * x_slot_units);
        } else {  // slot q is j2 = q mod d2 of its slice (d2 <= 4)
          a_descriptor =
              DescriptorPlus(a_base, (q - ((q >= d2) + (q >= 2 * d2) + (q >= 3 * d2)) * d2) * mid_tile_units);
        }
        float(&d)[32] = *reinterpret_cast<float(*)[32]>(&acc[q * 32]);
#pragma unroll
        for (int kk = 0; kk < kBK / 16; ++kk) {
          WgmmaM64K16<T, 64>(d, DescriptorPlus(a_descriptor, kk * kAStep),
                             DescriptorPlus(b_base, q * kSlotStep + kk * 2), !(overwrite && kk == 0));
        }
      }
    };
    using std::integral_constant;
    switch (slots) {
      case 4:
        issue(integral_constant<int, 4>{});
        break;
      case 3:
        issue(integral_constant<int, 3>{});
        break;
      case 2:
        issue(integral_constant<int, 2>{});
        break;
      default:
        issue(integral_constant<int, 1>{});
    }
    WgmmaCommit();
    // The previous step's wgmma are done (this step's may still run): this warp releases the
    // stage they read to the producer.
    WgmmaWait<1>();
    if (previous >= 0 && lane == 0) MbarrierArrive(&stage_empty[previous]);
    previous = buffer;
    if (++buffer == g.stages) buffer = 0;
  };
  // Taking turns (g.alternate): warpgroup w waits on barrier kTurn + w before a chunk's wgmma and
  // hands the turn on after them; warpgroup 0 goes first.
  constexpr int kTurn = 1 + kWarpGroups;  // past the warpgroup barriers
  const bool alternate = kWarpGroups == 2 && g.alternate;
  bool first_chunk = true;
  const auto wait_turn = [&] {
    if (alternate && !(warpgroup == 0 && first_chunk)) NamedBarrierSync(kTurn + warpgroup, kThreads);
    first_chunk = false;
  };
  const auto pass_turn = [&] {
    if (alternate) NamedBarrierArrive(kTurn + 1 - warpgroup, kThreads);
  };
  using Phase1 = std::integral_constant<bool, true>;
  using Phase2 = std::integral_constant<bool, false>;

  // The epilogues of a complete chunk. Accumulator element 4·nb + 2·upper + e of a slot is row
  // m_base + 8·upper of the block's rows (m_base = 64·warpgroup + 16·warp + group) and column
  // 8·nb + 2·quad + e of the slot.
  const uint32_t mid_address = SharedAddress(mid);
  // Phase 1, slot q: block i + q, its rows 0..63, where blocks are grouped; else block i, rows
  // r0 + 64·q.
  const int slot_features = g.blocks1 > 1 ? b1 : kSlotRows, slot_rows = g.blocks1 > 1 ? 0 : kSlotRows;
  const auto phase1_epilogue = [&](int i, int r0, int slots, int m_base) {
    // Into the intermediate, rounded to the storage type as a separate factor call would. A
    // slot's 16 column offsets are read before its stores: shared stores may alias the table, so
    // interleaved they would wait for each other. One byte address per value of the thread's
    // first row, the second row (+8) a constant further on; the stores predicated rather than
    // branched around, and all made where every slot's rows lie inside b1.
    const uint32_t row_address =
        mid_address + 2 * static_cast<uint32_t>((m_base / 8) * (mid_pitch / 8) * 64 + (m_base % 8) * 8);
    const uint32_t upper_bytes = static_cast<uint32_t>(2 * (mid_pitch / 8) * 64);
    const bool whole = r0 + (slot_rows == 0 ? 1 : slots) * kSlotRows <= b1;
#pragma unroll
    for (int q = 0; q < kSlots; ++q) {
      if (q >= slots) break;
      const int* const offsets = feature_offset + i * b1 + r0 + q * slot_features + quad * 2;
      int column[16];
#pragma unroll
      for (int k = 0; k < 16; ++k) column[k] = offsets[(k / 2) * 8 + k % 2];
#pragma unroll
      for (int k = 0; k < 16; ++k) {
        const int nb = k / 2, e = k % 2;
        const bool store = whole || r0 + q * slot_rows + nb * 8 + quad * 2 + e < b1;
        const uint32_t address = row_address + 2 * static_cast<uint32_t>(column[k]);
#pragma unroll
        for (int upper = 0; upper < 2; ++upper) {
          StoreShared16If(address + upper * upper_bytes, FromFloat<T>(acc[q * 32 + nb * 4 + upper * 2 + e]),
                          store);
        }
      }
    }
  };
  // A phase-2 chunk starts from its bias (rows r past b2 read the table's zero padding), so that its
  // epilogue reads nothing but registers. No wgmma is in flight here (the last chunk's epilogue
  // waited for them all); the wait says so to the compiler, which would serialize the chunk's
  // wgmma otherwise.
  const auto start_from_bias = [&](int i, int r0, int subs) {
    WgmmaWait<0>();
    WithSecondD(d2, [&](auto d2_constant) {
      constexpr int D2 = decltype(d2_constant)::value;
#pragma unroll
      for (int sub = 0; sub < kSlots / D2; ++sub) {
        if (sub >= subs) break;
#pragma unroll
        for (int nb = 0; nb < 8; ++nb) {
          // The 2·D2 biases of outputs r and r + 1, every j: contiguous in the table.
          const float* const from = bias_values + (i * b2 + r0 + sub * kSlotRows + nb * 8 + quad * 2) * D2;
#pragma unroll
          for (int o = 0; o < 2 * D2; ++o) {
            acc[OutputIndex<D2>(sub, nb, 0, o)] = from[o];
            acc[OutputIndex<D2>(sub, nb, 1, o)] = from[o];
          }
        }
      }
    });
  };
  const auto phase2_epilogue = [&](int64_t tile, int i, int r0, int subs, int m_base) {
    // The thread's two rows of y, and whether they exist (the last row tile may be partial).
    const int64_t n = tile * BM + m_base;
    const bool row_ok[2] = {n < p.batch, n + 8 < p.batch};
    T* const out_row[2] = {y + n * out2, y + (n + 8) * out2};
    WithActivation(p.activation, [&](auto activation) {
      constexpr Activation kActivation = decltype(activation)::value;
      if constexpr (kActivation != Activation::kNone) {
        // In place first, with no memory access in between: the values are independent, and
        // the compiler interleaves them.
#pragma unroll
        for (int q = 0; q < kSlots; ++q) {
          if (q >= subs * d2) break;
#pragma unroll
          for (int k = 0; k < 32; ++k)
            acc[q * 32 + k] = ApplyActivationFor16Bit<kActivation>(acc[q * 32 + k]);
        }
      }
    });
    if (g.staging && r0 + subs * kSlotRows <= b2) {
      // Every output of the chunk belongs to it: into the staging boxes, then out by TMA. Output
      // (m, f) of the chunk is column f % 64 of box f / 64, its 16-byte unit swizzled with m % 8.
      T* const boxes = staging + warpgroup * kStagingElements;
      // The lane's place through opaque moves: the addresses below are the same for every chunk, and
      // hoisted out of the loops they would take registers the accumulators need.
      const uint32_t boxes_address = SharedAddress(boxes);
      int lane_group, lane_quad;
      asm volatile("mov.b32 %0, %1;\n" : "=r"(lane_group) : "r"(group));
      asm volatile("mov.b32 %0, %1;\n" : "=r"(lane_quad) : "r"(quad));
      const bool issuer = threadIdx.x % 128 == 0;
      if (issuer) BulkWaitRead<0>();  // the last chunk's stores have read the boxes
      WarpgroupBarrier(warpgroup);
      WithSecondD(d2, [&](auto d2_constant) {
        constexpr int D2 = decltype(d2_constant)::value;
#pragma unroll
        for (int sub = 0; sub < kSlots / D2; ++sub) {
          if (sub >= subs) break;
#pragma unroll
          for (int nb = 0; nb < 8; ++nb) {
            const int first = (sub * kSlotRows + nb * 8 + lane_quad * 2) * D2;  // the 2·D2 outputs from here
#pragma unroll
            for (int upper = 0; upper < 2; ++upper) {
              const int m = 16 * warp + lane_group + 8 * upper;
              uint32_t words[D2];
              PackOutputs<T, D2>(acc, sub, nb, upper, words);
              const auto at = [&](int f) {  // m % 8 is the lane's group
                const int c = f % 64;
                return boxes_address + 2 * static_cast<uint32_t>((f / 64) * kBoxElements + m * 64 +
                                                                 (((c / 8) ^ lane_group) * 8) + c % 8);
              };
              if constexpr (D2 == 3) {
                // 12 bytes may cross a 16-byte unit: three words, each inside one.
#pragma unroll
                for (int w = 0; w < D2; ++w) StoreSharedWords<1>(at(first + 2 * w), {words[w]});
              } else {
                StoreSharedWords<D2>(at(first), words);  // inside one 16-byte unit
              }
            }
          }
        }
      });
      FenceProxyAsync();  // the shared stores, before the TMA unit reads them
      WarpgroupBarrier(warpgroup);
      if (issuer) {
        for (int k = 0; k < subs * d2; ++k) {
          TmaStore2d(&y_map, boxes + k * kBoxElements, (i * b2 + r0) * d2 + 64 * k,
                     static_cast<int>(tile * BM) + 64 * warpgroup);
        }
        BulkCommit();
      }
      return;
    }
    // Else each thread's 2·D2 outputs per (slice, column block, row) as one predicated store: one
    // address per (slice, row), the column blocks at constant offsets from it.
    WithSecondD(d2, [&](auto d2_constant) {
      constexpr int D2 = decltype(d2_constant)::value;
      const auto store_chunk = [&](auto vector_constant) {
        constexpr bool kVector = decltype(vector_constant)::value;
#pragma unroll
        for (int sub = 0; sub < kSlots / D2; ++sub) {
          if (sub >= subs) break;
          const int r_first = r0 + sub * kSlotRows + quad * 2;  // the thread's r in column block 0
          const bool whole = r0 + (sub + 1) * kSlotRows <= b2;  // every row of the slice inside b2
#pragma unroll
          for (int upper = 0; upper < 2; ++upper) {
            T* const out = out_row[upper] + (i * b2 + r_first) * D2;
            StaticFor<8>([&](auto nb_constant) {
              constexpr int nb = decltype(nb_constant)::value;
              const int r = r_first + 8 * nb;  // and r + 1
              const bool r_ok[2] = {whole || r < b2, whole || r + 1 < b2};
              const bool store = row_ok[upper] && r_ok[0];
              if constexpr (kVector) {
                uint32_t words[D2];
                PackOutputs<T, D2>(acc, sub, nb, upper, words);
                StoreGlobalWordsIf<D2, 8 * nb * D2* static_cast<int>(sizeof(T))>(out, words, store);
              } else {
#pragma unroll
                for (int o = 0; o < 2 * D2; ++o) {
                  if (store && (o < D2 || r_ok[1])) {
                    out[8 * nb * D2 + o] = FromFloat<T>(acc[OutputIndex<D2>(sub, nb, upper, o)]);
                  }
                }
              }
            });
          }
        }
      };
      if (g.vector_stores) {
        store_chunk(std::true_type{});
      } else {
        store_chunk(std::false_type{});
      }
    });
  };

  // A chunk's wgmma are done: the epilogue reads the accumulators, and the chunk's last stage goes
  // back to the producer now rather than after the epilogue.
  const auto end_chunk = [&] {
    WgmmaWait<0>();
    if (lane == 0) MbarrierArrive(&stage_empty[previous]);
    previous = -1;
  };
  const int m_base = 64 * warpgroup + 16 * warp + group;
  for (int64_t tile = blockIdx.x; tile < g.row_tiles; tile += gridDim.x) {
    for (int i = 0; i < a1; i += g.blocks1) {
      const int blocks = min(g.blocks1, a1 - i);
      for (int r0 = 0; r0 < b1; r0 += chunk1) {
        const int slots = blocks * active_subs(g.subs1, b1, r0);
        wait_turn();
        for (int k0 = 0; k0 < c1; k0 += kBK) mma_step(Phase1{}, slots, x_descriptor, w1_descriptor, k0 == 0);
        pass_turn();
        end_chunk();
        phase1_epilogue(i, r0, slots, m_base);
      }
    }
    // Phase 2's wgmma read only the warpgroup's own rows of the intermediate: its threads' writes,
    // then a barrier of the warpgroup, come before them.
    FenceProxyAsync();
    WarpgroupBarrier(warpgroup);
    for (int i = 0; i < a2; ++i) {
      for (int r0 = 0; r0 < b2; r0 += chunk2) {
        const int subs = active_subs(g.subs2, b2, r0);
        start_from_bias(i, r0, subs);
        wait_turn();
        for (int k0 = 0; k0 < c2; k0 += kBK) {
          mma_step(Phase2{}, subs * d2,
                   DescriptorPlus(mid_descriptor, (i * d2 * mid_tile + k0 / 8 * 64) * 2 / 16), w2_descriptor,
                   false);
        }
        pass_turn();
        end_chunk();
        phase2_epilogue(tile, i, r0, subs, m_base);
      }
    }
  }
  // Warpgroup 0 takes the last turn warpgroup 1 handed on, so that no barrier is left half-done.
  if (alternate && warpgroup == 0 && !first_chunk) NamedBarrierSync(kTurn, kThreads);
  if (g.staging && threadIdx.x % 128 == 0) BulkWait<0>();  // the last stores, before the block ends
}

template <typename T, int kWarpGroups>
cudaError_t Launch(const KsPairArgs& p, bool alternate, cudaStream_t stream) {
  const bool y_aligned = reinterpret_cast<uintptr_t>(p.y) % 16 == 0;
  WgPairGeometry g = Geometry<kWarpGroups>(p.first, p.second, p.batch, YAllowsStaging(p.y, p.second));
  g.vector_stores = p.second.b % 2 == 0 && y_aligned;
  g.alternate = alternate && kWarpGroups == 2 && ChunksFitStages(g, p.first, p.second);
  const int64_t shared_bytes = g.shared_bytes;
  if (shared_bytes > std::numeric_limits<int>::max()) return cudaErrorInvalidValue;
  const auto kernel = KsPairWgmmaKernel<T, kWarpGroups>;
  if (cudaError_t err =
          AllowDynamicShared(reinterpret_cast<const void*>(kernel), static_cast<int>(shared_bytes));
      err != cudaSuccess) {
    return err;
  }
  int device = 0, sms = 0, blocks_per_sm = 0;
  if (cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  if (cudaError_t err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
      err != cudaSuccess) {
    return err;
  }
  if (cudaError_t err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(
          &blocks_per_sm, kernel, 128 * kWarpGroups + 128, static_cast<size_t>(shared_bytes));
      err != cudaSuccess) {
    return err;
  }
  const KsPattern& first = p.first;
  const KsPattern& second = p.second;
  constexpr bool kBFloat16 = std::is_same_v<T, __nv_bfloat16>;
  CUtensorMap x_map, w1_map, w2_map, y_map = {};
  for (const cudaError_t err :
       {MakeTensorMap16(&x_map, p.x, kBFloat16, p.batch, first.a * first.c, 64 * kWarpGroups),
        MakeTensorMap16(&w1_map, p.w1, kBFloat16, first.a * first.b, first.c, kSlotRows),
        MakeTensorMap16(&w2_map, p.w2_grouped, kBFloat16, second.a * second.d * second.b, second.c,
                        kSlotRows)}) {
    if (err != cudaSuccess) return err;
  }
  if (g.staging) {
    if (cudaError_t err = MakeTensorMap16(&y_map, p.y, kBFloat16, p.batch, second.out_features(), kSlotRows);
        err != cudaSuccess) {
      return err;
    }
  }
  const int64_t blocks = std::min<int64_t>(g.row_tiles, int64_t{sms} * std::max(blocks_per_sm, 1));
  kernel<<<static_cast<unsigned>(blocks), 128 * kWarpGroups + 128, static_cast<int>(shared_bytes), stream>>>(
      p, g, x_map, w1_map, w2_map, y_map);
  return cudaGetLastError();
}

}  // namespace

bool PairTileUsesWgmma(PairTile tile) {
  return tile == PairTile::kWgM64 || tile == PairTile::kWgM128 || tile == PairTile::kWgPingPong;
}

bool KsPairWgmmaRuns(const KsPattern& second) { return second.d <= kMaxSecondD && DeviceRunsWgmma(); }

int64_t KsPairWgmmaSharedBytes(const KsPattern& first, const KsPattern& second, PairTile tile) {
  // As launched where y allows the staging. A launch without it may take more, but no more than
  // kSharedBudget (the sm_90 limit) unless even two stages do not fit; then neither size includes
  // the staging, and the two agree.
  return tile == PairTile::kWgM64 ? Geometry<1>(first, second, 1, true).shared_bytes
                                  : Geometry<2>(first, second, 1, true).shared_bytes;
}

PairTile KsPairWgmmaTile(const KsPattern& first, const KsPattern& second, Activation activation,
                         const void* y) {
  // By measurement on the model pairs (bench/results/h200-ksbench-pairs-tiles.csv): one warpgroup
  // per block (finer row tiles, the TMA-store epilogue) is fastest, except where the second factor
  // has an activation and two warpgroups can take turns: their epilogues then run during each
  // other's wgmma.
  if (activation != Activation::kNone &&
      ChunksFitStages(Geometry<2>(first, second, 1, YAllowsStaging(y, second)), first, second)) {
    return PairTile::kWgPingPong;
  }
  return PairTile::kWgM64;
}

cudaError_t LaunchKsPairWgmma(const KsPairArgs& params, PairTile tile, cudaStream_t stream) {
  if (!PairTileUsesWgmma(tile) || !KsPairWgmmaRuns(params.second)) return cudaErrorInvalidValue;
  return With16BitStorageType(params.dtype, [&](auto zero) {
    using T = decltype(zero);
    return tile == PairTile::kWgM64 ? Launch<T, 1>(params, false, stream)
                                    : Launch<T, 2>(params, tile == PairTile::kWgPingPong, stream);
  });
}

}  // namespace ksserve::kernels::cuda

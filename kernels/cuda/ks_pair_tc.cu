// Two KS factors in one kernel on tensor cores (BF16/FP16, FP32 accumulation): the intermediate
// never leaves shared memory.
//
// A block owns BM batch rows of the chain y = act(x · (K_2 K_1)ᵀ + bias). Phase 1 computes all of
// its rows of t = x · K_1ᵀ (K_1 has d = 1, so each i1 is a plain GEMM on contiguous columns of x),
// rounds them to the storage type as a separate factor call would, and stores them in the layout
// the second factor reads: [j2][row][i2·c2 + s2], k-contiguous for ldmatrix. Phase 2 computes the
// output tiles (i2, BN rows of r2, every j2 in turn) from there and K_2's grouped weights
// [(i2·d2 + j2)][r2][s2], with the bias and activation, into a shared output tile: the BN·d2
// outputs of one (i2, r2 tile) are contiguous in y, so once the last j2 is in, the tile goes out
// in whole 16-byte runs. Both phases run as one sequence of K-steps through one cp.async pipeline,
// so the weights of the next tile are in flight while the current one finishes, also across the
// phase change; x is prefetched into L2 a few slices ahead of its copies, so those wait on L2
// rather than on DRAM.
#include <algorithm>
#include <limits>

#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

// BM batch rows × BN outputs per K-step of BK, kStages deep, 8 warps (kWarpsM along rows).
// kMinBlocks caps registers so that many blocks share an SM.
template <int BM_, int BN_, int BK_, int kWarpsM_, int kStages_, int kMinBlocks_>
struct PairShape {
  static constexpr int BM = BM_, BN = BN_, BK = BK_, kStages = kStages_, kMinBlocks = kMinBlocks_;
  static constexpr int kThreads = 256, kWarpsM = kWarpsM_, kWarpsN = 8 / kWarpsM;
  static constexpr int WM = BM / kWarpsM, WN = BN / kWarpsN, kMi = WM / 16, kNi = WN / 8;
  static constexpr int kStride = BK + 8;  // an odd number of 16-byte units: conflict-free ldmatrix
  static constexpr int kStageElements = (BM + BN) * kStride;
  static_assert(WM % 16 == 0 && WN % 16 == 0 && (BK == 32 || BK == 64));
};
using PairM64N64 = PairShape<64, 64, 32, 2, 3, 2>;     // warps of 32 × 16, two blocks per SM
using PairM64N64K64 = PairShape<64, 64, 64, 2, 3, 2>;  // half the steps
using PairM64N128 = PairShape<64, 128, 32, 2, 3, 2>;   // warps of 32 × 32, two blocks per SM
using PairM64N128K64 = PairShape<64, 128, 64, 2, 3, 1>;
using PairM128N128 = PairShape<128, 128, 32, 2, 3, 1>;  // warps of 64 × 32

struct PairGeometry {
  int mid_pitch = 0;           // row pitch of the intermediate, in elements
  int out_pitch = 0;           // row pitch of the output tile, in elements
  int steps1 = 0, steps2 = 0;  // K-steps per output tile of each phase
  int prefetch_slices = 1;     // how many i1 slices of x the L2 prefetch runs ahead
};

// Asks L2 to fetch the line at p without waiting for it.
__device__ __forceinline__ void PrefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

template <typename T, typename Shape>
__global__ void __launch_bounds__(Shape::kThreads, Shape::kMinBlocks)
    KsPairKernel(KsPairArgs p, PairGeometry g) {
  constexpr int BM = Shape::BM, BN = Shape::BN, BK = Shape::BK, kStages = Shape::kStages;
  constexpr int kThreads = Shape::kThreads, kStride = Shape::kStride;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const int a1 = static_cast<int>(p.first.a), b1 = static_cast<int>(p.first.b),
            c1 = static_cast<int>(p.first.c);
  const int a2 = static_cast<int>(p.second.a), b2 = static_cast<int>(p.second.b);
  const int c2 = static_cast<int>(p.second.c), d2 = static_cast<int>(p.second.d);
  const int in1 = a1 * c1, out2 = a2 * b2 * d2;
  T* const mid = reinterpret_cast<T*>(shared_bytes);  // [d2][BM][mid_pitch]
  T* const out_tile = mid + d2 * BM * g.mid_pitch;    // [BM][out_pitch]
  T* const stages = out_tile + BM * g.out_pitch;      // [kStages][BM rows of x | BN rows of w]

  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int rows = static_cast<int>(min(p.batch - n0, int64_t{BM}));
  const T* const x = static_cast<const T*>(p.x) + n0 * in1;
  const T* const w1 = static_cast<const T*>(p.w1);
  const T* const w2 = static_cast<const T*>(p.w2_grouped);

  // Phase-2 K-steps run up to BK − 1 past c2: into the next i2's columns or this zeroed tail,
  // always finite, and always times zero-filled weights.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int row = warp; row < d2 * BM; row += kThreads / 32) {
    for (int s = a2 * c2 + lane; s < g.mid_pitch; s += 32) mid[row * g.mid_pitch + s] = T(0.0f);
  }

  // Where the pipeline is: the phase, i (i1 or i2), the r tile, j2 (phase 2) and the K-step.
  // Counters, not divisions: one for the copies, one for the math.
  struct Position {
    int phase = 1, i = 0, r0 = 0, j = 0, k_step = 0;
  };
  const auto advance = [&](Position& at) {
    if (++at.k_step < (at.phase == 1 ? g.steps1 : g.steps2)) return;
    at.k_step = 0;
    if (at.phase == 2 && ++at.j < d2) return;
    at.j = 0;
    at.r0 += BN;
    if (at.r0 < (at.phase == 1 ? b1 : b2)) return;
    at.r0 = 0;
    if (++at.i < (at.phase == 1 ? a1 : a2)) return;
    at.i = 0;
    ++at.phase;  // 3: past the end
  };
  // x slices [first, last) of every row of the block, into L2, one 128-byte line per prefetch.
  const auto prefetch_x = [&](int first, int last) {
    last = min(last, a1);
    if (first >= last) return;
    const int lines = ((last - first) * c1 * static_cast<int>(sizeof(T)) + 127) / 128;
#pragma unroll 1
    for (int row = warp; row < rows; row += kThreads / 32) {
      const char* const start = reinterpret_cast<const char*>(x + row * in1 + first * c1);
#pragma unroll 1
      for (int line = lane; line < lines; line += 32) PrefetchL2(start + line * 128);
    }
  };

  // Each thread copies the same 16-byte chunk (s offset copy_s) of rows copy_row + l·kRowsPerPass
  // in every step: in phase 1 the x rows, then the w1 rows of the tile; in phase 2 the w2 rows.
  // Sources and the rows that exist are worked out at the start of each output tile; a step
  // costs one bound check and one pointer increment per copy. Copies outside the tensors pass
  // their own address with src-size 0: nothing is read, zeros land.
  constexpr int kChunksPerRow = BK / 8, kRowsPerPass = kThreads / kChunksPerRow;
  constexpr int kCopies1 = (BM + BN) / kRowsPerPass, kCopies2 = BN / kRowsPerPass;
  static_assert(BM % kRowsPerPass == 0 && BN % kRowsPerPass == 0 && kCopies1 <= 32);
  const int copy_row = threadIdx.x / kChunksPerRow, copy_s = (threadIdx.x % kChunksPerRow) * 8;
  const T* source[kCopies1];
  uint32_t rows_valid = 0;  // bit l: the row of copy l exists
  int source_s = 0;         // the next step's s of this thread's chunk
  const auto start_tile = [&](const Position& at) {
    source_s = copy_s;
    rows_valid = 0;
    if (at.phase == 1) {
#pragma unroll
      for (int l = 0; l < kCopies1; ++l) {
        const int row = copy_row + l * kRowsPerPass;
        if (l * kRowsPerPass < BM) {  // compile-time: x rows
          source[l] = x + row * in1 + at.i * c1 + copy_s;
          if (row < rows) rows_valid |= 1u << l;
        } else {
          const int r = at.r0 + row - BM;
          source[l] = w1 + (int64_t{at.i} * b1 + r) * c1 + copy_s;
          if (r < b1) rows_valid |= 1u << l;
        }
      }
    } else {
#pragma unroll
      for (int l = 0; l < kCopies2; ++l) {
        const int r = at.r0 + copy_row + l * kRowsPerPass;
        source[l] = w2 + ((int64_t{at.i} * d2 + at.j) * b2 + r) * c2 + copy_s;
        if (r < b2) rows_valid |= 1u << l;
      }
    }
  };
  const auto load = [&](const Position& at, int buffer) {
    if (at.phase > 2) return;
    T* const tile = stages + buffer * Shape::kStageElements + copy_row * kStride + copy_s;
    if (at.k_step == 0) {
      start_tile(at);
      if (at.phase == 1 && at.r0 == 0) {
        if (at.i == 0) {
          prefetch_x(0, g.prefetch_slices + 1);
        } else {
          prefetch_x(at.i + g.prefetch_slices, at.i + g.prefetch_slices + 1);
        }
      }
    }
    if (at.phase == 1) {
      const bool s_valid = source_s < c1;
#pragma unroll
      for (int l = 0; l < kCopies1; ++l) {
        CpAsync<16>(tile + l * kRowsPerPass * kStride, source[l], s_valid && (rows_valid >> l & 1u));
        source[l] += BK;
      }
    } else {
      const bool s_valid = source_s < c2;
#pragma unroll
      for (int l = 0; l < kCopies2; ++l) {
        CpAsync<16>(tile + (BM + l * kRowsPerPass) * kStride, source[l], s_valid && (rows_valid >> l & 1u));
        source[l] += BK;
      }
    }
    source_s += BK;
  };

  Position copy_at;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    load(copy_at, st);
    CpAsyncCommit();
    advance(copy_at);
  }

  const int group = lane / 4, quad = lane % 4;
  const int warp_m = warp / Shape::kWarpsN, warp_n = warp % Shape::kWarpsN;
  const T* const bias = static_cast<const T*>(p.bias);
  T* const y = static_cast<T*>(p.y) + n0 * out2;
  const bool y_vectors = out2 % 8 == 0 && reinterpret_cast<uintptr_t>(p.y) % 16 == 0;
  float acc[Shape::kMi][Shape::kNi][4] = {};
  // Where this lane's ldmatrix rows start, relative to its warp's tiles: A in a stage (phase 1)
  // or in the intermediate (phase 2), B in a stage.
  const int a_stage_offset = (warp_m * Shape::WM + lane % 16) * kStride + (lane / 16) * 8;
  const int a_mid_offset = (warp_m * Shape::WM + lane % 16) * g.mid_pitch + (lane / 16) * 8;
  const int b_offset =
      (BM + warp_n * Shape::WN + lane % 8 + (lane / 16) * 8) * kStride + ((lane / 8) % 2) * 8;

  Position at;
  int buffer = 0, copy_buffer = kStages - 1;
  while (at.phase <= 2) {
    CpAsyncWait<kStages - 2>();
    // This step has landed; every warp is past the buffer the next copy reuses, past the
    // intermediate writes of phase 1 and past the reads of the last output-tile flush.
    __syncthreads();
    load(copy_at, copy_buffer);
    CpAsyncCommit();
    advance(copy_at);
    if (++copy_buffer == kStages) copy_buffer = 0;

    const bool first_phase = at.phase == 1;
    // Warps whose outputs all lie past b (a narrow b in a wide tile) skip the math.
    if (at.r0 + warp_n * Shape::WN < (first_phase ? b1 : b2)) {
      const T* const tile = stages + buffer * Shape::kStageElements;
      const T* const b_tile = tile + b_offset;
      const T* const a_tile = first_phase
                                  ? tile + a_stage_offset
                                  : mid + at.j * BM * g.mid_pitch + a_mid_offset + at.i * c2 + at.k_step * BK;
      const int a_pitch = first_phase ? kStride : g.mid_pitch;
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
        uint32_t af[Shape::kMi][4], bf[Shape::kNi][2];
#pragma unroll
        for (int mi = 0; mi < Shape::kMi; ++mi) LdMatrixX4(af[mi], a_tile + mi * 16 * a_pitch + kk);
#pragma unroll
        for (int ni = 0; ni < Shape::kNi; ni += 2) {
          uint32_t r[4];
          LdMatrixX4(r, b_tile + ni * 8 * kStride + kk);
          bf[ni][0] = r[0];
          bf[ni][1] = r[1];
          bf[ni + 1][0] = r[2];
          bf[ni + 1][1] = r[3];
        }
#pragma unroll
        for (int mi = 0; mi < Shape::kMi; ++mi) {
#pragma unroll
          for (int ni = 0; ni < Shape::kNi; ++ni) Mma<T>(acc[mi][ni], af[mi], bf[ni]);
        }
      }
    }
    if (++buffer == kStages) buffer = 0;
    const Position done = at;
    advance(at);
    if (at.k_step != 0) continue;

    // The tile is complete: phase 1 stores it into the intermediate, phase 2 into the output tile.
    if (first_phase) {
#pragma unroll
      for (int ni = 0; ni < Shape::kNi; ++ni) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int r = done.r0 + warp_n * Shape::WN + ni * 8 + quad * 2 + e;
          if (r >= b1) continue;
          const int feature = done.i * b1 + r;  // d1 = 1
          const int j = feature % d2, s2 = (feature / d2) % c2, i = feature / (d2 * c2);
          T* const column = mid + j * BM * g.mid_pitch + i * c2 + s2;
#pragma unroll
          for (int mi = 0; mi < Shape::kMi; ++mi) {
#pragma unroll
            for (int upper = 0; upper < 2; ++upper) {
              const int m = warp_m * Shape::WM + mi * 16 + group + upper * 8;
              column[m * g.mid_pitch] = FromFloat<T>(acc[mi][ni][upper * 2 + e]);
            }
          }
        }
      }
    } else {
      WithActivation(p.activation, [&](auto activation) {
#pragma unroll
        for (int ni = 0; ni < Shape::kNi; ++ni) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int tile_r = warp_n * Shape::WN + ni * 8 + quad * 2 + e, r = done.r0 + tile_r;
            if (r >= b2) continue;
            const float bias_value = bias != nullptr ? ToFloat(bias[(done.i * b2 + r) * d2 + done.j]) : 0.0f;
            T* const column = out_tile + tile_r * d2 + done.j;
#pragma unroll
            for (int mi = 0; mi < Shape::kMi; ++mi) {
#pragma unroll
              for (int upper = 0; upper < 2; ++upper) {
                const int m = warp_m * Shape::WM + mi * 16 + group + upper * 8;
                column[m * g.out_pitch] = FromFloat<T>(ApplyActivationFor16Bit<decltype(activation)::value>(
                    acc[mi][ni][upper * 2 + e] + bias_value));
              }
            }
          }
        }
      });
      if (done.j == d2 - 1) {
        // Every j2 of this r tile is in: BN·d2 contiguous outputs per row go out.
        __syncthreads();
        const int width = min(BN, b2 - done.r0) * d2;
        const int first = (done.i * b2 + done.r0) * d2;
        if (y_vectors && first % 8 == 0 && width % 8 == 0) {
          for (int m = warp; m < rows; m += kThreads / 32) {
            for (int v = lane * 8; v < width; v += 32 * 8) {
              *reinterpret_cast<uint4*>(y + m * out2 + first + v) =
                  *reinterpret_cast<const uint4*>(out_tile + m * g.out_pitch + v);
            }
          }
        } else {
          for (int m = warp; m < rows; m += kThreads / 32) {
            for (int v = lane; v < width; v += 32) y[m * out2 + first + v] = out_tile[m * g.out_pitch + v];
          }
        }
      }
    }
#pragma unroll
    for (int mi = 0; mi < Shape::kMi; ++mi) {
#pragma unroll
      for (int ni = 0; ni < Shape::kNi; ++ni) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;
      }
    }
  }
  CpAsyncWait<0>();
}

template <typename Shape>
PairGeometry Geometry(const KsPattern& first, const KsPattern& second) {
  constexpr int kBK = Shape::BK, block_rows = Shape::BM, block_outputs = Shape::BN;
  PairGeometry g;
  g.steps1 = static_cast<int>((first.c + kBK - 1) / kBK);
  g.steps2 = static_cast<int>((second.c + kBK - 1) / kBK);
  // Room for the last i2's K-step overrun, 16-byte rows, and an odd number of 16-byte units per
  // row so the eight rows of an ldmatrix fall in different banks.
  int pitch = static_cast<int>(((second.a - 1) * second.c + g.steps2 * kBK + 7) / 8 * 8);
  if ((pitch / 8) % 2 == 0) pitch += 8;
  g.mid_pitch = pitch;
  g.out_pitch = static_cast<int>(block_outputs * second.d + 8);  // block_outputs·d2 is a multiple of 16
  // About 32 KB of x per block ahead of the copies.
  const int64_t slice_bytes = int64_t{block_rows} * first.c * 2;
  g.prefetch_slices =
      static_cast<int>(std::clamp<int64_t>((32768 + slice_bytes - 1) / slice_bytes, 1, first.a));
  return g;
}

template <typename Shape>
int64_t PairSharedBytes(const KsPattern& first, const KsPattern& second) {
  const PairGeometry g = Geometry<Shape>(first, second);
  return 2 * (second.d * Shape::BM * g.mid_pitch + int64_t{Shape::BM} * g.out_pitch +
              int64_t{Shape::kStages} * Shape::kStageElements);
}

// Calls fn(Shape{}) for the shape of `tile` (not kRule).
template <typename Fn>
auto WithPairShape(PairTile tile, Fn&& fn) {
  switch (tile) {
    case PairTile::kM64N64K64:
      return fn(PairM64N64K64{});
    case PairTile::kM64N128:
      return fn(PairM64N128{});
    case PairTile::kM64N128K64:
      return fn(PairM64N128K64{});
    case PairTile::kM128N128:
      return fn(PairM128N128{});
    case PairTile::kRule:
    case PairTile::kM64N64:
    case PairTile::kWgM64:  // not here: ks_pair_wgmma.cu
    case PairTile::kWgM128:
    case PairTile::kWgPingPong:
      break;
  }
  return fn(PairM64N64{});
}

template <typename T, typename Shape>
cudaError_t Launch(const KsPairArgs& p, cudaStream_t stream) {
  const PairGeometry g = Geometry<Shape>(p.first, p.second);
  const int64_t shared_bytes = PairSharedBytes<Shape>(p.first, p.second);
  if (shared_bytes > std::numeric_limits<int>::max()) return cudaErrorInvalidValue;
  const auto kernel = KsPairKernel<T, Shape>;
  if (cudaError_t err =
          AllowDynamicShared(reinterpret_cast<const void*>(kernel), static_cast<int>(shared_bytes));
      err != cudaSuccess) {
    return err;
  }
  const int64_t blocks = (p.batch + Shape::BM - 1) / Shape::BM;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(blocks), Shape::kThreads, static_cast<int>(shared_bytes), stream>>>(p, g);
  return cudaGetLastError();
}

}  // namespace

int64_t KsPairSharedBytes(const KsPattern& first, const KsPattern& second, PairTile tile) {
  return WithPairShape(tile, [&](auto shape) { return PairSharedBytes<decltype(shape)>(first, second); });
}

cudaError_t LaunchKsPairTc(const KsPairArgs& params, PairTile tile, cudaStream_t stream) {
  if (tile == PairTile::kRule) return cudaErrorInvalidValue;
  return WithPairShape(tile, [&](auto shape) {
    return With16BitStorageType(
        params.dtype, [&](auto zero) { return Launch<decltype(zero), decltype(shape)>(params, stream); });
  });
}

}  // namespace ksserve::kernels::cuda

// Two KS factors in one kernel on tensor cores (BF16/FP16, FP32 accumulation): the intermediate
// never leaves shared memory.
//
// A block owns BM batch rows of the chain y = act(x · (K_2 K_1)ᵀ + bias). It first computes all
// of its rows of t = x · K_1ᵀ (K_1 has d = 1, so each i1 is a plain GEMM on contiguous columns of
// x), rounds them to the storage type as a separate factor call would, and stores them in the
// layout the second factor reads: [j2][row][i2·c2 + s2], k-contiguous for ldmatrix. Then it
// computes every output tile (i2, j2, BN rows of r2) from that tile and K_2's grouped weights
// [(i2·d2 + j2)][r2][s2], with the bias and activation in the epilogue. Both phases run as one
// sequence of K-steps through the same cp.async pipeline, so the weights of the next tile are in
// flight while the current one finishes, also across the phase change.
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

constexpr int kStages = 3;
constexpr int kThreads = 256;                   // 8 warps: 2 along rows × 4 along outputs
constexpr int kBN = 64, kBK = 32, kStride = kBK + 8;  // 80-byte rows: conflict-free ldmatrix

struct PairGeometry {
  int pitch = 0;            // row pitch of the intermediate, in elements
  int steps1 = 0, steps2 = 0;  // K-steps per output tile
  int outer1 = 0, outer2 = 0;  // a1, and a2 · d2: the GEMMs of each phase
};

template <typename T, int BM>
__global__ void __launch_bounds__(kThreads, 1) KsPairKernel(KsPairArgs p, PairGeometry g) {
  constexpr int WM = BM / 2, kMi = WM / 16;
  constexpr int kStageElements = (BM + kBN) * kStride;
  extern __shared__ __align__(16) unsigned char shared_bytes[];
  const KsPattern k1 = p.first, k2 = p.second;
  const int in1 = static_cast<int>(k1.in_features()), out2 = static_cast<int>(k2.out_features());
  const int c2 = static_cast<int>(k2.c), d2 = static_cast<int>(k2.d);
  const int mid_width = static_cast<int>(k2.a) * c2;  // one j2 row of the intermediate
  T* const mid = reinterpret_cast<T*>(shared_bytes);  // [d2][BM][pitch]
  T* const stages = mid + d2 * BM * g.pitch;          // [kStages][BM rows of x | kBN rows of w]

  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int rows = static_cast<int>(min(p.batch - n0, int64_t{BM}));
  const T* const x = static_cast<const T*>(p.x) + n0 * in1;
  const T* const w1 = static_cast<const T*>(p.w1);
  const T* const w2 = static_cast<const T*>(p.w2_grouped);
  const int c1 = static_cast<int>(k1.c), b1 = static_cast<int>(k1.b), b2 = static_cast<int>(k2.b);

  // Phase-2 K-steps run up to kBK − 1 past c2: into the next i2's columns or this zeroed tail,
  // always finite, and always times zero-filled weights.
  const int tail = g.pitch - mid_width;
  for (int e = threadIdx.x; e < d2 * BM * tail; e += kThreads) {
    mid[(e / tail) * g.pitch + mid_width + e % tail] = T(0.0f);
  }

  // Where the pipeline is: the phase, the output tile (outer = i1, or i2·d2 + j2, and r0) and
  // the K-step within it. Counters, not divisions: one for the copies, one for the math.
  struct Position {
    int phase = 1, outer = 0, r0 = 0, k_step = 0;
  };
  const auto advance = [&](Position& at) {
    if (++at.k_step < (at.phase == 1 ? g.steps1 : g.steps2)) return;
    at.k_step = 0;
    at.r0 += kBN;
    if (at.r0 < (at.phase == 1 ? b1 : b2)) return;
    at.r0 = 0;
    if (++at.outer < (at.phase == 1 ? g.outer1 : g.outer2)) return;
    at.outer = 0;
    ++at.phase;  // 3: past the end
  };
  const auto load = [&](const Position& at, int buffer) {
    T* const tile = stages + buffer * kStageElements;
    const int s0 = at.k_step * kBK;
    constexpr int kChunksPerRow = kBK / 8;
    if (at.phase == 1) {
#pragma unroll
      for (int l = 0; l < ((BM + kBN) * kChunksPerRow + kThreads - 1) / kThreads; ++l) {
        const int e = threadIdx.x + l * kThreads;
        if (e >= (BM + kBN) * kChunksPerRow) break;
        const int row = e / kChunksPerRow, s = s0 + (e % kChunksPerRow) * 8;
        const bool is_x = row < BM;
        const int r = at.r0 + row - BM;
        const bool valid = s < c1 && (is_x ? row < rows : r < b1);
        const T* source = is_x ? x + row * in1 + at.outer * c1 + s : w1 + (int64_t{at.outer} * b1 + r) * c1 + s;
        CpAsync<16>(tile + row * kStride + (e % kChunksPerRow) * 8, valid ? source : w1, valid);
      }
    } else if (at.phase == 2) {
#pragma unroll
      for (int l = 0; l < (kBN * kChunksPerRow + kThreads - 1) / kThreads; ++l) {
        const int e = threadIdx.x + l * kThreads;
        if (e >= kBN * kChunksPerRow) break;
        const int row = e / kChunksPerRow, s = s0 + (e % kChunksPerRow) * 8, r = at.r0 + row;
        const bool valid = s < c2 && r < b2;
        CpAsync<16>(tile + (BM + row) * kStride + (e % kChunksPerRow) * 8,
                    valid ? w2 + (int64_t{at.outer} * b2 + r) * c2 + s : w2, valid);
      }
    }
  };

  Position copy_at;
#pragma unroll
  for (int st = 0; st < kStages - 1; ++st) {
    load(copy_at, st);
    CpAsyncCommit();
    advance(copy_at);
  }

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;
  const int warp_m = warp / 4, warp_n = warp % 4;
  const T* const bias = static_cast<const T*>(p.bias);
  T* const y = static_cast<T*>(p.y) + n0 * out2;
  float acc[kMi][2][4] = {};

  Position at;
  int buffer = 0, copy_buffer = kStages - 1;
  while (at.phase <= 2) {
    CpAsyncWait<kStages - 2>();
    // This step has landed; every warp is past the buffer the next copy reuses, and past the
    // intermediate writes of phase 1.
    __syncthreads();
    load(copy_at, copy_buffer);
    CpAsyncCommit();
    advance(copy_at);
    if (++copy_buffer == kStages) copy_buffer = 0;

    const bool first_phase = at.phase == 1;
    const T* const tile = stages + buffer * kStageElements;
    const T* const b_tile = tile + (BM + warp_n * 16) * kStride;
    const int i2 = at.outer / d2, j2 = at.outer % d2;  // phase 2
    const T* const a_tile = first_phase ? tile + warp_m * WM * kStride
                                        : mid + (j2 * BM + warp_m * WM) * g.pitch + i2 * c2 + at.k_step * kBK;
    const int a_pitch = first_phase ? kStride : g.pitch;
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 16) {
      uint32_t af[kMi][4], bf[2][2];
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) LoadFragmentA(af[mi], a_tile + mi * 16 * a_pitch + kk, a_pitch, lane);
      LoadFragmentsB(bf[0], bf[1], b_tile + kk, kStride, lane);
#pragma unroll
      for (int mi = 0; mi < kMi; ++mi) {
        Mma<T>(acc[mi][0], af[mi], bf[0]);
        Mma<T>(acc[mi][1], af[mi], bf[1]);
      }
    }
    if (++buffer == kStages) buffer = 0;
    const Position done = at;
    advance(at);
    if (at.k_step != 0) continue;

    // The tile is complete: phase 1 stores it into the intermediate, phase 2 into y.
#pragma unroll
    for (int ni = 0; ni < 2; ++ni) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int r = done.r0 + warp_n * 16 + ni * 8 + quad * 2 + e;
        if (first_phase) {
          if (r >= b1) continue;
          const int feature = done.outer * b1 + r;  // d1 = 1
          const int j = feature % d2, s2 = (feature / d2) % c2, i = feature / (d2 * c2);
          T* const column = mid + j * BM * g.pitch + i * c2 + s2;
#pragma unroll
          for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
            for (int upper = 0; upper < 2; ++upper) {
              const int m = warp_m * WM + mi * 16 + group + upper * 8;
              column[m * g.pitch] = FromFloat<T>(acc[mi][ni][upper * 2 + e]);
            }
          }
        } else {
          if (r >= b2) continue;
          const int64_t feature = (int64_t{i2} * b2 + r) * d2 + j2;
          const float bias_value = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
#pragma unroll
          for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
            for (int upper = 0; upper < 2; ++upper) {
              const int m = warp_m * WM + mi * 16 + group + upper * 8;
              if (m < rows) {
                y[m * out2 + feature] = FromFloat<T>(ApplyActivation(acc[mi][ni][upper * 2 + e] + bias_value, p.activation));
              }
            }
          }
        }
      }
    }
#pragma unroll
    for (int mi = 0; mi < kMi; ++mi) {
#pragma unroll
      for (int ni = 0; ni < 2; ++ni) {
#pragma unroll
        for (int q = 0; q < 4; ++q) acc[mi][ni][q] = 0.0f;
      }
    }
  }
  CpAsyncWait<0>();
}

template <int BM>
int PairSharedBytes(const KsPattern& second, int pitch) {
  return 2 * (static_cast<int>(second.d) * BM * pitch + kStages * (BM + kBN) * kStride);
}

int PairPitch(const KsPattern& second) {
  // Room for a K-step's overrun, 16-byte rows, and an odd number of 16-byte units per row so the
  // eight rows of an ldmatrix fall in different banks.
  int pitch = static_cast<int>((second.a * second.c + kBK + 7) / 8 * 8);
  if ((pitch / 8) % 2 == 0) pitch += 8;
  return pitch;
}

template <typename T, int BM>
cudaError_t Launch(const KsPairArgs& p, cudaStream_t stream) {
  PairGeometry g;
  g.pitch = PairPitch(p.second);
  g.steps1 = static_cast<int>((p.first.c + kBK - 1) / kBK);
  g.steps2 = static_cast<int>((p.second.c + kBK - 1) / kBK);
  g.outer1 = static_cast<int>(p.first.a);
  g.outer2 = static_cast<int>(p.second.a * p.second.d);
  const int shared_bytes = PairSharedBytes<BM>(p.second, g.pitch);
  const auto kernel = KsPairKernel<T, BM>;
  if (cudaError_t err = AllowDynamicShared(reinterpret_cast<const void*>(kernel), shared_bytes); err != cudaSuccess) {
    return err;
  }
  const int64_t blocks = (p.batch + BM - 1) / BM;
  if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
  kernel<<<static_cast<unsigned>(blocks), kThreads, shared_bytes, stream>>>(p, g);
  return cudaGetLastError();
}

}  // namespace

int KsPairSharedBytes(const KsPattern& second, int block_rows) {
  const int pitch = PairPitch(second);
  return block_rows == 128 ? PairSharedBytes<128>(second, pitch) : PairSharedBytes<64>(second, pitch);
}

cudaError_t LaunchKsPairTc(const KsPairArgs& params, int block_rows, cudaStream_t stream) {
  if (block_rows != 64 && block_rows != 128) return cudaErrorInvalidValue;
  const auto launch = [&](auto zero) {
    using T = decltype(zero);
    return block_rows == 128 ? Launch<T, 128>(params, stream) : Launch<T, 64>(params, stream);
  };
  return With16BitStorageType(params.dtype, launch);
}

}  // namespace ksserve::kernels::cuda

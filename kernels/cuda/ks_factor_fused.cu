// The fused output-stationary KS factor kernel (CUDA cores, FP32 accumulation, any dtype).
//
// One factor is a·d independent GEMMs Y_ij (B×b) = X_ij (B×c) · W_ijᵀ, with X_ij = X[:, i, :, j].
// A thread block owns, for one i, a group of JT consecutive j, BM batch rows and BN output rows
// r, and walks s in steps of BK: each step stages the X and W tiles in shared memory (as FP32,
// transposed so every thread reads its TM×TN operands as float4), while the next step's tiles
// are already in flight in registers. Global loads run along the memory's contiguous direction:
// (s, j) flattened, which is all of a step's elements of one row when JT = d, and s when d = 1.
// A warp works on one j (where a j's tile has 32 threads or more), as 4 × 8 threads of TM × TN,
// so its operand reads are few distinct float4s that shared memory broadcasts; a thread's TM
// rows (TN columns) are float4 runs kThreadsM·4 (kThreadsN·4) apart, so the eight threads of a
// quarter warp read one contiguous 128-byte run. A shared tile is [k][jj][row] with 4 floats of
// padding per k, so a warp's transposed stores (rows × k) land in distinct banks. The finished
// tile goes through shared memory once more so y is written in whole runs, as vectors where the
// runs allow. A variant of the 4-j tile keeps four steps of x and w in flight with cp.async
// (FP32, d a multiple of 4), for patterns that wait on memory; another moves each landed step to
// the transposed layout in shared memory, for the float4 operand reads with the pipeline; a third
// reads float4s of 4 j straight from the landed steps, each thread owning all 4 j of its outputs.
// Blocks run in the order of block_order.h, so the ones that share x or w meet in L2. Any
// pattern and batch: every edge is predicated, out-of-range operands are 0.
#include <algorithm>

#include "kernels/block_order.h"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/tile_stage.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

template <int JT_, int BM_, int BN_, int BK_, int TM_, int TN_>
struct Tile {
  static constexpr int JT = JT_, BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreadsM = BM / TM, kThreadsN = BN / TN;
  static constexpr int kThreadsPerJ = kThreadsM * kThreadsN;
  static constexpr int kThreads = JT * kThreadsPerJ;
  // A warp as 4 × 8 threads where one j's threads allow it; else the threads of a j row by row.
  static constexpr bool kWarpBlocks = kThreadsPerJ % 32 == 0 && kThreadsM % 4 == 0 && kThreadsN % 8 == 0;
  static constexpr int kXPitch = JT * BM + 4, kWPitch = JT * BN + 4;  // floats per k
  static constexpr int kStepFloats = BK * (kXPitch + kWPitch);
  // The output tile, staged as [m][jj][r]: the pitch keeps a warp's reads of consecutive
  // (r, jj) in distinct banks for JT up to 4.
  static constexpr int kYPitch = BN + 8;
  static constexpr int kSharedFloats = std::max(2 * kStepFloats, BM * JT * kYPitch);
  static constexpr int kSharedBytes = 4 * kSharedFloats;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tiles are read as float4");
  static_assert(BM % TM == 0 && BN % TN == 0);
  static_assert(kThreads <= 256);
};

// A thread's j in the group (jj) and place (tm, tn) among its j's threads: with kWarpBlocks a warp
// works on one j as 4 × 8 threads, else the threads of a j go row by row.
template <typename TileT>
__device__ __forceinline__ void ThreadPlace(int& jj, int& tm, int& tn) {
  jj = threadIdx.x / TileT::kThreadsPerJ;
  const int within = threadIdx.x % TileT::kThreadsPerJ;
  if constexpr (TileT::kWarpBlocks) {
    const int warp = within / 32, lane = within % 32;
    tn = (warp % (TileT::kThreadsN / 8)) * 8 + lane % 8;
    tm = (warp / (TileT::kThreadsN / 8)) * 4 + lane / 8;
  } else {
    tn = within % TileT::kThreadsN;
    tm = within / TileT::kThreadsN;
  }
}

// Writes a finished FP32 tile staged as [m][jj][r] (pitch y_pitch) to y, which points at the
// tile's first element: element f = rr·JT + jo of row m goes to y[m·out + rr·d + jo]. With
// y_vec > 1 the host found that many consecutive f contiguous and aligned in y (runs of (r, j)
// when JT = d, of j when JT divides d: whole j groups, only r runs out).
template <typename T, int BM, int BN, int JT, int kThreads>
__device__ __forceinline__ void WriteTile(const float* y_tile, int y_pitch, T* y, int64_t out, int64_t d,
                                          int rows_valid, int r_valid, int j_valid, int y_vec) {
  const auto store = [&](auto vec_constant) {
    constexpr int kYVec = decltype(vec_constant)::value;
    constexpr int kVectorsPerRow = BN * JT / kYVec;
#pragma unroll 1
    for (int e = threadIdx.x; e < BM * kVectorsPerRow; e += kThreads) {
      const int m = e / kVectorsPerRow, f = (e % kVectorsPerRow) * kYVec;
      if (m >= rows_valid) continue;
      if constexpr (kYVec == 1) {
        const int rr = f / JT, jo = f % JT;
        if (rr < r_valid && jo < j_valid)
          y[m * out + rr * d + jo] = FromFloat<T>(y_tile[(m * JT + jo) * y_pitch + rr]);
      } else {
        float v[kYVec];
        if constexpr (JT == 1) {  // kYVec consecutive r of one j: one shared-memory vector
          static_assert(kYVec == 2 || kYVec == 4);
          if constexpr (kYVec == 4) {
            *reinterpret_cast<float4*>(v) = *reinterpret_cast<const float4*>(y_tile + m * y_pitch + f);
          } else {
            *reinterpret_cast<float2*>(v) = *reinterpret_cast<const float2*>(y_tile + m * y_pitch + f);
          }
        } else {
#pragma unroll
          for (int q = 0; q < kYVec; ++q) v[q] = y_tile[(m * JT + (f + q) % JT) * y_pitch + (f + q) / JT];
        }
        T* const target = y + m * out + (f / JT) * d + f % JT;
        if ((f + kYVec - 1) / JT < r_valid) {
          Vector<T, kYVec> packed;
#pragma unroll
          for (int q = 0; q < kYVec; ++q) packed.v[q] = FromFloat<T>(v[q]);
          *reinterpret_cast<Vector<T, kYVec>*>(target) = packed;
        } else {
#pragma unroll
          for (int q = 0; q < kYVec; ++q) {
            if ((f + q) / JT < r_valid) target[q] = FromFloat<T>(v[q]);
          }
        }
      }
    }
  };
  WithVectorWidth<4>(y_vec, store);
}

// One step of the tiles staged as [k][jj][row] (x, then w, pitches kXPitch and kWPitch): a
// thread's TM × TN accumulators of j jj take BK values of s, its operands read as float4.
template <typename TileT>
__device__ __forceinline__ void MultiplyStep(float (&acc)[TileT::TM][TileT::TN], const float* x_tile,
                                             const float* w_tile, int jj, int tm, int tn) {
  constexpr int TM = TileT::TM, TN = TileT::TN;
#pragma unroll
  for (int k = 0; k < TileT::BK; ++k) {
    const float* x_row = x_tile + k * TileT::kXPitch + jj * TileT::BM + tm * 4;
    const float* w_row = w_tile + k * TileT::kWPitch + jj * TileT::BN + tn * 4;
    float xv[TM], wv[TN];
#pragma unroll
    for (int q = 0; q < TM; q += 4) {
      *reinterpret_cast<float4*>(&xv[q]) = *reinterpret_cast<const float4*>(x_row + q * TileT::kThreadsM);
    }
#pragma unroll
    for (int q = 0; q < TN; q += 4) {
      *reinterpret_cast<float4*>(&wv[q]) = *reinterpret_cast<const float4*>(w_row + q * TileT::kThreadsN);
    }
#pragma unroll
    for (int m = 0; m < TM; ++m) {
#pragma unroll
      for (int n = 0; n < TN; ++n) acc[m][n] = fmaf(xv[m], wv[n], acc[m][n]);
    }
  }
}

// Bias and activation in FP32 on a thread's TM × TN accumulators of the float4 layout (rows tm·4
// + q·kThreadsM·4 .., columns likewise), staged as [m][jj][r] in y_tile for WriteTile.
template <typename T, typename TileT>
__device__ __forceinline__ void StageOutputTile(const float (&acc)[TileT::TM][TileT::TN],
                                                const KsFactorParams& p, int64_t i, int64_t r0, int64_t j,
                                                int tm, int tn, int jj, float* y_tile) {
  constexpr int JT = TileT::JT, TM = TileT::TM, TN = TileT::TN, kYPitch = TileT::kYPitch;
  const int64_t b = p.pattern.b, d = p.pattern.d;
  const T* bias = static_cast<const T*>(p.bias);
#pragma unroll
  for (int n = 0; n < TN; n += 4) {
    float bias_value[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t r = r0 + n * TileT::kThreadsN + tn * 4 + e;
      if (bias != nullptr && r < b && j < d) bias_value[e] = ToFloat(bias[(i * b + r) * d + j]);
    }
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      float4 v;
      v.x = ApplyActivation(acc[m][n] + bias_value[0], p.activation);
      v.y = ApplyActivation(acc[m][n + 1] + bias_value[1], p.activation);
      v.z = ApplyActivation(acc[m][n + 2] + bias_value[2], p.activation);
      v.w = ApplyActivation(acc[m][n + 3] + bias_value[3], p.activation);
      const int row = (m / 4) * 4 * TileT::kThreadsM + tm * 4 + m % 4;
      *reinterpret_cast<float4*>(y_tile + (row * JT + jj) * kYPitch + n * TileT::kThreadsN + tn * 4) = v;
    }
  }
}

template <typename T, typename TileT, int kVec>
// Two blocks per SM: 128 registers per thread at most.
__global__ void __launch_bounds__(TileT::kThreads, 512 / TileT::kThreads)
    KsFactorFusedKernel(KsFactorParams p, BlockGrid grid, int y_vec) {
  constexpr int JT = TileT::JT, BM = TileT::BM, BN = TileT::BN, BK = TileT::BK, TM = TileT::TM,
                TN = TileT::TN;
  constexpr int kXPitch = TileT::kXPitch, kWPitch = TileT::kWPitch;
  extern __shared__ __align__(16) float shared_floats[];
  // Two buffers of [k][jj][row] for x then w.
  const auto x_tile = [&](int buffer) { return shared_floats + buffer * TileT::kStepFloats; };
  const auto w_tile = [&](int buffer) { return shared_floats + buffer * TileT::kStepFloats + BK * kXPitch; };

  const int64_t b = p.pattern.b, c = p.pattern.c, d = p.pattern.d;
  const int64_t in = p.pattern.in_features(), out = p.pattern.out_features();
  const BlockCoords block = DecodeBlock(grid, blockIdx.x);
  const int64_t i = block.i, j0 = block.jg * JT, r0 = block.rt * BN, n0 = block.nt * BM;

  const T* x_base = static_cast<const T*>(p.x) + n0 * in + i * c * d;
  const T* w_base = static_cast<const T*>(p.w) + (i * b + r0) * c * d;
  const int64_t rows_x = p.batch - n0, rows_w = b - r0;

  const auto store_x = [&](float* tile) {
    return [tile](int row, int k, int jj, T v) { tile[k * kXPitch + jj * BM + row] = ToFloat(v); };
  };
  const auto store_w = [&](float* tile) {
    return [tile](int row, int k, int jj, T v) { tile[k * kWPitch + jj * BN + row] = ToFloat(v); };
  };
  Stage<T, TileT::kThreads, BM, BK, JT, kVec> x_stage;
  Stage<T, TileT::kThreads, BN, BK, JT, kVec> w_stage;
  x_stage.Load(x_base, in, rows_x, 0, c, j0, d);
  w_stage.Load(w_base, c * d, rows_w, 0, c, j0, d);
  x_stage.Store(store_x(x_tile(0)));
  w_stage.Store(store_w(w_tile(0)));
  __syncthreads();

  int jj, tm, tn;
  ThreadPlace<TileT>(jj, tm, tn);
  float acc[TM][TN] = {};

  const int64_t steps = (c + BK - 1) / BK;
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = step & 1;
    const bool has_next = step + 1 < steps;
    if (has_next) {
      x_stage.Load(x_base, in, rows_x, (step + 1) * BK, c, j0, d);
      w_stage.Load(w_base, c * d, rows_w, (step + 1) * BK, c, j0, d);
    }
    MultiplyStep<TileT>(acc, x_tile(buffer), w_tile(buffer), jj, tm, tn);
    if (has_next) {
      // The other buffer was last read before the previous step's barrier.
      x_stage.Store(store_x(x_tile(buffer ^ 1)));
      w_stage.Store(store_w(w_tile(buffer ^ 1)));
    }
    __syncthreads();
  }

  // The step buffers are free: the loop ended on a barrier.
  StageOutputTile<T, TileT>(acc, p, i, r0, j0 + jj, tm, tn, jj, shared_floats);
  __syncthreads();

  WriteTile<T, BM, BN, JT, TileT::kThreads>(
      shared_floats, TileT::kYPitch, static_cast<T*>(p.y) + n0 * out + (i * b + r0) * d + j0, out, d,
      static_cast<int>(min(p.batch - n0, int64_t{BM})), static_cast<int>(min(b - r0, int64_t{BN})),
      static_cast<int>(min(d - j0, int64_t{JT})), y_vec);
}

// The same tile with a cp.async pipeline (FP32, 16-byte chunks of 4 values along the flattened
// (s, j) index of a row): kAsyncStages − 1 steps of x and w in flight in shared memory instead of
// one step in registers, for patterns that wait on memory. Chunks land as in memory, [row][k·JT
// + jj] with 4 floats of padding, so a thread reads its operands one by one: row tm + kThreadsM·q
// and column tn + kThreadsN·q, which for a warp's 4 × 8 threads fall in distinct banks.
constexpr int kAsyncStages = 4;

// Where a pipelined step lands: x rows then w rows, each as in memory with 4 floats of padding.
template <typename TileT>
struct LandingLayout {
  static constexpr int kPitch = TileT::BK * TileT::JT + 4;  // floats per landed row
  static constexpr int kStageFloats = (TileT::BM + TileT::BN) * kPitch;
  static_assert(TileT::JT % 4 == 0, "4 j per chunk");
};

template <typename TileT>
struct AsyncLayout : LandingLayout<TileT> {
  static constexpr int kYPitch = TileT::BN + 2;  // staged [m][jj][r]: rows tm·JT apart in distinct banks
  static constexpr int kOutputFloats = TileT::BM * TileT::JT * kYPitch;
  static constexpr int kSharedBytes =
      4 * std::max(kAsyncStages * LandingLayout<TileT>::kStageFloats, kOutputFloats);
  static_assert(TileT::kWarpBlocks, "warps of 4 × 8 threads");
};

// A pipelined block's coordinates and its thread's share of the copies of a step. A thread copies
// kLoads chunks of one (s, 4 j) in rows kRowsPerPass apart; chunk f of a row holds flat (k, jj) =
// (f / JT, f % JT) .. +3: 4 j of one s (JT a multiple of 4 dividing d). Its source pointers
// advance by a step each time, so a step's copies cost little more than the copies themselves.
// Rows beyond the batch or b, and s beyond c, are zero-filled.
template <typename TileT>
struct PipelinedBlock {
  static constexpr int kChunksPerRow = TileT::BK * TileT::JT / 4;
  static constexpr int kRowsPerPass = TileT::kThreads / kChunksPerRow;
  static constexpr int kLoads = (TileT::BM + TileT::BN) / kRowsPerPass;
  static_assert(TileT::kThreads % kChunksPerRow == 0 && TileT::BM % kRowsPerPass == 0 &&
                TileT::BN % kRowsPerPass == 0);

  int64_t i, j0, r0, n0;
  int rows_x, rows_w;  // valid rows of x and w in the tile
  int steps;           // of BK values of s
  const float* source[kLoads];
  bool row_valid[kLoads];
  float* target;  // in the first stage
  int copy_k;
  int64_t c, step_elements;

  __device__ __forceinline__ PipelinedBlock(const KsFactorParams& p, const BlockGrid& grid, float* stages) {
    constexpr int BM = TileT::BM, BN = TileT::BN, BK = TileT::BK, JT = TileT::JT;
    const int64_t b = p.pattern.b, d = p.pattern.d, in = p.pattern.in_features();
    c = p.pattern.c;
    const BlockCoords block = DecodeBlock(grid, blockIdx.x);
    i = block.i, j0 = block.jg * JT, r0 = block.rt * BN, n0 = block.nt * BM;
    const float* const x_rows = static_cast<const float*>(p.x) + n0 * in + i * c * d + j0;
    const float* const w_rows = static_cast<const float*>(p.w) + (i * b + r0) * c * d + j0;
    rows_x = static_cast<int>(min(p.batch - n0, int64_t{BM}));
    rows_w = static_cast<int>(min(b - r0, int64_t{BN}));
    steps = static_cast<int>((c + BK - 1) / BK);

    const int copy_row = threadIdx.x / kChunksPerRow, copy_f = (threadIdx.x % kChunksPerRow) * 4;
    copy_k = copy_f / JT;
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      const int row = copy_row + l * kRowsPerPass;
      if (row < BM) {
        source[l] = x_rows + row * in + copy_k * d + copy_f % JT;
        row_valid[l] = row < rows_x;
      } else {
        source[l] = w_rows + (row - BM) * c * d + copy_k * d + copy_f % JT;
        row_valid[l] = row - BM < rows_w;
      }
    }
    target = stages + copy_row * LandingLayout<TileT>::kPitch + copy_f;
    step_elements = int64_t{BK} * d;
  }

  // Copies step `step` (the next one: the sources advance) into stage `stage`.
  __device__ __forceinline__ void Issue(int step, int stage) {
    const bool s_valid = int64_t{step} * TileT::BK + copy_k < c;
#pragma unroll
    for (int l = 0; l < kLoads; ++l) {
      CpAsync<16>(target + stage * LandingLayout<TileT>::kStageFloats +
                      l * kRowsPerPass * LandingLayout<TileT>::kPitch,
                  source[l], s_valid && row_valid[l]);
      source[l] += step_elements;
    }
  }

  // The ring of kAsyncStages stages: the first kAsyncStages − 1 steps go in flight.
  __device__ __forceinline__ void StartRing() {
#pragma unroll
    for (int st = 0; st < kAsyncStages - 1; ++st) {
      if (st < steps) Issue(st, st);
      CpAsyncCommit();
    }
  }

  // Waits until step `step` (in stage `stage`) has landed everywhere and every warp is done with
  // the stage the next copy overwrites (read for the previous step), then issues that copy.
  __device__ __forceinline__ void AwaitStep(int step, int stage) {
    CpAsyncWait<kAsyncStages - 2>();
    __syncthreads();
    int next_stage = stage + kAsyncStages - 1;
    if (next_stage >= kAsyncStages) next_stage -= kAsyncStages;
    if (step + kAsyncStages - 1 < steps) Issue(step + kAsyncStages - 1, next_stage);
    CpAsyncCommit();
  }
};

template <typename TileT>
__global__ void __launch_bounds__(TileT::kThreads, 512 / TileT::kThreads)
    KsFactorFusedAsyncKernel(KsFactorParams p, BlockGrid grid, int y_vec) {
  constexpr int JT = TileT::JT, BM = TileT::BM, BN = TileT::BN, BK = TileT::BK, TM = TileT::TM,
                TN = TileT::TN;
  constexpr int kPitch = AsyncLayout<TileT>::kPitch;
  extern __shared__ __align__(16) float shared_floats[];
  const int64_t b = p.pattern.b, d = p.pattern.d, out = p.pattern.out_features();
  PipelinedBlock<TileT> block(p, grid, shared_floats);
  const int64_t i = block.i, j0 = block.j0, r0 = block.r0, n0 = block.n0;
  const int steps = block.steps;
  block.StartRing();

  int jj, tm, tn;
  ThreadPlace<TileT>(jj, tm, tn);
  float acc[TM][TN] = {};

  int buffer = 0;
  for (int step = 0; step < steps; ++step) {
    block.AwaitStep(step, buffer);
    const float* const xs = shared_floats + buffer * AsyncLayout<TileT>::kStageFloats + tm * kPitch + jj;
    const float* const ws = xs - tm * kPitch + (BM + tn) * kPitch;
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      float xv[TM], wv[TN];
#pragma unroll
      for (int q = 0; q < TM; ++q) xv[q] = xs[q * TileT::kThreadsM * kPitch + k * JT];
#pragma unroll
      for (int q = 0; q < TN; ++q) wv[q] = ws[q * TileT::kThreadsN * kPitch + k * JT];
#pragma unroll
      for (int m = 0; m < TM; ++m) {
#pragma unroll
        for (int n = 0; n < TN; ++n) acc[m][n] = fmaf(xv[m], wv[n], acc[m][n]);
      }
    }
    if (++buffer == kAsyncStages) buffer = 0;
  }
  CpAsyncWait<0>();
  __syncthreads();  // the pipeline buffers become the output tile

  constexpr int kYPitch = AsyncLayout<TileT>::kYPitch;
  float* const y_tile = shared_floats;
  const int64_t j = j0 + jj;
  const float* const bias = static_cast<const float*>(p.bias);
#pragma unroll
  for (int n = 0; n < TN; ++n) {
    const int rr = tn + n * TileT::kThreadsN;
    const float bias_value = bias != nullptr && r0 + rr < b ? bias[(i * b + r0 + rr) * d + j] : 0.0f;
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      const int row = tm + m * TileT::kThreadsM;
      y_tile[(row * JT + jj) * kYPitch + rr] = ApplyActivation(acc[m][n] + bias_value, p.activation);
    }
  }
  __syncthreads();
  WriteTile<float, BM, BN, JT, TileT::kThreads>(y_tile, kYPitch,
                                                static_cast<float*>(p.y) + n0 * out + (i * b + r0) * d + j0,
                                                out, d, block.rows_x, block.rows_w, JT, y_vec);
}

// The pipelined tile with a thread owning all 4 j of its outputs: a landed row holds the four j
// of one s in 16 bytes, so a thread reads its operands as float4 straight from the landing stage,
// no move to another layout. A thread holds TM = 8 rows × TN = 4 output rows r × 4 j (12 reads per
// 128 FMAs): 128 accumulators, so up to 255 registers and one block of 8 warps per SM; about 1.16
// instructions per FMA in the main loop against 1.27-1.38 for the pipelined 4-j tiles, but with two
// warps per scheduler it waits on shared memory more (H200: a median 1.01x the best other 4-j
// tile's time at 25088 rows, 0.88-0.99x on 11 of 57 FP32 patterns). Rows tm + kThreadsM·q, r
// tn + kThreadsN·q; a warp is 8 tm × 4 tn, so its x reads fall on 8 landed rows (pitch ≡ 4 banks
// mod 32: distinct banks) and its w reads on 4.
struct JVectorTile {
  static constexpr int JT = 4, BM = 128, BN = 64, BK = 8, TM = 8, TN = 4;
  static constexpr int kThreadsM = BM / TM, kThreadsN = BN / TN, kThreads = kThreadsM * kThreadsN;
  // Staged [m][jj][r]: a warp's 8 × 4 (row, r) of one j in distinct banks (4·kYPitch ≡ 4 mod 32).
  static constexpr int kYPitch = BN + 1;
  static constexpr int kOutputFloats = BM * JT * kYPitch;
  static_assert(kThreads == 256 && kThreadsM % 8 == 0);
};

template <typename TileT>
__global__ void __launch_bounds__(TileT::kThreads, 1)
    KsFactorFusedJVectorKernel(KsFactorParams p, BlockGrid grid, int y_vec) {
  constexpr int JT = TileT::JT, BM = TileT::BM, BN = TileT::BN, TM = TileT::TM, TN = TileT::TN;
  constexpr int kPitch = LandingLayout<TileT>::kPitch, kStageFloats = LandingLayout<TileT>::kStageFloats;
  static_assert(kPitch % 32 == 4, "a warp's 8 landed rows in distinct banks");
  extern __shared__ __align__(16) float shared_floats[];
  const int64_t b = p.pattern.b, d = p.pattern.d, out = p.pattern.out_features();
  PipelinedBlock<TileT> block(p, grid, shared_floats);
  const int64_t i = block.i, j0 = block.j0, r0 = block.r0, n0 = block.n0;
  block.StartRing();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  constexpr int kWarpsN = TileT::kThreadsN / 4;
  const int tm = (warp / kWarpsN) * 8 + lane / 4, tn = (warp % kWarpsN) * 4 + lane % 4;
  float acc[TM][TN][JT] = {};

  int buffer = 0;
  for (int step = 0; step < block.steps; ++step) {
    block.AwaitStep(step, buffer);
    const float* const xs = shared_floats + buffer * kStageFloats + tm * kPitch;
    const float* const ws = shared_floats + buffer * kStageFloats + (BM + tn) * kPitch;
#pragma unroll
    for (int k = 0; k < TileT::BK; ++k) {
      float4 xv[TM], wv[TN];
#pragma unroll
      for (int q = 0; q < TM; ++q) {
        xv[q] = *reinterpret_cast<const float4*>(xs + q * TileT::kThreadsM * kPitch + k * JT);
      }
#pragma unroll
      for (int q = 0; q < TN; ++q) {
        wv[q] = *reinterpret_cast<const float4*>(ws + q * TileT::kThreadsN * kPitch + k * JT);
      }
#pragma unroll
      for (int m = 0; m < TM; ++m) {
#pragma unroll
        for (int n = 0; n < TN; ++n) {
          acc[m][n][0] = fmaf(xv[m].x, wv[n].x, acc[m][n][0]);
          acc[m][n][1] = fmaf(xv[m].y, wv[n].y, acc[m][n][1]);
          acc[m][n][2] = fmaf(xv[m].z, wv[n].z, acc[m][n][2]);
          acc[m][n][3] = fmaf(xv[m].w, wv[n].w, acc[m][n][3]);
        }
      }
    }
    if (++buffer == kAsyncStages) buffer = 0;
  }
  CpAsyncWait<0>();
  __syncthreads();  // the pipeline buffers become the output tile

  constexpr int kYPitch = TileT::kYPitch;
  float* const y_tile = shared_floats;
  const float* const bias = static_cast<const float*>(p.bias);
#pragma unroll
  for (int n = 0; n < TN; ++n) {
    const int rr = tn + n * TileT::kThreadsN;
#pragma unroll
    for (int jj = 0; jj < JT; ++jj) {
      const float bias_value = bias != nullptr && r0 + rr < b ? bias[(i * b + r0 + rr) * d + j0 + jj] : 0.0f;
#pragma unroll
      for (int m = 0; m < TM; ++m) {
        const int row = tm + m * TileT::kThreadsM;
        y_tile[(row * JT + jj) * kYPitch + rr] = ApplyActivation(acc[m][n][jj] + bias_value, p.activation);
      }
    }
  }
  __syncthreads();
  WriteTile<float, BM, BN, JT, TileT::kThreads>(y_tile, kYPitch,
                                                static_cast<float*>(p.y) + n0 * out + (i * b + r0) * d + j0,
                                                out, d, block.rows_x, block.rows_w, JT, y_vec);
}

// The pipelined tile with the register-staged tile's operand reads: cp.async lands each step as in
// memory ([row][k·JT + jj], as above), then, one step ahead of the math, every thread moves four
// rows of one k into the [k][jj][row] layout of KsFactorFusedKernel (four 16-byte reads, a 4 × 4
// transpose in registers, four 16-byte writes), so the loop reads its operands as float4: 4
// shared-memory reads per 64 FMAs instead of 16 (about 650 instructions per 8-s step instead of
// about 700). kRawStages steps are in flight or landed; the moved steps alternate between two
// buffers, so a step costs one barrier. The move and the deeper ring cost time up front: on an
// H200 the tile takes a median 0.93-0.94x the time of KsFactorFusedAsyncKernel where c >= 256 at
// 1568 and 25088 rows, but 1.08-1.11x where c <= 96 (bench/results/h200-ksbench-candidates.csv).
// Three raw steps rather than four: a median 0.99x the time, and more of the SM's shared memory
// left to L1.
constexpr int kTransposingStages = 3;

template <typename TileT, int kRawStages>
struct TransposingLayout {
  static constexpr int kPitch = AsyncLayout<TileT>::kPitch;
  static constexpr int kRawFloats = AsyncLayout<TileT>::kStageFloats;
  static constexpr int kTransposedOffset = kRawStages * kRawFloats;
  static constexpr int kOutputFloats = TileT::BM * TileT::JT * TileT::kYPitch;  // the staged output tile
  static constexpr int kSharedBytes = 4 * std::max(kTransposedOffset + 2 * TileT::kStepFloats, kOutputFloats);
  static_assert(TileT::BM == TileT::BN && TileT::kThreads == 2 * (TileT::BM / 4) * TileT::BK,
                "half the threads move x, half w: one k of four rows each");
};

template <typename TileT, int kRawStages>
__global__ void __launch_bounds__(TileT::kThreads, 512 / TileT::kThreads)
    KsFactorFusedTransposingKernel(KsFactorParams p, BlockGrid grid, int y_vec) {
  constexpr int JT = TileT::JT, BM = TileT::BM, BN = TileT::BN, BK = TileT::BK, TM = TileT::TM,
                TN = TileT::TN;
  using Layout = TransposingLayout<TileT, kRawStages>;
  constexpr int kPitch = Layout::kPitch;
  constexpr int kXPitch = TileT::kXPitch, kWPitch = TileT::kWPitch;
  extern __shared__ __align__(16) float shared_floats[];
  const int64_t b = p.pattern.b, d = p.pattern.d, out = p.pattern.out_features();
  PipelinedBlock<TileT> block(p, grid, shared_floats);
  const int64_t i = block.i, j0 = block.j0, r0 = block.r0, n0 = block.n0;
  const int steps = block.steps;

  // The move: a quarter warp takes one row group's eight k, so its 16-byte reads are one
  // contiguous run of a row and its writes land in distinct banks (k·kXPitch apart).
  const int move_w = threadIdx.x / (TileT::kThreads / 2);
  const int move_k = threadIdx.x % BK, move_row = (threadIdx.x % (TileT::kThreads / 2)) / BK * 4;
  const float* const move_source = shared_floats + (move_w * BM + move_row) * kPitch + move_k * JT;
  float* const move_target = shared_floats + Layout::kTransposedOffset + move_w * BK * kXPitch +
                             move_k * (move_w ? kWPitch : kXPitch) + move_row;
  const auto move_step = [&](int step) {
    float4 v[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      v[e] = *reinterpret_cast<const float4*>(move_source + (step % kRawStages) * Layout::kRawFloats +
                                              e * kPitch);
    }
    float* const target = move_target + (step & 1) * TileT::kStepFloats;
    static_assert(JT == 4, "a 16-byte chunk holds the four j of one s");
    *reinterpret_cast<float4*>(target + 0 * BM) = make_float4(v[0].x, v[1].x, v[2].x, v[3].x);
    *reinterpret_cast<float4*>(target + 1 * BM) = make_float4(v[0].y, v[1].y, v[2].y, v[3].y);
    *reinterpret_cast<float4*>(target + 2 * BM) = make_float4(v[0].z, v[1].z, v[2].z, v[3].z);
    *reinterpret_cast<float4*>(target + 3 * BM) = make_float4(v[0].w, v[1].w, v[2].w, v[3].w);
  };

#pragma unroll
  for (int st = 0; st < kRawStages; ++st) {
    if (st < steps) block.Issue(st, st);
    CpAsyncCommit();
  }
  CpAsyncWait<kRawStages - 1>();
  __syncthreads();
  move_step(0);

  int jj, tm, tn;
  ThreadPlace<TileT>(jj, tm, tn);
  float acc[TM][TN] = {};

  for (int step = 0; step < steps; ++step) {
    // Step + 1 has landed everywhere; step is transposed; every warp is done with the buffers
    // that this iteration's copy and move overwrite (read one and two iterations ago).
    CpAsyncWait<kRawStages - 2>();
    __syncthreads();
    if (step + kRawStages < steps) block.Issue(step + kRawStages, step % kRawStages);
    CpAsyncCommit();
    if (step + 1 < steps) move_step(step + 1);
    const float* const x_tile = shared_floats + Layout::kTransposedOffset + (step & 1) * TileT::kStepFloats;
    const float* const w_tile = x_tile + BK * kXPitch;
    MultiplyStep<TileT>(acc, x_tile, w_tile, jj, tm, tn);
  }
  CpAsyncWait<0>();
  __syncthreads();  // every buffer becomes the output tile

  StageOutputTile<float, TileT>(acc, p, i, r0, j0 + jj, tm, tn, jj, shared_floats);
  __syncthreads();
  WriteTile<float, BM, BN, JT, TileT::kThreads>(shared_floats, TileT::kYPitch,
                                                static_cast<float*>(p.y) + n0 * out + (i * b + r0) * d + j0,
                                                out, d, block.rows_x, block.rows_w, JT, y_vec);
}

// Widest store (4, 2 or 1 elements) for which every vector of that many consecutive tile elements
// (r, j) is one contiguous, aligned run of y: JT = d, or JT dividing d (no partial j group).
int OutputVectorWidth(const KsFactorParams& p, int jt) {
  const int64_t b = p.pattern.b, d = p.pattern.d;
  for (int vec : {4, 2}) {
    const bool runs = jt == d ? (b * d) % vec == 0 : (d % jt == 0 && jt % vec == 0);
    if (runs && reinterpret_cast<uintptr_t>(p.y) % (vec * DTypeSize(p.dtype)) == 0) return vec;
  }
  return 1;
}

template <typename TileT>
cudaError_t Launch(const KsFactorParams& p, cudaStream_t stream) {
  const BlockGrid block_grid = MakeBlockGrid(p.pattern, p.batch, TileT::JT, TileT::BM, TileT::BN,
                                             static_cast<int>(DTypeSize(p.dtype)));
  if (block_grid.blocks() > int64_t{0x7fffffff}) return cudaErrorInvalidConfiguration;
  return WithStorageType(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    const unsigned grid = static_cast<unsigned>(block_grid.blocks());
    const int y_vec = OutputVectorWidth(p, TileT::JT);
    // 16-byte loads where the layout allows (4 FP32 or 8 16-bit values; 4 for 16-bit types in
    // the FP32 kernel keeps the staging registers in check), pairs for the two-j tile.
    const auto launch = [&](auto kernel) {
      if (cudaError_t err = AllowDynamicShared(reinterpret_cast<const void*>(kernel), TileT::kSharedBytes);
          err != cudaSuccess) {
        return err;
      }
      kernel<<<grid, TileT::kThreads, TileT::kSharedBytes, stream>>>(p, block_grid, y_vec);
      return cudaGetLastError();
    };
    const int vec = VectorWidth(p, TileT::JT, sizeof(T), 4);
    if constexpr (TileT::JT == 2) {  // runs of two j: two values per load at most
      if (vec == 2) return launch(KsFactorFusedKernel<T, TileT, 2>);
    } else {
      if (vec == 4) return launch(KsFactorFusedKernel<T, TileT, 4>);
    }
    return launch(KsFactorFusedKernel<T, TileT, 1>);
  });
}

// The pipelined FP32 tiles where x, w and the layout allow 16-byte chunks (see the kernels); the
// register-staged 4-j tile otherwise. kPipeline picks the kernel: kJVector the thread-owns-4-j
// one, a positive count the transposing one with that many raw stages, 0 the pipelined one.
constexpr int kJVector = -1;

template <typename TileT, int kPipeline>
cudaError_t LaunchAsync(const KsFactorParams& p, cudaStream_t stream) {
  if (p.dtype != DType::kFloat32 || VectorWidth(p, TileT::JT, 4, 4) != 4 || p.pattern.d % TileT::JT != 0) {
    return Launch<Tile<4, 64, 64, 8, 8, 8>>(p, stream);
  }
  const BlockGrid block_grid = MakeBlockGrid(p.pattern, p.batch, TileT::JT, TileT::BM, TileT::BN, 4);
  if (block_grid.blocks() > int64_t{0x7fffffff}) return cudaErrorInvalidConfiguration;
  const auto launch = [&](auto kernel, int shared_bytes) {
    if (cudaError_t err = AllowDynamicShared(reinterpret_cast<const void*>(kernel), shared_bytes);
        err != cudaSuccess) {
      return err;
    }
    kernel<<<static_cast<unsigned>(block_grid.blocks()), TileT::kThreads, shared_bytes, stream>>>(
        p, block_grid, OutputVectorWidth(p, TileT::JT));
    return cudaGetLastError();
  };
  if constexpr (kPipeline == kJVector) {
    return launch(KsFactorFusedJVectorKernel<TileT>,
                  4 * std::max(kAsyncStages * LandingLayout<TileT>::kStageFloats, TileT::kOutputFloats));
  } else if constexpr (kPipeline > 0) {
    return launch(KsFactorFusedTransposingKernel<TileT, kPipeline>,
                  TransposingLayout<TileT, kPipeline>::kSharedBytes);
  } else {
    return launch(KsFactorFusedAsyncKernel<TileT>, AsyncLayout<TileT>::kSharedBytes);
  }
}

}  // namespace

cudaError_t LaunchKsFactorFused(const KsFactorParams& params, FusedTile tile, const void* packed_w,
                                cudaStream_t stream) {
  switch (tile) {
    case FusedTile::kJ1M16N64:
      return Launch<Tile<1, 16, 64, 8, 4, 4>>(params, stream);
    case FusedTile::kJ1M128N128:
      return Launch<Tile<1, 128, 128, 8, 8, 8>>(params, stream);
    case FusedTile::kJ1M128N64:
      return Launch<Tile<1, 128, 64, 8, 8, 4>>(params, stream);
    case FusedTile::kJ2M128N64:
      return Launch<Tile<2, 128, 64, 8, 8, 8>>(params, stream);
    case FusedTile::kJ4M64N64:
      return Launch<Tile<4, 64, 64, 8, 8, 8>>(params, stream);
    case FusedTile::kJ4M64N64Async:
      return LaunchAsync<Tile<4, 64, 64, 8, 8, 8>, 0>(params, stream);
    case FusedTile::kJ4M64N64AsyncT:
      return LaunchAsync<Tile<4, 64, 64, 8, 8, 8>, kTransposingStages>(params, stream);
    case FusedTile::kJ4M128N64AsyncJ:
      return LaunchAsync<JVectorTile, kJVector>(params, stream);
    case FusedTile::kJ8M32N32:
      return Launch<Tile<8, 32, 32, 8, 4, 8>>(params, stream);
    case FusedTile::kJ16M16N16:
      return Launch<Tile<16, 16, 16, 4, 4, 4>>(params, stream);
    case FusedTile::kJ32M16N8:
      return Launch<Tile<32, 16, 8, 4, 4, 4>>(params, stream);
    default:
      break;
  }
  return LaunchKsFactorFusedMma(params, tile, packed_w, stream);
}

}  // namespace ksserve::kernels::cuda

// The fused output-stationary KS factor kernel (CUDA cores, FP32 accumulation, any dtype).
//
// One factor is a·d independent GEMMs Y_ij (B×b) = X_ij (B×c) · W_ijᵀ, with X_ij = X[:, i, :, j].
// A thread block owns, for one i, a group of JT consecutive j, BM batch rows and BN output rows
// r, and walks s in steps of BK: each step stages the X and W tiles in shared memory (as FP32,
// transposed so every thread reads its TM×TN operands as float4), while the next step's tiles
// are already in flight in registers. Global loads run along the memory's contiguous direction:
// (s, j) flattened, which is all of a step's elements of one row when JT = d, and s when d = 1.
// Blocks run in the order of block_order.h, so the ones that share x or w meet in L2. Any
// pattern and batch: every edge is predicated, out-of-range operands are 0.
#include <algorithm>

#include "kernels/block_order.h"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/tile_stage.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

template <int JT_, int BM_, int BN_, int BK_, int TM_, int TN_>
struct Tile {
  static constexpr int JT = JT_, BM = BM_, BN = BN_, BK = BK_, TM = TM_, TN = TN_;
  static constexpr int kThreads = JT * (BM / TM) * (BN / TN);
  // Rows of the shared tiles are padded so transposed stores spread over banks while float4
  // reads stay aligned.
  static constexpr int kXStride = BM + 4;
  static constexpr int kWStride = BN + 4;
  static_assert(TM % 4 == 0 && TN % 4 == 0, "micro-tiles are read as float4");
  static_assert(BM % TM == 0 && BN % TN == 0);
  static_assert(kThreads <= 256);
  static_assert(2 * BK * JT * (kXStride + kWStride) * 4 <= 48 * 1024, "static shared memory");
};

template <typename T, typename TileT, int kVec>
__global__ void __launch_bounds__(TileT::kThreads) KsFactorFusedKernel(KsFactorParams p, BlockGrid grid) {
  constexpr int JT = TileT::JT, BM = TileT::BM, BN = TileT::BN, BK = TileT::BK, TM = TileT::TM, TN = TileT::TN;
  __shared__ __align__(16) float x_tile[2][BK * JT * TileT::kXStride];
  __shared__ __align__(16) float w_tile[2][BK * JT * TileT::kWStride];

  const int64_t b = p.pattern.b, c = p.pattern.c, d = p.pattern.d;
  const int64_t in = p.pattern.in_features(), out = p.pattern.out_features();
  const BlockCoords block = DecodeBlock(grid, blockIdx.x);
  const int64_t i = block.i, j0 = block.jg * JT, r0 = block.rt * BN, n0 = block.nt * BM;

  const T* x_base = static_cast<const T*>(p.x) + n0 * in + i * c * d;
  const T* w_base = static_cast<const T*>(p.w) + (i * b + r0) * c * d;
  const int64_t rows_x = p.batch - n0, rows_w = b - r0;

  // Transposed into shared memory: tile[k][jj][row], as FP32.
  const auto store_x = [&](float* tile) {
    return [tile](int row, int k, int jj, T v) { tile[(k * JT + jj) * TileT::kXStride + row] = ToFloat(v); };
  };
  const auto store_w = [&](float* tile) {
    return [tile](int row, int k, int jj, T v) { tile[(k * JT + jj) * TileT::kWStride + row] = ToFloat(v); };
  };
  Stage<T, TileT::kThreads, BM, BK, JT, kVec> x_stage;
  Stage<T, TileT::kThreads, BN, BK, JT, kVec> w_stage;
  x_stage.Load(x_base, in, rows_x, 0, c, j0, d);
  w_stage.Load(w_base, c * d, rows_w, 0, c, j0, d);
  x_stage.Store(store_x(x_tile[0]));
  w_stage.Store(store_w(w_tile[0]));
  __syncthreads();

  // Thread layout: jj fastest (consecutive threads write consecutive j of y), then the r tile.
  const int jj = threadIdx.x % JT;
  const int tn = (threadIdx.x / JT) % (BN / TN);
  const int tm = threadIdx.x / (JT * (BN / TN));
  float acc[TM][TN] = {};

  const int64_t steps = (c + BK - 1) / BK;
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = step & 1;
    const bool has_next = step + 1 < steps;
    if (has_next) {
      x_stage.Load(x_base, in, rows_x, (step + 1) * BK, c, j0, d);
      w_stage.Load(w_base, c * d, rows_w, (step + 1) * BK, c, j0, d);
    }
#pragma unroll
    for (int k = 0; k < BK; ++k) {
      const float* x_row = x_tile[buffer] + (k * JT + jj) * TileT::kXStride + tm * TM;
      const float* w_row = w_tile[buffer] + (k * JT + jj) * TileT::kWStride + tn * TN;
      float xv[TM], wv[TN];
#pragma unroll
      for (int q = 0; q < TM; q += 4) *reinterpret_cast<float4*>(&xv[q]) = *reinterpret_cast<const float4*>(x_row + q);
#pragma unroll
      for (int q = 0; q < TN; q += 4) *reinterpret_cast<float4*>(&wv[q]) = *reinterpret_cast<const float4*>(w_row + q);
#pragma unroll
      for (int m = 0; m < TM; ++m) {
#pragma unroll
        for (int n = 0; n < TN; ++n) acc[m][n] = fmaf(xv[m], wv[n], acc[m][n]);
      }
    }
    if (has_next) {
      // The other buffer was last read before the previous step's barrier.
      x_stage.Store(store_x(x_tile[buffer ^ 1]));
      w_stage.Store(store_w(w_tile[buffer ^ 1]));
    }
    __syncthreads();
  }

  const int64_t j = j0 + jj;
  if (j >= d) return;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
#pragma unroll
  for (int n = 0; n < TN; ++n) {
    const int64_t r = r0 + tn * TN + n;
    if (r >= b) break;
    const int64_t feature = (i * b + r) * d + j;
    const float bias_value = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
#pragma unroll
    for (int m = 0; m < TM; ++m) {
      const int64_t row = n0 + tm * TM + m;
      if (row < p.batch) y[row * out + feature] = FromFloat<T>(ApplyActivation(acc[m][n] + bias_value, p.activation));
    }
  }
}

template <typename TileT>
cudaError_t Launch(const KsFactorParams& p, cudaStream_t stream) {
  const BlockGrid block_grid =
      MakeBlockGrid(p.pattern, p.batch, TileT::JT, TileT::BM, TileT::BN, static_cast<int>(DTypeSize(p.dtype)));
  if (block_grid.blocks() > int64_t{0x7fffffff}) return cudaErrorInvalidConfiguration;
  WithStorageType(p.dtype, [&](auto zero) {
    using T = decltype(zero);
    const unsigned grid = static_cast<unsigned>(block_grid.blocks());
    // 16-byte loads where the layout allows (4 FP32 or 8 16-bit values; 4 for 16-bit types in
    // the FP32 kernel keeps the staging registers in check).
    switch (VectorWidth(p, TileT::JT, sizeof(T), 4)) {
      case 4:
        KsFactorFusedKernel<T, TileT, 4><<<grid, TileT::kThreads, 0, stream>>>(p, block_grid);
        break;
      default:
        KsFactorFusedKernel<T, TileT, 1><<<grid, TileT::kThreads, 0, stream>>>(p, block_grid);
        break;
    }
    return 0;
  });
  return cudaGetLastError();
}

}  // namespace

cudaError_t LaunchKsFactorFused(const KsFactorParams& params, FusedTile tile, cudaStream_t stream) {
  switch (tile) {
    case FusedTile::kJ1M16N64:
      return Launch<Tile<1, 16, 64, 8, 4, 4>>(params, stream);
    case FusedTile::kJ1M128N128:
      return Launch<Tile<1, 128, 128, 8, 8, 8>>(params, stream);
    case FusedTile::kJ1M128N64:
      return Launch<Tile<1, 128, 64, 8, 8, 4>>(params, stream);
    case FusedTile::kJ4M64N64:
      return Launch<Tile<4, 64, 64, 8, 8, 8>>(params, stream);
    case FusedTile::kJ8M32N32:
      return Launch<Tile<8, 32, 32, 8, 4, 8>>(params, stream);
    case FusedTile::kJ16M16N16:
      return Launch<Tile<16, 16, 16, 4, 4, 4>>(params, stream);
    case FusedTile::kJ32M16N8:
      return Launch<Tile<32, 16, 8, 4, 4, 4>>(params, stream);
    default:
      break;
  }
  return LaunchKsFactorFusedMma(params, tile, stream);
}

}  // namespace ksserve::kernels::cuda

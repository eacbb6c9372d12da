// The fused output-stationary KS factor kernel on tensor cores: BF16/FP16 operands, FP32
// accumulation, mma.sync m16n8k16 (sm_80 and later).
//
// Same decomposition as the CUDA-core kernel (ks_factor_fused.cu): a block owns JT consecutive
// j of one i, BM batch rows and BN output rows r, and walks s in steps of BK, staging the next
// step in registers while the tensor cores work on the current one. Shared tiles are stored per
// j with s contiguous, [jj][row][k] with rows padded by 8 elements, which is the row-major A and
// column-major B the mma wants and keeps the fragment loads free of bank conflicts. Each warp
// computes a WM × WN piece of one j's tile.
#include <algorithm>

#include "kernels/block_order.h"
#include "kernels/cuda/convert.cuh"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/mma_sm80.cuh"
#include "kernels/cuda/tile_stage.cuh"
#include "kernels/epilogue.h"

namespace ksserve::kernels::cuda {
namespace {

template <int JT_, int BM_, int BN_, int BK_, int WM_, int WN_>
struct MmaTile {
  static constexpr int JT = JT_, BM = BM_, BN = BN_, BK = BK_, WM = WM_, WN = WN_;
  static constexpr int kWarpsM = BM / WM, kWarpsN = BN / WN;
  static constexpr int kWarps = JT * kWarpsM * kWarpsN;
  static constexpr int kThreads = 32 * kWarps;
  static constexpr int kStride = BK + 8;  // elements per shared row
  static constexpr int kMi = WM / 16, kNi = WN / 8;
  static_assert(BM % WM == 0 && BN % WN == 0 && WM % 16 == 0 && WN % 8 == 0 && BK % 16 == 0);
  static_assert(kThreads <= 256);
  static constexpr int kSharedBytes = 2 * JT * (BM + BN) * kStride * 2;
  static_assert(kSharedBytes <= 48 * 1024, "static shared memory");
};

__device__ __forceinline__ uint32_t LoadPair(const void* p) { return *static_cast<const uint32_t*>(p); }

template <typename T, typename TileT, int kVec>
__global__ void __launch_bounds__(TileT::kThreads) KsFactorMmaKernel(KsFactorParams p, BlockGrid grid) {
  constexpr int JT = TileT::JT, BM = TileT::BM, BN = TileT::BN, BK = TileT::BK, S = TileT::kStride;
  __shared__ __align__(16) T x_tile[2][JT * BM * S];
  __shared__ __align__(16) T w_tile[2][JT * BN * S];

  const int64_t b = p.pattern.b, c = p.pattern.c, d = p.pattern.d;
  const int64_t in = p.pattern.in_features(), out = p.pattern.out_features();
  const BlockCoords block = DecodeBlock(grid, blockIdx.x);
  const int64_t i = block.i, j0 = block.jg * JT, r0 = block.rt * BN, n0 = block.nt * BM;

  const T* x_base = static_cast<const T*>(p.x) + n0 * in + i * c * d;
  const T* w_base = static_cast<const T*>(p.w) + (i * b + r0) * c * d;
  const int64_t rows_x = p.batch - n0, rows_w = b - r0;

  using XStage = Stage<T, TileT::kThreads, BM, BK, JT, kVec>;
  using WStage = Stage<T, TileT::kThreads, BN, BK, JT, kVec>;
  // [jj][row][k]; with JT = 1 a staged vector is kVec consecutive k, stored whole.
  const auto store = [](const auto& stage, T* tile, int rows) {
    if constexpr (JT == 1) {
      stage.StoreVectors([tile](int row, int k, const Vector<T, kVec>& v) {
        *reinterpret_cast<Vector<T, kVec>*>(tile + row * S + k) = v;
      });
    } else {
      stage.Store([tile, rows](int row, int k, int jj, T v) { tile[(jj * rows + row) * S + k] = v; });
    }
  };
  XStage x_stage;
  WStage w_stage;
  x_stage.Load(x_base, in, rows_x, 0, c, j0, d);
  w_stage.Load(w_base, c * d, rows_w, 0, c, j0, d);
  store(x_stage, x_tile[0], BM);
  store(w_stage, w_tile[0], BN);
  __syncthreads();

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // the mma fragment coordinates
  const int jj = warp % JT;
  const int warp_n = (warp / JT) % TileT::kWarpsN;
  const int warp_m = warp / (JT * TileT::kWarpsN);
  float acc[TileT::kMi][TileT::kNi][4] = {};

  const int64_t steps = (c + BK - 1) / BK;
  for (int64_t step = 0; step < steps; ++step) {
    const int buffer = step & 1;
    const bool has_next = step + 1 < steps;
    if (has_next) {
      x_stage.Load(x_base, in, rows_x, (step + 1) * BK, c, j0, d);
      w_stage.Load(w_base, c * d, rows_w, (step + 1) * BK, c, j0, d);
    }
    const T* xs = x_tile[buffer] + (jj * BM + warp_m * TileT::WM) * S;
    const T* ws = w_tile[buffer] + (jj * BN + warp_n * TileT::WN) * S;
#pragma unroll
    for (int k = 0; k < BK; k += 16) {
      uint32_t af[TileT::kMi][4], bf[TileT::kNi][2];
#pragma unroll
      for (int mi = 0; mi < TileT::kMi; ++mi) {
        const T* row0 = xs + (mi * 16 + group) * S + k + quad * 2;
        af[mi][0] = LoadPair(row0);
        af[mi][1] = LoadPair(row0 + 8 * S);
        af[mi][2] = LoadPair(row0 + 8);
        af[mi][3] = LoadPair(row0 + 8 * S + 8);
      }
#pragma unroll
      for (int ni = 0; ni < TileT::kNi; ++ni) {
        const T* col = ws + (ni * 8 + group) * S + k + quad * 2;
        bf[ni][0] = LoadPair(col);
        bf[ni][1] = LoadPair(col + 8);
      }
#pragma unroll
      for (int mi = 0; mi < TileT::kMi; ++mi) {
#pragma unroll
        for (int ni = 0; ni < TileT::kNi; ++ni) Mma<T>(acc[mi][ni], af[mi], bf[ni]);
      }
    }
    if (has_next) {
      // The other buffer was last read before the previous step's barrier.
      store(x_stage, x_tile[buffer ^ 1], BM);
      store(w_stage, w_tile[buffer ^ 1], BN);
    }
    __syncthreads();
  }

  const int64_t j = j0 + jj;
  if (j >= d) return;
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  // With d = 1 a thread's two columns r, r + 1 are adjacent in y: one 32-bit store.
  const bool paired = d == 1 && b % 2 == 0 && reinterpret_cast<uintptr_t>(y) % (2 * sizeof(T)) == 0;
#pragma unroll
  for (int ni = 0; ni < TileT::kNi; ++ni) {
    const int64_t r = r0 + warp_n * TileT::WN + ni * 8 + quad * 2;
    if (r >= b) continue;
    const bool second = r + 1 < b;
    const int64_t feature = (i * b + r) * d + j;
    const float bias0 = bias != nullptr ? ToFloat(bias[feature]) : 0.0f;
    const float bias1 = bias != nullptr && second ? ToFloat(bias[feature + d]) : 0.0f;
#pragma unroll
    for (int mi = 0; mi < TileT::kMi; ++mi) {
#pragma unroll
      for (int upper = 0; upper < 2; ++upper) {
        const int64_t row = n0 + warp_m * TileT::WM + mi * 16 + group + upper * 8;
        if (row >= p.batch) continue;
        const T v0 = FromFloat<T>(ApplyActivation(acc[mi][ni][upper * 2] + bias0, p.activation));
        const T v1 = FromFloat<T>(ApplyActivation(acc[mi][ni][upper * 2 + 1] + bias1, p.activation));
        T* out_ptr = y + row * out + feature;
        if (paired) {
          *reinterpret_cast<Vector<T, 2>*>(out_ptr) = Vector<T, 2>{{v0, v1}};
        } else {
          out_ptr[0] = v0;
          if (second) out_ptr[d] = v1;
        }
      }
    }
  }
}

template <typename TileT>
cudaError_t Launch(const KsFactorParams& p, cudaStream_t stream) {
  const BlockGrid block_grid =
      MakeBlockGrid(p.pattern, p.batch, TileT::JT, TileT::BM, TileT::BN, static_cast<int>(DTypeSize(p.dtype)));
  if (block_grid.blocks() > int64_t{0x7fffffff}) return cudaErrorInvalidConfiguration;
  const auto launch = [&](auto zero) {
    using T = decltype(zero);
    const unsigned grid = static_cast<unsigned>(block_grid.blocks());
    switch (VectorWidth(p, TileT::JT, sizeof(T), 8)) {
      case 8:
        KsFactorMmaKernel<T, TileT, 8><<<grid, TileT::kThreads, 0, stream>>>(p, block_grid);
        break;
      case 4:
        KsFactorMmaKernel<T, TileT, 4><<<grid, TileT::kThreads, 0, stream>>>(p, block_grid);
        break;
      case 2:
        KsFactorMmaKernel<T, TileT, 2><<<grid, TileT::kThreads, 0, stream>>>(p, block_grid);
        break;
      default:
        KsFactorMmaKernel<T, TileT, 1><<<grid, TileT::kThreads, 0, stream>>>(p, block_grid);
        break;
    }
    return cudaGetLastError();
  };
  return With16BitStorageType(p.dtype, launch);
}

}  // namespace

cudaError_t LaunchKsFactorFusedMma(const KsFactorParams& params, FusedTile tile, const void* packed_w,
                                   cudaStream_t stream) {
  switch (tile) {
    case FusedTile::kMmaJ1M128N64:
      return Launch<MmaTile<1, 128, 64, 32, 64, 32>>(params, stream);
    case FusedTile::kMmaJ1M128N128:
      return Launch<MmaTile<1, 128, 128, 32, 32, 64>>(params, stream);
    case FusedTile::kMmaJ4M64N64:
      return Launch<MmaTile<4, 64, 64, 16, 32, 64>>(params, stream);
    case FusedTile::kMmaJ8M32N32:
      return Launch<MmaTile<8, 32, 32, 16, 32, 32>>(params, stream);
    default:
      return LaunchKsFactorTc(params, tile, packed_w, stream);
  }
}

}  // namespace ksserve::kernels::cuda

#include "kernels/ks_matmul.h"

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "absl/strings/str_format.h"
#include "kernels/epilogue.h"
#include "kernels/half.h"

namespace ksserve::kernels {
namespace {

bool MulOverflows(int64_t x, int64_t y, int64_t* out) { return __builtin_mul_overflow(x, y, out); }

// Storage type ↔ FP32 for the CPU loops.
struct F32 {
  using Storage = float;
  static float Load(float v) { return v; }
  static float Store(float v) { return v; }
};
struct BF16 {
  using Storage = uint16_t;
  static float Load(uint16_t v) { return BFloat16ToFloat(v); }
  static uint16_t Store(float v) { return FloatToBFloat16(v); }
};
struct F16 {
  using Storage = uint16_t;
  static float Load(uint16_t v) { return HalfToFloat(v); }
  static uint16_t Store(float v) { return FloatToHalf(v); }
};

template <typename Type>
void FactorCpu(const KsFactorParams& p) {
  using T = typename Type::Storage;
  const auto [a, b, c, d] = p.pattern;
  const int64_t in = p.pattern.in_features(), out = p.pattern.out_features();
  const T* x = static_cast<const T*>(p.x);
  const T* w = static_cast<const T*>(p.w);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);

  // FP32 operands are read in place; 16-bit ones are widened once (weights per call, x per
  // (n, i) block). One (i) block of y is accumulated in FP32 at a time.
  constexpr bool kWiden = !std::is_same_v<T, float>;
  std::vector<float> w_widened, x_widened(kWiden ? static_cast<size_t>(c * d) : 0);
  std::vector<float> y_block(static_cast<size_t>(b * d));
  const float* w32 = nullptr;
  if constexpr (kWiden) {
    w_widened.resize(static_cast<size_t>(p.pattern.nonzeros()));
    for (size_t k = 0; k < w_widened.size(); ++k) w_widened[k] = Type::Load(w[k]);
    w32 = w_widened.data();
  } else {
    w32 = w;
  }
  for (int64_t n = 0; n < p.batch; ++n) {
    for (int64_t i = 0; i < a; ++i) {
      const T* x_in = x + n * in + i * c * d;
      const float* x_block = nullptr;
      if constexpr (kWiden) {
        for (int64_t k = 0; k < c * d; ++k) x_widened[static_cast<size_t>(k)] = Type::Load(x_in[k]);
        x_block = x_widened.data();
      } else {
        x_block = x_in;
      }
      std::fill(y_block.begin(), y_block.end(), 0.0f);
      // j (stride 1 in x, w and y) innermost.
      for (int64_t r = 0; r < b; ++r) {
        float* y_vec = y_block.data() + r * d;
        for (int64_t s = 0; s < c; ++s) {
          const float* x_vec = x_block + s * d;
          const float* w_vec = w32 + ((i * b + r) * c + s) * d;
          for (int64_t j = 0; j < d; ++j) y_vec[j] += x_vec[j] * w_vec[j];
        }
      }
      T* y_out = y + n * out + i * b * d;
      for (int64_t k = 0; k < b * d; ++k) {
        float v = y_block[static_cast<size_t>(k)];
        if (bias != nullptr) v += Type::Load(bias[i * b * d + k]);
        y_out[k] = Type::Store(ApplyActivation(v, p.activation));
      }
    }
  }
}

// Batch-last: per block i, y[(i, r, j)][n] = Σ_s w[i, r, s, j] · x[(i, s, j)][n], accumulated in
// FP32 over a block of kBatchColumns columns n at a time (the innermost, stride-1 loop).
template <typename Type>
void FactorCpuBatchLast(const KsFactorParams& p) {
  using T = typename Type::Storage;
  constexpr int64_t kBatchColumns = 256;
  const auto [a, b, c, d] = p.pattern;
  const T* x = static_cast<const T*>(p.x);
  const T* bias = static_cast<const T*>(p.bias);
  T* y = static_cast<T*>(p.y);
  // FP32 weights are read in place, 16-bit ones widened once per call.
  std::vector<float> w_widened;
  const float* w32 = nullptr;
  if constexpr (std::is_same_v<T, float>) {
    w32 = static_cast<const float*>(p.w);
  } else {
    w_widened.resize(static_cast<size_t>(p.pattern.nonzeros()));
    for (size_t k = 0; k < w_widened.size(); ++k) w_widened[k] = Type::Load(static_cast<const T*>(p.w)[k]);
    w32 = w_widened.data();
  }
  const int64_t block_columns = std::min(kBatchColumns, p.batch);
  std::vector<float> x_block(static_cast<size_t>(c * d * block_columns));
  std::vector<float> y_block(static_cast<size_t>(b * d * block_columns));
  for (int64_t n0 = 0; n0 < p.batch; n0 += kBatchColumns) {
    const int64_t columns = std::min(kBatchColumns, p.batch - n0);
    for (int64_t i = 0; i < a; ++i) {
      for (int64_t k = 0; k < c * d; ++k) {  // input row (s, j) of block i
        const T* from = x + (i * c * d + k) * p.batch + n0;
        for (int64_t t = 0; t < columns; ++t)
          x_block[static_cast<size_t>(k * columns + t)] = Type::Load(from[t]);
      }
      std::fill(y_block.begin(), y_block.end(), 0.0f);
      for (int64_t r = 0; r < b; ++r) {
        for (int64_t s = 0; s < c; ++s) {
          for (int64_t j = 0; j < d; ++j) {
            const float weight = w32[static_cast<size_t>(((i * b + r) * c + s) * d + j)];
            float* y_row = y_block.data() + (r * d + j) * columns;
            const float* x_row = x_block.data() + (s * d + j) * columns;
            for (int64_t t = 0; t < columns; ++t) y_row[t] += weight * x_row[t];
          }
        }
      }
      for (int64_t k = 0; k < b * d; ++k) {  // output row (r, j) of block i
        const int64_t feature = i * b * d + k;
        const float add = bias != nullptr ? Type::Load(bias[feature]) : 0.0f;
        T* to = y + feature * p.batch + n0;
        for (int64_t t = 0; t < columns; ++t) {
          to[t] =
              Type::Store(ApplyActivation(y_block[static_cast<size_t>(k * columns + t)] + add, p.activation));
        }
      }
    }
  }
}

template <typename Type>
void FactorCpuInLayout(const KsFactorParams& p) {
  if (p.layout == BatchLayout::kBatchLast) {
    FactorCpuBatchLast<Type>(p);
  } else {
    FactorCpu<Type>(p);
  }
}

// Where a chain's packed weights start in its workspace: after the intermediates, 256-aligned.
int64_t ChainPackedOffset(int64_t intermediate_bytes) { return (intermediate_bytes + 255) / 256 * 256; }

// The intermediates of a chain: one buffer of the widest for two factors, two ping-pong buffers
// for more, none for one.
absl::StatusOr<int64_t> IntermediateBytes(absl::Span<const KsPattern> chain, int64_t batch, DType dtype) {
  if (absl::Status s = ValidateChain(chain); !s.ok()) return s;
  if (batch < 0) return absl::InvalidArgumentError(absl::StrFormat("batch must be >= 0, got %d", batch));
  int64_t widest = 0;
  for (size_t l = 0; l + 1 < chain.size(); ++l) widest = std::max(widest, chain[l].out_features());
  const int64_t buffers = std::min<int64_t>(static_cast<int64_t>(chain.size()) - 1, 2);
  int64_t elements = 0, bytes = 0;
  if (MulOverflows(batch, widest, &elements) || MulOverflows(elements, DTypeSize(dtype) * buffers, &bytes)) {
    return absl::InvalidArgumentError("chain workspace size overflows 64-bit integers");
  }
  return bytes;
}

// A chain's workspace on CUDA past its intermediates (offsets -1: no such room): batch-last, room
// for the largest d > 1 factor's weights, grouped there per call where none are given; then the
// largest RuleWorkspaceBytes of its factors, each with grouped weights (bmm's permutes, or its FP32
// product for a 16-bit epilogue).
struct ChainScratchLayout {
  int64_t grouped_offset = -1, rule_workspace_offset = -1, total = 0;
};

absl::StatusOr<ChainScratchLayout> CudaChainScratch(int64_t intermediate_bytes,
                                                    absl::Span<const KsPattern> chain, int64_t batch,
                                                    DType dtype, BatchLayout layout) {
  const absl::Status overflow = absl::InvalidArgumentError("chain workspace size overflows 64-bit integers");
  ChainScratchLayout scratch{.total = intermediate_bytes};
  if (layout == BatchLayout::kBatchLast) {
    int64_t grouped = 0;
    for (const KsPattern& p : chain) {
      int64_t weight_bytes = 0;
      if (p.d > 1 && MulOverflows(p.nonzeros(), DTypeSize(dtype), &weight_bytes)) return overflow;
      grouped = std::max(grouped, weight_bytes);
    }
    if (grouped > 0) {
      scratch.grouped_offset = ChainPackedOffset(scratch.total);
      if (__builtin_add_overflow(scratch.grouped_offset, grouped, &scratch.total)) return overflow;
    }
  }
  int64_t rule_workspace = 0;
  for (size_t l = 0; l < chain.size(); ++l) {
    // The last factor may carry the chain's epilogue, which the size may depend on (an FP32
    // product for 16-bit types): sized as if it did.
    const Activation activation = l + 1 == chain.size() ? Activation::kGeluErf : Activation::kNone;
    absl::StatusOr<int64_t> bytes = RuleWorkspaceBytes(
        {.batch = batch, .pattern = chain[l], .dtype = dtype, .activation = activation, .layout = layout});
    if (!bytes.ok()) return bytes.status();
    rule_workspace = std::max(rule_workspace, *bytes);
  }
  if (rule_workspace > 0) {
    scratch.rule_workspace_offset = ChainPackedOffset(scratch.total);
    if (__builtin_add_overflow(scratch.rule_workspace_offset, rule_workspace, &scratch.total)) {
      return overflow;
    }
  }
  return scratch;
}

// Where a chain factor on CUDA may put its grouped weights and the rule's workspace (null: no room).
struct ChainScratch {
  void* grouped_weights = nullptr;
  void* rule_workspace = nullptr;
};

// Runs a chain as factor calls through factor(params, grouped_w, scratch), ping-ponging
// intermediates in the workspace; grouped_w is the factor's grouped weights or null; `scratch`
// points past the intermediates (ChainWorkspaceBytes sized it for the layout), or is empty where
// the path needs none (uses_scratch false: the CPU).
template <typename FactorFn>
absl::Status RunChain(const KsChainParams& p, bool uses_scratch, FactorFn factor) {
  const absl::StatusOr<int64_t> intermediate_bytes = IntermediateBytes(p.patterns, p.batch, p.dtype);
  if (!intermediate_bytes.ok()) return intermediate_bytes.status();  // also validates the chain
  absl::StatusOr<ChainScratchLayout> layout = ChainScratchLayout{.total = *intermediate_bytes};
  if (uses_scratch) layout = CudaChainScratch(*intermediate_bytes, p.patterns, p.batch, p.dtype, p.layout);
  if (!layout.ok()) return layout.status();
  const int64_t workspace_bytes = layout->total;
  if (p.weights.size() != p.patterns.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("%d weight tensors for a chain of %d factors",
                                                      p.weights.size(), p.patterns.size()));
  }
  if (!p.grouped_weights.empty() && p.grouped_weights.size() != p.patterns.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("%d grouped weight tensors for a chain of %d factors",
                                                      p.grouped_weights.size(), p.patterns.size()));
  }
  if (workspace_bytes > 0 && p.batch > 0 && p.workspace == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrFormat("this %s chain needs a workspace of %d bytes (ChainWorkspaceBytes)",
                        BatchLayoutName(p.layout), workspace_bytes));
  }
  const size_t last = p.patterns.size() - 1;
  const int64_t half = *intermediate_bytes / 2;  // two ping-pong buffers when there are ≥ 3 factors
  const auto at = [&](int64_t offset) {
    return offset >= 0 && p.workspace != nullptr
               ? static_cast<void*>(static_cast<char*>(p.workspace) + offset)
               : nullptr;
  };
  const ChainScratch scratch{.grouped_weights = at(layout->grouped_offset),
                             .rule_workspace = at(layout->rule_workspace_offset)};
  const void* input = p.x;
  for (size_t l = 0; l <= last; ++l) {
    void* output = l == last ? p.y : static_cast<char*>(p.workspace) + (l % 2 == 1 && last >= 2 ? half : 0);
    const KsFactorParams factor_params{.x = input,
                                       .w = p.weights[l],
                                       .bias = l == last ? p.bias : nullptr,
                                       .y = output,
                                       .batch = p.batch,
                                       .pattern = p.patterns[l],
                                       .dtype = p.dtype,
                                       .activation = l == last ? p.activation : Activation::kNone,
                                       .layout = p.layout};
    const void* grouped_w = p.grouped_weights.empty() ? nullptr : p.grouped_weights[l];
    if (absl::Status s = factor(factor_params, grouped_w, scratch); !s.ok()) return s;
    input = output;
  }
  return absl::OkStatus();
}

}  // namespace

std::string PatternToString(const KsPattern& p) {
  return absl::StrFormat("(%d,%d,%d,%d)", p.a, p.b, p.c, p.d);
}

std::string DTypeName(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "float32";
    case DType::kBFloat16:
      return "bfloat16";
    case DType::kFloat16:
      return "float16";
  }
  return "unknown";
}

std::string BatchLayoutName(BatchLayout layout) {
  switch (layout) {
    case BatchLayout::kBatchFirst:
      return "batch-first";
    case BatchLayout::kBatchLast:
      return "batch-last";
  }
  return "unknown";
}

absl::Status ValidatePattern(const KsPattern& p) {
  if (p.a <= 0 || p.b <= 0 || p.c <= 0 || p.d <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KS pattern %s: a, b, c and d must be positive", PatternToString(p)));
  }
  int64_t ab = 0, abc = 0, abcd = 0, ac = 0, acd = 0, abd = 0;
  if (MulOverflows(p.a, p.b, &ab) || MulOverflows(ab, p.c, &abc) || MulOverflows(abc, p.d, &abcd) ||
      MulOverflows(p.a, p.c, &ac) || MulOverflows(ac, p.d, &acd) || MulOverflows(ab, p.d, &abd)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KS pattern %s: sizes overflow 64-bit integers", PatternToString(p)));
  }
  return absl::OkStatus();
}

absl::Status ValidateChain(absl::Span<const KsPattern> chain) {
  if (chain.empty()) return absl::InvalidArgumentError("a KS chain needs at least one factor");
  for (size_t l = 0; l < chain.size(); ++l) {
    if (absl::Status s = ValidatePattern(chain[l]); !s.ok()) return s;
    if (l > 0 && chain[l].in_features() != chain[l - 1].out_features()) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "KS chain: factor %d %s outputs %d features but factor %d %s takes %d", l - 1,
          PatternToString(chain[l - 1]), chain[l - 1].out_features(), l, PatternToString(chain[l]),
          chain[l].in_features()));
    }
  }
  return absl::OkStatus();
}

namespace {

// Everything ValidateFactorParams checks except the pointers.
absl::Status ValidateFactorShape(const KsFactorParams& params) {
  if (absl::Status s = ValidatePattern(params.pattern); !s.ok()) return s;
  if (params.dtype != DType::kFloat32 && params.dtype != DType::kBFloat16 && params.dtype != DType::kFloat16) {
    return absl::InvalidArgumentError("unknown dtype");
  }
  if (params.activation != Activation::kNone && params.activation != Activation::kRelu &&
      params.activation != Activation::kGeluTanh && params.activation != Activation::kGeluErf) {
    return absl::InvalidArgumentError("unknown activation");
  }
  if (params.layout != BatchLayout::kBatchFirst && params.layout != BatchLayout::kBatchLast) {
    return absl::InvalidArgumentError("unknown batch layout");
  }
  if (params.batch < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("batch must be >= 0, got %d", params.batch));
  }
  const int64_t max_elements = std::numeric_limits<int64_t>::max() / DTypeSize(params.dtype);
  int64_t x_elems = 0, y_elems = 0;
  if (MulOverflows(params.batch, params.pattern.in_features(), &x_elems) ||
      MulOverflows(params.batch, params.pattern.out_features(), &y_elems) || x_elems > max_elements ||
      y_elems > max_elements || params.pattern.nonzeros() > max_elements) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batch %d with pattern %s overflows 64-bit sizes", params.batch, PatternToString(params.pattern)));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateFactorParams(const KsFactorParams& params) {
  if (absl::Status s = ValidateFactorShape(params); !s.ok()) return s;
  if (params.batch > 0 && (params.x == nullptr || params.w == nullptr || params.y == nullptr)) {
    return absl::InvalidArgumentError("x, w and y must be non-null");
  }
  return absl::OkStatus();
}

absl::Status KsFactorForwardCpu(const KsFactorParams& params) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
  if (params.batch == 0) return absl::OkStatus();  // pointers may be null
  switch (params.dtype) {
    case DType::kFloat32:
      FactorCpuInLayout<F32>(params);
      break;
    case DType::kBFloat16:
      FactorCpuInLayout<BF16>(params);
      break;
    case DType::kFloat16:
      FactorCpuInLayout<F16>(params);
      break;
  }
  return absl::OkStatus();
}

FusedTile DefaultFusedTile(const KsPattern& pattern, int64_t batch, DType dtype) {
  // j groups as wide as d allows (coalesced loads along j), else full GEMM tiles along s; small
  // batches take short tiles so the grid still fills the device. 16-bit types: tensor cores.
  // Up to 4096 rows from the H200 default sweep (bench/results/h200-ksbench-candidates.csv), above
  // from the BF16 batch-25088 sweeps and the H100 sweep.
  const int64_t d = pattern.d;
  if (dtype != DType::kFloat32) {
    // d = 1 above 512 rows: plain GEMM tiles of 128 rows.
    if (d == 1 && batch > 512) return pattern.b > 64 ? FusedTile::kTcM128N128 : FusedTile::kTcM128N64;
    if (batch > 4096) {
      // d = 2, 4 and 8: the persistent TMA + warpgroup-MMA tile (1.6-2.9x the best pipelined tile
      // on an H200 but for one small d = 2 pattern, bench/results/h200-ksbench-bf16-25088-
      // candidates.csv; where it cannot run it hands over to kTcM64N64K16), in clusters sharing x
      // where d < 8 and the 256 / d-wide r tiles pair up (a median 0.86x the time of single
      // blocks, 0.72-1.18x; with an odd count 1.2-1.5x). Else 4-j groups in s steps of 16 (two
      // blocks per SM) for d = 16 and 32; for b of 256 and more, the tile twice as wide in r; 8-j
      // groups for wide d.
      if (d == 2 || d == 4) {
        const int64_t r_tiles = (pattern.b * d + 255) / 256;
        return r_tiles % 2 == 0 ? FusedTile::kWgTmaPairX : FusedTile::kWgTma;
      }
      if (d == 8) return FusedTile::kWgTma;
      if (d == 16 || d == 32) return FusedTile::kTcM64N64K16;
      if (pattern.b >= 256 && (d % 4 == 0 || d == 2)) return FusedTile::kTcM64N128K16;
      if (d % 8 == 0 && d >= 48) return FusedTile::kTcM64N32;
      if (d % 4 == 0 || d == 2) return FusedTile::kTcM64N64;
      return RegisterStagedMmaTile(pattern);
    }
    if (batch > 64) {
      // wg-tma for d = 2, 4 and multiples of 8: at 196 and 1568 rows the 32 × 32 tile, the next
      // best, takes a median 1.0-2.5x as long.
      if (d == 2 || d == 4 || d % 8 == 0) return FusedTile::kWgTma;
      if (d == 1 || d % 4 == 0) return FusedTile::kTcM32N32;
      return RegisterStagedMmaTile(pattern);
    }
    // Up to 64 rows: tensor-core tiles all the same (one row: a median 2.6x the CUDA-core tiles).
    if (d == 2) return FusedTile::kTcM64N64;
    if (d == 1 || d % 4 == 0) return FusedTile::kTcM32N32;
    return RegisterStagedMmaTile(pattern);
  }
  // FP32 with d a multiple of 4: the pipelined 4-j tile, 1.07-2.4x the wider j groups of d >= 16
  // and of d = 4 from 196 rows up, as its float4-operand twin where c >= 256 above 1024 rows (a
  // median 0.93x its time there, H200); the 8-j tile stays ahead for d in [8, 16) below 4096 rows
  // and for d >= 16 up to 64 rows, the 1-j tile for d = 4 up to 64 rows, the register-staged 4-j
  // tile for d = 8 above 4096 rows.
  if (d % 4 == 0) {
    if (batch <= 64 && d == 4) return FusedTile::kJ1M16N64;
    if (batch <= 64 && d >= 16) return FusedTile::kJ8M32N32;
    if (d == 8 && batch > 4096) return FusedTile::kJ4M64N64;
    if (d >= 8 && d < 16 && batch <= 4096) return FusedTile::kJ8M32N32;
    if (pattern.c >= 256 && batch > 1024) return FusedTile::kJ4M64N64AsyncT;
    return FusedTile::kJ4M64N64Async;
  }
  if (d >= 32) return FusedTile::kJ32M16N8;
  if (d >= 16) return FusedTile::kJ16M16N16;
  if (d >= 8) return FusedTile::kJ8M32N32;
  if (d >= 4) return FusedTile::kJ4M64N64;
  // d = 1, 2, 3: one j per block, 16-row tiles up to 512 rows (a median 1.1-1.9x the 128-row
  // ones there), then 128-row tiles (two j for d = 2 above 4096 rows).
  if (batch <= 512) return FusedTile::kJ1M16N64;
  if (d == 2 && batch > 4096) return FusedTile::kJ2M128N64;
  return FusedTile::kJ1M128N64;
}

int FusedTileJ(FusedTile tile) {
  switch (tile) {
    case FusedTile::kJ2M128N64:
      return 2;
    case FusedTile::kJ4M64N64:
    case FusedTile::kJ4M64N64Async:
    case FusedTile::kJ4M64N64AsyncT:
    case FusedTile::kJ4M128N64AsyncJ:
    case FusedTile::kMmaJ4M64N64:
      return 4;
    case FusedTile::kJ8M32N32:
    case FusedTile::kMmaJ8M32N32:
      return 8;
    case FusedTile::kJ16M16N16:
      return 16;
    case FusedTile::kJ32M16N8:
      return 32;
    case FusedTile::kJ1M16N64:
    case FusedTile::kJ1M128N128:
    case FusedTile::kJ1M128N64:
    case FusedTile::kMmaJ1M128N64:
    case FusedTile::kMmaJ1M128N128:
      break;
    case FusedTile::kTcM128N128:
    case FusedTile::kTcM128N64:
    case FusedTile::kTcM64N64:
    case FusedTile::kTcM64N64K16:
    case FusedTile::kTcM64N128K16:
    case FusedTile::kTcWgM64N128K16:
    case FusedTile::kTcM64N32:
    case FusedTile::kTcM32N32:
    case FusedTile::kWgTma:
    case FusedTile::kWgTmaPairX:
      break;  // chosen from d at launch
  }
  return 1;
}

bool KernelTakesLayout(const KsKernelChoice& choice, BatchLayout layout) {
  return layout == BatchLayout::kBatchFirst || choice.algorithm != KsAlgorithm::kFused;
}

bool FusedTileReadsPackedWeights(FusedTile tile) {
  switch (tile) {
    case FusedTile::kTcM128N128:
    case FusedTile::kTcM128N64:
    case FusedTile::kTcM64N64:
    case FusedTile::kTcM64N64K16:
    case FusedTile::kTcM64N128K16:
    case FusedTile::kTcWgM64N128K16:
    case FusedTile::kTcM64N32:
    case FusedTile::kTcM32N32:
    case FusedTile::kWgTma:
    case FusedTile::kWgTmaPairX:
      return true;
    default:
      return false;
  }
}

bool FusedTileIsPipelinedFp32(FusedTile tile) {
  return tile == FusedTile::kJ4M64N64Async || tile == FusedTile::kJ4M64N64AsyncT ||
         tile == FusedTile::kJ4M128N64AsyncJ;
}

bool FusedTileUsesTensorCores(FusedTile tile) {
  switch (tile) {
    case FusedTile::kMmaJ1M128N64:
    case FusedTile::kMmaJ1M128N128:
    case FusedTile::kMmaJ4M64N64:
    case FusedTile::kMmaJ8M32N32:
      return true;
    default:
      return FusedTileReadsPackedWeights(tile);  // the pipelined tensor-core tiles
  }
}

namespace {

std::string FusedTileName(FusedTile tile) {
  switch (tile) {
    case FusedTile::kJ1M16N64:
      return "j1m16n64";
    case FusedTile::kJ1M128N128:
      return "j1m128n128";
    case FusedTile::kJ1M128N64:
      return "j1m128n64";
    case FusedTile::kJ2M128N64:
      return "j2m128n64";
    case FusedTile::kJ4M64N64:
      return "j4m64n64";
    case FusedTile::kJ4M64N64Async:
      return "j4m64n64-async";
    case FusedTile::kJ4M64N64AsyncT:
      return "j4m64n64-async-t";
    case FusedTile::kJ4M128N64AsyncJ:
      return "j4m128n64-async-j";
    case FusedTile::kJ8M32N32:
      return "j8m32n32";
    case FusedTile::kJ16M16N16:
      return "j16m16n16";
    case FusedTile::kJ32M16N8:
      return "j32m16n8";
    case FusedTile::kMmaJ1M128N64:
      return "mma-j1m128n64";
    case FusedTile::kMmaJ1M128N128:
      return "mma-j1m128n128";
    case FusedTile::kMmaJ4M64N64:
      return "mma-j4m64n64";
    case FusedTile::kMmaJ8M32N32:
      return "mma-j8m32n32";
    case FusedTile::kTcM128N128:
      return "tc-m128n128";
    case FusedTile::kTcM128N64:
      return "tc-m128n64";
    case FusedTile::kTcM64N64:
      return "tc-m64n64";
    case FusedTile::kTcM64N64K16:
      return "tc-m64n64k16";
    case FusedTile::kTcM64N128K16:
      return "tc-m64n128k16";
    case FusedTile::kTcWgM64N128K16:
      return "tc-wg-m64n128k16";
    case FusedTile::kTcM64N32:
      return "tc-m64n32";
    case FusedTile::kTcM32N32:
      return "tc-m32n32";
    case FusedTile::kWgTma:
      return "wg-tma";
    case FusedTile::kWgTmaPairX:
      return "wg-tma-x2";
  }
  return "unknown";
}

}  // namespace

std::string KernelChoiceName(const KsKernelChoice& choice) {
  switch (choice.algorithm) {
    case KsAlgorithm::kNaive:
      return "naive";
    case KsAlgorithm::kFused:
      return "fused/" + FusedTileName(choice.tile);
    case KsAlgorithm::kDense:
      return "dense";
    case KsAlgorithm::kBmm:
      return "bmm";
  }
  return "unknown";
}

absl::StatusOr<KsKernelChoice> ParseKernelChoice(std::string_view name) {
  for (KsAlgorithm algorithm : {KsAlgorithm::kNaive, KsAlgorithm::kDense, KsAlgorithm::kBmm}) {
    if (name == KernelChoiceName({.algorithm = algorithm})) return KsKernelChoice{.algorithm = algorithm};
  }
  for (FusedTile tile : kAllFusedTiles) {
    const KsKernelChoice choice{.algorithm = KsAlgorithm::kFused, .tile = tile};
    if (name == KernelChoiceName(choice)) return choice;
  }
  return absl::InvalidArgumentError(absl::StrFormat("unknown KS kernel '%s'", name));
}

absl::StatusOr<int64_t> PackedWeightBytes(const KsKernelChoice& choice, const KsPattern& pattern, DType dtype) {
  if (absl::Status s = ValidatePattern(pattern); !s.ok()) return s;
  int64_t grouped_bytes = 0;
  if (MulOverflows(pattern.nonzeros(), DTypeSize(dtype), &grouped_bytes)) {
    return absl::InvalidArgumentError("grouped weights overflow 64-bit sizes");
  }
  switch (choice.algorithm) {
    case KsAlgorithm::kDense: {
      int64_t elements = 0, bytes = 0;
      if (MulOverflows(pattern.in_features(), pattern.out_features(), &elements) ||
          MulOverflows(elements, DTypeSize(dtype), &bytes)) {
        return absl::InvalidArgumentError("densified weights overflow 64-bit sizes");
      }
      return bytes;
    }
    case KsAlgorithm::kBmm:
      return pattern.d == 1 ? 0 : grouped_bytes;
    case KsAlgorithm::kFused:
      // Grouped [(i·d + j)][r][s]: k-contiguous per j, as the tensor cores read it.
      return FusedTileReadsPackedWeights(choice.tile) && dtype != DType::kFloat32 && pattern.d > 1 ? grouped_bytes
                                                                                                   : 0;
    case KsAlgorithm::kNaive:
      return 0;
  }
  return absl::InvalidArgumentError("unknown algorithm");
}

bool CublasSizesFit(const KsFactorParams& params, KsAlgorithm algorithm) {
  const KsPattern& k = params.pattern;
  const int64_t n = params.batch;
  const auto fit = [](std::initializer_list<int64_t> sizes) {
    return std::all_of(sizes.begin(), sizes.end(),
                       [](int64_t v) { return v <= std::numeric_limits<int>::max(); });
  };
  // Every product checked: the rule call sizes params before they are validated.
  int64_t ad = 0, in = 0, out = 0, nd = 0, nb = 0, nc = 0;
  if (MulOverflows(k.a, k.d, &ad) || MulOverflows(ad, k.c, &in) || MulOverflows(ad, k.b, &out) ||
      MulOverflows(n, k.d, &nd) || MulOverflows(n, k.b, &nb) || MulOverflows(n, k.c, &nc)) {
    return false;
  }
  if (algorithm == KsAlgorithm::kDense) return fit({n, in, out});
  // bmm: batch and group counts, the row lengths, and the leading dimensions of its layout.
  return params.layout == BatchLayout::kBatchLast ? fit({n, ad, in, out, nd}) : fit({n, ad, in, out, nb, nc});
}

bool CublasProductInFp32(const KsFactorParams& params) {
  return params.dtype != DType::kFloat32 &&
         (params.bias != nullptr || params.activation != Activation::kNone);
}

absl::StatusOr<int64_t> FactorWorkspaceBytes(KsAlgorithm algorithm, const KsFactorParams& params) {
  if (absl::Status s = ValidateFactorShape(params); !s.ok()) return s;
  if (algorithm != KsAlgorithm::kDense && algorithm != KsAlgorithm::kBmm) return 0;
  const KsPattern& pattern = params.pattern;
  // Batch-first bmm with d > 1 permutes x and y into groups; batch-last bmm multiplies the blocks
  // where they lie, and dense and d = 1 need no permutes.
  const bool permutes =
      algorithm == KsAlgorithm::kBmm && pattern.d > 1 && params.layout == BatchLayout::kBatchFirst;
  const bool fp32_product = CublasProductInFp32(params);
  if (!permutes && !fp32_product) return 0;
  // The product (grouped or not), after grouped x at a 256-byte boundary (cuBLAS's preferred alignment).
  int64_t x_bytes = 0, y_bytes = 0, bytes = 0;
  if (MulOverflows(params.batch, pattern.in_features(), &x_bytes) ||
      MulOverflows(x_bytes, DTypeSize(params.dtype), &x_bytes) ||
      MulOverflows(params.batch, pattern.out_features(), &y_bytes) ||
      MulOverflows(y_bytes, fp32_product ? 4 : DTypeSize(params.dtype), &y_bytes) ||
      __builtin_add_overflow(x_bytes, y_bytes, &bytes) || __builtin_add_overflow(bytes, 255, &bytes)) {
    return absl::InvalidArgumentError("cuBLAS workspace overflows 64-bit sizes");
  }
  return permutes ? BmmOutputOffset(params.batch, pattern, params.dtype) + y_bytes : y_bytes;
}

int64_t BmmOutputOffset(int64_t batch, const KsPattern& pattern, DType dtype) {
  return (batch * pattern.in_features() * DTypeSize(dtype) + 255) / 256 * 256;
}

namespace {

// With grouped weights, d > 1, batch-first: where cuBLAS's batched GEMMs beat the fused tiles
// (batch-last, bmm multiplies the blocks where they lie and the naive kernel is the only other
// path). From the H200 sweep (bench/results/h200-ksbench.csv, rule pick against bmm):
// - FP32 up to 512 rows: no CUDA-core tile comes near cuBLAS (the tile was a median 0.49x and
//   0.93x of bmm at batch 1 and 196, bmm itself within noise of the best baseline).
// - FP32 above: where the 4-j tiles fit d badly (d not a multiple of 4), with sums of 64 or more
//   (c; on shorter ones cuBLAS's GEMM tiles idle: (1, 192, 48, 2) stays 1.1x faster fused), and
//   d = 4 with b and c of 384 or more (one j's GEMM is large enough for cuBLAS's SGEMM tiles).
//   Replayed on the sweep's times, bmm took a median 0.86x of the tile's time on those 28 cases
//   (0.41-1.03x).
// - 16-bit types where no pipelined tensor-core tile takes d (d > 2 not a multiple of 4: the
//   register-staged mma tile runs): 0.13-0.77x, median 0.50x, on 16 cases.
// Then, replayed on the same sweep (the tile's time against bmm's, per pattern), where one j's GEMM
// is large enough for cuBLAS's tiles while the fused tiles split s into short steps:
// - per-j GEMMs of 2^20 weights and more with d > 4 not a multiple of 8 (4-j groups read a third
//   of each x run): bmm 0.32-0.85x of the tile's time (6 cases, both dtypes, every batch size);
// - 16-bit up to 64 rows, d >= 8 with b >= 64 and c >= 192, or d = 4 with c >= 512 (20 cases:
//   0.48-0.98x, one at 1.07x); up to 512 rows, d in [12, 24] with b >= 64 and c >= 128, d >= 32
//   with b >= 256 and c >= 768 (11 cases, 0.52-0.97x); up to 4096 rows, d in [12, 24] with b, c
//   >= 192 (6 cases, 0.51-0.92x);
// - FP32 from 513 to 4096 rows, d = 4 with c >= 512 ((1, 128, 512, 4): 0.60x), d >= 8 with
//   a·d <= 64, b >= 384 and c >= 256 (4 cases, 0.86-1.01x; at a·d = 192 the tile stays 1.16x
//   faster).
// Timed on the H200 (bench/results/h200-ksbench-bmm-rule-*): patterns below 0.9x of the best
// baseline 27 -> 11, 27 -> 19, 19 -> 15 in BF16 at 1, 196, 1568 rows, 5 -> 2 in FP32 at 1568.
bool GroupedBmmBeatsFusedTiles(const KsFactorParams& params) {
  const int64_t a = params.pattern.a, b = params.pattern.b, c = params.pattern.c, d = params.pattern.d;
  const int64_t batch = params.batch;
  if (d > 4 && d % 8 != 0 && b * c >= (int64_t{1} << 20)) return true;
  if (params.dtype != DType::kFloat32) {
    if (d % 4 != 0) return d > 2;
    if (batch <= 64) return (d >= 8 && b >= 64 && c >= 192) || (d == 4 && c >= 512);
    if (batch <= 512) return d >= 12 && d <= 24 ? b >= 64 && c >= 128 : d >= 32 && b >= 256 && c >= 768;
    return batch <= 4096 && d >= 12 && d <= 24 && b >= 192 && c >= 192;
  }
  if (batch <= 512) return true;
  if (d % 4 != 0) return c >= 64;
  if (d == 4) return (b >= 384 && c >= 384) || (batch <= 4096 && c >= 512);
  return batch <= 4096 && a * d <= 64 && b >= 384 && c >= 256;
}

}  // namespace

KsKernelChoice DefaultKernelChoice(const KsFactorParams& params, bool grouped) {
  // d = 1: a batched GEMM over the a blocks as they lie, which cuBLAS runs faster than every fused
  // tile at every batch size of the H200 sweep (bench/results/h200-ksbench-candidates.csv: the
  // rule's fused tile took a median 1.3-4x as long). Its bias and activation run as a second pass;
  // for 16-bit types that pass reads an FP32 product from a workspace, which a call without one
  // lacks: there the fused tiles apply the epilogue. The call validates either choice.
  const bool exact_epilogue =
      params.dtype == DType::kFloat32 || (params.bias == nullptr && params.activation == Activation::kNone);
  if (params.pattern.d == 1 && exact_epilogue && CublasSizesFit(params, KsAlgorithm::kBmm)) {
    return {.algorithm = KsAlgorithm::kBmm};
  }
  if (grouped && params.pattern.d > 1 &&
      (params.layout == BatchLayout::kBatchLast || GroupedBmmBeatsFusedTiles(params)) &&
      CublasSizesFit(params, KsAlgorithm::kBmm)) {
    return {.algorithm = KsAlgorithm::kBmm};
  }
  if (params.layout == BatchLayout::kBatchLast) return {.algorithm = KsAlgorithm::kNaive};
  return {.algorithm = KsAlgorithm::kFused,
          .tile = DefaultFusedTile(params.pattern, params.batch, params.dtype)};
}

absl::Status KsFactorForwardCuda(const KsFactorParams& params, CudaStream stream) {
  return KsFactorForwardCuda(params, DefaultKernelChoice(params), nullptr, nullptr, stream);
}

absl::Status KsFactorForwardCuda(const KsFactorParams& params, const void* grouped_w, void* workspace,
                                 CudaStream stream) {
  const KsKernelChoice choice = DefaultKernelChoice(params, /*grouped=*/grouped_w != nullptr);
  // The rule's picks that read packed weights read them grouped; the others take none.
  absl::StatusOr<int64_t> packed_bytes = PackedWeightBytes(choice, params.pattern, params.dtype);
  if (!packed_bytes.ok()) return packed_bytes.status();
  return KsFactorForwardCuda(params, choice, *packed_bytes > 0 ? grouped_w : nullptr, workspace, stream);
}

absl::StatusOr<int64_t> RuleWorkspaceBytes(const KsFactorParams& params) {
  return FactorWorkspaceBytes(DefaultKernelChoice(params, /*grouped=*/true).algorithm, params);
}

absl::StatusOr<int64_t> GroupedWeightBytes(const KsPattern& pattern, DType dtype) {
  return PackedWeightBytes({.algorithm = KsAlgorithm::kBmm}, pattern, dtype);
}

absl::Status PackGroupedWeightsCuda(const KsPattern& pattern, DType dtype, const void* w, void* grouped,
                                    CudaStream stream) {
  return PackWeightsCuda({.algorithm = KsAlgorithm::kBmm}, pattern, dtype, w, grouped, stream);
}

absl::Status FusedPairSupported(absl::Span<const KsPattern> chain, DType dtype) {
  if (absl::Status s = ValidateChain(chain); !s.ok()) return s;
  if (chain.size() != 2) {
    return absl::InvalidArgumentError(absl::StrFormat("a fused pair has two factors, not %d", chain.size()));
  }
  if (dtype == DType::kFloat32) {
    return absl::InvalidArgumentError("the fused pair runs on tensor cores: bfloat16 or float16, not strict float32");
  }
  if (chain[0].d != 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("the fused pair needs d = 1 in its first factor, not %s", PatternToString(chain[0])));
  }
  if (chain[0].c % 8 != 0 || chain[1].c % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat("the fused pair needs c a multiple of 8 in both factors: %s, %s",
                                                      PatternToString(chain[0]), PatternToString(chain[1])));
  }
  // Index arithmetic within a block of rows is 32-bit.
  if (chain[0].in_features() > (int64_t{1} << 24) || chain[1].in_features() > (int64_t{1} << 20) ||
      chain[1].out_features() > (int64_t{1} << 24)) {
    return absl::InvalidArgumentError(absl::StrFormat("the fused pair takes up to 2^24 features, not %d → %d → %d",
                                                      chain[0].in_features(), chain[1].in_features(),
                                                      chain[1].out_features()));
  }
  return absl::OkStatus();
}

std::string PairTileName(PairTile tile) {
  switch (tile) {
    case PairTile::kRule:
      return "rule";
    case PairTile::kM64N64:
      return "m64n64";
    case PairTile::kM64N64K64:
      return "m64n64k64";
    case PairTile::kM64N128:
      return "m64n128";
    case PairTile::kM64N128K64:
      return "m64n128k64";
    case PairTile::kM128N128:
      return "m128n128";
    case PairTile::kWgM64:
      return "wg-m64";
    case PairTile::kWgM128:
      return "wg-m128";
    case PairTile::kWgPingPong:
      return "wg-pingpong";
  }
  return "unknown";
}

absl::StatusOr<int64_t> FusedPairPackedBytes(absl::Span<const KsPattern> chain, DType dtype) {
  if (absl::Status s = FusedPairSupported(chain, dtype); !s.ok()) return s;
  return chain[1].d == 1 ? 0 : chain[1].nonzeros() * DTypeSize(dtype);
}

#if !KSSERVE_WITH_CUDA
namespace {
absl::Status NoCuda() { return absl::FailedPreconditionError("ksserve was built without CUDA (preset 'cpu')"); }
}  // namespace

absl::Status PackWeightsCuda(const KsKernelChoice&, const KsPattern&, DType, const void*, void*, CudaStream) {
  return NoCuda();
}

absl::Status PackFusedPairWeightsCuda(absl::Span<const KsPattern> chain, DType dtype, const void*, void*,
                                      CudaStream) {
  if (absl::Status s = FusedPairSupported(chain, dtype); !s.ok()) return s;
  return NoCuda();
}

absl::Status KsFusedPairForwardCuda(const KsChainParams& params, const void*, CudaStream, PairTile) {
  if (absl::Status s = FusedPairSupported(params.patterns, params.dtype); !s.ok()) return s;
  return NoCuda();
}

absl::Status KsFactorForwardCuda(const KsFactorParams& params, const KsKernelChoice&, const void*, void*, CudaStream) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
  return NoCuda();
}
#endif

absl::StatusOr<int64_t> ChainWorkspaceBytes(absl::Span<const KsPattern> chain, int64_t batch, DType dtype,
                                            BatchLayout layout) {
  const absl::StatusOr<int64_t> intermediate_bytes = IntermediateBytes(chain, batch, dtype);
  if (!intermediate_bytes.ok()) return intermediate_bytes.status();
  absl::StatusOr<ChainScratchLayout> scratch =
      CudaChainScratch(*intermediate_bytes, chain, batch, dtype, layout);
  if (!scratch.ok()) return scratch.status();
  return scratch->total;
}

absl::Status KsChainForwardCpu(const KsChainParams& params) {
  return RunChain(params, /*uses_scratch=*/false,
                  [](const KsFactorParams& factor, const void*, const ChainScratch&) {
                    return KsFactorForwardCpu(factor);
                  });
}

absl::Status KsChainForwardCuda(const KsChainParams& params, CudaStream stream) {
  return RunChain(params, /*uses_scratch=*/true,
                  [stream](const KsFactorParams& factor, const void* grouped_w, const ChainScratch& scratch) {
                    // Batch-last factors with d > 1 run bmm on grouped weights: without given ones,
                    // grouped into the scratch per call (a pass over the weights) rather than the
                    // naive kernel.
                    if (grouped_w == nullptr && scratch.grouped_weights != nullptr && factor.pattern.d > 1 &&
                        factor.batch > 0 &&
                        DefaultKernelChoice(factor, /*grouped=*/true).algorithm == KsAlgorithm::kBmm) {
                      if (absl::Status s = PackGroupedWeightsCuda(factor.pattern, factor.dtype, factor.w,
                                                                  scratch.grouped_weights, stream);
                          !s.ok()) {
                        return s;
                      }
                      grouped_w = scratch.grouped_weights;
                    }
                    return KsFactorForwardCuda(factor, grouped_w, scratch.rule_workspace, stream);
                  });
}

}  // namespace ksserve::kernels

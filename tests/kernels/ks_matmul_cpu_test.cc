// CPU KS kernels (factor and chain, every dtype and epilogue) against the FP64 dense reference,
// on fresh random inputs and NaN-poisoned outputs; plus validation of bad parameters.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <set>
#include <tuple>

#include <unistd.h>
#include <cmath>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/block_order.h"
#include "kernels/half.h"
#include "kernels/ks_autotune.h"
#include "kernels/ks_matmul.h"
#include "tests/testing/ks_reference.h"

namespace ksserve::kernels {
namespace {

using testing::KsChainReference;
using testing::RandomTyped;
using testing::RelativeError;
using testing::TypedBuffer;

struct ChainCase {
  std::string name;
  std::vector<KsPattern> chain;  // rightmost first
  int64_t batch;
};

void PrintTo(const ChainCase& test, std::ostream* os) { *os << test.name; }

std::vector<KsPattern> Butterfly(int64_t log2n) {
  std::vector<KsPattern> chain;
  for (int64_t l = 0; l < log2n; ++l) chain.push_back({int64_t{1} << l, 2, 2, int64_t{1} << (log2n - 1 - l)});
  return chain;
}

double Tolerance(DType dtype) { return dtype == DType::kFloat32 ? 1e-5 : 1e-2; }

// A row-major (rows × columns) matrix of `element_bytes` elements, transposed.
std::vector<uint8_t> TransposedBits(const std::vector<uint8_t>& bits, int64_t rows, int64_t columns,
                                    int64_t element_bytes) {
  std::vector<uint8_t> out(bits.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < columns; ++c) {
      std::copy_n(bits.begin() + (r * columns + c) * element_bytes, element_bytes,
                  out.begin() + (c * rows + r) * element_bytes);
    }
  }
  return out;
}

class KsChainCpuTest : public ::testing::TestWithParam<ChainCase> {};

TEST_P(KsChainCpuTest, EveryDTypeAndEpilogueMatchesFp64Reference) {
  const ChainCase& test = GetParam();
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  const int64_t in = test.chain.front().in_features(), out = test.chain.back().out_features();
  for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
    for (auto [activation, with_bias] : {std::pair{Activation::kNone, false}, std::pair{Activation::kGeluTanh, true},
                                         std::pair{Activation::kGeluErf, true}, std::pair{Activation::kRelu, true}}) {
      SCOPED_TRACE(::testing::Message() << test.name << " " << DTypeName(dtype) << " activation "
                                        << static_cast<int>(activation) << " bias " << with_bias << " seed " << seed);
      const TypedBuffer x = RandomTyped(dtype, test.batch * in, 0, 0, rng, /*normal=*/true);
      std::vector<TypedBuffer> weights;
      std::vector<std::vector<double>> weight_values;
      KsChainParams params;
      for (const KsPattern& p : test.chain) {
        const double scale = 1.0 / std::sqrt(static_cast<double>(p.c));
        weights.push_back(RandomTyped(dtype, p.nonzeros(), -2 * scale, 2 * scale, rng));
        weight_values.push_back(weights.back().values);
        params.weights.push_back(weights.back().bits.data());
      }
      const TypedBuffer bias = RandomTyped(dtype, out, -1, 1, rng);
      TypedBuffer y = testing::PoisonedTyped(dtype, test.batch * out);
      const absl::StatusOr<int64_t> workspace_bytes =
          ChainWorkspaceBytes(test.chain, test.batch, dtype, BatchLayout::kBatchFirst);
      ASSERT_TRUE(workspace_bytes.ok()) << workspace_bytes.status();
      std::vector<uint8_t> workspace(static_cast<size_t>(*workspace_bytes));

      params.x = x.bits.data();
      params.y = y.bits.data();
      params.bias = with_bias ? bias.bits.data() : nullptr;
      params.patterns = test.chain;
      params.workspace = workspace.data();
      params.batch = test.batch;
      params.dtype = dtype;
      params.activation = activation;
      ASSERT_TRUE(KsChainForwardCpu(params).ok());

      const std::vector<double> ref =
          KsChainReference(x.values, test.batch, test.chain, weight_values, with_bias ? &bias.values : nullptr, activation);
      const std::vector<double> got = testing::TypedToDouble(dtype, y.bits.data(), test.batch * out);
      EXPECT_LE(RelativeError(got, ref), Tolerance(dtype));  // NaN (an unwritten output) fails too

      // The same chain batch-last: x, the intermediates and y as [features][batch].
      const std::vector<uint8_t> x_last = TransposedBits(x.bits, test.batch, in, DTypeSize(dtype));
      TypedBuffer y_last = testing::PoisonedTyped(dtype, test.batch * out);
      // The CPU needs only the intermediates in either layout (none for one factor: no workspace).
      params.x = x_last.data();
      params.y = y_last.bits.data();
      params.workspace = workspace.empty() ? nullptr : workspace.data();
      params.layout = BatchLayout::kBatchLast;
      ASSERT_TRUE(KsChainForwardCpu(params).ok());
      const std::vector<uint8_t> y_first = TransposedBits(y_last.bits, out, test.batch, DTypeSize(dtype));
      EXPECT_LE(RelativeError(testing::TypedToDouble(dtype, y_first.data(), test.batch * out), ref),
                Tolerance(dtype))
          << "batch-last";
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Chains, KsChainCpuTest,
    ::testing::Values(ChainCase{"unit", {{1, 1, 1, 1}}, 1}, ChainCase{"odd", {{2, 3, 5, 7}}, 3},
                      ChainCase{"odd_d1", {{7, 5, 3, 1}}, 17}, ChainCase{"odd_b1", {{3, 1, 7, 5}}, 2},
                      ChainCase{"prime_a", {{13, 3, 7, 5}}, 2}, ChainCase{"wide", {{5, 48, 96, 3}}, 2},
                      ChainCase{"vit_attention", {{2, 48, 192, 1}, {1, 192, 48, 2}}, 3},
                      ChainCase{"vit_mlp_up", {{6, 64, 64, 1}, {1, 768, 192, 2}}, 2},
                      ChainCase{"vit_mlp_down", {{6, 64, 256, 1}, {1, 128, 128, 3}}, 2},
                      ChainCase{"butterfly_64", Butterfly(6), 5},
                      ChainCase{"batch_past_a_block", {{3, 4, 5, 2}, {2, 3, 6, 2}}, 300}),
    [](const ::testing::TestParamInfo<ChainCase>& info) { return info.param.name; });

// A deterministic sample of the paper's 648 patterns (every 27th), at every batch size of the
// suite. On the CPU the largest batches go with the smallest patterns; every output element is
// checked for poison, sampled rows against the FP64 definition.
TEST(PaperPatternsCpuTest, DeterministicSampleAtEveryBatchSize) {
  ASSERT_EQ(testing::LoadPaperPatterns(KSSERVE_PAPER_PATTERNS).size(), 648u);
  std::vector<KsPattern> sample = testing::PaperPatternSample(KSSERVE_PAPER_PATTERNS);
  ASSERT_EQ(sample.size(), 24u);
  std::stable_sort(sample.begin(), sample.end(),
                   [](const KsPattern& x, const KsPattern& y) { return x.nonzeros() < y.nonzeros(); });
  const int64_t batches[] = {25088, 10007, 1568, 196, 17, 3, 2, 1};
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  for (size_t k = 0; k < sample.size(); ++k) {
    const KsPattern& p = sample[k];
    const int64_t batch = batches[std::min(k, std::size(batches) - 1)];
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      SCOPED_TRACE(::testing::Message() << PatternToString(p) << " batch " << batch << " " << DTypeName(dtype)
                                        << " seed " << seed);
      const TypedBuffer x = RandomTyped(dtype, batch * p.in_features(), 0, 0, rng, /*normal=*/true);
      const TypedBuffer w = RandomTyped(dtype, p.nonzeros(), -1.0 / p.c, 1.0 / p.c, rng);
      TypedBuffer y = testing::PoisonedTyped(dtype, batch * p.out_features());
      const KsFactorParams params{.x = x.bits.data(), .w = w.bits.data(), .y = y.bits.data(), .batch = batch,
                                  .pattern = p, .dtype = dtype};
      ASSERT_TRUE(KsFactorForwardCpu(params).ok());
      const std::vector<double> got = testing::TypedToDouble(dtype, y.bits.data(), batch * p.out_features());
      ASSERT_TRUE(std::all_of(got.begin(), got.end(), [](double v) { return std::isfinite(v); }));
      const std::vector<int64_t> rows = testing::SampleRows(batch, 30, rng);
      std::vector<double> got_rows;
      for (int64_t n : rows) got_rows.insert(got_rows.end(), got.begin() + n * p.out_features(), got.begin() + (n + 1) * p.out_features());
      EXPECT_LE(RelativeError(got_rows, testing::KsFactorRowsReference(x.values, rows, p, w.values)), Tolerance(dtype));
    }
  }
}

TEST(KsFactorCpuTest, ZeroBatchIsANoOp) {
  const KsFactorParams params{.batch = 0, .pattern = {2, 3, 4, 5}};
  EXPECT_TRUE(KsFactorForwardCpu(params).ok());
}

TEST(KsPatternTest, RejectsNonPositiveSizes) {
  for (const KsPattern& p : {KsPattern{0, 1, 1, 1}, KsPattern{1, -2, 1, 1}, KsPattern{1, 1, 0, 1}, KsPattern{1, 1, 1, -1}}) {
    const absl::Status status = ValidatePattern(p);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << PatternToString(p);
    EXPECT_NE(status.message().find("positive"), std::string::npos) << status;
  }
}

TEST(KsPatternTest, RejectsOverflow) {
  const int64_t big = int64_t{1} << 32;
  EXPECT_EQ(ValidatePattern({big, big, 2, 1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidatePattern({big, 1, 1, 1}).ok());
}

TEST(KsChainTest, RejectsMismatchedAndEmptyChains) {
  EXPECT_EQ(ValidateChain({}).code(), absl::StatusCode::kInvalidArgument);
  const absl::Status mismatch = ValidateChain({{2, 48, 192, 1}, {1, 192, 48, 1}});  // 96 outputs, 48 inputs
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(mismatch.message().find("outputs 96 features"), std::string::npos) << mismatch;
  EXPECT_TRUE(ValidateChain(Butterfly(8)).ok());
}

TEST(KsChainTest, WorkspaceIsSizedForTheWidestIntermediate) {
  // One buffer for two factors, two ping-pong buffers for more; none for one.
  EXPECT_EQ(*ChainWorkspaceBytes({{2, 48, 192, 1}}, 7, DType::kFloat32, BatchLayout::kBatchFirst), 0);
  EXPECT_EQ(
      *ChainWorkspaceBytes({{6, 64, 64, 1}, {1, 768, 192, 2}}, 7, DType::kBFloat16, BatchLayout::kBatchFirst),
      7 * 384 * 2);
  // FP32 at 3 rows, d > 1: then, 256-aligned, bmm's grouped x (256 bytes, aligned) and y.
  EXPECT_EQ(*ChainWorkspaceBytes(Butterfly(4), 3, DType::kFloat32, BatchLayout::kBatchFirst),
            512 + 256 + 3 * 16 * 4);
  EXPECT_EQ(*ChainWorkspaceBytes(Butterfly(4), 3, DType::kBFloat16, BatchLayout::kBatchFirst),
            2 * 3 * 16 * 2);
  // Batch-last: then the largest factor with d > 1, grouped, from the next 256-byte boundary, and
  // for 16-bit types whose last factor has d > 1 its FP32 product (7·1536 values).
  EXPECT_EQ(
      *ChainWorkspaceBytes({{6, 64, 64, 1}, {1, 768, 192, 2}}, 7, DType::kBFloat16, BatchLayout::kBatchLast),
      7 * 384 * 2 + 768 * 192 * 2 * 2 + 7 * 1536 * 4);  // 5376 and 595200 are multiples of 256
  EXPECT_EQ(
      *ChainWorkspaceBytes({{6, 64, 64, 1}, {1, 768, 192, 2}}, 7, DType::kFloat32, BatchLayout::kBatchLast),
      7 * 384 * 4 + 768 * 192 * 2 * 4);
  EXPECT_EQ(
      *ChainWorkspaceBytes({{1, 384, 768, 2}, {12, 64, 64, 1}}, 7, DType::kFloat16, BatchLayout::kBatchLast),
      7 * 768 * 2 + 384 * 768 * 2 * 2);  // the last factor (d = 1) runs without grouped weights
  EXPECT_EQ(*ChainWorkspaceBytes({{2, 48, 192, 1}}, 7, DType::kFloat32, BatchLayout::kBatchLast), 0);
  EXPECT_EQ(*ChainWorkspaceBytes({{1, 3, 5, 2}}, 1, DType::kFloat32, BatchLayout::kBatchLast), 3 * 5 * 2 * 4);
}

TEST(KsChainTest, MissingWorkspaceOrWeightsAreErrors) {
  float buffer[64] = {};
  KsChainParams params;
  params.x = buffer;
  params.y = buffer + 32;
  params.patterns = {{1, 2, 2, 2}, {2, 2, 2, 1}};
  params.weights = {buffer, buffer};
  params.batch = 1;
  EXPECT_EQ(KsChainForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);  // no workspace
  params.weights = {buffer};
  params.workspace = buffer + 48;
  EXPECT_EQ(KsChainForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);  // one weight for two
  params.weights = {buffer, buffer};
  params.grouped_weights = {buffer};
  EXPECT_EQ(KsChainForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);  // one grouped for two
  params.grouped_weights = {buffer, nullptr};
  EXPECT_TRUE(KsChainForwardCpu(params).ok());
}

TEST(KsFactorParamsTest, RejectsBadBatchNullPointersAndOverflow) {
  float buffer[8] = {};
  KsFactorParams params{.x = buffer, .w = buffer, .y = buffer, .batch = -1, .pattern = {1, 1, 1, 1}};
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);
  params.batch = 1;
  for (const void** pointer : {&params.x, &params.w}) {
    KsFactorParams bad = params;
    *(pointer == &params.x ? &bad.x : &bad.w) = nullptr;
    EXPECT_EQ(KsFactorForwardCpu(bad).code(), absl::StatusCode::kInvalidArgument);
  }
  KsFactorParams no_y = params;
  no_y.y = nullptr;
  EXPECT_EQ(KsFactorForwardCpu(no_y).code(), absl::StatusCode::kInvalidArgument);
  params = {.x = buffer, .w = buffer, .y = buffer, .batch = int64_t{1} << 62, .pattern = {1, 4, 4, 1}};
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);
  params = {.x = buffer, .w = buffer, .y = buffer, .batch = 1, .pattern = {int64_t{1} << 31, int64_t{1} << 31, 2, 1}};
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);  // weight bytes overflow
  params = {.x = buffer,
            .w = buffer,
            .y = buffer,
            .batch = 1,
            .pattern = {1, 1, 1, 1},
            .layout = static_cast<BatchLayout>(7)};
  EXPECT_EQ(KsFactorForwardCpu(params).code(), absl::StatusCode::kInvalidArgument);  // unknown layout
}

TEST(HalfTest, ConversionsRoundToNearestEven) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);                  // halfway to 2^16: rounds to infinity
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 2048), 0x3c00);        // tie, even stays
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3c02);        // tie, odd rounds up
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -24)), 0x0001);     // smallest subnormal
  EXPECT_EQ(FloatToHalf(std::ldexp(1.0f, -25)), 0x0000);     // tie to even (zero)
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(std::numeric_limits<float>::quiet_NaN()) & 0x7e00, 0x7e00);
  for (uint32_t h = 0; h < 0x7c00; ++h) {  // every finite positive half round-trips
    EXPECT_EQ(FloatToHalf(HalfToFloat(static_cast<uint16_t>(h))), h);
  }
  EXPECT_EQ(FloatToBFloat16(1.0f), 0x3f80);
  EXPECT_EQ(FloatToBFloat16(std::bit_cast<float>(0x3f808000u)), 0x3f80);  // tie, even stays
  EXPECT_EQ(FloatToBFloat16(std::bit_cast<float>(0x3f818000u)), 0x3f82);  // tie, odd rounds up
  EXPECT_EQ(BFloat16ToFloat(0xc040), -3.0f);
  EXPECT_TRUE(std::isnan(BFloat16ToFloat(FloatToBFloat16(std::numeric_limits<float>::quiet_NaN()))));
}

TEST(KsKernelChoiceTest, NamesRoundTripAndUnknownNamesAreErrors) {
  std::vector<KsKernelChoice> choices = {{.algorithm = KsAlgorithm::kNaive},
                                         {.algorithm = KsAlgorithm::kDense},
                                         {.algorithm = KsAlgorithm::kBmm}};
  for (FusedTile tile : kAllFusedTiles) choices.push_back({.algorithm = KsAlgorithm::kFused, .tile = tile});
  std::vector<std::string> names;
  for (const KsKernelChoice& choice : choices) {
    const std::string name = KernelChoiceName(choice);
    names.push_back(name);
    absl::StatusOr<KsKernelChoice> parsed = ParseKernelChoice(name);
    ASSERT_TRUE(parsed.ok()) << name << ": " << parsed.status();
    EXPECT_TRUE(*parsed == choice) << name;
  }
  std::sort(names.begin(), names.end());
  EXPECT_EQ(std::unique(names.begin(), names.end()), names.end());
  EXPECT_EQ(ParseKernelChoice("fused/j3m7n1").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseKernelChoice("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(KsKernelChoiceTest, DefaultTileFollowsDAndBatch) {
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 1}, 25088, DType::kFloat32), FusedTile::kJ1M128N64);
  EXPECT_EQ(DefaultFusedTile({1, 48, 48, 1}, 25088, DType::kFloat32), FusedTile::kJ1M128N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 1}, 1, DType::kFloat32), FusedTile::kJ1M16N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 2}, 512, DType::kFloat32), FusedTile::kJ1M16N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 2}, 25088, DType::kFloat32), FusedTile::kJ2M128N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 4}, 64, DType::kFloat32), FusedTile::kJ1M16N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 16}, 64, DType::kFloat32), FusedTile::kJ8M32N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 4}, 196, DType::kFloat32), FusedTile::kJ4M64N64Async);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 64}, 196, DType::kFloat32), FusedTile::kJ4M64N64Async);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 8}, 196, DType::kFloat32), FusedTile::kJ8M32N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 8}, 25088, DType::kFloat32), FusedTile::kJ4M64N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 12}, 25088, DType::kFloat32), FusedTile::kJ4M64N64Async);
  // Long s loops from 1025 rows up: the tile whose operands are moved to the float4 layout.
  EXPECT_EQ(DefaultFusedTile({1, 128, 256, 4}, 1025, DType::kFloat32), FusedTile::kJ4M64N64AsyncT);
  EXPECT_EQ(DefaultFusedTile({1, 128, 512, 64}, 25088, DType::kFloat32), FusedTile::kJ4M64N64AsyncT);
  EXPECT_EQ(DefaultFusedTile({1, 128, 256, 4}, 1024, DType::kFloat32), FusedTile::kJ4M64N64Async);
  EXPECT_EQ(DefaultFusedTile({1, 128, 255, 4}, 25088, DType::kFloat32), FusedTile::kJ4M64N64Async);
  EXPECT_EQ(DefaultFusedTile({1, 128, 512, 8}, 25088, DType::kFloat32), FusedTile::kJ4M64N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 6}, 196, DType::kFloat32), FusedTile::kJ4M64N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 64}, 8, DType::kBFloat16), FusedTile::kTcM32N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 2}, 1, DType::kFloat16), FusedTile::kTcM64N64);
  EXPECT_EQ(DefaultFusedTile({1, 96, 96, 3}, 1, DType::kBFloat16), FusedTile::kMmaJ1M128N128);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 64}, 196, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 4}, 1568, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 12}, 1568, DType::kBFloat16), FusedTile::kTcM32N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 1}, 196, DType::kBFloat16), FusedTile::kTcM32N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 1}, 1568, DType::kBFloat16), FusedTile::kTcM128N128);
  // The batch boundaries of the 16-bit rule: 64 | 65 rows, 512 | 513 (d = 1), 4096 | 4097.
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 8}, 64, DType::kBFloat16), FusedTile::kTcM32N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 8}, 65, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 48, 48, 1}, 512, DType::kBFloat16), FusedTile::kTcM32N32);
  EXPECT_EQ(DefaultFusedTile({1, 48, 48, 1}, 513, DType::kBFloat16), FusedTile::kTcM128N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 16}, 4096, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 16}, 4097, DType::kBFloat16), FusedTile::kTcM64N64K16);
  EXPECT_EQ(DefaultFusedTile({1, 96, 96, 3}, 1568, DType::kBFloat16), FusedTile::kMmaJ1M128N128);
  EXPECT_EQ(DefaultFusedTile({1, 96, 96, 6}, 196, DType::kFloat16), FusedTile::kMmaJ4M64N64);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 4}, 25088, DType::kBFloat16), FusedTile::kWgTmaPairX);
  EXPECT_EQ(DefaultFusedTile({1, 192, 192, 4}, 25088, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 256, 256, 8}, 25088, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 16}, 25088, DType::kBFloat16), FusedTile::kTcM64N64K16);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 64}, 25088, DType::kBFloat16), FusedTile::kTcM64N32);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 24}, 25088, DType::kBFloat16), FusedTile::kTcM64N64);
  EXPECT_EQ(DefaultFusedTile({1, 768, 192, 2}, 25088, DType::kBFloat16), FusedTile::kWgTmaPairX);
  EXPECT_EQ(DefaultFusedTile({1, 768, 768, 64}, 25088, DType::kBFloat16), FusedTile::kTcM64N128K16);
  EXPECT_EQ(DefaultFusedTile({1, 128, 128, 2}, 25088, DType::kBFloat16), FusedTile::kWgTma);
  EXPECT_EQ(DefaultFusedTile({1, 96, 96, 6}, 25088, DType::kBFloat16), FusedTile::kMmaJ4M64N64);
  EXPECT_EQ(DefaultFusedTile({1, 96, 96, 3}, 25088, DType::kBFloat16), FusedTile::kMmaJ1M128N128);
  EXPECT_EQ(DefaultFusedTile({1, 48, 96, 3}, 25088, DType::kBFloat16), FusedTile::kMmaJ1M128N64);
  EXPECT_EQ(DefaultFusedTile({1, 96, 96, 17}, 25088, DType::kBFloat16), FusedTile::kMmaJ8M32N32);
  EXPECT_EQ(DefaultFusedTile({6, 64, 64, 1}, 25088, DType::kFloat16), FusedTile::kTcM128N64);
  EXPECT_EQ(DefaultFusedTile({6, 64, 64, 1}, 1, DType::kBFloat16), FusedTile::kTcM32N32);
}

TEST(KsFusedPairTest, SupportAndPackedSizes) {
  const std::vector<KsPattern> vit_up = {{6, 64, 64, 1}, {1, 768, 192, 2}};
  EXPECT_TRUE(FusedPairSupported(vit_up, DType::kBFloat16).ok());
  EXPECT_EQ(*FusedPairPackedBytes(vit_up, DType::kFloat16), 768 * 192 * 2 * 2);
  EXPECT_EQ(*FusedPairPackedBytes({{4, 16, 8, 1}, {2, 24, 32, 1}}, DType::kBFloat16), 0);  // d = 1: in place
  EXPECT_EQ(FusedPairSupported(vit_up, DType::kFloat32).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FusedPairSupported({{6, 64, 64, 1}}, DType::kBFloat16).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FusedPairSupported({{6, 64, 64, 1}, {1, 768, 192, 3}}, DType::kBFloat16).code(),
            absl::StatusCode::kInvalidArgument);  // 384 features out, 576 in
  EXPECT_EQ(FusedPairSupported({{1, 64, 64, 2}, {1, 64, 64, 2}}, DType::kBFloat16).code(),
            absl::StatusCode::kInvalidArgument);  // d = 2 in the first factor
  EXPECT_EQ(FusedPairSupported({{4, 12, 4, 1}, {1, 48, 12, 4}}, DType::kBFloat16).code(),
            absl::StatusCode::kInvalidArgument);  // c = 4
#if !KSSERVE_WITH_CUDA
  const KsChainParams params{.patterns = vit_up, .weights = {nullptr, nullptr}, .batch = 1, .dtype = DType::kBFloat16};
  EXPECT_EQ(KsFusedPairForwardCuda(params, nullptr, nullptr).code(), absl::StatusCode::kFailedPrecondition);
#endif
}

TEST(KsKernelChoiceTest, CandidatesFollowDTypeAndD) {
  const KsTuneOptions options;
  const auto names = [&](const KsPattern& p, DType dtype) {
    std::vector<std::string> out;
    for (const KsKernelChoice& choice : KernelCandidates(p, dtype, options)) out.push_back(KernelChoiceName(choice));
    return out;
  };
  using ::testing::Contains;
  using ::testing::Not;
  const std::vector<std::string> fp32 = names({6, 64, 64, 1}, DType::kFloat32);
  EXPECT_THAT(fp32, Contains("bmm"));
  EXPECT_THAT(fp32, Contains("dense"));
  EXPECT_THAT(fp32, Contains("fused/j1m128n64"));
  EXPECT_THAT(fp32, Not(Contains("fused/mma-j1m128n64")));  // FP32 is strict
  EXPECT_THAT(fp32, Not(Contains("fused/j32m16n8")));       // j groups wider than d = 1
  const std::vector<std::string> bf16 = names({6, 64, 64, 1}, DType::kBFloat16);
  EXPECT_THAT(bf16, Contains("fused/mma-j1m128n64"));
  EXPECT_THAT(names({1, 64, 64, 64}, DType::kBFloat16), Contains("fused/mma-j8m32n32"));
  // The pipelined FP32 tiles need d a multiple of 4; 16-bit types have tensor-core ones.
  EXPECT_THAT(names({1, 192, 192, 4}, DType::kFloat32), Contains("fused/j4m128n64-async-j"));
  EXPECT_THAT(names({1, 192, 192, 6}, DType::kFloat32), Not(Contains("fused/j4m128n64-async-j")));
  EXPECT_THAT(names({1, 192, 192, 4}, DType::kBFloat16), Not(Contains("fused/j4m128n64-async-j")));
  // The densified matrix of (64,1024,1024,64) would take 16 GiB: never a candidate.
  EXPECT_THAT(names({64, 1024, 1024, 64}, DType::kFloat32), Not(Contains("dense")));
  // Batch-last: the cuBLAS algorithms only (the fused tiles read batch-first x).
  std::vector<std::string> batch_last;
  for (const KsKernelChoice& choice :
       KernelCandidates({6, 64, 64, 2}, DType::kBFloat16, options, BatchLayout::kBatchLast)) {
    EXPECT_TRUE(KernelTakesLayout(choice, BatchLayout::kBatchLast));
    batch_last.push_back(KernelChoiceName(choice));
  }
  EXPECT_THAT(batch_last, ::testing::UnorderedElementsAre("bmm", "dense"));
  EXPECT_FALSE(KernelTakesLayout({.algorithm = KsAlgorithm::kFused}, BatchLayout::kBatchLast));
}

TEST(KsPackedLayoutTest, SizesPerAlgorithm) {
  const KsPattern p{3, 5, 7, 2};
  const KsKernelChoice fused{.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kJ4M64N64};
  const KsKernelChoice tensor_cores{.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kTcM32N32};
  const KsKernelChoice bmm{.algorithm = KsAlgorithm::kBmm}, dense{.algorithm = KsAlgorithm::kDense};
  EXPECT_EQ(*PackedWeightBytes(fused, p, DType::kBFloat16), 0);
  EXPECT_EQ(*PackedWeightBytes(tensor_cores, p, DType::kBFloat16), 3 * 5 * 7 * 2 * 2);  // k-contiguous per j
  EXPECT_EQ(*PackedWeightBytes(tensor_cores, {3, 5, 7, 1}, DType::kBFloat16), 0);       // already
  EXPECT_EQ(*PackedWeightBytes(tensor_cores, p, DType::kFloat32), 0);  // not a layout it runs
  EXPECT_EQ(*PackedWeightBytes(bmm, p, DType::kBFloat16), 3 * 5 * 7 * 2 * 2);
  EXPECT_EQ(*PackedWeightBytes(bmm, {3, 5, 7, 1}, DType::kFloat32), 0);  // read in place
  EXPECT_EQ(*PackedWeightBytes(dense, p, DType::kFloat32), (3 * 5 * 2) * (3 * 7 * 2) * 4);
  // Grouped x (11·42 values = 924 bytes), grouped y from the next 256-byte boundary (11·30 values).
  EXPECT_EQ(BmmOutputOffset(11, p, DType::kFloat16), 1024);
  const KsFactorParams call{.batch = 11, .pattern = p, .dtype = DType::kFloat16};
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kBmm, call), 1024 + 11 * (3 * 5 * 2) * 2);
  EXPECT_EQ(BmmOutputOffset(128, p, DType::kFloat32), 128 * 42 * 4);  // already aligned
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kFused, call), 0);
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kDense, call), 0);
  KsFactorParams batch_last = call;
  batch_last.layout = BatchLayout::kBatchLast;
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kBmm, batch_last), 0);
  EXPECT_EQ(
      PackedWeightBytes(dense, {int64_t{1} << 20, 1 << 20, 1, 1 << 20}, DType::kFloat32).status().code(),
      absl::StatusCode::kInvalidArgument);
  KsFactorParams negative = call;
  negative.batch = -1;
  EXPECT_EQ(FactorWorkspaceBytes(KsAlgorithm::kBmm, negative).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// 16-bit dense and bmm calls with a bias or activation keep their product in FP32 (11·30 values)
// for the epilogue, after grouped x where bmm permutes; FP32 calls and calls without an epilogue
// need no such room.
TEST(KsWorkspaceTest, SixteenBitEpilogueAddsAnFp32Product) {
  const KsPattern p{3, 5, 7, 2};
  const float bias[1] = {0.0f};  // only its presence is read
  KsFactorParams call{.bias = bias, .batch = 11, .pattern = p, .dtype = DType::kBFloat16};
  EXPECT_TRUE(CublasProductInFp32(call));
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kBmm, call), 1024 + 11 * 30 * 4);
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kDense, call), 11 * 30 * 4);
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kFused, call), 0);
  call.layout = BatchLayout::kBatchLast;
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kBmm, call), 11 * 30 * 4);
  call.bias = nullptr;
  call.activation = Activation::kRelu;
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kBmm, call), 11 * 30 * 4);
  call.activation = Activation::kNone;
  EXPECT_FALSE(CublasProductInFp32(call));
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kBmm, call), 0);
  call.activation = Activation::kGeluErf;
  call.dtype = DType::kFloat32;
  EXPECT_FALSE(CublasProductInFp32(call));
  EXPECT_EQ(*FactorWorkspaceBytes(KsAlgorithm::kDense, call), 0);
}

// cuBLAS takes 32-bit sizes and leading dimensions: bmm's batch-last ones are batch·d, its
// batch-first ones batch·b and batch·c; past them the dispatch falls back to kernels that take any size.
TEST(KsCublasSizesTest, LeadingDimensionsOfEachLayoutAreChecked) {
  const int64_t past_int = int64_t{1} << 31;
  KsFactorParams params{
      .batch = (past_int >> 1) + 1, .pattern = {1, 1, 1, 2}, .layout = BatchLayout::kBatchLast};
  EXPECT_FALSE(CublasSizesFit(params, KsAlgorithm::kBmm));   // ld = batch·d = 2^31 + 2
  EXPECT_TRUE(CublasSizesFit(params, KsAlgorithm::kDense));  // ld = batch
  params.layout = BatchLayout::kBatchFirst;
  EXPECT_TRUE(CublasSizesFit(params, KsAlgorithm::kBmm));  // batch·b and batch·c fit
  params.pattern = {1, 2, 1, 2};
  EXPECT_FALSE(CublasSizesFit(params, KsAlgorithm::kBmm));  // batch·b does not
  params.batch = past_int;
  EXPECT_FALSE(CublasSizesFit(params, KsAlgorithm::kDense));
  params = {.batch = 1568, .pattern = {1, 768, 192, 4}, .layout = BatchLayout::kBatchLast};
  EXPECT_TRUE(CublasSizesFit(params, KsAlgorithm::kBmm));
}

// Without packed weights or a workspace the rule takes bmm where it reads the blocks in place (d = 1,
// sizes cuBLAS takes), else the fused kernel batch-first and the naive one batch-last.
TEST(KsKernelChoiceTest, DefaultChoiceTakesBmmInPlaceForDOne) {
  KsFactorParams params{.batch = 196, .pattern = {6, 64, 64, 1}, .dtype = DType::kBFloat16};
  EXPECT_TRUE(DefaultKernelChoice(params) == KsKernelChoice{.algorithm = KsAlgorithm::kBmm});
  params.layout = BatchLayout::kBatchLast;
  EXPECT_TRUE(DefaultKernelChoice(params) == KsKernelChoice{.algorithm = KsAlgorithm::kBmm});
  params.pattern = {1, 192, 192, 4};
  EXPECT_TRUE(DefaultKernelChoice(params) == KsKernelChoice{.algorithm = KsAlgorithm::kNaive});
  params.layout = BatchLayout::kBatchFirst;
  const KsKernelChoice fused{.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kWgTma};
  EXPECT_TRUE(DefaultKernelChoice(params) == fused);
  // batch·b past 2^31: cuBLAS cannot take it, the fused kernel (batch-last: the naive one) can.
  params = {.batch = (int64_t{1} << 31) / 64 + 1, .pattern = {1, 64, 64, 1}, .dtype = DType::kFloat32};
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kFused);
  params.layout = BatchLayout::kBatchLast;
  params.batch = (int64_t{1} << 31) + 1;  // ld = batch·d
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kNaive);
}

// With grouped weights and a workspace the rule also takes bmm where d > 1 needs them: FP32
// batch-first up to 512 rows, and batch-last (else the naive kernel); 16-bit types batch-first and
// more rows keep their picks.
TEST(KsKernelChoiceTest, GroupedWeightsBringBmmToFp32AtFewRowsAndToBatchLast) {
  const KsKernelChoice bmm{.algorithm = KsAlgorithm::kBmm};
  KsFactorParams params{.batch = 196, .pattern = {1, 192, 192, 4}, .dtype = DType::kFloat32};
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kFused);
  EXPECT_TRUE(DefaultKernelChoice(params, /*grouped=*/true) == bmm);
  // Grouped x (196·768 FP32 values, 256-aligned already) and grouped y.
  EXPECT_EQ(*RuleWorkspaceBytes(params), 2 * 196 * 768 * 4);
  params.batch = 512;
  EXPECT_TRUE(DefaultKernelChoice(params, true) == bmm);
  params.batch = 513;
  EXPECT_EQ(DefaultKernelChoice(params, true).algorithm, KsAlgorithm::kFused);
  EXPECT_EQ(*RuleWorkspaceBytes(params), 0);
  params.batch = 1;
  params.dtype = DType::kBFloat16;
  EXPECT_EQ(DefaultKernelChoice(params, true).algorithm, KsAlgorithm::kFused);
  EXPECT_EQ(*RuleWorkspaceBytes(params), 0);
  params.dtype = DType::kFloat32;
  params.layout = BatchLayout::kBatchLast;
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kNaive);
  EXPECT_TRUE(DefaultKernelChoice(params, true) == bmm);
  EXPECT_EQ(*RuleWorkspaceBytes(params), 0);  // the blocks where they lie
  // 16-bit with an activation: the FP32 product (1·768 values).
  params.dtype = DType::kBFloat16;
  params.activation = Activation::kGeluTanh;
  EXPECT_TRUE(DefaultKernelChoice(params, true) == bmm);
  EXPECT_EQ(*RuleWorkspaceBytes(params), 768 * 4);
  params.pattern = {1, 192, 192, 1};  // d = 1 with a 16-bit epilogue: naive, grouped or not
  EXPECT_EQ(DefaultKernelChoice(params, true).algorithm, KsAlgorithm::kNaive);
  params.batch = -1;
  EXPECT_EQ(RuleWorkspaceBytes(params).status().code(), absl::StatusCode::kInvalidArgument);
}

// Above 512 rows batch-first, grouped weights bring bmm where the fused tiles fit the pattern
// badly: FP32 with d not a multiple of 4 (sums of 64 or more) or d = 4 with b, c >= 384, and 16-bit
// types with d > 2 not a multiple of 4.
TEST(KsKernelChoiceTest, GroupedWeightsBringBmmWhereTheTilesFitBadly) {
  const KsKernelChoice bmm{.algorithm = KsAlgorithm::kBmm};
  KsFactorParams params{.batch = 1568, .pattern = {1, 768, 192, 6}, .dtype = DType::kFloat32};
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kFused);
  EXPECT_TRUE(DefaultKernelChoice(params, /*grouped=*/true) == bmm);
  params.pattern = {1, 192, 48, 2};  // c = 48: the 2-j tile stays
  EXPECT_EQ(DefaultKernelChoice(params, true).algorithm, KsAlgorithm::kFused);
  params.pattern = {2, 384, 384, 4};
  params.batch = 25088;
  EXPECT_TRUE(DefaultKernelChoice(params, true) == bmm);
  EXPECT_EQ(*RuleWorkspaceBytes(params), int64_t{2} * 25088 * 3072 * 4);  // grouped x and y
  for (const KsPattern pattern :
       {KsPattern{1, 192, 192, 4}, KsPattern{2, 384, 384, 8}, KsPattern{2, 256, 384, 4}}) {
    params.pattern = pattern;
    EXPECT_EQ(DefaultKernelChoice(params, true).algorithm, KsAlgorithm::kFused) << PatternToString(pattern);
    EXPECT_EQ(*RuleWorkspaceBytes(params), 0);
  }
  // 16-bit: d = 3 and 6 go to bmm, with room for the FP32 product where there is an activation;
  // d = 2, 4, 8 keep their tensor-core tiles.
  params = {.batch = 1568, .pattern = {1, 128, 128, 3}, .dtype = DType::kBFloat16};
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kFused);
  EXPECT_TRUE(DefaultKernelChoice(params, true) == bmm);
  params.pattern = {1, 96, 96, 6};
  params.activation = Activation::kGeluErf;
  EXPECT_TRUE(DefaultKernelChoice(params, true) == bmm);
  EXPECT_GT(*RuleWorkspaceBytes(params), int64_t{2} * 1568 * 576 * 2);  // the permutes and more
  for (const int64_t d : {2, 4, 8}) {
    params.pattern = {1, 96, 96, d};
    EXPECT_EQ(DefaultKernelChoice(params, true).algorithm, KsAlgorithm::kFused) << d;
  }
}

// Grouped weights also bring bmm where one j's GEMM is large enough for cuBLAS's tiles, by batch
// size (the H200 sweep's times replayed in GroupedBmmBeatsFusedTiles).
TEST(KsKernelChoiceTest, GroupedWeightsBringBmmWhereOneJsGemmIsLarge) {
  struct Expectation {
    DType dtype;
    int64_t batch;
    KsPattern pattern;
    KsAlgorithm algorithm;
  };
  constexpr DType kBf16 = DType::kBFloat16, kFp32 = DType::kFloat32;
  constexpr KsAlgorithm kBmm = KsAlgorithm::kBmm, kFused = KsAlgorithm::kFused;
  const Expectation expectations[] = {
      // d > 4 not a multiple of 8 with a per-j GEMM of 2^20 weights: every batch size and dtype.
      {kBf16, 25088, {1, 1024, 1024, 12}, kBmm},
      {kFp32, 25088, {1, 1024, 1024, 12}, kBmm},
      {kBf16, 25088, {1, 1024, 1024, 16}, kFused},
      // 16-bit up to 64 rows.
      {kBf16, 1, {1, 256, 1024, 64}, kBmm},
      {kBf16, 64, {1, 128, 512, 4}, kBmm},
      {kBf16, 1, {24, 256, 256, 4}, kFused},
      {kBf16, 1, {1, 48, 192, 12}, kFused},
      // 16-bit up to 512 rows.
      {kBf16, 196, {1, 1024, 256, 24}, kBmm},
      {kBf16, 196, {1, 768, 768, 64}, kBmm},
      {kBf16, 196, {2, 48, 192, 16}, kFused},
      {kBf16, 196, {1, 128, 512, 128}, kFused},
      {kBf16, 196, {1, 128, 512, 4}, kFused},
      // 16-bit up to 4096 rows, none above.
      {kBf16, 1568, {12, 384, 384, 16}, kBmm},
      {kBf16, 1568, {6, 64, 256, 16}, kFused},
      {kBf16, 25088, {12, 384, 384, 16}, kFused},
      // FP32 from 513 to 4096 rows.
      {kFp32, 1568, {1, 128, 512, 4}, kBmm},
      {kFp32, 1568, {1, 384, 384, 8}, kBmm},
      {kFp32, 1568, {12, 384, 384, 16}, kFused},
      {kFp32, 25088, {1, 128, 512, 4}, kFused},
      {kFp32, 25088, {1, 384, 384, 8}, kFused},
  };
  for (const Expectation& e : expectations) {
    const KsFactorParams params{.batch = e.batch, .pattern = e.pattern, .dtype = e.dtype};
    EXPECT_EQ(DefaultKernelChoice(params, /*grouped=*/true).algorithm, e.algorithm)
        << DTypeName(e.dtype) << " " << PatternToString(e.pattern) << " batch " << e.batch;
    EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kFused)
        << "no grouped weights: no bmm for d > 1";
  }
}

// bmm's bias and activation are a second pass over y: exact in FP32; in 16-bit types it needs a
// workspace for an FP32 product, which the call without one lacks: the fused tiles run the
// epilogue instead.
TEST(KsKernelChoiceTest, DefaultChoiceKeepsTheEpilogueExact) {
  const float bias = 0;
  KsFactorParams params{.bias = &bias, .batch = 196, .pattern = {6, 64, 64, 1}, .dtype = DType::kFloat32};
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kBmm);
  params.dtype = DType::kBFloat16;
  EXPECT_TRUE(DefaultKernelChoice(params) ==
              (KsKernelChoice{.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kTcM32N32}));
  params.bias = nullptr;
  params.activation = Activation::kGeluTanh;
  params.dtype = DType::kFloat16;
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kFused);
  params.activation = Activation::kNone;
  EXPECT_EQ(DefaultKernelChoice(params).algorithm, KsAlgorithm::kBmm);
}

// Every block of the fused kernels' grid decodes to a distinct (i, j-group, r-tile, n-tile).
TEST(BlockOrderTest, DecodeIsABijectionForEveryGroupingOfJ) {
  for (const auto& [pattern, batch, jt] : std::vector<std::tuple<KsPattern, int64_t, int>>{
           {{3, 64, 64, 64}, 100, 4}, {{2, 768, 768, 64}, 33, 8}, {{5, 7, 3, 12}, 17, 4}, {{1, 48, 48, 1}, 300, 1},
           {{4, 2, 2, 32}, 5, 1}, {{2, 16, 16, 24}, 65, 8}}) {
    for (int element_bytes : {2, 4}) {
      const BlockGrid grid = MakeBlockGrid(pattern, batch, jt, 32, 16, element_bytes);
      ASSERT_EQ(grid.j_groups % grid.j_inner, 0);
      EXPECT_LE(grid.j_inner * jt * element_bytes, 128 + jt * element_bytes);
      std::set<std::tuple<int64_t, int64_t, int64_t, int64_t>> seen;
      for (int64_t block = 0; block < grid.blocks(); ++block) {
        const BlockCoords c = DecodeBlock(grid, block);
        ASSERT_TRUE(c.i >= 0 && c.i < grid.a && c.jg >= 0 && c.jg < grid.j_groups && c.rt >= 0 &&
                    c.rt < grid.r_tiles && c.nt >= 0 && c.nt < grid.n_tiles)
            << PatternToString(pattern) << " block " << block;
        seen.insert({c.i, c.jg, c.rt, c.nt});
      }
      EXPECT_EQ(static_cast<int64_t>(seen.size()), grid.blocks()) << PatternToString(pattern);
    }
  }
  // Narrow j runs are grouped (4 FP32 values = 16 bytes: 8 groups make 128 bytes) while the
  // shared w slice stays small; a huge w slice is never grouped.
  EXPECT_EQ(MakeBlockGrid({1, 64, 64, 64}, 1000, 4, 64, 64, 4).j_inner, 8);
  EXPECT_EQ(MakeBlockGrid({1, 1024, 1024, 64}, 1000, 4, 64, 64, 4).j_inner, 1);
}

TEST(KsAutotuneTest, BatchClassesAreOrderedAndBounded) {
  EXPECT_EQ(BatchClass(1), 0);
  EXPECT_EQ(BatchClass(2), 1);
  EXPECT_EQ(BatchClass(8), 1);
  EXPECT_EQ(BatchClass(196), 3);
  EXPECT_EQ(BatchClass(25088), 5);
  EXPECT_EQ(BatchClass(int64_t{1} << 40), 6);
}

TEST(KsAutotuneTest, CacheRoundTripsThroughItsFileAndRejectsBadLines) {
  const std::string path = ::testing::TempDir() + "/ks_autotune_cache.tsv";
  std::remove(path.c_str());
  absl::StatusOr<KsAutotuneCache> empty = KsAutotuneCache::Load(path);  // missing file: empty cache
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ(empty->size(), 0u);

  KsAutotuneCache cache;
  const KsTuneKey vit{.device = "NVIDIA H100 80GB HBM3", .pattern = {6, 64, 64, 1}, .batch_class = 5,
                      .dtype = DType::kBFloat16};
  const KsTuneKey other{.device = "NVIDIA H100 80GB HBM3", .pattern = {6, 64, 64, 1}, .batch_class = 0,
                        .dtype = DType::kBFloat16};
  KsTuneKey vit_batch_last = vit;
  vit_batch_last.layout = BatchLayout::kBatchLast;
  cache.Insert(vit, {.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kJ4M64N64});
  cache.Insert(other, {.algorithm = KsAlgorithm::kBmm});
  cache.Insert(vit_batch_last, {.algorithm = KsAlgorithm::kDense});
  ASSERT_TRUE(cache.Save(path).ok());
  absl::StatusOr<KsAutotuneCache> loaded = KsAutotuneCache::Load(path);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->size(), 3u);
  EXPECT_EQ(KernelChoiceName(*loaded->Find(vit_batch_last)), "dense");  // its own entry per layout
  ASSERT_TRUE(loaded->Find(vit).has_value());
  EXPECT_EQ(KernelChoiceName(*loaded->Find(vit)), "fused/j4m64n64");
  EXPECT_EQ(KernelChoiceName(*loaded->Find(other)), "bmm");
  EXPECT_FALSE(loaded->Find({.device = "other", .pattern = {6, 64, 64, 1}, .batch_class = 5}).has_value());

  // The header line of the saved file, then one bad line each.
  std::string header;
  std::getline(std::ifstream(path), header);
  ASSERT_EQ(header.rfind("# ksserve KS autotune cache v2", 0), 0u) << header;
  for (const char* bad :
       {"dev\t1,2,3\t0\tfloat32\tbatch-first\tbmm\n", "dev\t1,2,3,4\t9\tfloat32\tbatch-first\tbmm\n",
        "dev\t1,2,3,4\t0\tfloat64\tbatch-first\tbmm\n", "dev\t1,2,3,4\t0\tfloat32\tbatch-first\tfast\n",
        "dev\t0,2,3,4\t0\tfloat32\tbatch-first\tbmm\n", "dev\t1,2,3,4\t0\tfloat32\tsideways\tbmm\n",
        "dev\t1,2,3,4\t0\tfloat32\tbmm\n", "just one field\n",
        "dev\t1,2,3,4\t0\tfloat32\tbatch-last\tfused/j1m128n128\n"}) {  // a tile that reads batch-first x
    std::ofstream(path, std::ios::trunc) << header << "\n" << bad;
    absl::StatusOr<KsAutotuneCache> rejected = KsAutotuneCache::Load(path);
    EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(rejected.status().message().find(":2:"), std::string::npos) << rejected.status();
  }
  // Lines ending in CRLF read the same.
  std::ofstream(path, std::ios::trunc)
      << header << "\r\nNVIDIA H100 80GB HBM3\t6,64,64,1\t5\tbfloat16\tbatch-first\tbmm\r\n";
  absl::StatusOr<KsAutotuneCache> crlf = KsAutotuneCache::Load(path);
  ASSERT_TRUE(crlf.ok()) << crlf.status();
  ASSERT_TRUE(crlf->Find(vit).has_value());
  EXPECT_EQ(KernelChoiceName(*crlf->Find(vit)), "bmm");
  // Another version, or a file that is not a cache at all, is refused as a whole.
  for (const char* foreign : {"# ksserve KS autotune cache v1: device\tpattern\tbatch_class\tdtype\tkernel\n",
                              "dev\t1,2,3,4\t0\tfloat32\tbatch-first\tbmm\n"}) {
    std::ofstream(path, std::ios::trunc) << foreign;
    EXPECT_EQ(KsAutotuneCache::Load(path).status().code(), absl::StatusCode::kFailedPrecondition) << foreign;
  }
  // No temporary file is left beside the cache.
  ASSERT_TRUE(cache.Save(path).ok());
  EXPECT_FALSE(std::ifstream(path + "." + std::to_string(getpid()) + ".tmp").good());
  std::remove(path.c_str());
}

TEST(KsFactorCudaTest, CpuBuildAnswersFailedPrecondition) {
  if (GetKernelBuildInfo().cuda_enabled) GTEST_SKIP() << "CUDA build: covered by gpu_test";
  float buffer[1] = {};
  const KsFactorParams params{.x = buffer, .w = buffer, .y = buffer, .batch = 1, .pattern = {1, 1, 1, 1}};
  EXPECT_EQ(KsFactorForwardCuda(params, nullptr).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(KsFactorForwardCuda(params, {.algorithm = KsAlgorithm::kBmm}, nullptr, nullptr, nullptr).code(),
            absl::StatusCode::kFailedPrecondition);
  const KsKernelChoice bmm{.algorithm = KsAlgorithm::kBmm};
  EXPECT_EQ(TimeKernelCandidates(params, {bmm}, {}, nullptr).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(ListCudaDevices().empty());
}

}  // namespace
}  // namespace ksserve::kernels

// Every CUDA algorithm of the KS library (naive, each fused tile, cuBLAS dense and bmm with their
// packed weights) against the FP64 reference, on poisoned outputs, over model patterns,
// butterflies, odd shapes, the paper sample and the suite's batch sizes; and the autotuner.
// Skips cleanly without CUDA (build or device).
#include <torch/cuda.h>
#include <torch/torch.h>

#include <random>
#include <string>

#include "gtest/gtest.h"
#include "kernels/device.h"
#include "kernels/ks_autotune.h"
#include "kernels/ks_matmul.h"
#include "tests/testing/ks_reference.h"
#include "tests/testing/torch_reference.h"

#if KSSERVE_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace ksserve::kernels {
namespace {

using testing::TorchChainReference;
using testing::TorchRelativeError;

class CudaAlgorithmsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!GetKernelBuildInfo().cuda_enabled) GTEST_SKIP() << "built without CUDA";
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
  const torch::Device cuda_{torch::kCUDA, 0};
};

#if KSSERVE_WITH_CUDA
double Tolerance(torch::ScalarType dtype) { return dtype == torch::kFloat32 ? 1e-5 : 1e-2; }

DType ToDType(torch::ScalarType t) {
  return t == torch::kFloat32 ? DType::kFloat32 : t == torch::kBFloat16 ? DType::kBFloat16 : DType::kFloat16;
}

std::vector<KsKernelChoice> AllChoices() {
  std::vector<KsKernelChoice> choices = {{.algorithm = KsAlgorithm::kNaive},
                                         {.algorithm = KsAlgorithm::kDense},
                                         {.algorithm = KsAlgorithm::kBmm}};
  for (FusedTile tile : kAllFusedTiles) choices.push_back({.algorithm = KsAlgorithm::kFused, .tile = tile});
  return choices;
}

// Runs one factor with `choice` (packing its weights first, unless !packed_weights: the fused
// tiles also run on the interchange weights alone) into a NaN-poisoned output. y_offset > 0
// writes into a view that many elements into its storage (misaligned for vectors). Batch-last:
// x is [in][batch] and so is the y returned, [out][batch].
torch::Tensor RunFactor(const torch::Tensor& x, const torch::Tensor& w,
                        const std::optional<torch::Tensor>& bias, Activation activation,
                        const KsKernelChoice& choice, int64_t y_offset = 0, bool packed_weights = true,
                        BatchLayout layout = BatchLayout::kBatchFirst) {
  const KsPattern pattern{w.size(0), w.size(1), w.size(2), w.size(3)};
  const DType dtype = ToDType(x.scalar_type());
  const bool batch_last = layout == BatchLayout::kBatchLast;
  const int64_t batch = batch_last ? x.size(1) : x.size(0);
  const auto bytes = torch::TensorOptions().dtype(torch::kUInt8).device(x.device());
  const torch::Tensor packed = torch::empty({*PackedWeightBytes(choice, pattern, dtype)}, bytes);
  torch::Tensor y = torch::full({batch * pattern.out_features() + y_offset},
                                std::numeric_limits<float>::quiet_NaN(), x.options())
                        .narrow(0, y_offset, batch * pattern.out_features())
                        .view(batch_last ? std::vector<int64_t>{pattern.out_features(), batch}
                                         : std::vector<int64_t>{batch, pattern.out_features()});
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const absl::Status packed_ok =
      PackWeightsCuda(choice, pattern, dtype, w.const_data_ptr(), packed.data_ptr(), stream);
  EXPECT_TRUE(packed_ok.ok()) << packed_ok;
  const KsFactorParams params{.x = x.const_data_ptr(),
                              .w = w.const_data_ptr(),
                              .bias = bias.has_value() ? bias->const_data_ptr() : nullptr,
                              .y = y.mutable_data_ptr(),
                              .batch = batch,
                              .pattern = pattern,
                              .dtype = dtype,
                              .activation = activation,
                              .layout = layout};
  const torch::Tensor workspace = torch::empty({*FactorWorkspaceBytes(choice.algorithm, params)}, bytes);
  const void* packed_w = packed_weights ? packed.const_data_ptr() : nullptr;
  const absl::Status ran = KsFactorForwardCuda(params, choice, packed_w, workspace.data_ptr(), stream);
  EXPECT_TRUE(ran.ok()) << KernelChoiceName(choice) << ": " << ran;
  return y;
}

struct Case {
  KsPattern pattern;
  int64_t batch;
};

// Checks every algorithm on one factor; large batches against sampled rows.
void CheckAllAlgorithms(const Case& c, torch::ScalarType dtype, Activation activation, const torch::Device& device,
                        std::mt19937& rng) {
  const KsPattern& p = c.pattern;
  const torch::Tensor w = ((torch::rand({p.a, p.b, p.c, p.d}, device) * 2 - 1) / std::sqrt(double(p.c))).to(dtype);
  const torch::Tensor x = torch::randn({c.batch, p.in_features()}, device).to(dtype);
  const std::optional<torch::Tensor> bias =
      activation == Activation::kNone ? std::nullopt : std::optional(torch::randn({p.out_features()}, device).to(dtype));
  const std::vector<int64_t> rows = testing::SampleRows(c.batch, 48, rng);
  const torch::Tensor index = torch::tensor(rows, torch::kInt64).to(device);
  const torch::Tensor reference = TorchChainReference(x.index_select(0, index), {w}, bias, activation);
  for (const KsKernelChoice& choice : AllChoices()) {
    if (choice.algorithm == KsAlgorithm::kDense && p.in_features() * p.out_features() > (int64_t{1} << 28)) continue;
    if (choice.algorithm == KsAlgorithm::kFused && FusedTileUsesTensorCores(choice.tile) && dtype == torch::kFloat32) {
      continue;  // rejected, see TensorCoreTilesRejectFloat32
    }
    const bool has_packed_layout =
        choice.algorithm == KsAlgorithm::kFused && *PackedWeightBytes(choice, p, ToDType(dtype)) > 0;
    for (const bool packed : {true, false}) {
      if (!packed && !has_packed_layout) continue;
      const torch::Tensor y = RunFactor(x, w, bias, activation, choice, 0, packed);
      const std::string label = KernelChoiceName(choice) + (packed ? "" : " (weights in place)");
      EXPECT_TRUE(torch::isfinite(y).all().item<bool>())
          << label << " left outputs unwritten: " << PatternToString(p) << " batch " << c.batch;
      EXPECT_LE(TorchRelativeError(y.index_select(0, index), reference), Tolerance(dtype))
          << label << " " << PatternToString(p) << " batch " << c.batch << " " << c10::toString(dtype)
          << " activation " << static_cast<int>(activation);
    }
  }
}

TEST_F(CudaAlgorithmsTest, EveryAlgorithmMatchesFp64OnModelButterflyAndOddPatterns) {
  std::vector<Case> cases = {
      // ViT-S/16 (rightmost factor first per layer) and GPT-2 small layers.
      {{2, 48, 192, 1}, 196}, {{1, 192, 48, 2}, 196}, {{6, 64, 64, 1}, 1568}, {{1, 768, 192, 2}, 17},
      {{6, 64, 256, 1}, 3}, {{1, 128, 128, 3}, 25088}, {{4, 192, 192, 1}, 2}, {{1, 768, 192, 4}, 1},
      {{4, 192, 768, 1}, 10007}, {{1, 192, 192, 4}, 196},
      // Butterfly factors of n = 256 (b = c = 2, d = 2^k).
      {{128, 2, 2, 1}, 1568}, {{16, 2, 2, 8}, 17}, {{1, 2, 2, 128}, 196}, {{4, 2, 2, 32}, 10007},
      // Odd shapes: b, c, d in {1, 3, 5, 7, 48, 96}, prime a.
      {{13, 5, 7, 3}, 2}, {{3, 96, 48, 7}, 3}, {{1, 1, 1, 1}, 1}, {{7, 3, 96, 5}, 17}, {{5, 48, 1, 96}, 196},
      {{11, 7, 5, 48}, 1568}, {{2, 1, 3, 33}, 10007},
      // d = 1 with odd b (tensor-core tiles' partial r-tiles and scalar stores); d = 6 and 12 (a
      // whole-d group of 6, and groups of 4); an odd d beyond every j group.
      {{3, 13, 64, 1}, 1568}, {{5, 7, 40, 1}, 10007}, {{2, 48, 48, 6}, 196}, {{1, 96, 64, 12}, 1568},
      {{1, 64, 48, 17}, 196},
      // The TMA tile's layouts: j groups of 8 inside d (odd b, c off its 16- and 32-s stages), d = 8
      // whole, d = 4 and 2 (b off the 64- and 128-wide tiles), batches off its 128 rows.
      {{3, 37, 40, 16}, 1568}, {{2, 100, 24, 8}, 10007}, {{5, 30, 56, 4}, 196}, {{3, 66, 8, 2}, 1568},
      {{1, 200, 72, 24}, 25088}};
  std::mt19937 rng(std::random_device{}());
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
    for (size_t k = 0; k < cases.size(); ++k) {
      const Activation activation = static_cast<Activation>(k % 4);
      CheckAllAlgorithms(cases[k], dtype, activation, cuda_, rng);
    }
  }
}

// Batch-last x and y ([features][batch]) on every algorithm that takes them, and the call without
// packed weights; the fused tiles refuse them.
TEST_F(CudaAlgorithmsTest, BatchLastMatchesFp64) {
  const Case cases[] = {{{6, 64, 64, 1}, 1568},  {{1, 768, 192, 2}, 197}, {{1, 128, 128, 3}, 17},
                        {{13, 5, 7, 3}, 2},      {{4, 2, 2, 32}, 10007},  {{2, 3, 5, 96}, 196},
                        {{3, 13, 64, 1}, 25088}, {{1, 1, 1, 1}, 1}};
  std::mt19937 rng(std::random_device{}());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  int k = 0;
  for (const Case& c : cases) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16, torch::kFloat16}) {
      // Every activation with and without a bias, over the 24 calls.
      const int epilogue = k++;
      const Activation activation = static_cast<Activation>(epilogue % 4);
      const KsPattern& p = c.pattern;
      const torch::Tensor w =
          ((torch::rand({p.a, p.b, p.c, p.d}, cuda_) * 2 - 1) / std::sqrt(double(p.c))).to(dtype);
      const torch::Tensor x = torch::randn({c.batch, p.in_features()}, cuda_).to(dtype);
      const std::optional<torch::Tensor> bias =
          epilogue / 4 % 2 ? std::optional(torch::randn({p.out_features()}, cuda_).to(dtype)) : std::nullopt;
      const std::vector<int64_t> rows = testing::SampleRows(c.batch, 48, rng);
      const torch::Tensor index = torch::tensor(rows, torch::kInt64).to(cuda_);
      const torch::Tensor reference = TorchChainReference(x.index_select(0, index), {w}, bias, activation);
      const torch::Tensor x_last = x.t().contiguous();
      const auto check = [&](const torch::Tensor& y_last, const std::string& label) {
        const torch::Tensor y = y_last.t();
        EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << label << " left outputs unwritten";
        EXPECT_LE(TorchRelativeError(y.index_select(0, index), reference), Tolerance(dtype))
            << label << " batch-last " << PatternToString(p) << " batch " << c.batch << " "
            << c10::toString(dtype) << " activation " << static_cast<int>(activation);
      };
      for (const KsKernelChoice& choice : {KsKernelChoice{.algorithm = KsAlgorithm::kNaive},
                                           KsKernelChoice{.algorithm = KsAlgorithm::kDense},
                                           KsKernelChoice{.algorithm = KsAlgorithm::kBmm}}) {
        check(RunFactor(x_last, w, bias, activation, choice, 0, true, BatchLayout::kBatchLast),
              KernelChoiceName(choice));
      }
      torch::Tensor y_last =
          torch::full({p.out_features(), c.batch}, std::numeric_limits<float>::quiet_NaN(), x.options());
      KsFactorParams params{.x = x_last.const_data_ptr(),
                            .w = w.const_data_ptr(),
                            .bias = bias.has_value() ? bias->const_data_ptr() : nullptr,
                            .y = y_last.mutable_data_ptr(),
                            .batch = c.batch,
                            .pattern = p,
                            .dtype = ToDType(dtype),
                            .activation = activation,
                            .layout = BatchLayout::kBatchLast};
      const absl::Status ran = KsFactorForwardCuda(params, stream);
      EXPECT_TRUE(ran.ok()) << ran;
      check(y_last, "no packed weights");
      EXPECT_EQ(KsFactorForwardCuda(params, {.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kJ1M128N64},
                                    nullptr, nullptr, stream)
                    .code(),
                absl::StatusCode::kInvalidArgument);
    }
  }
}

// 16-bit outputs with an activation are rounded once, from FP32, by every algorithm: the cuBLAS
// paths keep their product in FP32 for the epilogue. Pre-activations in GELU's tail (z in
// [-3.5, -2], where d log|GELU| / d log|z| is -4 to -12) that are not 16-bit numbers (x·(1 + 2^-7))
// turn a second rounding into errors of several units in the last place; one rounding stays
// within half a unit. GELU-erf (erfc, accurate to a few FP32 units there), not GELU-tanh, whose
// 16-bit fused epilogues bound the error in the tail absolutely (tanh.approx, epilogue.h).
// Without the FP32 workspace the cuBLAS paths refuse the call.
TEST_F(CudaAlgorithmsTest, SixteenBitEpilogueRoundsOnce) {
  const KsPattern p{1, 1, 1, 1};
  const int64_t batch = 4099;
  const Activation activation = Activation::kGeluErf;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
    const double half_ulp = dtype == torch::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    const torch::Tensor x = torch::linspace(-3.5, -2.0, batch, cuda_).to(dtype).view({batch, 1});
    const torch::Tensor w = torch::full({1, 1, 1, 1}, 1.0 + std::ldexp(1.0, -7), cuda_).to(dtype);
    const torch::Tensor reference = TorchChainReference(x, {w}, std::nullopt, activation);
    for (const BatchLayout layout : {BatchLayout::kBatchFirst, BatchLayout::kBatchLast}) {
      for (const KsKernelChoice& choice : AllChoices()) {
        if (!KernelTakesLayout(choice, layout)) continue;
        const bool batch_last = layout == BatchLayout::kBatchLast;
        torch::Tensor y = RunFactor(batch_last ? x.t().contiguous() : x, w, std::nullopt, activation, choice,
                                    0, true, layout);
        if (batch_last) y = y.t();
        const torch::Tensor relative =
            ((y.to(torch::kCPU, torch::kFloat64) - reference) / reference.abs()).abs();
        EXPECT_LE(relative.max().item<double>(), half_ulp * 1.01)
            << KernelChoiceName(choice) << " " << BatchLayoutName(layout) << " " << c10::toString(dtype);
      }
    }
    torch::Tensor y = torch::empty({batch, 1}, x.options());
    const KsFactorParams params{.x = x.const_data_ptr(),
                                .w = w.const_data_ptr(),
                                .y = y.mutable_data_ptr(),
                                .batch = batch,
                                .pattern = p,
                                .dtype = ToDType(dtype),
                                .activation = activation};
    for (const KsAlgorithm algorithm : {KsAlgorithm::kDense, KsAlgorithm::kBmm}) {
      const KsKernelChoice choice{.algorithm = algorithm};
      const torch::Tensor packed =
          torch::empty({std::max<int64_t>(*PackedWeightBytes(choice, p, ToDType(dtype)), 1)},
                       x.options().dtype(torch::kUInt8));
      ASSERT_TRUE(
          PackWeightsCuda(choice, p, ToDType(dtype), w.const_data_ptr(), packed.data_ptr(), stream).ok());
      EXPECT_EQ(*FactorWorkspaceBytes(algorithm, params), batch * 4);
      const absl::Status status =
          KsFactorForwardCuda(params, choice, packed.const_data_ptr(), nullptr, stream);
      EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument)
          << KernelChoiceName(choice) << ": " << status;
    }
  }
}

TEST_F(CudaAlgorithmsTest, EveryAlgorithmMatchesFp64OnThePaperSample) {
  const std::vector<KsPattern> sample = testing::PaperPatternSample(KSSERVE_PAPER_PATTERNS);
  ASSERT_EQ(sample.size(), 24u);
  const int64_t batches[] = {1, 2, 3, 17, 196, 1568, 25088, 10007};
  std::mt19937 rng(std::random_device{}());
  for (size_t k = 0; k < sample.size(); ++k) {
    for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
      CheckAllAlgorithms({sample[k], batches[k % std::size(batches)]}, dtype, Activation::kNone, cuda_, rng);
    }
  }
}

TEST_F(CudaAlgorithmsTest, TensorCoreTilesRejectFloat32) {
  const torch::Tensor w = torch::randn({2, 16, 16, 1}, cuda_);
  const torch::Tensor x = torch::randn({5, 32}, cuda_);
  torch::Tensor y = torch::empty({5, 32}, cuda_);
  const KsFactorParams params{.x = x.const_data_ptr(), .w = w.const_data_ptr(), .y = y.mutable_data_ptr(),
                              .batch = 5, .pattern = {2, 16, 16, 1}};
  const absl::Status status =
      KsFactorForwardCuda(params, {.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kMmaJ1M128N64}, nullptr,
                          nullptr, c10::cuda::getCurrentCUDAStream().stream());
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_NE(status.message().find("strict"), std::string::npos) << status;
}

// Misaligned pointers (offset views of tensors) take the narrower-load paths and stay correct:
// x and w one element off (no 4-byte copies at all), or only y one element off (the fused
// kernels' vector stores), with d > 1 (runs along j) and d = 1 (runs along s).
TEST_F(CudaAlgorithmsTest, MisalignedOperandsAreCorrect) {
  for (const auto dtype : {torch::kFloat32, torch::kBFloat16}) {
    for (const KsPattern& p : {KsPattern{3, 64, 64, 8}, KsPattern{4, 64, 64, 1}}) {
      for (const int64_t operand_offset : {1, 0}) {
        const int64_t y_offset = 1 - operand_offset;
        const torch::Tensor w_storage = torch::randn({p.nonzeros() + 1}, cuda_).to(dtype);
        const torch::Tensor x_storage = torch::randn({333 * p.in_features() + 1}, cuda_).to(dtype);
        const torch::Tensor w = w_storage.narrow(0, operand_offset, p.nonzeros()).view({p.a, p.b, p.c, p.d});
        const torch::Tensor x =
            x_storage.narrow(0, operand_offset, 333 * p.in_features()).view({333, p.in_features()});
        const torch::Tensor reference = TorchChainReference(x, {w}, std::nullopt, Activation::kNone);
        for (const KsKernelChoice& choice : AllChoices()) {
          if (choice.algorithm != KsAlgorithm::kFused ||
              (FusedTileUsesTensorCores(choice.tile) && dtype == torch::kFloat32)) {
            continue;
          }
          EXPECT_LE(TorchRelativeError(RunFactor(x, w, std::nullopt, Activation::kNone, choice, y_offset), reference),
                    Tolerance(dtype))
              << KernelChoiceName(choice) << " " << PatternToString(p) << " " << c10::toString(dtype)
              << (y_offset ? " misaligned y" : " misaligned x and w");
        }
      }
    }
  }
}

// Runs the fused pair (packing the second factor's weights first) into a NaN-poisoned output;
// nullopt when an explicit block shape of this pair does not fit in shared memory (a clear error,
// checked; the rule always finds one for the pairs below).
std::optional<torch::Tensor> RunFusedPair(const torch::Tensor& x, const torch::Tensor& w1, const torch::Tensor& w2,
                                          const std::optional<torch::Tensor>& bias, Activation activation,
                                          PairTile tile) {
  const std::vector<KsPattern> chain = {{w1.size(0), w1.size(1), w1.size(2), w1.size(3)},
                                        {w2.size(0), w2.size(1), w2.size(2), w2.size(3)}};
  const DType dtype = ToDType(x.scalar_type());
  const torch::Tensor packed = torch::empty({*FusedPairPackedBytes(chain, dtype)},
                                            torch::TensorOptions().dtype(torch::kUInt8).device(x.device()));
  torch::Tensor y = torch::full({x.size(0), chain[1].out_features()}, std::numeric_limits<float>::quiet_NaN(),
                                x.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  const absl::Status packed_ok = PackFusedPairWeightsCuda(chain, dtype, w2.const_data_ptr(), packed.data_ptr(), stream);
  EXPECT_TRUE(packed_ok.ok()) << packed_ok;
  KsChainParams params{.x = x.const_data_ptr(),
                       .y = y.mutable_data_ptr(),
                       .bias = bias.has_value() ? bias->const_data_ptr() : nullptr,
                       .patterns = chain,
                       .weights = {w1.const_data_ptr(), w2.const_data_ptr()},
                       .batch = x.size(0),
                       .dtype = dtype,
                       .activation = activation};
  const absl::Status ran = KsFusedPairForwardCuda(params, packed.const_data_ptr(), stream, tile);
  if (tile != PairTile::kRule && ran.code() == absl::StatusCode::kInvalidArgument &&
      ran.message().find("do not fit") != std::string::npos) {
    return std::nullopt;
  }
  EXPECT_TRUE(ran.ok()) << ran;
  return y;
}

TEST_F(CudaAlgorithmsTest, FusedPairMatchesFp64) {
  struct PairCase {
    KsPattern first, second;
  };
  const PairCase pairs[] = {
      // ViT-S/16 attention, MLP up and MLP down; GPT-2 attention and MLP up.
      {{2, 48, 192, 1}, {1, 192, 48, 2}},
      {{6, 64, 64, 1}, {1, 768, 192, 2}},
      {{6, 64, 256, 1}, {1, 128, 128, 3}},
      {{4, 192, 192, 1}, {1, 192, 192, 4}},
      {{4, 192, 192, 1}, {1, 768, 192, 4}},
      // Edges: b off the 64-row tiles, c off the 32-wide steps, an intermediate spread over i2 and j2,
      // first-factor blocks grouped per chunk with one left over.
      {{3, 40, 24, 1}, {5, 24, 8, 3}},
      {{1, 16, 16, 1}, {2, 100, 8, 1}},
      {{7, 72, 40, 1}, {9, 13, 56, 1}},
      {{5, 40, 72, 1}, {1, 50, 200, 1}},
      // Outputs through the staging at column origins off the 64-wide boxes (i2 = 1 of b2 = 132,
      // d2 = 2) and with d2 = 1, each next to a tail chunk past b2 that is stored directly; and where
      // i2 = 1 starts off 16 bytes (b2 = 130), so that no chunk may go through the staging.
      {{2, 32, 24, 1}, {2, 132, 16, 2}},
      {{1, 32, 64, 1}, {1, 296, 32, 1}},
      {{2, 32, 24, 1}, {2, 130, 16, 2}}};
  const int64_t batches[] = {1, 17, 196, 1568, 10007, 25088};
  std::mt19937 rng(std::random_device{}());
  std::vector<PairTile> tiles = {PairTile::kRule};  // then every explicit block shape
  tiles.insert(tiles.end(), std::begin(kAllPairTiles), std::end(kAllPairTiles));
  int k = 0;
  for (const PairCase& pair : pairs) {
    for (const auto dtype : {torch::kBFloat16, torch::kFloat16}) {
      for (const PairTile tile : tiles) {
        const int64_t batch = batches[k % std::size(batches)];
        // The epilogue shifts by one every pass over the tiles, so each tile meets every activation
        // with and without a bias, whatever the number of tiles.
        const int epilogue = k + k / static_cast<int>(tiles.size());
        const Activation activation = static_cast<Activation>(epilogue % 4);
        ++k;
        const KsPattern& p1 = pair.first;
        const KsPattern& p2 = pair.second;
        const torch::Tensor w1 =
            ((torch::rand({p1.a, p1.b, p1.c, p1.d}, cuda_) * 2 - 1) / std::sqrt(double(p1.c))).to(dtype);
        const torch::Tensor w2 =
            ((torch::rand({p2.a, p2.b, p2.c, p2.d}, cuda_) * 2 - 1) / std::sqrt(double(p2.c))).to(dtype);
        const torch::Tensor x = torch::randn({batch, p1.in_features()}, cuda_).to(dtype);
        const std::optional<torch::Tensor> bias =
            epilogue % 2 ? std::optional(torch::randn({p2.out_features()}, cuda_).to(dtype)) : std::nullopt;
        const std::optional<torch::Tensor> fused = RunFusedPair(x, w1, w2, bias, activation, tile);
        if (!fused.has_value()) continue;  // this block shape's intermediate exceeds shared memory
        const torch::Tensor& y = *fused;
        EXPECT_TRUE(torch::isfinite(y).all().item<bool>()) << "fused pair left outputs unwritten: "
                                                           << PatternToString(p1) << PatternToString(p2) << " batch "
                                                           << batch;
        const std::vector<int64_t> rows = testing::SampleRows(batch, 48, rng);
        const torch::Tensor index = torch::tensor(rows, torch::kInt64).to(cuda_);
        const torch::Tensor reference = TorchChainReference(x.index_select(0, index), {w1, w2}, bias, activation);
        EXPECT_LE(TorchRelativeError(y.index_select(0, index), reference), Tolerance(dtype))
            << "fused pair " << PatternToString(p1) << PatternToString(p2) << " batch " << batch << " "
            << c10::toString(dtype) << " tile " << PairTileName(tile);
      }
    }
  }
}

TEST_F(CudaAlgorithmsTest, FusedPairRejectsWhatItCannotRun) {
  EXPECT_EQ(FusedPairSupported({{2, 48, 192, 1}, {1, 192, 48, 2}}, DType::kFloat32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FusedPairSupported({{1, 48, 192, 2}, {1, 192, 96, 1}}, DType::kBFloat16).code(),
            absl::StatusCode::kInvalidArgument);  // d = 2 in the first factor
  // Misaligned x: a clear error, not a wrong answer.
  const std::vector<KsPattern> chain = {{2, 48, 192, 1}, {1, 192, 48, 2}};
  const torch::Tensor w1 = torch::randn({2, 48, 192, 1}, cuda_).to(torch::kBFloat16);
  const torch::Tensor w2 = torch::randn({1, 192, 48, 2}, cuda_).to(torch::kBFloat16);
  const torch::Tensor packed = torch::empty({*FusedPairPackedBytes(chain, DType::kBFloat16)},
                                            torch::TensorOptions().dtype(torch::kUInt8).device(cuda_));
  const torch::Tensor x_storage = torch::randn({5 * 384 + 1}, cuda_).to(torch::kBFloat16);
  torch::Tensor y = torch::empty({5, 384}, x_storage.options());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
  ASSERT_TRUE(PackFusedPairWeightsCuda(chain, DType::kBFloat16, w2.const_data_ptr(), packed.data_ptr(), stream).ok());
  const KsChainParams params{.x = static_cast<const char*>(x_storage.const_data_ptr()) + 2,
                             .y = y.mutable_data_ptr(),
                             .patterns = chain,
                             .weights = {w1.const_data_ptr(), w2.const_data_ptr()},
                             .batch = 5,
                             .dtype = DType::kBFloat16};
  const absl::Status status = KsFusedPairForwardCuda(params, packed.const_data_ptr(), stream);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
}

TEST_F(CudaAlgorithmsTest, AutotuneTimesEveryCandidateAndReturnsTheFastestFirst) {
  const KsPattern p{6, 64, 64, 1};
  const int64_t batch = 1568;
  const torch::Tensor w = torch::randn({p.a, p.b, p.c, p.d}, cuda_);
  const torch::Tensor x = torch::randn({batch, p.in_features()}, cuda_);
  torch::Tensor y = torch::empty({batch, p.out_features()}, cuda_);
  const KsFactorParams params{.x = x.const_data_ptr(), .w = w.const_data_ptr(), .y = y.mutable_data_ptr(),
                              .batch = batch, .pattern = p};
  const KsTuneOptions options;
  const std::vector<KsKernelChoice> candidates = KernelCandidates(p, DType::kFloat32, options);
  // d = 1: the three j1 tiles, bmm and dense.
  EXPECT_EQ(candidates.size(), 5u);
  absl::StatusOr<std::vector<KsCandidateTime>> times =
      TimeKernelCandidates(params, candidates, options, c10::cuda::getCurrentCUDAStream().stream());
  ASSERT_TRUE(times.ok()) << times.status();
  ASSERT_EQ(times->size(), candidates.size());
  for (size_t k = 1; k < times->size(); ++k) EXPECT_LE((*times)[k - 1].median_ms, (*times)[k].median_ms);
  EXPECT_GT(times->front().median_ms, 0.0);

  // On the interchange weights: the tiles that read packed ones run their other variant, dense and
  // bmm with d > 1 cannot run and are left out.
  KsTuneOptions interchange = options;
  interchange.packed_weights = false;
  const KsPattern q{1, 64, 64, 4};
  const torch::Tensor wq = torch::randn({q.a, q.b, q.c, q.d}, cuda_).to(torch::kBFloat16);
  const torch::Tensor xq = torch::randn({batch, q.in_features()}, cuda_).to(torch::kBFloat16);
  torch::Tensor yq = torch::empty({batch, q.out_features()}, xq.options());
  const KsFactorParams qparams{.x = xq.const_data_ptr(),
                               .w = wq.const_data_ptr(),
                               .y = yq.mutable_data_ptr(),
                               .batch = batch,
                               .pattern = q,
                               .dtype = DType::kBFloat16};
  const KsKernelChoice wg{.algorithm = KsAlgorithm::kFused, .tile = FusedTile::kWgTma};
  const KsKernelChoice bmm{.algorithm = KsAlgorithm::kBmm};
  absl::StatusOr<std::vector<KsCandidateTime>> unpacked =
      TimeKernelCandidates(qparams, {wg, bmm}, interchange, c10::cuda::getCurrentCUDAStream().stream());
  ASSERT_TRUE(unpacked.ok()) << unpacked.status();
  ASSERT_EQ(unpacked->size(), 1u);
  EXPECT_TRUE(unpacked->front().choice == wg);
  EXPECT_GT(unpacked->front().median_ms, 0.0);
}
#endif

}  // namespace
}  // namespace ksserve::kernels

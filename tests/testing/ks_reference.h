// The independent reference for every KS kernel test: factors densified from the support
// definition and multiplied in FP64, epilogue in FP64.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "kernels/ks_params.h"

namespace ksserve::testing {

// y = act(x · (K_L ⋯ K_1)ᵀ + bias); `patterns`/`weights` rightmost factor first; x is [batch, in].
std::vector<double> KsChainReference(absl::Span<const double> x, int64_t batch,
                                     absl::Span<const kernels::KsPattern> patterns,
                                     const std::vector<std::vector<double>>& weights,
                                     const std::vector<double>* bias, kernels::Activation activation);

// One factor, no epilogue, for the given rows of x only, straight from the definition
// y[n,i,r,j] = Σ_s x[n,i,s,j]·w[i,r,s,j] in FP64: O(rows · nonzeros), for patterns too large to
// densify. `x` holds all rows; the result is [rows.size(), out_features].
std::vector<double> KsFactorRowsReference(absl::Span<const double> x, absl::Span<const int64_t> rows,
                                          const kernels::KsPattern& pattern, absl::Span<const double> w);

// The rows a large-batch test checks against the reference: first, last and `count` random ones.
std::vector<int64_t> SampleRows(int64_t batch, int64_t count, std::mt19937& rng);

// The 648 (a,b,c,d) patterns of the paper's benchmark (bench/data/paper_patterns.txt).
std::vector<kernels::KsPattern> LoadPaperPatterns(const std::string& path);

// The deterministic sample the correctness suites run: every 27th of the 648 (24 patterns, in
// file order). Empty when the file does not hold exactly 648 patterns.
std::vector<kernels::KsPattern> PaperPatternSample(const std::string& path);

// ‖got − ref‖_F / ‖ref‖_F; NaN when any element of `got` is not finite (an unwritten output).
// The inputs of the suites are of order 1, so ‖ref‖ is floored at kErrorScaleFloor·√n: outputs
// whose RMS is below that (a GELU tail far below zero, which a 16-bit type cannot even hold) are
// judged on their absolute error instead.
inline constexpr double kErrorScaleFloor = 1e-3;
double RelativeError(absl::Span<const double> got, absl::Span<const double> ref);

// Values stored in `dtype` (raw bits in `bits`, 4 or 2 bytes each) and their exact FP64 view.
struct TypedBuffer {
  std::vector<uint8_t> bits;
  std::vector<double> values;
};
TypedBuffer RandomTyped(kernels::DType dtype, int64_t count, double low, double high, std::mt19937& rng,
                        bool normal = false);
TypedBuffer PoisonedTyped(kernels::DType dtype, int64_t count);  // NaN everywhere
std::vector<double> TypedToDouble(kernels::DType dtype, const void* bits, int64_t count);

}  // namespace ksserve::testing

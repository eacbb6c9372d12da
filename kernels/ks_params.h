// Plain parameter structs shared by the kernel API and the CUDA sources. No CUDA, LibTorch or
// Abseil here, and C++17: .cu files include this and nothing heavier.
#pragma once

#include <cstdint>

namespace ksserve::kernels {

// A Kronecker-sparse pattern (a, b, c, d): the support I_a ⊗ 1_{b×c} ⊗ I_d of an
// (a·b·d) × (a·c·d) factor with a·b·c·d nonzeros (shared/docs/ks-matmul.md).
struct KsPattern {
  int64_t a = 1;
  int64_t b = 1;
  int64_t c = 1;
  int64_t d = 1;

  constexpr int64_t in_features() const { return a * c * d; }
  constexpr int64_t out_features() const { return a * b * d; }
  constexpr int64_t nonzeros() const { return a * b * c * d; }
  friend constexpr bool operator==(const KsPattern& x, const KsPattern& y) {
    return x.a == y.a && x.b == y.b && x.c == y.c && x.d == y.d;
  }
};

// Element type of x, w, bias and y. Products accumulate in FP32 for every type; FP32 is strict
// (no TF32).
enum class DType : uint8_t { kFloat32, kBFloat16, kFloat16 };

constexpr int64_t DTypeSize(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

// Applied to y after the bias, in FP32, before the final rounding to the output type.
enum class Activation : uint8_t { kNone, kRelu, kGeluTanh, kGeluErf };

// One factor applied batch-first (tokens × features), with an optional epilogue:
//   y[n, i, r, j] = act( Σ_s x[n, i, s, j] · w[i, r, s, j]  + bias[i, r, j] )
struct KsFactorParams {
  const void* x = nullptr;     // [batch, a·c·d], row-major
  const void* w = nullptr;     // [a][b][c][d], the interchange layout
  const void* bias = nullptr;  // [a·b·d] or null
  void* y = nullptr;           // [batch, a·b·d], row-major; must not alias x, w or bias
  int64_t batch = 0;
  KsPattern pattern;
  DType dtype = DType::kFloat32;
  Activation activation = Activation::kNone;
};

}  // namespace ksserve::kernels

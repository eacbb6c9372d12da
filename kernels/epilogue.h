// The activation epilogue, one definition for host and device code (C++17, no CUDA headers).
#pragma once

#include <cmath>
#include <type_traits>

#include "kernels/ks_params.h"

#if defined(__CUDACC__)
#define KSSERVE_HOST_DEVICE __host__ __device__
#else
#define KSSERVE_HOST_DEVICE
#endif

namespace ksserve::kernels {

template <Activation kActivation>
KSSERVE_HOST_DEVICE inline float ApplyActivation(float v) {
  if constexpr (kActivation == Activation::kRelu) {
    return v > 0.0f ? v : 0.0f;
  } else if constexpr (kActivation == Activation::kGeluTanh) {
    // 0.5·v·(1 + tanh(u)) written as v·sigmoid(2u): no cancellation in 1 + tanh(u) for v ≪ 0,
    // where the output is tiny and FP32 would keep few correct digits of it.
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
#if defined(__CUDA_ARCH__)
    // 2u·log2(e) in one multiply-add, then one ex2 and a fast division (the precise one costs the
    // MLP-up pair ~20%): seven instructions per value.
    constexpr float kScale = -2.0f * 1.4426950408889634f * kSqrt2OverPi;
    const float t = v * fmaf(kScale * 0.044715f, v * v, kScale);
    float e;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(t));
    return __fdividef(v, 1.0f + e);
#else
    const float u2 = -2.0f * kSqrt2OverPi * (v + 0.044715f * v * v * v);
    return v / (1.0f + expf(u2));
#endif
  } else if constexpr (kActivation == Activation::kGeluErf) {
    // 0.5·v·(1 + erf(v/√2)) as 0.5·v·erfc(−v/√2), accurate in the negative tail for the same reason.
    return 0.5f * v * erfcf(v * -0.7071067811865476f);
  } else {
    return v;
  }
}

#if defined(__CUDACC__)
// For kernels whose outputs are rounded to 16 bits: GELU-tanh as 0.5·v·(1 + tanh(u)) with one
// tanh.approx (relative error 2^-11, below BF16/FP16 rounding; absolute error under |v|·2^-12 in the
// negative tail) instead of ex2 and a division: the multi-function unit, which limits these
// epilogues, runs once per value rather than twice. The other activations as ApplyActivation.
template <Activation kActivation>
__device__ __forceinline__ float ApplyActivationFor16Bit(float v) {
  if constexpr (kActivation == Activation::kGeluTanh) {
    constexpr float kSqrt2OverPi = 0.7978845608028654f;
    const float u = v * fmaf(kSqrt2OverPi * 0.044715f, v * v, kSqrt2OverPi);
    float tanh_u;
    asm("tanh.approx.f32 %0, %1;" : "=f"(tanh_u) : "f"(u));
    const float half_v = 0.5f * v;
    return fmaf(half_v, tanh_u, half_v);
  } else {
    return ApplyActivation<kActivation>(v);
  }
}
#endif

// Calls fn(std::integral_constant<Activation, A>{}) for A = activation: a kernel's epilogue
// branches once per tile rather than once per element.
template <typename Fn>
KSSERVE_HOST_DEVICE inline void WithActivation(Activation activation, Fn&& fn) {
  switch (activation) {
    case Activation::kRelu:
      return fn(std::integral_constant<Activation, Activation::kRelu>{});
    case Activation::kGeluTanh:
      return fn(std::integral_constant<Activation, Activation::kGeluTanh>{});
    case Activation::kGeluErf:
      return fn(std::integral_constant<Activation, Activation::kGeluErf>{});
    case Activation::kNone:
      break;
  }
  fn(std::integral_constant<Activation, Activation::kNone>{});
}

KSSERVE_HOST_DEVICE inline float ApplyActivation(float v, Activation activation) {
  switch (activation) {
    case Activation::kRelu:
      return ApplyActivation<Activation::kRelu>(v);
    case Activation::kGeluTanh:
      return ApplyActivation<Activation::kGeluTanh>(v);
    case Activation::kGeluErf:
      return ApplyActivation<Activation::kGeluErf>(v);
    case Activation::kNone:
      break;
  }
  return v;
}

}  // namespace ksserve::kernels

// The activation epilogue, one definition for host and device code (C++17, no CUDA headers).
#pragma once

#include <cmath>

#include "kernels/ks_params.h"

#if defined(__CUDACC__)
#define KSSERVE_HOST_DEVICE __host__ __device__
#else
#define KSSERVE_HOST_DEVICE
#endif

namespace ksserve::kernels {

KSSERVE_HOST_DEVICE inline float ApplyActivation(float v, Activation activation) {
  switch (activation) {
    case Activation::kRelu:
      return v > 0.0f ? v : 0.0f;
    case Activation::kGeluTanh: {
      constexpr float kSqrt2OverPi = 0.7978845608028654f;
      return 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + 0.044715f * v * v * v)));
    }
    case Activation::kGeluErf:
      return 0.5f * v * (1.0f + erff(v * 0.7071067811865476f));
    case Activation::kNone:
      break;
  }
  return v;
}

}  // namespace ksserve::kernels

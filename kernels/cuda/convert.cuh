// Storage type <-> FP32 in device code, shared by the .cu files.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#include "kernels/ks_params.h"

namespace ksserve::kernels::cuda {

__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) { return v; }
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) { return __float2half_rn(v); }

// Calls fn(T{}) with T the CUDA storage type of `dtype`.
template <typename Fn>
auto WithStorageType(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kBFloat16:
      return fn(__nv_bfloat16{});
    case DType::kFloat16:
      return fn(__half{});
    case DType::kFloat32:
      break;
  }
  return fn(float{});
}

// Calls fn(T{}) with T the 16-bit storage type of `dtype` and returns its cudaError_t; FP32 is
// cudaErrorInvalidValue, as strict FP32 never runs on the tensor-core kernels.
template <typename Fn>
cudaError_t With16BitStorageType(DType dtype, Fn&& fn) {
  return WithStorageType(dtype, [&](auto zero) -> cudaError_t {
    if constexpr (std::is_same_v<decltype(zero), float>) {
      return cudaErrorInvalidValue;
    } else {
      return fn(zero);
    }
  });
}

// Calls fn(std::integral_constant<int, V>{}) for the run-time vector width V = vec when it is 8
// (up to kMaxVec), 4 or 2, else V = 1: kernels instantiate one store loop per width.
template <int kMaxVec, typename Fn>
__device__ __forceinline__ void WithVectorWidth(int vec, Fn&& fn) {
  static_assert(kMaxVec == 4 || kMaxVec == 8);
  if constexpr (kMaxVec == 8) {
    if (vec == 8) return fn(std::integral_constant<int, 8>{});
  }
  if (vec == 4) return fn(std::integral_constant<int, 4>{});
  if (vec == 2) return fn(std::integral_constant<int, 2>{});
  fn(std::integral_constant<int, 1>{});
}

// Two values rounded to T, as one 32-bit word (lo in the low half).
template <typename T>
__device__ __forceinline__ uint32_t PackPair(float lo, float hi) {
  const T pair[2] = {FromFloat<T>(lo), FromFloat<T>(hi)};
  uint32_t word;
  memcpy(&word, pair, sizeof(word));
  return word;
}

// kWords consecutive 32-bit words at `to` (aligned to their size when kWords is 2 or 4).
template <int kWords>
__device__ __forceinline__ void StoreWords(void* to, const uint32_t (&words)[kWords]) {
  if constexpr (kWords == 4) {
    *reinterpret_cast<uint4*>(to) = make_uint4(words[0], words[1], words[2], words[3]);
  } else if constexpr (kWords == 2) {
    *reinterpret_cast<uint2*>(to) = make_uint2(words[0], words[1]);
  } else {
#pragma unroll
    for (int w = 0; w < kWords; ++w) static_cast<uint32_t*>(to)[w] = words[w];
  }
}

template <typename Fn, int... I>
__device__ __forceinline__ void StaticForEach(Fn&& fn, std::integer_sequence<int, I...>) {
  (fn(std::integral_constant<int, I>{}), ...);
}

// Calls fn(std::integral_constant<int, I>{}) for I = 0 .. N-1: each I a compile-time constant.
template <int N, typename Fn>
__device__ __forceinline__ void StaticFor(Fn&& fn) {
  StaticForEach(fn, std::make_integer_sequence<int, N>{});
}

// kWords consecutive 32-bit words at global address `base` + kOffsetBytes, stored only where
// `store`: one predicated PTX store per 4-, 8- or 16-byte run, the offset folded into the
// instruction. (Written as C++, the compiler splits stores of words it has seen packed into
// 4-byte ones, and branches around each guarded store.) 2 and 4 words need their size's alignment.
template <int kWords, int kOffsetBytes>
__device__ __forceinline__ void StoreGlobalWordsIf(void* base, const uint32_t (&words)[kWords], bool store) {
  const uint32_t predicate = store;
  if constexpr (kWords == 4) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p st.global.v4.b32 [%1+%6], {%2, %3, %4, %5};\n}\n" ::
            "r"(predicate),
        "l"(base), "r"(words[0]), "r"(words[1]), "r"(words[2]), "r"(words[3]), "n"(kOffsetBytes));
  } else if constexpr (kWords == 2) {
    asm volatile(
        "{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p st.global.v2.b32 [%1+%4], {%2, %3};\n}\n" ::"r"(
            predicate),
        "l"(base), "r"(words[0]), "r"(words[1]), "n"(kOffsetBytes));
  } else {
    StaticFor<kWords>([&](auto w) {
      asm volatile(
          "{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p st.global.b32 [%1+%3], %2;\n}\n" ::"r"(predicate),
          "l"(base), "r"(words[w]), "n"(kOffsetBytes + 4 * decltype(w)::value));
    });
  }
}

// One 16-bit value at shared-memory `address`, stored only where `store` (predicated, no branch).
template <typename T>
__device__ __forceinline__ void StoreShared16If(uint32_t address, T value, bool store) {
  static_assert(sizeof(T) == 2);
  uint16_t bits;
  memcpy(&bits, &value, sizeof(bits));
  asm volatile("{\n .reg .pred p;\n setp.ne.b32 p, %0, 0;\n @p st.shared.b16 [%1], %2;\n}\n" ::"r"(
                   static_cast<uint32_t>(store)),
               "r"(address), "h"(bits));
}

// kWords consecutive 32-bit words at shared-memory `address` (aligned to their size), as one store.
template <int kWords>
__device__ __forceinline__ void StoreSharedWords(uint32_t address, const uint32_t (&words)[kWords]) {
  if constexpr (kWords == 4) {
    asm volatile("st.shared.v4.b32 [%0], {%1, %2, %3, %4};\n" ::"r"(address), "r"(words[0]), "r"(words[1]),
                 "r"(words[2]), "r"(words[3]));
  } else if constexpr (kWords == 2) {
    asm volatile("st.shared.v2.b32 [%0], {%1, %2};\n" ::"r"(address), "r"(words[0]), "r"(words[1]));
  } else {
    static_assert(kWords == 1);
    asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(address), "r"(words[0]));
  }
}

}  // namespace ksserve::kernels::cuda

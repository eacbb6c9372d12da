// Storage type <-> FP32 in device code, shared by the .cu files.
#pragma once

#include <cuda_runtime_api.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

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
  switch (dtype) {
    case DType::kBFloat16:
      return fn(__nv_bfloat16{});
    case DType::kFloat16:
      return fn(__half{});
    case DType::kFloat32:
      break;
  }
  return cudaErrorInvalidValue;
}

}  // namespace ksserve::kernels::cuda

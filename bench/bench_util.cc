#include "bench/bench_util.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>

#include "absl/strings/str_format.h"
#include "bench/fill.h"

namespace ksserve::bench {

[[noreturn]] void Die(const std::string& message) {
  std::fprintf(stderr, "ksbench: %s\n", message.c_str());
  std::exit(2);
}

void CheckCuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) Die(absl::StrFormat("%s: %s", what, cudaGetErrorString(err)));
}

DeviceBuffer TryAllocate(int64_t bytes) {
  void* p = nullptr;
  if (cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 1))) != cudaSuccess) {
    cudaGetLastError();
    return nullptr;
  }
  return DeviceBuffer(p);
}

double MedianMs(int repetitions, cudaStream_t stream, const std::function<void()>& run, void* l2_flush,
                int64_t l2_flush_bytes) {
  cudaEvent_t start, stop;
  CheckCuda(cudaEventCreate(&start), "cudaEventCreate");
  CheckCuda(cudaEventCreate(&stop), "cudaEventCreate");
  run();
  std::vector<float> times;
  for (int i = 0; i < repetitions; ++i) {
    if (l2_flush != nullptr) {
      CheckCuda(cudaMemsetAsync(l2_flush, i & 1 ? 0x5a : 0xa5, static_cast<size_t>(l2_flush_bytes), stream),
                "L2 flush");
    }
    CheckCuda(cudaEventRecord(start, stream), "cudaEventRecord");
    run();
    CheckCuda(cudaEventRecord(stop, stream), "cudaEventRecord");
    CheckCuda(cudaEventSynchronize(stop), "timed run");
    float ms = 0;
    CheckCuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
    times.push_back(ms);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double Ceilings::FloorMs(double bytes, double flops, kernels::DType dtype) const {
  return 1e3 * std::max(bytes / bandwidth_bytes_per_s, flops / gemm_flops_per_s[static_cast<int>(dtype)]);
}

Ceilings MeasureCeilings(const std::vector<kernels::DType>& dtypes, cudaStream_t stream) {
  Ceilings ceilings;
  const int64_t copy_bytes = int64_t{2} << 30;
  DeviceBuffer src = TryAllocate(copy_bytes), dst = TryAllocate(copy_bytes);
  if (!src || !dst) Die("cannot allocate the copy buffers");
  CheckCuda(cudaMemsetAsync(src.get(), 1, copy_bytes, stream), "memset");
  const double copy_ms = MedianMs(10, stream, [&] {
    CheckCuda(cudaMemcpyAsync(dst.get(), src.get(), copy_bytes, cudaMemcpyDeviceToDevice, stream), "copy");
  });
  ceilings.bandwidth_bytes_per_s = 2.0 * copy_bytes / (copy_ms * 1e-3);

  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) Die("cublasCreate failed");
  cublasSetStream(handle, stream);
  cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH);  // FP32 stays strict: no TF32
  const int n = 8192;
  for (kernels::DType dtype : dtypes) {
    const cudaDataType_t type = dtype == kernels::DType::kFloat32   ? CUDA_R_32F
                                : dtype == kernels::DType::kBFloat16 ? CUDA_R_16BF
                                                            : CUDA_R_16F;
    const int64_t bytes = int64_t{n} * n * kernels::DTypeSize(dtype);
    DeviceBuffer a = TryAllocate(bytes), b = TryAllocate(bytes), c = TryAllocate(bytes);
    if (!a || !b || !c) Die("cannot allocate the GEMM buffers");
    CheckCuda(FillRandom(a.get(), int64_t{n} * n, dtype, 1, true, 1.0f, stream), "fill");
    CheckCuda(FillRandom(b.get(), int64_t{n} * n, dtype, 2, true, 1.0f, stream), "fill");
    const float alpha = 1.0f, beta = 0.0f;
    const double ms = MedianMs(5, stream, [&] {
      if (cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, n, n, &alpha, a.get(), type, n, b.get(), type, n, &beta,
                       c.get(), type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
        Die("GEMM ceiling failed");
      }
    });
    ceilings.gemm_flops_per_s[static_cast<int>(dtype)] = 2.0 * n * n * double(n) / (ms * 1e-3);
  }
  cublasDestroy(handle);
  return ceilings;
}

}  // namespace ksserve::bench

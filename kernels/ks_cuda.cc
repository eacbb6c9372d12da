// The CUDA algorithms behind the KS API: fused tiles, and the cuBLAS dense and bmm paths with
// their weight packing. Built only with CUDA.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <limits>
#include <map>

#include "absl/strings/str_format.h"
#include "kernels/cuda/launch.h"
#include "kernels/ks_matmul.h"

namespace ksserve::kernels {
namespace {

absl::Status CudaStatus(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  const std::string message = absl::StrFormat("%s: %s", what, cudaGetErrorString(err));
  return err == cudaErrorMemoryAllocation ? absl::ResourceExhaustedError(message) : absl::InternalError(message);
}

absl::Status CublasStatus(cublasStatus_t status, const char* what) {
  if (status == CUBLAS_STATUS_SUCCESS) return absl::OkStatus();
  const std::string message = absl::StrFormat("%s: %s", what, cublasGetStatusString(status));
  return status == CUBLAS_STATUS_ALLOC_FAILED ? absl::ResourceExhaustedError(message) : absl::InternalError(message);
}

// One cuBLAS handle per device per thread (handles are not thread-safe); strict FP32 math.
class CublasHandles {
 public:
  ~CublasHandles() {
    for (auto& [device, handle] : handles_) cublasDestroy(handle);
  }

  absl::StatusOr<cublasHandle_t> Get(cudaStream_t stream) {
    int device = 0;
    if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
    auto it = handles_.find(device);
    if (it == handles_.end()) {
      cublasHandle_t handle = nullptr;
      if (absl::Status s = CublasStatus(cublasCreate(&handle), "cublasCreate"); !s.ok()) return s;
      it = handles_.emplace(device, handle).first;
      if (absl::Status s = CublasStatus(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode"); !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = CublasStatus(cublasSetStream(it->second, stream), "cublasSetStream"); !s.ok()) return s;
    return it->second;
  }

 private:
  std::map<int, cublasHandle_t> handles_;
};

absl::StatusOr<cublasHandle_t> Handle(cudaStream_t stream) {
  thread_local CublasHandles handles;
  return handles.Get(stream);
}

cudaDataType_t CudaType(DType dtype) {
  switch (dtype) {
    case DType::kBFloat16:
      return CUDA_R_16BF;
    case DType::kFloat16:
      return CUDA_R_16F;
    case DType::kFloat32:
      break;
  }
  return CUDA_R_32F;
}

bool FitsInt(std::initializer_list<int64_t> values) {
  for (int64_t v : values) {
    if (v > std::numeric_limits<int>::max()) return false;
  }
  return true;
}

absl::Status CublasSizes(const KsFactorParams& p, KsAlgorithm algorithm) {
  const KsPattern& k = p.pattern;
  const bool fits = algorithm == KsAlgorithm::kDense
                        ? FitsInt({p.batch, k.in_features(), k.out_features()})
                        : FitsInt({p.batch, k.a * k.d, k.in_features(), k.out_features(), p.batch * k.b, p.batch * k.c});
  if (fits) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("pattern %s at batch %d exceeds cuBLAS's 32-bit sizes",
                                                    PatternToString(k), p.batch));
}

absl::Status RunDense(const KsFactorParams& p, const void* dense, cudaStream_t stream) {
  if (dense == nullptr) return absl::InvalidArgumentError("the dense algorithm needs packed (densified) weights");
  absl::StatusOr<cublasHandle_t> handle = Handle(stream);
  if (!handle.ok()) return handle.status();
  const int in = static_cast<int>(p.pattern.in_features()), out = static_cast<int>(p.pattern.out_features());
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = CudaType(p.dtype);
  // Row-major y (B×out) = x (B×in) · Kᵀ, i.e. column-major yᵀ = K_colᵀ · xᵀ.
  if (absl::Status s = CublasStatus(cublasGemmEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, out, static_cast<int>(p.batch), in,
                                                 &alpha, dense, type, in, p.x, type, in, &beta, p.y, type, out,
                                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                                    "cublasGemmEx");
      !s.ok()) {
    return s;
  }
  if (p.bias == nullptr && p.activation == Activation::kNone) return absl::OkStatus();
  return CudaStatus(cuda::LaunchEpilogue(p.y, p.bias, p.batch, out, p.dtype, p.activation, stream), "epilogue");
}

absl::Status RunBmm(const KsFactorParams& p, const void* grouped_w, void* workspace, cudaStream_t stream) {
  absl::StatusOr<cublasHandle_t> handle = Handle(stream);
  if (!handle.ok()) return handle.status();
  const KsPattern& k = p.pattern;
  const int b = static_cast<int>(k.b), c = static_cast<int>(k.c), batch = static_cast<int>(p.batch);
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = CudaType(p.dtype);
  const int64_t element = DTypeSize(p.dtype);
  if (k.d == 1) {
    // x and y are already a (batch × c) and (batch × b) strided matrices per i: no permutes.
    if (absl::Status s = CublasStatus(
            cublasGemmStridedBatchedEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, b, batch, c, &alpha, p.w, type, c,
                                       k.b * k.c, p.x, type, static_cast<int>(k.in_features()), k.c, &beta, p.y, type,
                                       static_cast<int>(k.out_features()), k.b, static_cast<int>(k.a),
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmStridedBatchedEx");
        !s.ok()) {
      return s;
    }
    if (p.bias == nullptr && p.activation == Activation::kNone) return absl::OkStatus();
    return CudaStatus(cuda::LaunchEpilogue(p.y, p.bias, p.batch, k.out_features(), p.dtype, p.activation, stream),
                      "epilogue");
  }
  if (grouped_w == nullptr || workspace == nullptr) {
    return absl::InvalidArgumentError("the bmm algorithm with d > 1 needs packed weights and a workspace");
  }
  void* x_grouped = workspace;
  void* y_grouped = static_cast<char*>(workspace) + p.batch * k.in_features() * element;
  if (absl::Status s = CudaStatus(cuda::LaunchToGroups(p.x, x_grouped, p.batch, k, p.dtype, stream), "permute x");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CublasStatus(
          cublasGemmStridedBatchedEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, b, batch, c, &alpha, grouped_w, type, c,
                                     k.b * k.c, x_grouped, type, c, p.batch * k.c, &beta, y_grouped, type, b,
                                     p.batch * k.b, static_cast<int>(k.a * k.d), CUBLAS_COMPUTE_32F,
                                     CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx");
      !s.ok()) {
    return s;
  }
  return CudaStatus(cuda::LaunchFromGroups(y_grouped, p.bias, p.y, p.batch, k, p.dtype, p.activation, stream),
                    "permute y");
}

}  // namespace

absl::Status PackWeightsCuda(KsAlgorithm algorithm, const KsPattern& pattern, DType dtype, const void* w, void* packed,
                             CudaStream stream) {
  absl::StatusOr<int64_t> bytes = PackedWeightBytes(algorithm, pattern, dtype);
  if (!bytes.ok()) return bytes.status();
  if (*bytes == 0) return absl::OkStatus();
  if (w == nullptr || packed == nullptr) return absl::InvalidArgumentError("w and packed must be non-null");
  if (algorithm == KsAlgorithm::kDense) {
    return CudaStatus(cuda::LaunchDensify(w, packed, pattern, dtype, stream), "densify weights");
  }
  return CudaStatus(cuda::LaunchPackGrouped(w, packed, pattern, dtype, stream), "pack grouped weights");
}

absl::Status KsFactorForwardCuda(const KsFactorParams& params, const KsKernelChoice& choice, const void* packed_w,
                                 void* workspace, CudaStream stream) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
  if (params.batch == 0) return absl::OkStatus();
  switch (choice.algorithm) {
    case KsAlgorithm::kNaive:
      return CudaStatus(cuda::LaunchKsFactorNaive(params, stream), "KS naive kernel launch");
    case KsAlgorithm::kFused:
      if (FusedTileUsesTensorCores(choice.tile) && params.dtype == DType::kFloat32) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s runs on tensor cores and takes bfloat16 or float16; float32 is strict", KernelChoiceName(choice)));
      }
      return CudaStatus(cuda::LaunchKsFactorFused(params, choice.tile, stream), "KS fused kernel launch");
    case KsAlgorithm::kDense:
      if (absl::Status s = CublasSizes(params, choice.algorithm); !s.ok()) return s;
      return RunDense(params, packed_w, stream);
    case KsAlgorithm::kBmm:
      if (absl::Status s = CublasSizes(params, choice.algorithm); !s.ok()) return s;
      return RunBmm(params, params.pattern.d == 1 ? params.w : packed_w, workspace, stream);
  }
  return absl::InvalidArgumentError("unknown algorithm");
}

}  // namespace ksserve::kernels

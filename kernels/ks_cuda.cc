// The CUDA algorithms behind the KS API: fused tiles, and the cuBLAS dense and bmm paths with
// their weight packing. Built only with CUDA.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <limits>
#include <map>
#include <utility>

#include "absl/strings/str_format.h"
#include "absl/types/span.h"
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

// One cuBLAS handle per thread, device and stream: handles are not thread-safe, and a handle's
// workspace must not be shared by kernels that may run at once on different streams. Strict FP32.
class CublasHandles {
 public:
  ~CublasHandles() {
    for (auto& [key, handle] : handles_) cublasDestroy(handle);
  }

  absl::StatusOr<cublasHandle_t> Get(cudaStream_t stream) {
    int device = 0;
    if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
    auto it = handles_.find({device, stream});
    if (it != handles_.end()) return it->second;
    cublasHandle_t handle = nullptr;
    if (absl::Status s = CublasStatus(cublasCreate(&handle), "cublasCreate"); !s.ok()) return s;
    absl::Status s = CublasStatus(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
    if (s.ok()) s = CublasStatus(cublasSetStream(handle, stream), "cublasSetStream");
    if (!s.ok()) {
      cublasDestroy(handle);
      return s;
    }
    handles_.emplace(std::make_pair(device, stream), handle);
    return handle;
  }

 private:
  std::map<std::pair<int, cudaStream_t>, cublasHandle_t> handles_;
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

absl::Status CublasSizes(const KsFactorParams& p, KsAlgorithm algorithm) {
  if (CublasSizesFit(p, algorithm)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrFormat("pattern %s at batch %d exceeds cuBLAS's 32-bit sizes",
                                                    PatternToString(p.pattern), p.batch));
}

// Where a cuBLAS product lands before the epilogue: in y, or, for 16-bit types with a bias or
// activation, in FP32 in the workspace, so that y is rounded once, as the fused tiles round it.
struct Product {
  void* data = nullptr;
  cudaDataType_t type = CUDA_R_32F;
  int64_t element_bytes = 4;
  bool in_float = false;
};

absl::StatusOr<Product> ProductOf(const KsFactorParams& p, void* workspace) {
  if (!CublasProductInFp32(p)) {
    return Product{.data = p.y, .type = CudaType(p.dtype), .element_bytes = DTypeSize(p.dtype)};
  }
  if (workspace == nullptr) {
    return absl::InvalidArgumentError(
        "a 16-bit cuBLAS call with a bias or activation needs a workspace (FactorWorkspaceBytes) for its "
        "FP32 product");
  }
  return Product{.data = workspace, .type = CUDA_R_32F, .element_bytes = 4, .in_float = true};
}

// y = act(product + bias) after a cuBLAS product, in the call's layout; nothing to do when the
// product is y and there is no epilogue.
absl::Status Epilogue(const KsFactorParams& p, const Product& product, cudaStream_t stream) {
  if (p.bias == nullptr && p.activation == Activation::kNone) return absl::OkStatus();
  return CudaStatus(cuda::LaunchEpilogue(product.data, product.in_float, p.bias, p.y, p.batch,
                                         p.pattern.out_features(), p.dtype, p.layout, p.activation, stream),
                    "epilogue");
}

absl::Status RunDense(const KsFactorParams& p, const void* dense, void* workspace, cudaStream_t stream) {
  if (dense == nullptr) return absl::InvalidArgumentError("the dense algorithm needs packed (densified) weights");
  absl::StatusOr<cublasHandle_t> handle = Handle(stream);
  if (!handle.ok()) return handle.status();
  absl::StatusOr<Product> product = ProductOf(p, workspace);
  if (!product.ok()) return product.status();
  const int in = static_cast<int>(p.pattern.in_features()), out = static_cast<int>(p.pattern.out_features());
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = CudaType(p.dtype);
  const int batch = static_cast<int>(p.batch);
  // Batch-first: row-major y (B×out) = x (B×in) · Kᵀ, i.e. column-major yᵀ = K_colᵀ · xᵀ. Batch-last:
  // row-major y (out×B) = K · x (in×B), i.e. column-major yᵀ = xᵀ · K_col.
  const cublasStatus_t status =
      p.layout == BatchLayout::kBatchLast
          ? cublasGemmEx(*handle, CUBLAS_OP_N, CUBLAS_OP_N, batch, out, in, &alpha, p.x, type, batch, dense,
                         type, in, &beta, product->data, product->type, batch, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT)
          : cublasGemmEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, out, batch, in, &alpha, dense, type, in, p.x,
                         type, in, &beta, product->data, product->type, out, CUBLAS_COMPUTE_32F,
                         CUBLAS_GEMM_DEFAULT);
  if (absl::Status s = CublasStatus(status, "cublasGemmEx"); !s.ok()) return s;
  return Epilogue(p, *product, stream);
}

// Batch-last: block (i, j) of x is a (c × B) matrix with rows d·B apart, of y a (b × B) one, and of
// the grouped weights [(i·d + j)][r][s] a (b × c) one: strided batched GEMMs, no permutes. One call
// per j over every i, or per i over every j, whichever makes fewer calls; d = 1 reads w in place.
absl::Status RunBmmBatchLast(const KsFactorParams& p, const void* grouped_w, void* workspace,
                             cudaStream_t stream) {
  absl::StatusOr<cublasHandle_t> handle = Handle(stream);
  if (!handle.ok()) return handle.status();
  absl::StatusOr<Product> product = ProductOf(p, workspace);
  if (!product.ok()) return product.status();
  const KsPattern& k = p.pattern;
  const int64_t n = p.batch, size = DTypeSize(p.dtype);
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = CudaType(p.dtype);
  const bool over_i = k.d <= k.a;  // each call batches over i (one per j); else over j
  const int64_t calls = over_i ? k.d : k.a;
  for (int64_t call = 0; call < calls; ++call) {
    // Element offsets of the call's first block and the steps between its blocks.
    const int64_t x_first = (over_i ? call : call * k.c * k.d) * n, x_step = over_i ? k.c * k.d * n : n;
    const int64_t w_first = (over_i ? call : call * k.d) * k.b * k.c, w_step = (over_i ? k.d : 1) * k.b * k.c;
    const int64_t y_first = (over_i ? call : call * k.b * k.d) * n, y_step = over_i ? k.b * k.d * n : n;
    // Column-major: yᵀ_ij (B×b) = xᵀ_ij (B×c) · W_ijᵀ, W_ij row-major (b×c) being column-major (c×b).
    if (absl::Status s = CublasStatus(
            cublasGemmStridedBatchedEx(
                *handle, CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(k.b),
                static_cast<int>(k.c), &alpha, static_cast<const char*>(p.x) + x_first * size, type,
                static_cast<int>(k.d * n), x_step, static_cast<const char*>(grouped_w) + w_first * size, type,
                static_cast<int>(k.c), w_step, &beta,
                static_cast<char*>(product->data) + y_first * product->element_bytes, product->type,
                static_cast<int>(k.d * n), y_step, static_cast<int>(over_i ? k.a : k.d), CUBLAS_COMPUTE_32F,
                CUBLAS_GEMM_DEFAULT),
            "cublasGemmStridedBatchedEx");
        !s.ok()) {
      return s;
    }
  }
  return Epilogue(p, *product, stream);
}

absl::Status RunBmm(const KsFactorParams& p, const void* grouped_w, void* workspace, cudaStream_t stream) {
  absl::StatusOr<cublasHandle_t> handle = Handle(stream);
  if (!handle.ok()) return handle.status();
  const KsPattern& k = p.pattern;
  const int b = static_cast<int>(k.b), c = static_cast<int>(k.c), batch = static_cast<int>(p.batch);
  const float alpha = 1.0f, beta = 0.0f;
  const cudaDataType_t type = CudaType(p.dtype);
  if (k.d == 1) {
    // x and y are already a (batch × c) and (batch × b) strided matrices per i: no permutes.
    absl::StatusOr<Product> product = ProductOf(p, workspace);
    if (!product.ok()) return product.status();
    if (absl::Status s = CublasStatus(
            cublasGemmStridedBatchedEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, b, batch, c, &alpha, p.w, type, c,
                                       k.b * k.c, p.x, type, static_cast<int>(k.in_features()), k.c, &beta,
                                       product->data, product->type, static_cast<int>(k.out_features()), k.b,
                                       static_cast<int>(k.a), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            "cublasGemmStridedBatchedEx");
        !s.ok()) {
      return s;
    }
    return Epilogue(p, *product, stream);
  }
  if (grouped_w == nullptr || workspace == nullptr) {
    return absl::InvalidArgumentError("the bmm algorithm with d > 1 needs packed weights and a workspace");
  }
  void* x_grouped = workspace;
  void* y_grouped = static_cast<char*>(workspace) + BmmOutputOffset(p.batch, k, p.dtype);
  const bool y_grouped_in_float = CublasProductInFp32(p);
  if (absl::Status s = CudaStatus(cuda::LaunchToGroups(p.x, x_grouped, p.batch, k, p.dtype, stream), "permute x");
      !s.ok()) {
    return s;
  }
  if (absl::Status s = CublasStatus(
          cublasGemmStridedBatchedEx(*handle, CUBLAS_OP_T, CUBLAS_OP_N, b, batch, c, &alpha, grouped_w, type,
                                     c, k.b * k.c, x_grouped, type, c, p.batch * k.c, &beta, y_grouped,
                                     y_grouped_in_float ? CUDA_R_32F : type, b, p.batch * k.b,
                                     static_cast<int>(k.a * k.d), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
          "cublasGemmStridedBatchedEx");
      !s.ok()) {
    return s;
  }
  return CudaStatus(cuda::LaunchFromGroups(y_grouped, y_grouped_in_float, p.bias, p.y, p.batch, k, p.dtype,
                                           p.activation, stream),
                    "permute y");
}

}  // namespace

absl::Status PackWeightsCuda(const KsKernelChoice& choice, const KsPattern& pattern, DType dtype, const void* w,
                             void* packed, CudaStream stream) {
  absl::StatusOr<int64_t> bytes = PackedWeightBytes(choice, pattern, dtype);
  if (!bytes.ok()) return bytes.status();
  if (*bytes == 0) return absl::OkStatus();
  if (w == nullptr || packed == nullptr) return absl::InvalidArgumentError("w and packed must be non-null");
  if (choice.algorithm == KsAlgorithm::kDense) {
    return CudaStatus(cuda::LaunchDensify(w, packed, pattern, dtype, stream), "densify weights");
  }
  return CudaStatus(cuda::LaunchPackGrouped(w, packed, pattern, dtype, stream), "pack grouped weights");
}

absl::Status KsFactorForwardCuda(const KsFactorParams& params, const KsKernelChoice& choice, const void* packed_w,
                                 void* workspace, CudaStream stream) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
  if (params.batch == 0) return absl::OkStatus();
  if (!KernelTakesLayout(choice, params.layout)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s reads batch-first x; batch-last runs on naive, dense or bmm", KernelChoiceName(choice)));
  }
  switch (choice.algorithm) {
    case KsAlgorithm::kNaive:
      return CudaStatus(cuda::LaunchKsFactorNaive(params, stream), "KS naive kernel launch");
    case KsAlgorithm::kFused:
      if (FusedTileUsesTensorCores(choice.tile) && params.dtype == DType::kFloat32) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "%s runs on tensor cores and takes bfloat16 or float16; float32 is strict", KernelChoiceName(choice)));
      }
      return CudaStatus(cuda::LaunchKsFactorFused(params, choice.tile, packed_w, stream), "KS fused kernel launch");
    case KsAlgorithm::kDense:
      if (absl::Status s = CublasSizes(params, choice.algorithm); !s.ok()) return s;
      return RunDense(params, packed_w, workspace, stream);
    case KsAlgorithm::kBmm:
      if (absl::Status s = CublasSizes(params, choice.algorithm); !s.ok()) return s;
      if (params.layout == BatchLayout::kBatchLast) {
        if (params.pattern.d > 1 && packed_w == nullptr) {
          return absl::InvalidArgumentError("the bmm algorithm with d > 1 needs packed weights");
        }
        return RunBmmBatchLast(params, params.pattern.d == 1 ? params.w : packed_w, workspace, stream);
      }
      return RunBmm(params, params.pattern.d == 1 ? params.w : packed_w, workspace, stream);
  }
  return absl::InvalidArgumentError("unknown algorithm");
}

absl::Status PackFusedPairWeightsCuda(absl::Span<const KsPattern> chain, DType dtype, const void* second_w,
                                      void* packed, CudaStream stream) {
  if (absl::Status s = FusedPairSupported(chain, dtype); !s.ok()) return s;
  if (chain[1].d == 1) return absl::OkStatus();
  if (second_w == nullptr || packed == nullptr) return absl::InvalidArgumentError("second_w and packed must be non-null");
  return CudaStatus(cuda::LaunchPackGrouped(second_w, packed, chain[1], dtype, stream), "pack grouped weights");
}

absl::Status KsFusedPairForwardCuda(const KsChainParams& params, const void* packed, CudaStream stream,
                                    PairTile tile) {
  if (absl::Status s = FusedPairSupported(params.patterns, params.dtype); !s.ok()) return s;
  if (params.weights.size() != 2) {
    return absl::InvalidArgumentError(absl::StrFormat("%d weight tensors for a pair", params.weights.size()));
  }
  if (params.layout != BatchLayout::kBatchFirst) {
    return absl::InvalidArgumentError(
        "the fused pair reads batch-first x; run a batch-last chain factor by factor");
  }
  const KsPattern& first = params.patterns[0];
  const KsPattern& second = params.patterns[1];
  const void* second_w = second.d == 1 ? params.weights[1] : packed;
  // Shapes and overflow as two factor calls would check them.
  for (const KsFactorParams& factor :
       {KsFactorParams{.x = params.x, .w = params.weights[0], .y = params.y, .batch = params.batch,
                       .pattern = first, .dtype = params.dtype},
        KsFactorParams{.x = params.x, .w = second_w, .bias = params.bias, .y = params.y, .batch = params.batch,
                       .pattern = second, .dtype = params.dtype, .activation = params.activation}}) {
    if (absl::Status s = ValidateFactorParams(factor); !s.ok()) return s;
  }
  if (params.batch == 0) return absl::OkStatus();
  const auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (!aligned(params.x) || !aligned(params.weights[0]) || !aligned(second_w)) {
    return absl::InvalidArgumentError("the fused pair needs x and the weights 16-byte aligned");
  }
  int device = 0, shared_limit = 0;
  if (absl::Status s = CudaStatus(cudaGetDevice(&device), "cudaGetDevice"); !s.ok()) return s;
  if (absl::Status s = CudaStatus(
          cudaDeviceGetAttribute(&shared_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), "shared limit");
      !s.ok()) {
    return s;
  }
  const bool wgmma = cuda::KsPairWgmmaRuns(second);
  // A warpgroup-MMA shape asked for where it cannot run: the rule's mma.sync shape instead.
  if (cuda::PairTileUsesWgmma(tile) && !wgmma) tile = PairTile::kRule;
  const auto fits = [&](PairTile t) {
    return (cuda::PairTileUsesWgmma(t) ? cuda::KsPairWgmmaSharedBytes(first, second, t)
                                       : cuda::KsPairSharedBytes(first, second, t)) <= shared_limit;
  };
  if (tile == PairTile::kRule) {
    // By measurement on the model pairs: warpgroup MMA where it runs and fits, in the block shape
    // cuda::KsPairWgmmaTile takes; then mma.sync with K-steps of 64 where they fit, 128 outputs per
    // step for a wide second factor (the MLP up layers), else 64; the first shape that fits.
    using enum PairTile;
    static constexpr PairTile kNarrow[] = {kM64N64K64, kM64N64, kM64N128K64, kM64N128, kM128N128};
    static constexpr PairTile kWide[] = {kM64N128K64, kM64N128, kM64N64K64, kM64N64, kM128N128};
    const auto take_first_that_fits = [&](absl::Span<const PairTile> candidates) {
      for (PairTile candidate : candidates) {
        if (fits(candidate)) {
          tile = candidate;
          return true;
        }
      }
      return false;
    };
    tile = kM64N64;
    const bool took_wgmma =
        wgmma && take_first_that_fits(
                     {cuda::KsPairWgmmaTile(first, second, params.activation, params.y), kWgM64, kWgM128});
    if (!took_wgmma) take_first_that_fits(second.b >= 512 ? kWide : kNarrow);
  }
  if (!fits(tile)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "the fused pair's intermediate (%d features) and output tile do not fit in %d bytes of shared memory "
        "with %s blocks",
        second.in_features(), shared_limit, PairTileName(tile)));
  }
  const cuda::KsPairArgs args{.x = params.x,
                              .w1 = params.weights[0],
                              .w2_grouped = second_w,
                              .bias = params.bias,
                              .y = params.y,
                              .batch = params.batch,
                              .first = first,
                              .second = second,
                              .dtype = params.dtype,
                              .activation = params.activation};
  return CudaStatus(cuda::PairTileUsesWgmma(tile) ? cuda::LaunchKsPairWgmma(args, tile, stream)
                                                  : cuda::LaunchKsPairTc(args, tile, stream),
                    "KS fused pair launch");
}

}  // namespace ksserve::kernels

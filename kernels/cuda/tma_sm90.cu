// Host side of the tensor memory accelerator: tensor maps, encoded through the driver entry point
// the runtime hands out (no link against libcuda).
#include <cudaTypedefs.h>

#include "kernels/cuda/tma_sm90.cuh"

namespace ksserve::kernels::cuda {
namespace {

cudaError_t Encode(CUtensorMap* map, const void* base, bool bfloat16, int rank, const cuuint64_t* dims,
                   const cuuint64_t* strides, const cuuint32_t* box, CUtensorMapSwizzle swizzle) {
  static const auto encode = [] {
    void* function = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &function, 12000,
                                                             cudaEnableDefault, &found);
    return err == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(function)
               : nullptr;
  }();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint32_t element_strides[5] = {1, 1, 1, 1, 1};
  const CUresult result =
      encode(map, bfloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
             static_cast<cuuint32_t>(rank), const_cast<void*>(base), dims, strides, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace

cudaError_t MakeTensorMap16(CUtensorMap* map, const void* base, bool bfloat16, int64_t rows, int64_t columns,
                            int box_rows) {
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(columns), static_cast<cuuint64_t>(rows)};
  const cuuint64_t row_pitch[1] = {static_cast<cuuint64_t>(columns) * 2};
  const cuuint32_t box[2] = {64, static_cast<cuuint32_t>(box_rows)};
  return Encode(map, base, bfloat16, 2, dims, row_pitch, box, CU_TENSOR_MAP_SWIZZLE_128B);
}

cudaError_t MakeTensorMap16(CUtensorMap* map, const void* base, bool bfloat16, int rank, const int64_t* dims,
                            const int64_t* strides, const int* box, int swizzle_bytes) {
  if (rank < 1 || rank > 5) return cudaErrorInvalidValue;
  CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_NONE;
  switch (swizzle_bytes) {
    case 0:
      break;
    case 32:
      swizzle = CU_TENSOR_MAP_SWIZZLE_32B;
      break;
    case 64:
      swizzle = CU_TENSOR_MAP_SWIZZLE_64B;
      break;
    case 128:
      swizzle = CU_TENSOR_MAP_SWIZZLE_128B;
      break;
    default:
      return cudaErrorInvalidValue;
  }
  cuuint64_t dims64[5], strides64[4];
  cuuint32_t box32[5];
  for (int k = 0; k < rank; ++k) {
    if (dims[k] < 1 || box[k] < 1) return cudaErrorInvalidValue;
    dims64[k] = static_cast<cuuint64_t>(dims[k]);
    box32[k] = static_cast<cuuint32_t>(box[k]);
    if (k > 0) strides64[k - 1] = static_cast<cuuint64_t>(strides[k - 1]);
  }
  return Encode(map, base, bfloat16, rank, dims64, strides64, box32, swizzle);
}

}  // namespace ksserve::kernels::cuda

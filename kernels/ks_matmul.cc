#include "kernels/ks_matmul.h"

#include <limits>

#include "absl/strings/str_format.h"

#if KSSERVE_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels/cuda/launch.h"
#endif

namespace ksserve::kernels {
namespace {

bool MulOverflows(int64_t x, int64_t y, int64_t* out) { return __builtin_mul_overflow(x, y, out); }

}  // namespace

std::string PatternToString(const KsPattern& p) {
  return absl::StrFormat("(%d,%d,%d,%d)", p.a, p.b, p.c, p.d);
}

absl::Status ValidatePattern(const KsPattern& p) {
  if (p.a <= 0 || p.b <= 0 || p.c <= 0 || p.d <= 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KS pattern %s: a, b, c and d must be positive", PatternToString(p)));
  }
  int64_t ab = 0, abc = 0, abcd = 0, ac = 0, acd = 0, abd = 0;
  if (MulOverflows(p.a, p.b, &ab) || MulOverflows(ab, p.c, &abc) || MulOverflows(abc, p.d, &abcd) ||
      MulOverflows(p.a, p.c, &ac) || MulOverflows(ac, p.d, &acd) || MulOverflows(ab, p.d, &abd)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("KS pattern %s: sizes overflow 64-bit integers", PatternToString(p)));
  }
  return absl::OkStatus();
}

absl::Status ValidateFactorParams(const KsFactorParams& params) {
  if (absl::Status s = ValidatePattern(params.pattern); !s.ok()) return s;
  if (params.batch < 0) {
    return absl::InvalidArgumentError(absl::StrFormat("batch must be >= 0, got %d", params.batch));
  }
  int64_t x_elems = 0, y_elems = 0;
  if (MulOverflows(params.batch, params.pattern.in_features(), &x_elems) ||
      MulOverflows(params.batch, params.pattern.out_features(), &y_elems) ||
      params.pattern.nonzeros() > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(sizeof(float)) ||
      x_elems > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(sizeof(float)) ||
      y_elems > std::numeric_limits<int64_t>::max() / static_cast<int64_t>(sizeof(float))) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "batch %d with pattern %s overflows 64-bit sizes", params.batch, PatternToString(params.pattern)));
  }
  if (params.batch > 0 && (params.x == nullptr || params.w == nullptr || params.y == nullptr)) {
    return absl::InvalidArgumentError("x, w and y must be non-null");
  }
  return absl::OkStatus();
}

absl::Status KsFactorForwardCpu(const KsFactorParams& params) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
  const auto [a, b, c, d] = params.pattern;
  const int64_t in = params.pattern.in_features(), out = params.pattern.out_features();
  // Loop order keeps j (stride 1 in x, w and y) innermost; each (n, i) block of y is
  // accumulated in place over s.
  for (int64_t n = 0; n < params.batch; ++n) {
    const float* x_row = params.x + n * in;
    float* y_row = params.y + n * out;
    for (int64_t i = 0; i < a; ++i) {
      float* y_block = y_row + i * b * d;
      for (int64_t k = 0; k < b * d; ++k) y_block[k] = 0.0f;
      for (int64_t s = 0; s < c; ++s) {
        const float* x_vec = x_row + (i * c + s) * d;
        for (int64_t r = 0; r < b; ++r) {
          const float* w_vec = params.w + ((i * b + r) * c + s) * d;
          float* y_vec = y_block + r * d;
          for (int64_t j = 0; j < d; ++j) y_vec[j] += x_vec[j] * w_vec[j];
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status KsFactorForwardCuda(const KsFactorParams& params, CudaStream stream) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
#if KSSERVE_WITH_CUDA
  if (params.batch == 0) return absl::OkStatus();
  if (cudaError_t err = cuda::LaunchKsFactorNaiveFp32(params, stream); err != cudaSuccess) {
    return absl::InternalError(
        absl::StrFormat("KS factor CUDA launch failed: %s", cudaGetErrorString(err)));
  }
  return absl::OkStatus();
#else
  (void)stream;
  return absl::FailedPreconditionError("ksserve was built without CUDA (preset 'cpu')");
#endif
}

}  // namespace ksserve::kernels

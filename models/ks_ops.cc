#include "models/ks_ops.h"

#include <ATen/ops/empty.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/ks_matmul.h"

#if KSSERVE_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace ksserve::models {
namespace {

std::string Describe(const torch::Tensor& t) {
  return absl::StrFormat("%s %s on %s", c10::str(t.sizes()), c10::toString(t.scalar_type()),
                         t.device().str());
}

}  // namespace

absl::StatusOr<torch::Tensor> KsFactorForward(const torch::Tensor& x, const torch::Tensor& w) {
  if (!x.defined() || !w.defined()) return absl::InvalidArgumentError("x and w must be defined");
  if (w.dim() != 4) {
    return absl::InvalidArgumentError("KS weights must be [a, b, c, d], got " + Describe(w));
  }
  const kernels::KsPattern pattern{w.size(0), w.size(1), w.size(2), w.size(3)};
  if (absl::Status s = kernels::ValidatePattern(pattern); !s.ok()) return s;
  if (x.dim() != 2 || x.size(1) != pattern.in_features()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "x must be [batch, %d] for pattern %s, got %s", pattern.in_features(),
        kernels::PatternToString(pattern), Describe(x)));
  }
  if (x.scalar_type() != torch::kFloat32 || w.scalar_type() != torch::kFloat32) {
    return absl::InvalidArgumentError(
        absl::StrFormat("x and w must be float32, got x %s, w %s", Describe(x), Describe(w)));
  }
  if (x.device() != w.device()) {
    return absl::InvalidArgumentError(
        absl::StrFormat("x and w on different devices: x %s, w %s", Describe(x), Describe(w)));
  }
  if (!x.is_contiguous() || !w.is_contiguous()) {
    return absl::InvalidArgumentError("x and w must be contiguous");
  }

  torch::Tensor y;
  try {
    y = at::empty({x.size(0), pattern.out_features()}, x.options());
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat("KS factor output: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("KS factor output: ", e.what_without_backtrace()));
  }
  const kernels::KsFactorParams params{.x = x.const_data_ptr<float>(),
                                       .w = w.const_data_ptr<float>(),
                                       .y = y.mutable_data_ptr<float>(),
                                       .batch = x.size(0),
                                       .pattern = pattern};
  absl::Status status;
  if (x.is_cpu()) {
    status = kernels::KsFactorForwardCpu(params);
  } else if (x.is_cuda()) {
#if KSSERVE_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    status = kernels::KsFactorForwardCuda(params, c10::cuda::getCurrentCUDAStream().stream());
#else
    status = kernels::KsFactorForwardCuda(params, nullptr);  // FAILED_PRECONDITION in this build
#endif
  } else {
    status = absl::InvalidArgumentError("unsupported device: " + x.device().str());
  }
  if (!status.ok()) return status;
  return y;
}

}  // namespace ksserve::models

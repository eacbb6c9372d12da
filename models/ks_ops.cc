#include "models/ks_ops.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <mutex>

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

absl::StatusOr<kernels::DType> ToDType(torch::ScalarType type) {
  switch (type) {
    case torch::kFloat32:
      return kernels::DType::kFloat32;
    case torch::kBFloat16:
      return kernels::DType::kBFloat16;
    case torch::kFloat16:
      return kernels::DType::kFloat16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("KS layers take float32, bfloat16 or float16, got ", c10::toString(type)));
  }
}

// Checks that every defined tensor matches x in dtype and device and is contiguous.
absl::Status CheckAlike(const torch::Tensor& x, const std::vector<const torch::Tensor*>& others) {
  if (!x.defined()) return absl::InvalidArgumentError("x must be defined");
  for (const torch::Tensor* t : others) {
    if (!t->defined()) return absl::InvalidArgumentError("weights and bias must be defined");
    if (t->scalar_type() != x.scalar_type()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("x and the weights/bias must share one dtype: x %s, got %s", Describe(x), Describe(*t)));
    }
    if (t->device() != x.device()) {
      return absl::InvalidArgumentError(
          absl::StrFormat("x and the weights/bias on different devices: x %s, got %s", Describe(x), Describe(*t)));
    }
    if (!t->is_contiguous()) return absl::InvalidArgumentError("weights and bias must be contiguous");
  }
  if (!x.is_contiguous()) return absl::InvalidArgumentError("x must be contiguous");
  if (!x.is_cpu() && !x.is_cuda()) return absl::InvalidArgumentError("unsupported device: " + x.device().str());
  return ToDType(x.scalar_type()).status();
}

absl::StatusOr<kernels::KsPattern> PatternOf(const torch::Tensor& w) {
  if (w.dim() != 4) return absl::InvalidArgumentError("KS weights must be [a, b, c, d], got " + Describe(w));
  const kernels::KsPattern pattern{w.size(0), w.size(1), w.size(2), w.size(3)};
  if (absl::Status s = kernels::ValidatePattern(pattern); !s.ok()) return s;
  return pattern;
}

absl::StatusOr<torch::Tensor> Empty(at::IntArrayRef sizes, const torch::TensorOptions& options) {
  try {
    return at::empty(sizes, options);
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat("KS layer buffers: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("KS layer buffers: ", e.what_without_backtrace()));
  }
}

// Runs `cpu` or `cuda` (the latter on x's device and its current stream).
template <typename CpuFn, typename CudaFn>
absl::Status OnDevice(const torch::Tensor& x, CpuFn cpu, CudaFn cuda) {
  if (x.is_cpu()) return cpu();
#if KSSERVE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  return cuda(c10::cuda::getCurrentCUDAStream().stream());
#else
  return cuda(nullptr);  // FAILED_PRECONDITION in this build
#endif
}

// The CPU kernel on row blocks of the batch, in parallel on LibTorch's intra-op threads
// (torch::set_num_threads). Each block gets its own slice of the workspace, which is linear in
// the batch size.
absl::Status ChainForwardCpuParallel(const kernels::KsChainParams& params) {
  int64_t row_cost = 0;
  for (const kernels::KsPattern& p : params.patterns) row_cost += p.nonzeros();
  const absl::StatusOr<int64_t> row_workspace = kernels::ChainWorkspaceBytes(params.patterns, 1, params.dtype);
  if (!row_workspace.ok()) return row_workspace.status();
  const int64_t element = kernels::DTypeSize(params.dtype);
  const int64_t in = params.patterns.front().in_features(), out = params.patterns.back().out_features();
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / std::max<int64_t>(row_cost, 1));
  std::mutex mutex;
  absl::Status status;
  at::parallel_for(0, params.batch, grain, [&](int64_t begin, int64_t end) {
    kernels::KsChainParams block = params;
    block.batch = end - begin;
    block.x = static_cast<const char*>(params.x) + begin * in * element;
    block.y = static_cast<char*>(params.y) + begin * out * element;
    block.workspace = *row_workspace == 0 ? nullptr : static_cast<char*>(params.workspace) + begin * *row_workspace;
    absl::Status s = kernels::KsChainForwardCpu(block);
    if (!s.ok()) {
      const std::lock_guard<std::mutex> lock(mutex);
      if (status.ok()) status = std::move(s);
    }
  });
  return status;
}

}  // namespace

absl::StatusOr<torch::Tensor> KsFactorForward(const torch::Tensor& x, const torch::Tensor& w,
                                              const std::optional<torch::Tensor>& bias,
                                              kernels::Activation activation) {
  return KsChainForward(x, {w}, bias, activation);
}

absl::StatusOr<torch::Tensor> KsChainForward(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                             const std::optional<torch::Tensor>& bias,
                                             kernels::Activation activation) {
  std::vector<const torch::Tensor*> others;
  kernels::KsChainParams params;
  for (const torch::Tensor& w : weights) {
    others.push_back(&w);
    absl::StatusOr<kernels::KsPattern> pattern = PatternOf(w);
    if (!pattern.ok()) return pattern.status();
    params.patterns.push_back(*pattern);
  }
  if (absl::Status s = kernels::ValidateChain(params.patterns); !s.ok()) return s;
  if (bias.has_value()) others.push_back(&*bias);
  if (absl::Status s = CheckAlike(x, others); !s.ok()) return s;
  const int64_t in = params.patterns.front().in_features(), out = params.patterns.back().out_features();
  if (x.dim() != 2 || x.size(1) != in) {
    return absl::InvalidArgumentError(absl::StrFormat("x must be [batch, %d] for pattern %s, got %s", in,
                                                      kernels::PatternToString(params.patterns.front()),
                                                      Describe(x)));
  }
  if (bias.has_value() && (bias->dim() != 1 || bias->size(0) != out)) {
    return absl::InvalidArgumentError(absl::StrFormat("bias must be [%d], got %s", out, Describe(*bias)));
  }

  params.dtype = *ToDType(x.scalar_type());
  params.batch = x.size(0);
  params.activation = activation;
  absl::StatusOr<int64_t> workspace_bytes = kernels::ChainWorkspaceBytes(params.patterns, params.batch, params.dtype);
  if (!workspace_bytes.ok()) return workspace_bytes.status();
  absl::StatusOr<torch::Tensor> y = Empty({params.batch, out}, x.options());
  absl::StatusOr<torch::Tensor> workspace = Empty({*workspace_bytes}, x.options().dtype(torch::kUInt8));
  if (!y.ok()) return y.status();
  if (!workspace.ok()) return workspace.status();

  params.x = x.const_data_ptr();
  params.y = y->mutable_data_ptr();
  params.bias = bias.has_value() ? bias->const_data_ptr() : nullptr;
  params.workspace = workspace->mutable_data_ptr();
  for (const torch::Tensor& w : weights) params.weights.push_back(w.const_data_ptr());
  absl::Status status = OnDevice(
      x, [&] { return ChainForwardCpuParallel(params); },
      [&](kernels::CudaStream stream) { return kernels::KsChainForwardCuda(params, stream); });
  if (!status.ok()) return status;
  return *std::move(y);
}

}  // namespace ksserve::models

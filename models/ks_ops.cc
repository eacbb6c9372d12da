#include "models/ks_ops.h"

#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/gelu.h>

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

// The CPU path: each factor as one batched GEMM through LibTorch (its BLAS and intra-op
// threads): x viewed as [a·d][batch][c] times w as [a·d][c][b]. Products accumulate in FP32 and
// round once per factor, as in the kernels: BF16 factors without an epilogue run as BF16 GEMMs
// (FP32 accumulation inside); the rest in FP32, with bias and activation applied before the
// final rounding.
absl::StatusOr<torch::Tensor> ChainForwardCpuBmm(const torch::Tensor& x, const std::vector<torch::Tensor>& weights,
                                                 const std::vector<kernels::KsPattern>& patterns,
                                                 const std::optional<torch::Tensor>& bias,
                                                 kernels::Activation activation) {
  try {
    const int64_t batch = x.size(0);
    const bool epilogue = bias.has_value() || activation != kernels::Activation::kNone;
    torch::Tensor h = x;
    for (size_t l = 0; l < patterns.size(); ++l) {
      const auto [a, b, c, d] = patterns[l];
      const bool last = l + 1 == patterns.size();
      const torch::ScalarType compute =
          x.scalar_type() == torch::kBFloat16 && !(last && epilogue) ? torch::kBFloat16 : torch::kFloat32;
      const torch::Tensor x_groups =
          h.to(compute).view({batch, a, c, d}).permute({1, 3, 0, 2}).reshape({a * d, batch, c});
      const torch::Tensor w_groups = weights[l].to(compute).permute({0, 3, 2, 1}).reshape({a * d, c, b});
      h = at::bmm(x_groups, w_groups).view({a, d, batch, b}).permute({2, 0, 3, 1}).reshape({batch, a * b * d});
      if (!last) h = h.to(x.scalar_type());
    }
    if (bias.has_value()) h.add_(bias->to(torch::kFloat32));
    switch (activation) {
      case kernels::Activation::kRelu:
        h.relu_();
        break;
      case kernels::Activation::kGeluTanh:
        h = at::gelu(h, "tanh");
        break;
      case kernels::Activation::kGeluErf:
        h = at::gelu(h, "none");
        break;
      case kernels::Activation::kNone:
        break;
    }
    return h.to(x.scalar_type()).contiguous();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat("KS layer on CPU: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("KS layer on CPU: ", e.what_without_backtrace()));
  }
}

}  // namespace

absl::StatusOr<torch::Tensor> KsFactorForward(const torch::Tensor& x, const torch::Tensor& w,
                                              const std::optional<torch::Tensor>& bias,
                                              kernels::Activation activation, kernels::BatchLayout layout) {
  return KsChainForward(x, {w}, bias, activation, layout);
}

absl::StatusOr<torch::Tensor> KsGroupWeights(const torch::Tensor& w) {
  if (!w.defined()) return absl::InvalidArgumentError("weights must be defined");
  absl::StatusOr<kernels::KsPattern> pattern = PatternOf(w);
  if (!pattern.ok()) return pattern.status();
  if (absl::Status s = ToDType(w.scalar_type()).status(); !s.ok()) return s;
  const auto [a, b, c, d] = *pattern;
  try {
    return w.permute({0, 3, 1, 2}).reshape({a * d, b, c}).contiguous();
  } catch (const c10::OutOfMemoryError& e) {
    return absl::ResourceExhaustedError(absl::StrCat("grouping KS weights: ", e.what_without_backtrace()));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("grouping KS weights: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<torch::Tensor> KsChainForward(const torch::Tensor& x,
                                             const std::vector<torch::Tensor>& weights,
                                             const std::optional<torch::Tensor>& bias,
                                             kernels::Activation activation, kernels::BatchLayout layout,
                                             const std::vector<torch::Tensor>& grouped_weights) {
  std::vector<const torch::Tensor*> others;
  kernels::KsChainParams params;
  for (const torch::Tensor& w : weights) {
    others.push_back(&w);
    absl::StatusOr<kernels::KsPattern> pattern = PatternOf(w);
    if (!pattern.ok()) return pattern.status();
    params.patterns.push_back(*pattern);
  }
  if (absl::Status s = kernels::ValidateChain(params.patterns); !s.ok()) return s;
  if (!grouped_weights.empty() && grouped_weights.size() != weights.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("%d grouped weight tensors for a chain of %d factors",
                                                      grouped_weights.size(), weights.size()));
  }
  for (size_t l = 0; l < grouped_weights.size(); ++l) {
    const auto [a, b, c, d] = params.patterns[l];
    const torch::Tensor& grouped = grouped_weights[l];
    others.push_back(&grouped);
    if (grouped.defined() &&
        (grouped.dim() != 3 || grouped.size(0) != a * d || grouped.size(1) != b || grouped.size(2) != c)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "grouped weights of factor %d must be [%d, %d, %d], got %s", l, a * d, b, c, Describe(grouped)));
    }
  }
  if (bias.has_value()) others.push_back(&*bias);
  if (absl::Status s = CheckAlike(x, others); !s.ok()) return s;
  const int64_t in = params.patterns.front().in_features(), out = params.patterns.back().out_features();
  const bool batch_last = layout == kernels::BatchLayout::kBatchLast;
  if (layout != kernels::BatchLayout::kBatchFirst && !batch_last)
    return absl::InvalidArgumentError("unknown batch layout");
  if (x.dim() != 2 || x.size(batch_last ? 0 : 1) != in) {
    return absl::InvalidArgumentError(
        absl::StrFormat("x must be %s for pattern %s, got %s",
                        batch_last ? absl::StrFormat("[%d, batch]", in) : absl::StrFormat("[batch, %d]", in),
                        kernels::PatternToString(params.patterns.front()), Describe(x)));
  }
  if (bias.has_value() && (bias->dim() != 1 || bias->size(0) != out)) {
    return absl::InvalidArgumentError(absl::StrFormat("bias must be [%d], got %s", out, Describe(*bias)));
  }

  if (x.is_cpu()) {
    if (!batch_last) return ChainForwardCpuBmm(x, weights, params.patterns, bias, activation);
    // Batch-last on the CPU: the same GEMMs on the transpose (LibTorch's BLAS gains nothing from it).
    absl::StatusOr<torch::Tensor> y =
        ChainForwardCpuBmm(x.t().contiguous(), weights, params.patterns, bias, activation);
    if (!y.ok()) return y.status();
    return y->t().contiguous();
  }

  params.dtype = *ToDType(x.scalar_type());
  params.batch = x.size(batch_last ? 1 : 0);
  params.activation = activation;
  params.layout = layout;
  absl::StatusOr<int64_t> workspace_bytes =
      kernels::ChainWorkspaceBytes(params.patterns, params.batch, params.dtype, params.layout);
  if (!workspace_bytes.ok()) return workspace_bytes.status();
  absl::StatusOr<torch::Tensor> y = Empty(
      batch_last ? at::IntArrayRef{out, params.batch} : at::IntArrayRef{params.batch, out}, x.options());
  absl::StatusOr<torch::Tensor> workspace = Empty({*workspace_bytes}, x.options().dtype(torch::kUInt8));
  if (!y.ok()) return y.status();
  if (!workspace.ok()) return workspace.status();

  params.x = x.const_data_ptr();
  params.y = y->mutable_data_ptr();
  params.bias = bias.has_value() ? bias->const_data_ptr() : nullptr;
  params.workspace = workspace->mutable_data_ptr();
  for (const torch::Tensor& w : weights) params.weights.push_back(w.const_data_ptr());
  for (const torch::Tensor& grouped : grouped_weights)
    params.grouped_weights.push_back(grouped.const_data_ptr());
#if KSSERVE_WITH_CUDA
  const c10::cuda::CUDAGuard guard(x.device());
  const kernels::CudaStream stream = c10::cuda::getCurrentCUDAStream().stream();
#else
  const kernels::CudaStream stream = nullptr;  // the kernels answer FAILED_PRECONDITION in this build
#endif
  if (absl::Status s = kernels::KsChainForwardCuda(params, stream); !s.ok()) return s;
  return *std::move(y);
}

}  // namespace ksserve::models

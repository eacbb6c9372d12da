#include "kernels/ks_autotune.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <memory>

#include <unistd.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

#if KSSERVE_WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ksserve::kernels {
namespace {

constexpr char kCacheHeader[] =
    "# ksserve KS autotune cache v2: device\tpattern\tbatch_class\tdtype\tlayout\tkernel";

std::string KeyText(const KsTuneKey& key) {
  return absl::StrFormat("%s\t%d,%d,%d,%d\t%d\t%s\t%s", key.device, key.pattern.a, key.pattern.b,
                         key.pattern.c, key.pattern.d, key.batch_class, DTypeName(key.dtype),
                         BatchLayoutName(key.layout));
}

#if KSSERVE_WITH_CUDA
absl::Status Check(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s: %s", what, cudaGetErrorString(err)));
}

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DeviceBuffer = std::unique_ptr<void, CudaFree>;

absl::StatusOr<DeviceBuffer> Allocate(int64_t bytes) {
  if (bytes == 0) return DeviceBuffer();
  void* p = nullptr;
  if (cudaError_t err = cudaMalloc(&p, static_cast<size_t>(bytes)); err != cudaSuccess) {
    cudaGetLastError();
    return absl::ResourceExhaustedError(absl::StrFormat("cudaMalloc(%d): %s", bytes, cudaGetErrorString(err)));
  }
  return DeviceBuffer(p);
}

struct EventDeleter {
  void operator()(cudaEvent_t e) const { cudaEventDestroy(e); }
};
using Event = std::unique_ptr<CUevent_st, EventDeleter>;

absl::StatusOr<double> TimeOne(const KsFactorParams& params, const KsKernelChoice& choice,
                               const KsTuneOptions& options, void* l2_flush, CudaStream stream) {
  absl::StatusOr<int64_t> packed_bytes =
      options.packed_weights ? PackedWeightBytes(choice, params.pattern, params.dtype) : int64_t{0};
  if (!packed_bytes.ok()) return packed_bytes.status();
  absl::StatusOr<int64_t> workspace_bytes = FactorWorkspaceBytes(choice.algorithm, params);
  if (!workspace_bytes.ok()) return workspace_bytes.status();
  absl::StatusOr<DeviceBuffer> packed = Allocate(*packed_bytes);
  if (!packed.ok()) return packed.status();
  absl::StatusOr<DeviceBuffer> workspace = Allocate(*workspace_bytes);
  if (!workspace.ok()) return workspace.status();
  if (options.packed_weights) {
    if (absl::Status s =
            PackWeightsCuda(choice, params.pattern, params.dtype, params.w, packed->get(), stream);
        !s.ok()) {
      return s;
    }
  }
  cudaEvent_t raw_start = nullptr, raw_stop = nullptr;
  if (absl::Status s = Check(cudaEventCreate(&raw_start), "cudaEventCreate"); !s.ok()) return s;
  Event start(raw_start);
  if (absl::Status s = Check(cudaEventCreate(&raw_stop), "cudaEventCreate"); !s.ok()) return s;
  Event stop(raw_stop);
  for (int i = 0; i < options.warmup; ++i) {
    if (absl::Status s = KsFactorForwardCuda(params, choice, packed->get(), workspace->get(), stream); !s.ok()) {
      return s;
    }
  }
  std::vector<double> times;
  for (int i = 0; i < options.repetitions; ++i) {
    if (l2_flush != nullptr) {
      const int value = i & 1 ? 0x5a : 0xa5;
      if (absl::Status s = Check(cudaMemsetAsync(l2_flush, value, static_cast<size_t>(options.l2_flush_bytes), stream),
                                 "L2 flush");
          !s.ok()) {
        return s;
      }
    }
    if (absl::Status s = Check(cudaEventRecord(start.get(), stream), "cudaEventRecord"); !s.ok()) return s;
    if (absl::Status s = KsFactorForwardCuda(params, choice, packed->get(), workspace->get(), stream); !s.ok()) {
      return s;
    }
    if (absl::Status s = Check(cudaEventRecord(stop.get(), stream), "cudaEventRecord"); !s.ok()) return s;
    if (absl::Status s = Check(cudaEventSynchronize(stop.get()), "kernel run"); !s.ok()) return s;
    float ms = 0;
    if (absl::Status s = Check(cudaEventElapsedTime(&ms, start.get(), stop.get()), "cudaEventElapsedTime"); !s.ok()) {
      return s;
    }
    times.push_back(ms);
  }
  std::nth_element(times.begin(), times.begin() + times.size() / 2, times.end());
  return times[times.size() / 2];
}
#endif

}  // namespace

int BatchClass(int64_t batch) {
  constexpr int64_t kUpper[] = {1, 8, 64, 512, 4096, 32768};
  int batch_class = 0;
  while (batch_class < 6 && batch > kUpper[batch_class]) ++batch_class;
  return batch_class;
}

std::vector<KsKernelChoice> KernelCandidates(const KsPattern& pattern, DType dtype,
                                             const KsTuneOptions& options, BatchLayout layout) {
  std::vector<KsKernelChoice> candidates;
  for (FusedTile tile : kAllFusedTiles) {
    if (layout != BatchLayout::kBatchFirst) break;  // the fused tiles read batch-first x
    if (FusedTileUsesTensorCores(tile) && dtype == DType::kFloat32) continue;
    // Elsewhere the pipelined FP32 tiles run as their register-staged twin: a repeat.
    if (FusedTileIsPipelinedFp32(tile) && (dtype != DType::kFloat32 || pattern.d % 4 != 0)) continue;
    // The pair of r tiles needs two of them (b wider than 256 / d) and d = 2, 4 or 8.
    if (tile == FusedTile::kWgTmaPairX &&
        ((pattern.d != 2 && pattern.d != 4 && pattern.d != 8) || pattern.b * pattern.d <= 256)) {
      continue;
    }
    // A j group wider than d leaves lanes idle; such tiles never win and cost tuning time. The
    // rule's tile is always tried.
    if (FusedTileJ(tile) <= std::max<int64_t>(pattern.d, 1) || tile == DefaultFusedTile(pattern, 1, dtype) ||
        tile == DefaultFusedTile(pattern, int64_t{1} << 20, dtype)) {
      candidates.push_back({.algorithm = KsAlgorithm::kFused, .tile = tile});
    }
  }
  candidates.push_back({.algorithm = KsAlgorithm::kBmm});
  absl::StatusOr<int64_t> dense_bytes = PackedWeightBytes({.algorithm = KsAlgorithm::kDense}, pattern, dtype);
  if (dense_bytes.ok() && *dense_bytes <= options.max_dense_weight_bytes) {
    candidates.push_back({.algorithm = KsAlgorithm::kDense});
  }
  return candidates;
}

absl::StatusOr<std::vector<KsCandidateTime>> TimeKernelCandidates(const KsFactorParams& params,
                                                                  absl::Span<const KsKernelChoice> candidates,
                                                                  const KsTuneOptions& options, CudaStream stream) {
  if (absl::Status s = ValidateFactorParams(params); !s.ok()) return s;
  if (options.repetitions < 1 || options.warmup < 0 || options.l2_flush_bytes < 0) {
    return absl::InvalidArgumentError("autotune needs at least one repetition");
  }
  if (candidates.empty()) return absl::InvalidArgumentError("no candidates to time");
#if KSSERVE_WITH_CUDA
  absl::StatusOr<DeviceBuffer> l2_flush = Allocate(options.l2_flush_bytes);
  if (!l2_flush.ok()) return l2_flush.status();
  std::vector<KsCandidateTime> times;
  std::vector<std::string> failures;
  for (const KsKernelChoice& choice : candidates) {
    absl::StatusOr<double> ms = TimeOne(params, choice, options, l2_flush->get(), stream);
    if (ms.ok()) {
      times.push_back({.choice = choice, .median_ms = *ms});
    } else {
      failures.push_back(absl::StrFormat("%s: %s", KernelChoiceName(choice), ms.status().message()));
      // A launch error is sticky only for faults; clear what can be cleared and go on.
      cudaGetLastError();
    }
  }
  if (times.empty()) {
    return absl::InternalError(absl::StrCat("no KS kernel candidate ran: ", absl::StrJoin(failures, "; ")));
  }
  std::stable_sort(times.begin(), times.end(),
                   [](const KsCandidateTime& x, const KsCandidateTime& y) { return x.median_ms < y.median_ms; });
  return times;
#else
  (void)stream;
  return absl::FailedPreconditionError("ksserve was built without CUDA (preset 'cpu')");
#endif
}

absl::StatusOr<KsAutotuneCache> KsAutotuneCache::Load(const std::string& path) {
  KsAutotuneCache cache;
  std::ifstream file(path);
  if (!file) {
    if (errno == ENOENT) return cache;
    return absl::FailedPreconditionError(absl::StrFormat("cannot read %s: %s", path, std::strerror(errno)));
  }
  std::string line;
  int line_number = 0;
  while (std::getline(file, line)) {
    ++line_number;
    if (!line.empty() && line.back() == '\r') line.pop_back();  // written on another OS
    if (line_number == 1 && line != kCacheHeader) {
      // Another format (or not a cache): refuse it rather than guess; tuning again rewrites it.
      return absl::FailedPreconditionError(absl::StrFormat(
          "%s is not a ksserve KS autotune cache of this version (first line must be \"%s\"); remove it to "
          "tune again",
          path, absl::CEscape(kCacheHeader)));
    }
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string> fields = absl::StrSplit(line, '\t');
    const auto error = [&](absl::string_view why) {
      return absl::InvalidArgumentError(absl::StrFormat("%s:%d: %s", path, line_number, why));
    };
    if (fields.size() != 6) return error("expected 6 tab-separated fields");
    KsTuneKey key;
    key.device = fields[0];
    const std::vector<std::string> sizes = absl::StrSplit(fields[1], ',');
    if (sizes.size() != 4 || !absl::SimpleAtoi(sizes[0], &key.pattern.a) || !absl::SimpleAtoi(sizes[1], &key.pattern.b) ||
        !absl::SimpleAtoi(sizes[2], &key.pattern.c) || !absl::SimpleAtoi(sizes[3], &key.pattern.d) ||
        !ValidatePattern(key.pattern).ok()) {
      return error("bad pattern");
    }
    if (!absl::SimpleAtoi(fields[2], &key.batch_class) || key.batch_class < 0 || key.batch_class > 6) {
      return error("bad batch class");
    }
    bool dtype_found = false;
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      if (fields[3] == DTypeName(dtype)) {
        key.dtype = dtype;
        dtype_found = true;
      }
    }
    if (!dtype_found) return error("bad dtype");
    if (fields[4] != BatchLayoutName(BatchLayout::kBatchFirst) &&
        fields[4] != BatchLayoutName(BatchLayout::kBatchLast)) {
      return error("bad layout");
    }
    key.layout = fields[4] == BatchLayoutName(BatchLayout::kBatchLast) ? BatchLayout::kBatchLast
                                                                       : BatchLayout::kBatchFirst;
    absl::StatusOr<KsKernelChoice> choice = ParseKernelChoice(fields[5]);
    if (!choice.ok()) return error(choice.status().message());
    if (!KernelTakesLayout(*choice, key.layout)) {
      return error(absl::StrFormat("%s does not take %s x", fields[5], fields[4]));
    }
    cache.Insert(key, *choice);
  }
  return cache;
}

absl::Status KsAutotuneCache::Save(const std::string& path) const {
  // Written beside the target under a name of this process and renamed, so a reader never sees
  // half a file and two writers never mix their lines.
  const std::string temporary = absl::StrFormat("%s.%d.tmp", path, static_cast<int>(getpid()));
  {
    std::ofstream file(temporary, std::ios::trunc);
    file << kCacheHeader << "\n";
    for (const auto& [key, choice] : entries_) file << key << "\t" << KernelChoiceName(choice) << "\n";
    file.close();
    if (!file) {
      std::remove(temporary.c_str());
      return absl::FailedPreconditionError(absl::StrFormat("cannot write %s", temporary));
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    return absl::FailedPreconditionError(absl::StrFormat("cannot rename %s: %s", temporary, std::strerror(errno)));
  }
  return absl::OkStatus();
}

std::optional<KsKernelChoice> KsAutotuneCache::Find(const KsTuneKey& key) const {
  auto it = entries_.find(KeyText(key));
  if (it == entries_.end()) return std::nullopt;
  return it->second;
}

void KsAutotuneCache::Insert(const KsTuneKey& key, const KsKernelChoice& choice) { entries_[KeyText(key)] = choice; }

}  // namespace ksserve::kernels

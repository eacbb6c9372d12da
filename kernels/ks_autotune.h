// The dispatcher's one-time autotune: every candidate kernel for a (device, pattern, batch class,
// dtype, batch layout) is timed once and the fastest is remembered, in memory and in a cache file, so later
// calls and later processes go straight to it. Candidates always include cuBLAS dense and bmm,
// so a tuned choice is never slower than the best of them beyond timing noise.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/ks_matmul.h"

namespace ksserve::kernels {

// Batch sizes tuned together: 1, 2–8, 9–64, 65–512, 513–4096, 4097–32768, larger.
int BatchClass(int64_t batch);

struct KsTuneKey {
  std::string device;  // e.g. "NVIDIA H100 80GB HBM3"
  KsPattern pattern;
  int batch_class = 0;
  DType dtype = DType::kFloat32;
  BatchLayout layout = BatchLayout::kBatchFirst;
};

// How long one candidate took, from a tuning run.
struct KsCandidateTime {
  KsKernelChoice choice;
  double median_ms = 0;
};

struct KsTuneOptions {
  int warmup = 2;
  int repetitions = 7;
  // Dense candidates whose densified weights would exceed this are not tried: they cannot win,
  // since they move a·d times the fused kernel's weight bytes.
  int64_t max_dense_weight_bytes = int64_t{2} << 30;
  // Overwrite this many bytes of scratch memory before each timed run, so inputs that fit in L2
  // are not timed from the cache (a server's layers evict each other between calls).
  int64_t l2_flush_bytes = int64_t{128} << 20;
  // Each candidate reads its weights packed as it prefers (PackWeightsCuda, as a layer holds them
  // after load); false: the interchange weights, as KsFactorForwardCuda(params, stream) runs it (the
  // tiles that read packed weights then run their variant for interchange weights; dense, and bmm
  // with d > 1, cannot run and are left out).
  bool packed_weights = true;
};

// The candidates tried for a factor: every fused tile (batch-first only), bmm, and dense within
// the size limit.
std::vector<KsKernelChoice> KernelCandidates(const KsPattern& pattern, DType dtype,
                                             const KsTuneOptions& options,
                                             BatchLayout layout = BatchLayout::kBatchFirst);

// Times each candidate on the current device for params (params.y is overwritten; the other
// buffers are only read) and returns the times, fastest first. Temporary packed weights and
// workspaces are allocated and freed here. A candidate that fails to run is left out; an error
// only if none runs.
absl::StatusOr<std::vector<KsCandidateTime>> TimeKernelCandidates(const KsFactorParams& params,
                                                                  absl::Span<const KsKernelChoice> candidates,
                                                                  const KsTuneOptions& options, CudaStream stream);

class KsAutotuneCache {
 public:
  // Reads a file written by Save; a missing file is an empty cache.
  static absl::StatusOr<KsAutotuneCache> Load(const std::string& path);
  absl::Status Save(const std::string& path) const;

  std::optional<KsKernelChoice> Find(const KsTuneKey& key) const;
  void Insert(const KsTuneKey& key, const KsKernelChoice& choice);
  size_t size() const { return entries_.size(); }

 private:
  std::map<std::string, KsKernelChoice> entries_;  // by KeyText
};

}  // namespace ksserve::kernels

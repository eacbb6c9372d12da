// The fused two-factor chain (KsFusedPairForwardCuda) against two factor calls, each with its
// autotuned pick, on the model layers' factor pairs.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/ks_autotune.h"

namespace ksserve::bench {

struct PairBenchOptions {
  std::vector<int64_t> batches;
  std::vector<kernels::DType> dtypes;  // float32 is skipped: the fused pair runs on tensor cores
  std::string csv_path;
  kernels::KsTuneOptions tune;
  std::vector<std::string> names;  // of the pairs to run ("vit-up", ...); empty: all
  std::string tiles_csv_path;      // every block shape's median time per case; empty: not written
};

// Writes one CSV row per (pair, batch, dtype) and prints a table; returns how many cases failed
// their correctness check.
int RunPairBench(const Ceilings& ceilings, const PairBenchOptions& options, cudaStream_t stream);

}  // namespace ksserve::bench

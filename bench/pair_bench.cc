#include "bench/pair_bench.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>

#include "absl/algorithm/container.h"
#include "absl/strings/str_format.h"
#include "bench/fill.h"
#include "kernels/ks_matmul.h"
#include "tests/testing/ks_reference.h"

namespace ksserve::bench {
namespace {

using kernels::Activation;
using kernels::DType;
using kernels::KsKernelChoice;
using kernels::KsPattern;

struct NamedPair {
  const char* name;
  KsPattern first, second;  // first = rightmost, applied first
  Activation activation;
};

// The paper's ViT-S/16 layers and GPT-2 small's (MLP up with its GELU).
constexpr NamedPair kPairs[] = {
    {"vit-attn", {2, 48, 192, 1}, {1, 192, 48, 2}, Activation::kNone},
    {"vit-up", {6, 64, 64, 1}, {1, 768, 192, 2}, Activation::kGeluTanh},
    {"vit-down", {6, 64, 256, 1}, {1, 128, 128, 3}, Activation::kNone},
    {"gpt2-attn", {4, 192, 192, 1}, {1, 192, 192, 4}, Activation::kNone},
    {"gpt2-up", {4, 192, 192, 1}, {1, 768, 192, 4}, Activation::kGeluTanh},
    {"gpt2-down", {4, 192, 768, 1}, {1, 192, 192, 4}, Activation::kNone},
};

// One factor call with an explicit choice and the buffers it needs.
struct FactorCall {
  kernels::KsFactorParams params;
  KsKernelChoice choice;
  DeviceBuffer packed, workspace;

  bool Prepare(cudaStream_t stream) {
    const int64_t packed_bytes = *kernels::PackedWeightBytes(choice, params.pattern, params.dtype);
    const int64_t workspace_bytes = *kernels::FactorWorkspaceBytes(choice.algorithm, params);
    packed = TryAllocate(packed_bytes);
    workspace = TryAllocate(workspace_bytes);
    return packed && workspace &&
           kernels::PackWeightsCuda(choice, params.pattern, params.dtype, params.w, packed.get(), stream)
               .ok();
  }
  void Run(cudaStream_t stream) const {
    const absl::Status s = kernels::KsFactorForwardCuda(params, choice, packed.get(), workspace.get(), stream);
    if (!s.ok()) Die(absl::StrFormat("%s: %s", kernels::KernelChoiceName(choice), s.message()));
  }
};

std::vector<double> CopyRows(const void* device, absl::Span<const int64_t> rows, int64_t features, DType dtype) {
  const int64_t size = kernels::DTypeSize(dtype);
  std::vector<uint8_t> bits(static_cast<size_t>(features * size));
  std::vector<double> values;
  for (int64_t row : rows) {
    CheckCuda(cudaMemcpy(bits.data(), static_cast<const char*>(device) + row * features * size, bits.size(),
                         cudaMemcpyDeviceToHost),
              "copy row");
    const std::vector<double> v = testing::TypedToDouble(dtype, bits.data(), features);
    values.insert(values.end(), v.begin(), v.end());
  }
  return values;
}

// "2x48x192x1": a pattern in one CSV field.
std::string PatternField(const KsPattern& p) { return absl::StrFormat("%dx%dx%dx%d", p.a, p.b, p.c, p.d); }

std::vector<double> CopyAll(const void* device, int64_t count, DType dtype) {
  const int64_t rows[] = {0};
  return CopyRows(device, rows, count, dtype);
}

}  // namespace

int RunPairBench(const Ceilings& ceilings, const PairBenchOptions& options, cudaStream_t stream) {
  std::ofstream csv(options.csv_path, std::ios::trunc);
  if (!csv) Die("cannot write " + options.csv_path);
  csv << "pair,first,second,batch,dtype,floor_ms,two_calls_floor_ms,first_pick,second_pick,two_calls_ms,rule_ms,"
         "speedup,pct_floor,best_tile,best_tile_ms,correct,max_error\n";
  std::ofstream tiles_csv;
  if (!options.tiles_csv_path.empty()) {
    tiles_csv.open(options.tiles_csv_path, std::ios::trunc);
    if (!tiles_csv) Die("cannot write " + options.tiles_csv_path);
    tiles_csv << "pair,batch,dtype,tile,ms\n";
  }
  DeviceBuffer flush = TryAllocate(options.tune.l2_flush_bytes);
  if (!flush) Die("cannot allocate the L2 flush buffer");
  int failures = 0;
  uint64_t seed = 777;
  std::printf("\nfused pair (rule tile) vs two factor calls (each factor autotuned)\n%-10s %-9s %7s %12s %10s %8s %8s "
              "%9s %8s\n",
              "pair", "dtype", "batch", "two calls ms", "fused ms", "speedup", "%floor", "best tile", "its ms");
  for (DType dtype : options.dtypes) {
    if (dtype == DType::kFloat32) continue;
    for (const NamedPair& pair : kPairs) {
      if (!options.names.empty() && absl::c_find(options.names, pair.name) == options.names.end()) continue;
      const KsPattern p1 = pair.first, p2 = pair.second;
      const std::vector<KsPattern> chain = {p1, p2};
      for (int64_t batch : options.batches) {
        const int64_t size = kernels::DTypeSize(dtype);
        const int64_t in = p1.in_features(), mid_features = p1.out_features(), out = p2.out_features();
        DeviceBuffer x = TryAllocate(batch * in * size), w1 = TryAllocate(p1.nonzeros() * size),
                     w2 = TryAllocate(p2.nonzeros() * size), bias = TryAllocate(out * size),
                     mid = TryAllocate(batch * mid_features * size), y_fused = TryAllocate(batch * out * size),
                     y_calls = TryAllocate(batch * out * size),
                     packed = TryAllocate(*kernels::FusedPairPackedBytes(chain, dtype));
        if (!x || !w1 || !w2 || !bias || !mid || !y_fused || !y_calls || !packed) Die("pair buffers do not fit");
        CheckCuda(FillRandom(x.get(), batch * in, dtype, seed++, true, 1.0f, stream), "fill x");
        CheckCuda(FillRandom(w1.get(), p1.nonzeros(), dtype, seed++, false, 1.0f / std::sqrt(double(p1.c)), stream),
                  "fill w1");
        CheckCuda(FillRandom(w2.get(), p2.nonzeros(), dtype, seed++, false, 1.0f / std::sqrt(double(p2.c)), stream),
                  "fill w2");
        CheckCuda(FillRandom(bias.get(), out, dtype, seed++, true, 0.1f, stream), "fill bias");

        // Two factor calls, each with the fastest of its autotune candidates.
        FactorCall calls[2];
        calls[0].params = {.x = x.get(), .w = w1.get(), .y = mid.get(), .batch = batch, .pattern = p1, .dtype = dtype};
        calls[1].params = {.x = mid.get(), .w = w2.get(), .bias = bias.get(), .y = y_calls.get(), .batch = batch,
                           .pattern = p2, .dtype = dtype, .activation = pair.activation};
        for (FactorCall& call : calls) {
          const std::vector<KsKernelChoice> candidates =
              kernels::KernelCandidates(call.params.pattern, dtype, options.tune);
          absl::StatusOr<std::vector<kernels::KsCandidateTime>> times =
              kernels::TimeKernelCandidates(call.params, candidates, options.tune, stream);
          if (!times.ok()) Die(std::string(times.status().message()));
          call.choice = times->front().choice;
          if (!call.Prepare(stream)) Die("cannot prepare " + kernels::KernelChoiceName(call.choice));
        }
        const auto run_calls = [&] {
          calls[0].Run(stream);
          calls[1].Run(stream);
        };

        const absl::Status packed_ok =
            kernels::PackFusedPairWeightsCuda(chain, dtype, w2.get(), packed.get(), stream);
        if (!packed_ok.ok()) Die(std::string(packed_ok.message()));
        kernels::KsChainParams fused{.x = x.get(),
                                     .y = y_fused.get(),
                                     .bias = bias.get(),
                                     .patterns = chain,
                                     .weights = {w1.get(), w2.get()},
                                     .batch = batch,
                                     .dtype = dtype,
                                     .activation = pair.activation};
        const auto run_fused = [&](kernels::PairTile tile) {
          const absl::Status s = kernels::KsFusedPairForwardCuda(fused, packed.get(), stream, tile);
          if (!s.ok()) Die(absl::StrFormat("fused pair %s: %s", kernels::PairTileName(tile), s.message()));
        };
        const int repetitions = options.tune.repetitions;
        // Every block shape once (to see where the rule stands), then the rule's and both calls again,
        // side by side.
        kernels::PairTile best_tile = kernels::PairTile::kRule;
        double best_tile_ms = INFINITY;
        for (kernels::PairTile tile : kernels::kAllPairTiles) {
          if (kernels::KsFusedPairForwardCuda(fused, packed.get(), stream, tile).ok()) {
            const double ms = MedianMs(repetitions, stream, [&] { run_fused(tile); }, flush.get(),
                                       options.tune.l2_flush_bytes);
            if (ms < best_tile_ms) best_tile_ms = ms, best_tile = tile;
            if (tiles_csv.is_open()) {
              tiles_csv << absl::StrFormat("%s,%d,%s,%s,%.5f\n", pair.name, batch, kernels::DTypeName(dtype),
                                           kernels::PairTileName(tile), ms);
            }
          }
        }
        const double two_calls_ms =
            MedianMs(2 * repetitions + 1, stream, run_calls, flush.get(), options.tune.l2_flush_bytes);
        const double fused_ms = MedianMs(2 * repetitions + 1, stream, [&] { run_fused(kernels::PairTile::kRule); },
                                         flush.get(), options.tune.l2_flush_bytes);

        // Both outputs, poisoned first, against the FP64 chain on sampled rows.
        CheckCuda(cudaMemsetAsync(y_fused.get(), 0xff, batch * out * size, stream), "poison");
        CheckCuda(cudaMemsetAsync(y_calls.get(), 0xff, batch * out * size, stream), "poison");
        run_fused(kernels::PairTile::kRule);
        run_calls();
        CheckCuda(cudaStreamSynchronize(stream), "check run");
        std::mt19937 rng(static_cast<uint32_t>(seed));
        const std::vector<int64_t> rows = testing::SampleRows(batch, 4, rng);
        const std::vector<double> bias_values = CopyAll(bias.get(), out, dtype);
        const std::vector<double> reference = testing::KsChainReference(
            CopyRows(x.get(), rows, in, dtype), static_cast<int64_t>(rows.size()), chain,
            {CopyAll(w1.get(), p1.nonzeros(), dtype), CopyAll(w2.get(), p2.nonzeros(), dtype)}, &bias_values,
            pair.activation);
        const double fused_error = testing::RelativeError(CopyRows(y_fused.get(), rows, out, dtype), reference);
        const double calls_error = testing::RelativeError(CopyRows(y_calls.get(), rows, out, dtype), reference);
        const double max_error =
            std::isnan(fused_error) || std::isnan(calls_error) ? INFINITY : std::max(fused_error, calls_error);
        const bool correct = max_error <= 1e-2;
        if (!correct) {
          ++failures;
          std::fprintf(stderr, "  WRONG: %s batch %lld %s: fused %g, two calls %g\n", pair.name,
                       static_cast<long long>(batch), kernels::DTypeName(dtype).c_str(), fused_error, calls_error);
        }

        const double weights = double(p1.nonzeros() + p2.nonzeros()) + out;
        const double flops = 2.0 * batch * double(p1.nonzeros() + p2.nonzeros());
        const double floor_ms = ceilings.FloorMs((double(batch) * (in + out) + weights) * size, flops, dtype);
        const double calls_floor_ms =
            ceilings.FloorMs((double(batch) * (in + 2 * mid_features + out) + weights) * size, flops, dtype);
        csv << absl::StrFormat("%s,%s,%s,%d,%s,%.5f,%.5f,%s,%s,%.5f,%.5f,%.3f,%.1f,%s,%.5f,%s,%.3g\n", pair.name,
                               PatternField(p1), PatternField(p2), batch, kernels::DTypeName(dtype), floor_ms,
                               calls_floor_ms, kernels::KernelChoiceName(calls[0].choice),
                               kernels::KernelChoiceName(calls[1].choice), two_calls_ms, fused_ms,
                               two_calls_ms / fused_ms, 100.0 * floor_ms / fused_ms,
                               kernels::PairTileName(best_tile), best_tile_ms, correct ? "yes" : "NO", max_error);
        csv.flush();
        std::printf("%-10s %-9s %7lld %12.4f %10.4f %7.2fx %7.1f%% %9s %8.4f\n", pair.name,
                    kernels::DTypeName(dtype).c_str(), static_cast<long long>(batch), two_calls_ms, fused_ms,
                    two_calls_ms / fused_ms, 100.0 * floor_ms / fused_ms, kernels::PairTileName(best_tile).c_str(),
                    best_tile_ms);
      }
    }
  }
  return failures;
}

}  // namespace ksserve::bench

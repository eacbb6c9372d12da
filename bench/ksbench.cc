// ksbench: every KS algorithm over patterns × batch sizes × dtypes, in one process, against the
// ceilings measured in the same run (a large device-to-device copy; a large cuBLAS GEMM per
// dtype). Every candidate's output is checked against the FP64 reference on sampled rows; a
// failed check is flagged in the CSV and fails the run. Progress and ETA go to stderr.
//
//   ksbench --csv=bench/results/h100-ksbench.csv
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/fill.h"
#include "bench/pair_bench.h"
#include "kernels/device.h"
#include "kernels/ks_autotune.h"
#include "kernels/ks_matmul.h"
#include "tests/testing/ks_reference.h"

ABSL_FLAG(std::string, csv, "ksbench.csv", "where to write the results");
ABSL_FLAG(std::string, patterns_file, KSSERVE_PAPER_PATTERNS, "the paper's 648 patterns");
ABSL_FLAG(int, paper_sample, 64, "how many of the paper's patterns to run, evenly spaced in file order");
ABSL_FLAG(bool, model_patterns, true, "also run the ViT-S/16 and GPT-2 layer factors");
ABSL_FLAG(std::string, batches, "1,196,1568,25088", "comma-separated batch sizes");
ABSL_FLAG(std::string, dtypes, "float32,bfloat16", "comma-separated: float32, bfloat16, float16");
ABSL_FLAG(int, repetitions, 7, "timed runs per candidate (median reported)");
ABSL_FLAG(double, max_dense_weight_gib, 2.0, "largest densified weight matrix tried");
ABSL_FLAG(std::string, candidates_csv, "",
          "where to write every candidate's time, one row each (default: the --csv path with -candidates)");
ABSL_FLAG(bool, batch_last, false,
          "also time the batch-last algorithms (bmm, dense) on x and y as [features][batch], against the "
          "batch-first pick");
ABSL_FLAG(bool, pairs, true, "also time the fused two-factor chain against two factor calls (16-bit dtypes)");
ABSL_FLAG(std::vector<std::string>, pair_names, {}, "pairs to time (vit-attn, vit-up, ...); empty: all");
ABSL_FLAG(std::string, pairs_csv, "", "where to write the pair results (default: the --csv path with -pairs)");
ABSL_FLAG(std::string, pair_tiles_csv, "",
          "where to write every pair block shape's time (default: the pairs CSV path with -tiles)");

namespace ksserve::bench {
namespace {

using kernels::BatchLayout;
using kernels::DType;
using kernels::KsAlgorithm;
using kernels::KsKernelChoice;
using kernels::KsPattern;

struct NamedPattern {
  std::string source;  // "paper" or the layer it comes from
  KsPattern pattern;
};

std::vector<NamedPattern> SweepPatterns() {
  std::vector<NamedPattern> patterns;
  if (absl::GetFlag(FLAGS_model_patterns)) {
    // ViT-S/16 (the paper's) and GPT-2 small layers, each factor on its own.
    const std::vector<std::pair<std::string, KsPattern>> model = {
        {"vit-attn-0", {2, 48, 192, 1}},  {"vit-attn-1", {1, 192, 48, 2}},  {"vit-up-0", {6, 64, 64, 1}},
        {"vit-up-1", {1, 768, 192, 2}},   {"vit-down-0", {6, 64, 256, 1}},  {"vit-down-1", {1, 128, 128, 3}},
        {"gpt2-attn-0", {4, 192, 192, 1}}, {"gpt2-attn-1", {1, 192, 192, 4}}, {"gpt2-up-1", {1, 768, 192, 4}},
        {"gpt2-down-0", {4, 192, 768, 1}}};
    for (const auto& [name, pattern] : model) patterns.push_back({name, pattern});
  }
  const std::vector<KsPattern> paper = testing::LoadPaperPatterns(absl::GetFlag(FLAGS_patterns_file));
  if (paper.empty()) Die("no patterns in " + absl::GetFlag(FLAGS_patterns_file));
  const int sample = std::min<int>(absl::GetFlag(FLAGS_paper_sample), static_cast<int>(paper.size()));
  for (int k = 0; k < sample; ++k) patterns.push_back({"paper", paper[k * paper.size() / sample]});
  return patterns;
}

struct Measured {
  KsKernelChoice choice;
  double ms = NAN;
  double error = NAN;  // relative Frobenius error on the sampled rows
  bool correct = false;
};

class Case {
 public:
  Case(const KsPattern& pattern, int64_t batch, DType dtype, cudaStream_t stream)
      : pattern_(pattern), batch_(batch), dtype_(dtype), stream_(stream) {}

  // False when the buffers do not fit on the device.
  bool Prepare(uint64_t seed) {
    const int64_t size = kernels::DTypeSize(dtype_);
    x_ = TryAllocate(batch_ * pattern_.in_features() * size);
    w_ = TryAllocate(pattern_.nonzeros() * size);
    y_ = TryAllocate(batch_ * pattern_.out_features() * size);
    if (!x_ || !w_ || !y_) return false;
    CheckCuda(FillRandom(x_.get(), batch_ * pattern_.in_features(), dtype_, seed, true, 1.0f, stream_), "fill x");
    CheckCuda(FillRandom(w_.get(), pattern_.nonzeros(), dtype_, seed + 1, false, 1.0f / pattern_.c, stream_),
              "fill w");
    // The copies below run on the legacy stream, which does not wait for a non-blocking one.
    CheckCuda(cudaStreamSynchronize(stream_), "fill");
    // The references: sampled batch entries of x (read batch-first, and batch-last where asked) and
    // all of w, exactly as stored, in FP64.
    std::mt19937 rng(static_cast<uint32_t>(seed));
    rows_ = testing::SampleRows(batch_, 4, rng);
    std::vector<uint8_t> bits(static_cast<size_t>(pattern_.nonzeros() * size));
    CheckCuda(cudaMemcpy(bits.data(), w_.get(), bits.size(), cudaMemcpyDeviceToHost), "copy w");
    const std::vector<double> w = testing::TypedToDouble(dtype_, bits.data(), pattern_.nonzeros());
    reference_ = Reference(ReadSampled(x_.get(), pattern_.in_features(), BatchLayout::kBatchFirst), w);
    if (absl::GetFlag(FLAGS_batch_last)) {
      reference_last_ = Reference(ReadSampled(x_.get(), pattern_.in_features(), BatchLayout::kBatchLast), w);
    }
    return true;
  }

  // x and y as [batch][features], or as [features][batch] for `layout` batch-last.
  kernels::KsFactorParams Params(BatchLayout layout = BatchLayout::kBatchFirst) const {
    return {.x = x_.get(),
            .w = w_.get(),
            .y = y_.get(),
            .batch = batch_,
            .pattern = pattern_,
            .dtype = dtype_,
            .layout = layout};
  }

  // Median milliseconds of `choice` alone (no check).
  absl::StatusOr<double> Time(const KsKernelChoice& choice, const kernels::KsTuneOptions& options,
                              BatchLayout layout = BatchLayout::kBatchFirst) {
    absl::StatusOr<std::vector<kernels::KsCandidateTime>> times =
        kernels::TimeKernelCandidates(Params(layout), {choice}, options, stream_);
    if (!times.ok()) return times.status();
    return times->front().median_ms;
  }

  // Times `choice` and checks one fresh run of it on a poisoned output.
  std::optional<Measured> Measure(const KsKernelChoice& choice, const kernels::KsTuneOptions& options,
                                  BatchLayout layout = BatchLayout::kBatchFirst) {
    const absl::StatusOr<double> ms = Time(choice, options, layout);
    if (!ms.ok()) {
      std::fprintf(stderr, "\n  %s skipped: %s\n", kernels::KernelChoiceName(choice).c_str(),
                   std::string(ms.status().message()).c_str());
      return std::nullopt;
    }
    Measured measured{.choice = choice, .ms = *ms};
    measured.error = Check(choice, layout, options.packed_weights);
    measured.correct = measured.error <= (dtype_ == DType::kFloat32 ? 1e-5 : 1e-2);
    return measured;
  }

 private:
  // The sampled batch entries of a device matrix of `features`, in FP64: one run of `features`
  // values per entry.
  std::vector<double> ReadSampled(const void* data, int64_t features, BatchLayout layout) {
    const int64_t size = kernels::DTypeSize(dtype_);
    std::vector<uint8_t> bits(static_cast<size_t>(features * size));
    std::vector<double> values;
    for (int64_t n : rows_) {
      const char* from = static_cast<const char*>(data);
      if (layout == BatchLayout::kBatchLast) {  // column n: one value every batch entries
        CheckCuda(cudaMemcpy2DAsync(bits.data(), size, from + n * size, batch_ * size, size, features,
                                    cudaMemcpyDeviceToHost, stream_),
                  "copy a column");
      } else {
        CheckCuda(cudaMemcpyAsync(bits.data(), from + n * features * size, bits.size(),
                                  cudaMemcpyDeviceToHost, stream_),
                  "copy a row");
      }
      CheckCuda(cudaStreamSynchronize(stream_), "copy");
      const std::vector<double> entry = testing::TypedToDouble(dtype_, bits.data(), features);
      values.insert(values.end(), entry.begin(), entry.end());
    }
    return values;
  }

  // The FP64 outputs of the sampled entries; one thread per entry (the largest patterns have
  // ~10^8 nonzeros).
  std::vector<double> Reference(const std::vector<double>& x_entries, const std::vector<double>& w) const {
    std::vector<double> reference(rows_.size() * static_cast<size_t>(pattern_.out_features()), 0.0);
    std::vector<std::thread> threads;
    for (size_t k = 0; k < rows_.size(); ++k) {
      threads.emplace_back([&, k] {
        const int64_t local[] = {static_cast<int64_t>(k)};
        const std::vector<double> y = testing::KsFactorRowsReference(x_entries, local, pattern_, w);
        std::copy(y.begin(), y.end(), reference.begin() + static_cast<int64_t>(k) * pattern_.out_features());
      });
    }
    for (std::thread& t : threads) t.join();
    return reference;
  }

  double Check(const KsKernelChoice& choice, BatchLayout layout, bool packed_weights) {
    const int64_t size = kernels::DTypeSize(dtype_), out = pattern_.out_features();
    const int64_t packed_bytes = packed_weights ? *kernels::PackedWeightBytes(choice, pattern_, dtype_) : 0;
    const int64_t workspace_bytes = *kernels::FactorWorkspaceBytes(choice.algorithm, Params(layout));
    DeviceBuffer packed = TryAllocate(packed_bytes), workspace = TryAllocate(workspace_bytes);
    if (!packed || !workspace) return NAN;
    CheckCuda(cudaMemsetAsync(y_.get(), 0xff, batch_ * out * size, stream_), "poison y");  // NaN in every dtype
    if ((packed_weights &&
         !kernels::PackWeightsCuda(choice, pattern_, dtype_, w_.get(), packed.get(), stream_).ok()) ||
        !kernels::KsFactorForwardCuda(Params(layout), choice, packed_weights ? packed.get() : nullptr,
                                      workspace.get(), stream_)
             .ok()) {
      return NAN;
    }
    return testing::RelativeError(ReadSampled(y_.get(), out, layout),
                                  layout == BatchLayout::kBatchLast ? reference_last_ : reference_);
  }

  KsPattern pattern_;
  int64_t batch_;
  DType dtype_;
  cudaStream_t stream_;
  DeviceBuffer x_, w_, y_;
  std::vector<int64_t> rows_;
  std::vector<double> reference_, reference_last_;  // of the sampled entries, batch-first and batch-last
};

std::vector<int64_t> ParseBatches(const std::string& text) {
  std::vector<int64_t> batches;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    int64_t batch = 0;
    if (!absl::SimpleAtoi(part, &batch) || batch < 1) Die(absl::StrFormat("bad batch size '%s'", part));
    batches.push_back(batch);
  }
  return batches;
}

std::vector<DType> ParseDTypes(const std::string& text) {
  std::vector<DType> dtypes;
  for (absl::string_view part : absl::StrSplit(text, ',', absl::SkipEmpty())) {
    bool found = false;
    for (DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
      if (part == kernels::DTypeName(dtype)) {
        dtypes.push_back(dtype);
        found = true;
      }
    }
    if (!found) Die(absl::StrFormat("bad dtype '%s'", part));
  }
  return dtypes;
}

// "dir/name.csv" + "-pairs" → "dir/name-pairs.csv".
std::string SiblingPath(const std::string& csv_path, const std::string& suffix) {
  const size_t dot = csv_path.rfind(".csv");
  return (dot == std::string::npos ? csv_path : csv_path.substr(0, dot)) + suffix + ".csv";
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

int Run() {
  const std::vector<int64_t> batches = ParseBatches(absl::GetFlag(FLAGS_batches));
  const std::vector<DType> dtypes = ParseDTypes(absl::GetFlag(FLAGS_dtypes));
  const std::vector<NamedPattern> patterns = SweepPatterns();
  const std::vector<kernels::CudaDeviceInfo> devices = kernels::ListCudaDevices();
  if (devices.empty()) Die("no CUDA device");
  cudaStream_t stream;
  CheckCuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");

  const Ceilings ceilings = MeasureCeilings(dtypes, stream);
  std::fprintf(stderr, "device: %s; copy %.0f GB/s", devices[0].name.c_str(), ceilings.bandwidth_bytes_per_s / 1e9);
  for (DType dtype : dtypes) {
    std::fprintf(stderr, "; %s GEMM %.1f TFLOP/s", kernels::DTypeName(dtype).c_str(),
                 ceilings.gemm_flops_per_s[static_cast<int>(dtype)] / 1e12);
  }
  std::fprintf(stderr, "\n");

  std::ofstream csv(absl::GetFlag(FLAGS_csv), std::ios::trunc);
  if (!csv) Die("cannot write " + absl::GetFlag(FLAGS_csv));
  const std::string candidates_path = absl::GetFlag(FLAGS_candidates_csv).empty()
                                          ? SiblingPath(absl::GetFlag(FLAGS_csv), "-candidates")
                                          : absl::GetFlag(FLAGS_candidates_csv);
  std::ofstream candidates_csv(candidates_path, std::ios::trunc);
  if (!candidates_csv) Die("cannot write " + candidates_path);
  candidates_csv << "source,a,b,c,d,batch,dtype,kernel,ms,relative_error\n";
  csv << absl::StrFormat("# device=%s copy_GBps=%.1f", devices[0].name, ceilings.bandwidth_bytes_per_s / 1e9);
  for (DType dtype : dtypes) {
    csv << absl::StrFormat(" gemm_%s_TFLOPs=%.2f", kernels::DTypeName(dtype),
                           ceilings.gemm_flops_per_s[static_cast<int>(dtype)] / 1e12);
  }
  csv << "\nsource,a,b,c,d,batch,dtype,floor_ms,dense_ms,bmm_ms,baseline_ms,best_fused,best_fused_ms,"
         "rule_fused_ms,rule_ms,rule_interchange_ms,dispatched,dispatched_first_ms,baseline_retimed_ms,"
         "dispatched_ms,speedup,"
         "pct_floor,correct,max_error,batch_last_pick,batch_last_ms,batch_last_speedup\n";

  kernels::KsTuneOptions options;
  options.repetitions = absl::GetFlag(FLAGS_repetitions);
  options.max_dense_weight_bytes = static_cast<int64_t>(absl::GetFlag(FLAGS_max_dense_weight_gib) * (1 << 30));
  // The second, independent timing of a pick and of what it is compared with.
  kernels::KsTuneOptions retime = options;
  retime.repetitions = 2 * options.repetitions + 1;

  // Progress weights: bytes each case moves, plus a fixed cost per case.
  const auto weight = [](const KsPattern& p, int64_t batch) {
    return double(batch) * (p.in_features() + p.out_features()) + double(p.nonzeros()) + 4e6;
  };
  double total_weight = 0, done_weight = 0;
  for (size_t k = 0; k < dtypes.size() * batches.size(); ++k) {
    for (const NamedPattern& p : patterns) total_weight += weight(p.pattern, batches[k % batches.size()]);
  }
  const auto start = std::chrono::steady_clock::now();
  int failures = 0, cases_run = 0;
  const int total_cases = static_cast<int>(dtypes.size() * batches.size() * patterns.size());
  uint64_t seed = 1234;

  struct Summary {
    std::vector<double> speedup, pct_floor;
    double worst_ratio = INFINITY;
    std::vector<double> batch_last_speedup;  // the batch-first pick's time over the best batch-last one
  };
  std::vector<Summary> summaries(dtypes.size() * batches.size());

  for (size_t di = 0; di < dtypes.size(); ++di) {
    for (size_t bi = 0; bi < batches.size(); ++bi) {
      for (const NamedPattern& named : patterns) {
        const KsPattern& p = named.pattern;
        const DType dtype = dtypes[di];
        const int64_t batch = batches[bi];
        ++cases_run;
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
        const double eta = done_weight > 0 ? elapsed * (total_weight - done_weight) / done_weight : 0;
        std::fprintf(stderr, "\r[%d/%d] %-9s %-22s batch %-6lld elapsed %4.0fs ETA %4.0fs   ", cases_run, total_cases,
                     kernels::DTypeName(dtype).c_str(), kernels::PatternToString(p).c_str(),
                     static_cast<long long>(batch), elapsed, eta);
        done_weight += weight(p, batch);

        Case bench_case(p, batch, dtype, stream);
        if (!bench_case.Prepare(seed++)) {
          std::fprintf(stderr, "\n  skipped: buffers do not fit on the device\n");
          csv << absl::StrFormat("%s,%d,%d,%d,%d,%d,%s,,,,,,,,,,skipped: out of memory,,,,,,,,,,\n",
                                 named.source, p.a, p.b, p.c, p.d, batch, kernels::DTypeName(dtype));
          continue;
        }
        const double element = kernels::DTypeSize(dtype);
        const double bytes = (double(batch) * (p.in_features() + p.out_features()) + p.nonzeros()) * element;
        const double flops = 2.0 * batch * double(p.nonzeros());
        const double floor_ms = ceilings.FloorMs(bytes, flops, dtype);

        std::vector<Measured> results;
        const std::optional<Measured> bmm = bench_case.Measure({.algorithm = KsAlgorithm::kBmm}, options);
        if (bmm) results.push_back(*bmm);
        // Dense only where it could win: its own floor (a·d times the FLOPs and weights) must be
        // within reach of bmm's measured time.
        const double dense_bytes = (double(batch) * (p.in_features() + p.out_features()) +
                                    double(p.in_features()) * p.out_features()) * element;
        const double dense_floor_ms =
            ceilings.FloorMs(dense_bytes, 2.0 * batch * double(p.in_features()) * p.out_features(), dtype);
        std::optional<Measured> dense;
        if (dense_bytes - double(batch) * (p.in_features() + p.out_features()) * element <=
                double(options.max_dense_weight_bytes) &&
            (!bmm || dense_floor_ms < 2.0 * bmm->ms)) {
          dense = bench_case.Measure({.algorithm = KsAlgorithm::kDense}, options);
          if (dense) results.push_back(*dense);
        }
        // rule: the rule's pick with the weights grouped at load time and its workspace
        // (DefaultKernelChoice(params, true): bmm where it takes it, else rule_fused), timed like
        // every candidate; rule_interchange: its pick on the interchange weights alone, as
        // KsFactorForwardCuda(params, stream) runs it.
        std::optional<Measured> best_fused, rule_fused, rule, rule_interchange;
        const kernels::FusedTile rule_tile = kernels::DefaultFusedTile(p, batch, dtype);
        const kernels::KsFactorParams rule_params{.batch = batch, .pattern = p, .dtype = dtype};
        const KsKernelChoice rule_choice = kernels::DefaultKernelChoice(rule_params, /*grouped=*/true);
        const KsKernelChoice interchange_choice = kernels::DefaultKernelChoice(rule_params);
        const KsKernelChoice bmm_choice{.algorithm = KsAlgorithm::kBmm};
        if (bmm && bmm->correct && rule_choice == bmm_choice) rule = bmm;
        for (const KsKernelChoice& candidate : kernels::KernelCandidates(p, dtype, options)) {
          if (candidate.algorithm != KsAlgorithm::kFused) continue;
          const kernels::FusedTile tile = candidate.tile;
          const std::optional<Measured> fused = bench_case.Measure(candidate, options);
          if (!fused) continue;
          results.push_back(*fused);
          if (tile == rule_tile) rule_fused = fused;
          if (fused->correct && candidate == rule_choice) rule = fused;
          if (fused->correct && (!best_fused || fused->ms < best_fused->ms)) best_fused = fused;
        }
        const bool interchange_is_bmm = interchange_choice == bmm_choice;
        if (interchange_is_bmm) {
          if (bmm && bmm->correct) rule_interchange = bmm;  // d = 1: bmm reads the interchange weights
        } else {
          kernels::KsTuneOptions interchange = options;
          interchange.packed_weights = false;
          rule_interchange = bench_case.Measure(interchange_choice, interchange);
        }
        bool all_correct = true;
        double max_error = 0;
        // Every candidate's row in the candidates CSV (batch-last ones named "batch-last/...", the
        // rule's pick on the interchange weights "interchange-w/..."); a wrong one is reported and
        // fails the case.
        const auto record = [&](const Measured& m, const char* prefix) {
          const std::string name = prefix + kernels::KernelChoiceName(m.choice);
          candidates_csv << absl::StrFormat("%s,%d,%d,%d,%d,%d,%s,%s,%.5f,%.3g\n", named.source, p.a, p.b,
                                            p.c, p.d, batch, kernels::DTypeName(dtype), name, m.ms, m.error);
          all_correct = all_correct && m.correct;
          max_error = std::max(max_error, std::isnan(m.error) ? INFINITY : m.error);
          if (!m.correct) {
            std::fprintf(stderr, "\n  WRONG: %s on %s batch %lld %s: relative error %g\n", name.c_str(),
                         kernels::PatternToString(p).c_str(), static_cast<long long>(batch),
                         kernels::DTypeName(dtype).c_str(), m.error);
          }
        };
        for (const Measured& m : results) record(m, "");
        if (rule_interchange && !interchange_is_bmm) {
          record(*rule_interchange, "interchange-w/");
        }
        // The dispatcher's autotuned pick: the fastest correct candidate.
        std::optional<Measured> dispatched;
        for (const Measured& m : results) {
          if (m.correct && (!dispatched || m.ms < dispatched->ms)) dispatched = m;
        }
        const double dense_ms = dense && dense->correct ? dense->ms : NAN;
        const double bmm_ms = bmm && bmm->correct ? bmm->ms : NAN;
        const double baseline_ms = std::fmin(dense_ms, bmm_ms);
        // The pick is the minimum over many noisy timings, which flatters it: the reported ratio
        // comes from a second, independent timing of the pick and of the best baseline.
        double dispatched_ms = NAN, baseline_retimed_ms = NAN;
        if (dispatched && std::isfinite(baseline_ms)) {
          const KsKernelChoice baseline_choice = std::isnan(dense_ms) || bmm_ms <= dense_ms
                                                     ? KsKernelChoice{.algorithm = KsAlgorithm::kBmm}
                                                     : KsKernelChoice{.algorithm = KsAlgorithm::kDense};
          baseline_retimed_ms = bench_case.Time(baseline_choice, retime).value_or(NAN);
          dispatched_ms = dispatched->choice == baseline_choice
                              ? baseline_retimed_ms
                              : bench_case.Time(dispatched->choice, retime).value_or(NAN);
        } else if (dispatched) {
          dispatched_ms = dispatched->ms;
        }
        // Batch-last: x and y read as [features][batch] (the same bytes), on the algorithms that
        // take them, against the batch-first pick.
        std::optional<Measured> batch_last;
        if (absl::GetFlag(FLAGS_batch_last)) {
          for (const KsKernelChoice& choice :
               kernels::KernelCandidates(p, dtype, options, BatchLayout::kBatchLast)) {
            if (choice.algorithm == KsAlgorithm::kDense && !dense) continue;  // out of reach batch-first too
            const std::optional<Measured> m = bench_case.Measure(choice, options, BatchLayout::kBatchLast);
            if (!m) continue;
            record(*m, "batch-last/");
            if (m->correct && (!batch_last || m->ms < batch_last->ms)) batch_last = m;
          }
        }
        if (!all_correct) ++failures;
        const double speedup = baseline_retimed_ms / dispatched_ms;
        const double pct_floor = 100.0 * floor_ms / dispatched_ms;
        Summary& summary = summaries[di * batches.size() + bi];
        if (std::isfinite(speedup)) {
          summary.speedup.push_back(speedup);
          summary.worst_ratio = std::min(summary.worst_ratio, speedup);
        }
        if (std::isfinite(pct_floor)) summary.pct_floor.push_back(pct_floor);
        // Re-timed as the batch-first pick was, so that neither side is a minimum over noisy timings.
        double batch_last_ms = NAN;
        if (batch_last) {
          batch_last_ms = bench_case.Time(batch_last->choice, retime, BatchLayout::kBatchLast).value_or(NAN);
        }
        const double batch_last_speedup = dispatched_ms / batch_last_ms;
        if (std::isfinite(batch_last_speedup)) summary.batch_last_speedup.push_back(batch_last_speedup);
        const auto ms = [](double v) { return std::isnan(v) ? std::string() : absl::StrFormat("%.5f", v); };
        csv << absl::StrFormat(
            "%s,%d,%d,%d,%d,%d,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%.3f,%.1f,%s,%.3g,%s,%s,%s\n",
            named.source, p.a, p.b, p.c, p.d, batch, kernels::DTypeName(dtype), ms(floor_ms), ms(dense_ms),
            ms(bmm_ms), ms(baseline_ms), best_fused ? kernels::KernelChoiceName(best_fused->choice) : "",
            ms(best_fused ? best_fused->ms : NAN), ms(rule_fused ? rule_fused->ms : NAN),
            ms(rule ? rule->ms : NAN),
            ms(rule_interchange && rule_interchange->correct ? rule_interchange->ms : NAN),
            dispatched ? kernels::KernelChoiceName(dispatched->choice) : "",
            ms(dispatched ? dispatched->ms : NAN), ms(baseline_retimed_ms), ms(dispatched_ms), speedup,
            pct_floor, all_correct ? "yes" : "NO", max_error,
            batch_last ? kernels::KernelChoiceName(batch_last->choice) : "", ms(batch_last_ms),
            std::isfinite(batch_last_speedup) ? absl::StrFormat("%.3f", batch_last_speedup) : "");
        csv.flush();
      }
    }
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::fprintf(stderr, "\ndone in %.0f s; %d case(s) with a failed correctness check\n", elapsed, failures);
  std::printf("%-9s %7s %8s %15s %14s %12s\n", "dtype", "batch", "cases", "median speedup", "median %floor",
              "worst ratio");
  for (size_t di = 0; di < dtypes.size(); ++di) {
    for (size_t bi = 0; bi < batches.size(); ++bi) {
      const Summary& s = summaries[di * batches.size() + bi];
      std::printf("%-9s %7lld %8zu %14.2fx %13.1f%% %11.2fx\n", kernels::DTypeName(dtypes[di]).c_str(),
                  static_cast<long long>(batches[bi]), s.speedup.size(), Median(s.speedup), Median(s.pct_floor),
                  s.worst_ratio);
    }
  }
  if (absl::GetFlag(FLAGS_batch_last)) {
    // Where batch-last pays: the batch-first pick's time over the best batch-last algorithm's.
    std::printf("\n%-9s %7s %8s %22s %22s\n", "dtype", "batch", "cases", "median batch-last gain",
                "cases batch-last wins");
    for (size_t di = 0; di < dtypes.size(); ++di) {
      for (size_t bi = 0; bi < batches.size(); ++bi) {
        const Summary& s = summaries[di * batches.size() + bi];
        const auto wins = std::count_if(s.batch_last_speedup.begin(), s.batch_last_speedup.end(),
                                        [](double v) { return v > 1.0; });
        std::printf("%-9s %7lld %8zu %21.2fx %22td\n", kernels::DTypeName(dtypes[di]).c_str(),
                    static_cast<long long>(batches[bi]), s.batch_last_speedup.size(),
                    Median(s.batch_last_speedup), wins);
      }
    }
  }
  if (absl::GetFlag(FLAGS_pairs)) {
    std::string pairs_csv = absl::GetFlag(FLAGS_pairs_csv);
    if (pairs_csv.empty()) pairs_csv = SiblingPath(absl::GetFlag(FLAGS_csv), "-pairs");
    failures += RunPairBench(
        ceilings,
        {.batches = batches,
         .dtypes = dtypes,
         .csv_path = pairs_csv,
         .tune = options,
         .names = absl::GetFlag(FLAGS_pair_names),
         .tiles_csv_path = absl::GetFlag(FLAGS_pair_tiles_csv).empty() ? SiblingPath(pairs_csv, "-tiles")
                                                                       : absl::GetFlag(FLAGS_pair_tiles_csv)},
        stream);
  }
  cudaStreamDestroy(stream);
  return failures == 0 ? 0 : 1;
}

}  // namespace
}  // namespace ksserve::bench

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return ksserve::bench::Run();
}

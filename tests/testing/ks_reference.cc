#include "tests/testing/ks_reference.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>

#include "kernels/half.h"

namespace ksserve::testing {

using kernels::Activation;
using kernels::DType;
using kernels::KsPattern;

std::vector<double> KsChainReference(absl::Span<const double> x, int64_t batch, absl::Span<const KsPattern> patterns,
                                     const std::vector<std::vector<double>>& weights,
                                     const std::vector<double>* bias, Activation activation) {
  std::vector<double> current(x.begin(), x.end());
  for (size_t l = 0; l < patterns.size(); ++l) {
    const KsPattern& p = patterns[l];
    const int64_t in = p.in_features(), out = p.out_features();
    // K[(i·b + r)·d + j, (i·c + s)·d + j] = W[i, r, s, j]; everything else zero.
    std::vector<double> dense(static_cast<size_t>(out * in), 0.0);
    for (int64_t i = 0; i < p.a; ++i)
      for (int64_t r = 0; r < p.b; ++r)
        for (int64_t s = 0; s < p.c; ++s)
          for (int64_t j = 0; j < p.d; ++j)
            dense[static_cast<size_t>(((i * p.b + r) * p.d + j) * in + (i * p.c + s) * p.d + j)] =
                weights[l][static_cast<size_t>(((i * p.b + r) * p.c + s) * p.d + j)];
    std::vector<double> next(static_cast<size_t>(batch * out), 0.0);
    for (int64_t n = 0; n < batch; ++n)
      for (int64_t o = 0; o < out; ++o) {
        double acc = 0.0;
        const double* row = dense.data() + o * in;
        const double* xn = current.data() + n * in;
        for (int64_t k = 0; k < in; ++k) acc += xn[k] * row[k];
        next[static_cast<size_t>(n * out + o)] = acc;
      }
    current = std::move(next);
  }
  const int64_t out = patterns.back().out_features();
  for (int64_t n = 0; n < batch; ++n)
    for (int64_t o = 0; o < out; ++o) {
      double& v = current[static_cast<size_t>(n * out + o)];
      if (bias != nullptr) v += (*bias)[static_cast<size_t>(o)];
      switch (activation) {
        case Activation::kRelu:
          v = v > 0 ? v : 0;
          break;
        case Activation::kGeluTanh:
          v = 0.5 * v * (1 + std::tanh(std::sqrt(2 / M_PI) * (v + 0.044715 * v * v * v)));
          break;
        case Activation::kGeluErf:
          v = 0.5 * v * (1 + std::erf(v / std::sqrt(2.0)));
          break;
        case Activation::kNone:
          break;
      }
    }
  return current;
}

std::vector<double> KsFactorRowsReference(absl::Span<const double> x, absl::Span<const int64_t> rows,
                                          const KsPattern& p, absl::Span<const double> w) {
  const int64_t in = p.in_features(), out = p.out_features();
  std::vector<double> y(rows.size() * static_cast<size_t>(out), 0.0);
  for (size_t k = 0; k < rows.size(); ++k) {
    const double* xn = x.data() + rows[k] * in;
    double* yn = y.data() + static_cast<int64_t>(k) * out;
    for (int64_t i = 0; i < p.a; ++i)
      for (int64_t r = 0; r < p.b; ++r)
        for (int64_t j = 0; j < p.d; ++j) {
          double acc = 0.0;
          for (int64_t s = 0; s < p.c; ++s) acc += xn[(i * p.c + s) * p.d + j] * w[static_cast<size_t>(((i * p.b + r) * p.c + s) * p.d + j)];
          yn[(i * p.b + r) * p.d + j] = acc;
        }
  }
  return y;
}

std::vector<int64_t> SampleRows(int64_t batch, int64_t count, std::mt19937& rng) {
  if (batch <= count + 2) {
    std::vector<int64_t> all(static_cast<size_t>(batch));
    for (int64_t n = 0; n < batch; ++n) all[static_cast<size_t>(n)] = n;
    return all;
  }
  std::vector<int64_t> rows = {0, batch - 1};
  std::uniform_int_distribution<int64_t> pick(1, batch - 2);
  for (int64_t k = 0; k < count; ++k) rows.push_back(pick(rng));
  return rows;
}

std::vector<KsPattern> LoadPaperPatterns(const std::string& path) {
  std::vector<KsPattern> patterns;
  std::ifstream in(path);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    KsPattern p;
    if (std::sscanf(line.c_str(), "%ld,%ld,%ld,%ld", &p.a, &p.b, &p.c, &p.d) == 4) patterns.push_back(p);
  }
  return patterns;
}

std::vector<KsPattern> PaperPatternSample(const std::string& path) {
  const std::vector<KsPattern> all = LoadPaperPatterns(path);
  std::vector<KsPattern> sample;
  if (all.size() != 648) return sample;
  for (size_t k = 0; k < all.size(); k += 27) sample.push_back(all[k]);
  return sample;
}

double RelativeError(absl::Span<const double> got, absl::Span<const double> ref) {
  if (got.size() != ref.size()) return std::numeric_limits<double>::quiet_NaN();
  double err = 0, norm = 0;
  for (size_t k = 0; k < got.size(); ++k) {
    if (!std::isfinite(got[k])) return std::numeric_limits<double>::quiet_NaN();
    err += (got[k] - ref[k]) * (got[k] - ref[k]);
    norm += ref[k] * ref[k];
  }
  const double floor = kErrorScaleFloor * kErrorScaleFloor * static_cast<double>(got.size());
  return std::sqrt(err / std::max(norm, floor));
}

std::vector<double> TypedToDouble(DType dtype, const void* bits, int64_t count) {
  std::vector<double> values(static_cast<size_t>(count));
  for (int64_t k = 0; k < count; ++k) {
    if (dtype == DType::kFloat32) {
      values[static_cast<size_t>(k)] = static_cast<const float*>(bits)[k];
    } else {
      const uint16_t h = static_cast<const uint16_t*>(bits)[k];
      values[static_cast<size_t>(k)] = dtype == DType::kBFloat16 ? kernels::BFloat16ToFloat(h) : kernels::HalfToFloat(h);
    }
  }
  return values;
}

namespace {

TypedBuffer FromFloats(DType dtype, const std::vector<float>& floats) {
  TypedBuffer buffer;
  const int64_t count = static_cast<int64_t>(floats.size());
  buffer.bits.resize(static_cast<size_t>(count * kernels::DTypeSize(dtype)));
  if (dtype == DType::kFloat32) {
    std::memcpy(buffer.bits.data(), floats.data(), floats.size() * sizeof(float));
  } else {
    auto* out = reinterpret_cast<uint16_t*>(buffer.bits.data());
    for (int64_t k = 0; k < count; ++k) {
      const float f = floats[static_cast<size_t>(k)];
      out[k] = dtype == DType::kBFloat16 ? kernels::FloatToBFloat16(f) : kernels::FloatToHalf(f);
    }
  }
  buffer.values = TypedToDouble(dtype, buffer.bits.data(), count);
  return buffer;
}

}  // namespace

TypedBuffer RandomTyped(DType dtype, int64_t count, double low, double high, std::mt19937& rng, bool normal) {
  std::vector<float> floats(static_cast<size_t>(count));
  std::uniform_real_distribution<float> uniform(static_cast<float>(low), static_cast<float>(high));
  std::normal_distribution<float> gaussian(0.0f, 1.0f);
  for (float& f : floats) f = normal ? gaussian(rng) : uniform(rng);
  return FromFloats(dtype, floats);
}

TypedBuffer PoisonedTyped(DType dtype, int64_t count) {
  return FromFloats(dtype, std::vector<float>(static_cast<size_t>(count), std::numeric_limits<float>::quiet_NaN()));
}

}  // namespace ksserve::testing

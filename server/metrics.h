// The Prometheus registry and its HTTP exposer (/metrics). Metric families and their children
// are created at start-up; request paths only increment or observe.
#pragma once

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace ksserve {

class MetricsExporter {
 public:
  // Serves /metrics on `address` ("host:port"; port 0 picks a free one).
  static absl::StatusOr<std::unique_ptr<MetricsExporter>> Start(const std::string& address);

  prometheus::Registry& registry() { return *registry_; }
  int port() const { return port_; }

 private:
  MetricsExporter(std::shared_ptr<prometheus::Registry> registry,
                  std::unique_ptr<prometheus::Exposer> exposer, int port);

  std::shared_ptr<prometheus::Registry> registry_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_;
};

// Server-wide metrics: what is running, since when, and the RPCs it answered.
class ServerMetrics {
 public:
  struct BuildLabels {
    std::string version;
    bool cuda_enabled = false;
    std::string torch_version;
  };
  ServerMetrics(prometheus::Registry& registry, const BuildLabels& build);

  // Counter for one (method, gRPC code) pair; resolve once, keep the reference.
  prometheus::Counter& Requests(absl::string_view method, absl::string_view code);

 private:
  prometheus::Family<prometheus::Counter>& requests_;
};

}  // namespace ksserve

// The ksserve process: gRPC services on one port, Prometheus /metrics on another.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace grpc {
class Server;
}

namespace ksserve {

class MetricsExporter;
class ServerMetrics;
class InfoService;
class HealthService;
class Nvml;

struct ServerOptions {
  std::string grpc_address = "0.0.0.0:8001";     // port 0 picks a free port
  std::string metrics_address = "0.0.0.0:8002";  // port 0 picks a free port
  std::string model_repo;                        // one folder per model; empty: none
  int max_message_bytes = 64 << 20;
};

class Server {
 public:
  // Binds both ports and starts serving; errors (port in use, bad model repository) come back
  // as a status, never as a crash.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }

  // Health turns NOT_SERVING, new calls are refused, in-flight calls get up to `drain_timeout`
  // to finish, then the rest are cancelled. Idempotent.
  void Shutdown(absl::Duration drain_timeout);

 private:
  Server() = default;

  std::unique_ptr<Nvml> nvml_;  // null without an NVIDIA driver
  std::unique_ptr<MetricsExporter> metrics_exporter_;
  std::unique_ptr<ServerMetrics> server_metrics_;
  std::unique_ptr<InfoService> info_service_;
  std::unique_ptr<HealthService> health_service_;
  std::unique_ptr<grpc::Server> grpc_server_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
  bool shut_down_ = false;
};

}  // namespace ksserve

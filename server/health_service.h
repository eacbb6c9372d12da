// grpc.health.v1.Health (Check and Watch), overall ("") and per service/model name.
// gRPC's built-in implementation keeps Watch streams open through a graceful shutdown, so the
// drain would always last its full timeout; here Shutdown() sends NOT_SERVING to every watcher
// and then ends its stream.
#pragma once

#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "grpc/health/v1/health.grpc.pb.h"

namespace ksserve {

class HealthService final : public grpc::health::v1::Health::CallbackService {
 public:
  using ServingStatus = grpc::health::v1::HealthCheckResponse::ServingStatus;

  // Every name starts unknown (Check answers NOT_FOUND) until SetStatus names it.
  void SetStatus(const std::string& service, ServingStatus status);

  // NOT_SERVING for every name, later SetStatus calls are ignored, and each Watch stream
  // ends (OK) once it has delivered that update. Idempotent.
  void Shutdown();

  grpc::ServerUnaryReactor* Check(grpc::CallbackServerContext* context,
                                  const grpc::health::v1::HealthCheckRequest* request,
                                  grpc::health::v1::HealthCheckResponse* response) override;
  grpc::ServerWriteReactor<grpc::health::v1::HealthCheckResponse>* Watch(
      grpc::CallbackServerContext* context, const grpc::health::v1::HealthCheckRequest* request) override;

 private:
  class Watcher;
  void Unregister(Watcher* watcher);

  absl::Mutex mu_;  // Lock order: mu_, then a Watcher's own mutex.
  absl::flat_hash_map<std::string, ServingStatus> statuses_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_set<Watcher*> watchers_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace ksserve

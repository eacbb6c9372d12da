#include "server/health_service.h"

#include <optional>

namespace ksserve {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// One Watch stream. At most one write is in flight; a newer status waiting behind it replaces
// any older one, and Finish waits for the write to complete.
class HealthService::Watcher final : public grpc::ServerWriteReactor<HealthCheckResponse> {
 public:
  Watcher(HealthService* service, std::string name) : service_(service), name_(std::move(name)) {}

  const std::string& name() const { return name_; }

  void Send(ServingStatus status) {
    absl::MutexLock lock(&mu_);
    if (finish_status_.has_value()) return;
    if (writing_) {
      pending_ = status;
    } else {
      StartWriteLocked(status);
    }
  }

  // Ends the stream with OK once every queued update has been written.
  void FinishAfterWrites() {
    absl::MutexLock lock(&mu_);
    FinishLocked(grpc::Status::OK);
  }

  void OnWriteDone(bool ok) override {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) {
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "health watch write failed"));
    } else if (pending_.has_value()) {
      const ServingStatus next = *std::exchange(pending_, std::nullopt);
      StartWriteLocked(next);
    } else if (finish_status_.has_value()) {
      FinishLocked(*finish_status_);
    }
  }

  void OnCancel() override {
    absl::MutexLock lock(&mu_);
    pending_.reset();
    FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "health watch cancelled"));
  }

  void OnDone() override {
    service_->Unregister(this);
    delete this;
  }

 private:
  void StartWriteLocked(ServingStatus status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    response_.set_status(status);
    writing_ = true;
    StartWrite(&response_);
  }

  // Finish exactly once, and never with a write in flight (OnWriteDone finishes then, after
  // any update still pending).
  void FinishLocked(const grpc::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (finished_) return;
    if (!finish_status_.has_value()) finish_status_ = status;
    if (writing_) return;
    finished_ = true;
    Finish(*finish_status_);
  }

  HealthService* const service_;
  const std::string name_;
  absl::Mutex mu_;
  HealthCheckResponse response_ ABSL_GUARDED_BY(mu_);
  std::optional<ServingStatus> pending_ ABSL_GUARDED_BY(mu_);
  std::optional<grpc::Status> finish_status_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
};

void HealthService::SetStatus(const std::string& service, ServingStatus status) {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  statuses_[service] = status;
  for (Watcher* watcher : watchers_) {
    if (watcher->name() == service) watcher->Send(status);
  }
}

void HealthService::Shutdown() {
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  for (auto& [name, status] : statuses_) status = HealthCheckResponse::NOT_SERVING;
  for (Watcher* watcher : watchers_) {
    watcher->Send(HealthCheckResponse::NOT_SERVING);
    watcher->FinishAfterWrites();
  }
}

grpc::ServerUnaryReactor* HealthService::Check(grpc::CallbackServerContext* context,
                                               const HealthCheckRequest* request,
                                               HealthCheckResponse* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  std::optional<ServingStatus> status;
  {
    absl::MutexLock lock(&mu_);
    if (const auto it = statuses_.find(request->service()); it != statuses_.end()) status = it->second;
  }
  if (status.has_value()) {
    response->set_status(*status);
    reactor->Finish(grpc::Status::OK);
  } else {
    reactor->Finish(grpc::Status(grpc::StatusCode::NOT_FOUND, "unknown service: " + request->service()));
  }
  return reactor;
}

grpc::ServerWriteReactor<HealthCheckResponse>* HealthService::Watch(grpc::CallbackServerContext* /*context*/,
                                                                    const HealthCheckRequest* request) {
  auto* watcher = new Watcher(this, request->service());
  absl::MutexLock lock(&mu_);
  watchers_.insert(watcher);
  const auto it = statuses_.find(request->service());
  watcher->Send(it == statuses_.end() ? HealthCheckResponse::SERVICE_UNKNOWN : it->second);
  if (shut_down_) watcher->FinishAfterWrites();
  return watcher;
}

void HealthService::Unregister(Watcher* watcher) {
  absl::MutexLock lock(&mu_);
  watchers_.erase(watcher);
}

}  // namespace ksserve

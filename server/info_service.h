// ksserve.v1.KsServe: ServerInfo (inference methods join as the models land).
#pragma once

#include <prometheus/counter.h>

#include "absl/time/time.h"
#include "ksserve/v1/ksserve.grpc.pb.h"

namespace ksserve {

class InfoService final : public ksserve::v1::KsServe::CallbackService {
 public:
  // `info` is gathered once at start-up; only uptime is computed per call.
  InfoService(ksserve::v1::ServerInfoResponse info, absl::Time start_time, prometheus::Counter& served);

  grpc::ServerUnaryReactor* ServerInfo(grpc::CallbackServerContext* context,
                                       const ksserve::v1::ServerInfoRequest* request,
                                       ksserve::v1::ServerInfoResponse* response) override;

 private:
  const ksserve::v1::ServerInfoResponse info_;
  const absl::Time start_time_;
  prometheus::Counter& served_;
};

}  // namespace ksserve

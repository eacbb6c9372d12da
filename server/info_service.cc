#include "server/info_service.h"

#include "absl/time/clock.h"

namespace ksserve {

InfoService::InfoService(ksserve::v1::ServerInfoResponse info, absl::Time start_time,
                         prometheus::Counter& served)
    : info_(std::move(info)), start_time_(start_time), served_(served) {}

grpc::ServerUnaryReactor* InfoService::ServerInfo(grpc::CallbackServerContext* context,
                                                  const ksserve::v1::ServerInfoRequest* /*request*/,
                                                  ksserve::v1::ServerInfoResponse* response) {
  *response = info_;
  response->set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - start_time_));
  served_.Increment();
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

}  // namespace ksserve

// HealthService in process, over a real gRPC server on loopback: per-name status, Watch updates,
// and shutdown ending every stream after NOT_SERVING.
#include <grpcpp/grpcpp.h>

#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "server/health_service.h"

namespace ksserve {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;

class HealthServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = Health::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }

  grpc::Status Check(const std::string& name, HealthCheckResponse* response) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(10)));
    HealthCheckRequest request;
    request.set_service(name);
    return stub_->Check(&context, request, response);
  }

  struct Watch {
    grpc::ClientContext context;
    std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> reader;
  };
  std::unique_ptr<Watch> StartWatch(const std::string& name) {
    auto watch = std::make_unique<Watch>();
    watch->context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
    HealthCheckRequest request;
    request.set_service(name);
    watch->reader = stub_->Watch(&watch->context, request);
    return watch;
  }

  HealthService service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<Health::Stub> stub_;
};

TEST_F(HealthServiceTest, CheckAnswersPerName) {
  HealthCheckResponse response;
  EXPECT_EQ(Check("model-a", &response).error_code(), grpc::StatusCode::NOT_FOUND);
  service_.SetStatus("model-a", HealthCheckResponse::NOT_SERVING);
  service_.SetStatus("", HealthCheckResponse::SERVING);
  ASSERT_TRUE(Check("model-a", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(Check("", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);
}

TEST_F(HealthServiceTest, WatchSeesUnknownThenEveryChangeOfItsNameOnly) {
  auto watch = StartWatch("model-a");
  HealthCheckResponse update;
  ASSERT_TRUE(watch->reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVICE_UNKNOWN);
  service_.SetStatus("model-b", HealthCheckResponse::SERVING);  // another name: no update
  service_.SetStatus("model-a", HealthCheckResponse::SERVING);
  ASSERT_TRUE(watch->reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  service_.SetStatus("model-a", HealthCheckResponse::NOT_SERVING);
  ASSERT_TRUE(watch->reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  watch->context.TryCancel();
  EXPECT_FALSE(watch->reader->Read(&update));
  EXPECT_EQ(watch->reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST_F(HealthServiceTest, ShutdownEndsEveryWatchAfterNotServing) {
  service_.SetStatus("", HealthCheckResponse::SERVING);
  std::vector<std::unique_ptr<Watch>> watches;
  for (int i = 0; i < 8; ++i) watches.push_back(StartWatch(""));
  HealthCheckResponse update;
  for (auto& watch : watches) {
    ASSERT_TRUE(watch->reader->Read(&update));
    EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);
  }
  service_.Shutdown();
  service_.SetStatus("", HealthCheckResponse::SERVING);  // ignored after shutdown
  for (auto& watch : watches) {
    ASSERT_TRUE(watch->reader->Read(&update));
    EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
    EXPECT_FALSE(watch->reader->Read(&update));
    EXPECT_TRUE(watch->reader->Finish().ok());
  }
  // A watch opened after shutdown gets NOT_SERVING and ends.
  auto late = StartWatch("");
  ASSERT_TRUE(late->reader->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(late->reader->Read(&update));
  EXPECT_TRUE(late->reader->Finish().ok());
  HealthCheckResponse response;
  ASSERT_TRUE(Check("", &response).ok());
  EXPECT_EQ(response.status(), HealthCheckResponse::NOT_SERVING);
}

}  // namespace
}  // namespace ksserve

// The real ksserve binary over loopback: ServerInfo and grpc.health.v1 through generated gRPC
// stubs, /metrics checked by Prometheus's own parser (promtool), start-up errors and shutdown.
#include <grpcpp/grpcpp.h>
#include <signal.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/time/clock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "ksserve/v1/ksserve.grpc.pb.h"
#include "tests/testing/http.h"
#include "tests/testing/server_process.h"

namespace ksserve {
namespace {

using ::grpc::health::v1::Health;
using ::grpc::health::v1::HealthCheckRequest;
using ::grpc::health::v1::HealthCheckResponse;
using testing::ServerProcess;

std::unique_ptr<grpc::ClientContext> ContextWithDeadline(absl::Duration timeout = absl::Seconds(10)) {
  auto context = std::make_unique<grpc::ClientContext>();
  context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  return context;
}

class ServerIntegrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<ServerProcess> server = ServerProcess::Start(KSSERVE_BINARY, {"--drain_timeout=30s"});
    ASSERT_TRUE(server.ok()) << server.status();
    server_.emplace(*std::move(server));
    channel_ = grpc::CreateChannel(server_->grpc_target(), grpc::InsecureChannelCredentials());
  }

  ksserve::v1::ServerInfoResponse CallServerInfo() {
    auto stub = ksserve::v1::KsServe::NewStub(channel_);
    ksserve::v1::ServerInfoResponse response;
    const grpc::Status status = stub->ServerInfo(ContextWithDeadline().get(), {}, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return response;
  }

  std::optional<ServerProcess> server_;
  std::shared_ptr<grpc::Channel> channel_;
};

TEST_F(ServerIntegrationTest, ServerInfoDescribesTheBuildAndDevices) {
  const ksserve::v1::ServerInfoResponse info = CallServerInfo();
  EXPECT_EQ(info.build().version(), KSSERVE_EXPECTED_VERSION);
  EXPECT_TRUE(absl::StartsWith(info.build().torch_version(), "2.11.0")) << info.build().torch_version();
  EXPECT_EQ(info.build().grpc_version(), grpc::Version());
  EXPECT_FALSE(info.build().compiler().empty());
  ASSERT_GE(info.devices_size(), 1);
  EXPECT_EQ(info.devices(0).kind(), ksserve::v1::Device::KIND_CPU);
  EXPECT_GT(info.devices(0).memory_total_bytes(), 0u);
  EXPECT_GT(info.devices(0).multiprocessor_count(), 0);
  for (int i = 1; i < info.devices_size(); ++i) {
    EXPECT_EQ(info.devices(i).kind(), ksserve::v1::Device::KIND_CUDA);
    EXPECT_TRUE(info.build().cuda_enabled());
  }
  EXPECT_GE(info.uptime_seconds(), 0.0);
  EXPECT_GT(CallServerInfo().uptime_seconds(), info.uptime_seconds());
}

TEST_F(ServerIntegrationTest, HealthCheckIsServing) {
  auto stub = Health::NewStub(channel_);
  HealthCheckRequest request;
  HealthCheckResponse response;
  grpc::Status status = stub->Check(ContextWithDeadline().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  request.set_service("ksserve.v1.KsServe");
  status = stub->Check(ContextWithDeadline().get(), request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.status(), HealthCheckResponse::SERVING);

  request.set_service("no.such.Service");
  status = stub->Check(ContextWithDeadline().get(), request, &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(ServerIntegrationTest, MetricsAreValidPrometheusText) {
  CallServerInfo();
  CallServerInfo();
  absl::StatusOr<testing::HttpResponse> metrics = testing::HttpGet(server_->metrics_port(), "/metrics");
  ASSERT_TRUE(metrics.ok()) << metrics.status();
  EXPECT_EQ(metrics->status, 200);
  EXPECT_TRUE(absl::StartsWith(metrics->content_type, "text/plain")) << metrics->content_type;
  EXPECT_TRUE(absl::StrContains(metrics->body, R"(ksserve_requests_total{code="OK",method="ServerInfo"} 2)"))
      << metrics->body;
  EXPECT_TRUE(absl::StrContains(metrics->body, "ksserve_build_info{")) << metrics->body;

  const std::string promtool = KSSERVE_PROMTOOL;
  ASSERT_FALSE(promtool.empty()) << "promtool not found at configure time; run scripts/setup.sh";
  absl::StatusOr<testing::CommandResult> check = testing::RunCommand(promtool, {"check", "metrics"}, metrics->body);
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_EQ(check->exit_code, 0) << check->output;

  // And promtool does reject a broken exposition, so the check above can fail.
  check = testing::RunCommand(promtool, {"check", "metrics"}, metrics->body + "ksserve_broken{ 1\n");
  ASSERT_TRUE(check.ok()) << check.status();
  EXPECT_NE(check->exit_code, 0) << check->output;
}

TEST_F(ServerIntegrationTest, SigtermTurnsHealthNotServingThenExitsZero) {
  auto stub = Health::NewStub(channel_);
  auto context = ContextWithDeadline(absl::Seconds(60));
  std::unique_ptr<grpc::ClientReader<HealthCheckResponse>> watch = stub->Watch(context.get(), HealthCheckRequest());
  HealthCheckResponse update;
  ASSERT_TRUE(watch->Read(&update));
  EXPECT_EQ(update.status(), HealthCheckResponse::SERVING);

  const absl::Time start = absl::Now();
  absl::StatusOr<int> exit_code;
  std::thread stopper([&] { exit_code = server_->StopWith(SIGTERM); });
  const bool got_update = watch->Read(&update);
  stopper.join();
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0) << testing::ReadFile(server_->log_path());
  ASSERT_TRUE(got_update) << "Watch ended without reporting NOT_SERVING";
  EXPECT_EQ(update.status(), HealthCheckResponse::NOT_SERVING);
  EXPECT_FALSE(watch->Read(&update)) << "stream should end after NOT_SERVING";
  const grpc::Status finish = watch->Finish();
  EXPECT_TRUE(finish.ok()) << finish.error_code() << " " << finish.error_message();
  // An open Watch stream is not in-flight work: it must not hold the drain to its 30 s limit.
  EXPECT_LT(absl::Now() - start, absl::Seconds(15));
  EXPECT_TRUE(absl::StrContains(testing::ReadFile(server_->log_path()), "draining"));
}

TEST_F(ServerIntegrationTest, SigintExitsZero) {
  CallServerInfo();
  absl::StatusOr<int> exit_code = server_->StopWith(SIGINT);
  ASSERT_TRUE(exit_code.ok()) << exit_code.status();
  EXPECT_EQ(*exit_code, 0);
}

TEST_F(ServerIntegrationTest, BusyMetricsPortFailsStartUpWithAMessage) {
  absl::StatusOr<testing::CommandResult> second = testing::RunCommand(
      KSSERVE_BINARY, {"--grpc_address=127.0.0.1:0",
                       "--metrics_address=127.0.0.1:" + std::to_string(server_->metrics_port())});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->exit_code, 1);
  EXPECT_TRUE(absl::StrContains(second->output, "cannot serve metrics")) << second->output;
}

TEST_F(ServerIntegrationTest, BusyGrpcPortFailsStartUpWithAMessage) {
  absl::StatusOr<testing::CommandResult> second = testing::RunCommand(
      KSSERVE_BINARY, {"--grpc_address=127.0.0.1:" + std::to_string(server_->grpc_port()),
                       "--metrics_address=127.0.0.1:0"});
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->exit_code, 1);
  EXPECT_TRUE(absl::StrContains(second->output, "cannot serve gRPC")) << second->output;
}

TEST(ServerStartUpTest, BadArgumentsFailWithAMessage) {
  struct Case {
    std::vector<std::string> args;
    std::string expected;
  } cases[] = {
      {{"--grpc_address=not-an-address", "--metrics_address=127.0.0.1:0"}, "cannot serve gRPC"},
      {{"--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0", "--model_repo=/no/such/dir"},
       "is not a directory"},
      {{"--no_such_flag=1"}, "no_such_flag"},
      {{"--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0", "stray"}, "unexpected argument 'stray'"},
  };
  for (const Case& c : cases) {
    absl::StatusOr<testing::CommandResult> run = testing::RunCommand(KSSERVE_BINARY, c.args);
    ASSERT_TRUE(run.ok()) << run.status();
    EXPECT_EQ(run->exit_code, 1) << run->output;
    EXPECT_TRUE(absl::StrContains(run->output, c.expected)) << run->output;
  }
}

}  // namespace
}  // namespace ksserve

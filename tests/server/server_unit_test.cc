// Server pieces that need no running process: status mapping, NVML loading, metrics exporter.
#include <prometheus/text_serializer.h>
#include <dlfcn.h>
#include <pthread.h>

#include "gtest/gtest.h"
#include "server/grpc_status.h"
#include "server/metrics.h"
#include "server/nvml.h"

namespace ksserve {
namespace {

TEST(GrpcStatusTest, KeepsCodeAndMessage) {
  EXPECT_TRUE(ToGrpcStatus(absl::OkStatus()).ok());
  const grpc::Status invalid = ToGrpcStatus(absl::InvalidArgumentError("bad shape"));
  EXPECT_EQ(invalid.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(invalid.error_message(), "bad shape");
  EXPECT_EQ(ToGrpcStatus(absl::ResourceExhaustedError("full")).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("late")).error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("no model")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("down")).error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(NvmlTest, LoadsWithDriverOrSaysWhyNot) {
  absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Load();
  if (!nvml.ok()) {
    EXPECT_EQ(nvml.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_FALSE(nvml.status().message().empty());
    return;
  }
  absl::StatusOr<std::string> driver = (*nvml)->DriverVersion();
  ASSERT_TRUE(driver.ok()) << driver.status();
  EXPECT_FALSE(driver->empty());
  absl::StatusOr<unsigned> count = (*nvml)->DeviceCount();
  ASSERT_TRUE(count.ok()) << count.status();
}

TEST(MetricsExporterTest, BusyPortIsAnErrorNotACrash) {
  absl::StatusOr<std::unique_ptr<MetricsExporter>> first = MetricsExporter::Start("127.0.0.1:0");
  ASSERT_TRUE(first.ok()) << first.status();
  const int port = (*first)->port();
  EXPECT_GT(port, 0);
  absl::StatusOr<std::unique_ptr<MetricsExporter>> second =
      MetricsExporter::Start("127.0.0.1:" + std::to_string(port));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
}

// civetweb asks for 100 KiB stacks, too small once CUDA libraries' static TLS is loaded. Looked
// up through the dynamic symbol table, as libcivetweb's own call resolves it.
TEST(MetricsExporterTest, SmallThreadStacksAreRaised) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  const auto set_stack_size = reinterpret_cast<SetStackSize>(dlsym(RTLD_DEFAULT, "pthread_attr_setstacksize"));
  ASSERT_NE(set_stack_size, nullptr);
  pthread_attr_t attr;
  ASSERT_EQ(pthread_attr_init(&attr), 0);
  ASSERT_EQ(set_stack_size(&attr, 100 * 1024), 0);
  size_t size = 0;
  ASSERT_EQ(pthread_attr_getstacksize(&attr, &size), 0);
  EXPECT_GE(size, size_t{1} << 20);
  ASSERT_EQ(set_stack_size(&attr, size_t{8} << 20), 0);
  ASSERT_EQ(pthread_attr_getstacksize(&attr, &size), 0);
  EXPECT_EQ(size, size_t{8} << 20);
  pthread_attr_destroy(&attr);
}

TEST(ServerMetricsTest, FamiliesAreRegisteredAtStartUp) {
  prometheus::Registry registry;
  ServerMetrics metrics(registry, {.version = "9.9.9", .cuda_enabled = true, .torch_version = "2.11.0"});
  metrics.Requests("ServerInfo", "OK").Increment();
  const std::string text = prometheus::TextSerializer().Serialize(registry.Collect());
  EXPECT_NE(text.find(R"(ksserve_build_info{cuda="true",torch="2.11.0",version="9.9.9"} 1)"), std::string::npos) << text;
  EXPECT_NE(text.find(R"(ksserve_requests_total{code="OK",method="ServerInfo"} 1)"), std::string::npos) << text;
  EXPECT_NE(text.find("ksserve_start_time_seconds "), std::string::npos) << text;
}

}  // namespace
}  // namespace ksserve

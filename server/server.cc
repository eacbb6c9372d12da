#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "kernels/device.h"
#include "server/build_info.h"
#include "server/health_service.h"
#include "server/info_service.h"
#include "server/log.h"
#include "server/metrics.h"
#include "server/nvml.h"

namespace ksserve {
namespace {

std::string CpuModelName() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  for (std::string line; std::getline(cpuinfo, line);) {
    if (line.rfind("model name", 0) == 0) {
      if (const size_t colon = line.find(':'); colon != std::string::npos) {
        return std::string(absl::StripAsciiWhitespace(line.substr(colon + 1)));
      }
    }
  }
  return "cpu";
}

ksserve::v1::ServerInfoResponse GatherServerInfo(const Nvml* nvml) {
  ksserve::v1::ServerInfoResponse info;
  const kernels::KernelBuildInfo kernel_build = kernels::GetKernelBuildInfo();
  ksserve::v1::BuildInfo& build = *info.mutable_build();
  build.set_version(KSSERVE_VERSION);
  build.set_build_type(KSSERVE_BUILD_TYPE);
  build.set_compiler(KSSERVE_COMPILER);
  build.set_cuda_enabled(kernel_build.cuda_enabled);
  for (const std::string& arch : kernel_build.cuda_architectures) build.add_cuda_architectures(arch);
  build.set_cuda_runtime_version(kernel_build.cuda_runtime_version);
  build.set_torch_version(KSSERVE_TORCH_VERSION);
  build.set_grpc_version(grpc::Version());

  ksserve::v1::Device& cpu = *info.add_devices();
  cpu.set_kind(ksserve::v1::Device::KIND_CPU);
  cpu.set_name(CpuModelName());
  cpu.set_multiprocessor_count(static_cast<int>(std::thread::hardware_concurrency()));
  cpu.set_memory_total_bytes(static_cast<uint64_t>(sysconf(_SC_PHYS_PAGES)) *
                             static_cast<uint64_t>(sysconf(_SC_PAGESIZE)));
  for (const kernels::CudaDeviceInfo& gpu : kernels::ListCudaDevices()) {
    ksserve::v1::Device& device = *info.add_devices();
    device.set_kind(ksserve::v1::Device::KIND_CUDA);
    device.set_index(gpu.index);
    device.set_name(gpu.name);
    device.set_compute_capability_major(gpu.compute_capability_major);
    device.set_compute_capability_minor(gpu.compute_capability_minor);
    device.set_multiprocessor_count(gpu.multiprocessor_count);
    device.set_memory_total_bytes(gpu.memory_total_bytes);
  }
  if (nvml != nullptr) {
    if (absl::StatusOr<std::string> driver = nvml->DriverVersion(); driver.ok()) {
      info.set_nvidia_driver_version(*driver);
    }
  }
  return info;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  const absl::Time start_time = absl::Now();
  std::unique_ptr<Server> server(new Server());

  if (!options.model_repo.empty() && !std::filesystem::is_directory(options.model_repo)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--model_repo %s is not a directory", options.model_repo));
  }

  if (absl::StatusOr<std::unique_ptr<Nvml>> nvml = Nvml::Load(); nvml.ok()) {
    server->nvml_ = *std::move(nvml);
  } else {
    LogInfo("no GPU metrics: %s", nvml.status().message());
  }

  absl::StatusOr<std::unique_ptr<MetricsExporter>> exporter = MetricsExporter::Start(options.metrics_address);
  if (!exporter.ok()) return exporter.status();
  server->metrics_exporter_ = *std::move(exporter);
  server->metrics_port_ = server->metrics_exporter_->port();

  const ksserve::v1::ServerInfoResponse info = GatherServerInfo(server->nvml_.get());
  server->server_metrics_ = std::make_unique<ServerMetrics>(
      server->metrics_exporter_->registry(),
      ServerMetrics::BuildLabels{.version = info.build().version(),
                                 .cuda_enabled = info.build().cuda_enabled(),
                                 .torch_version = info.build().torch_version()});
  server->info_service_ = std::make_unique<InfoService>(
      info, start_time, server->server_metrics_->Requests("ServerInfo", "OK"));

  server->health_service_ = std::make_unique<HealthService>();

  grpc::EnableDefaultHealthCheckService(false);  // ours: see health_service.h
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.grpc_address, grpc::InsecureServerCredentials(), &server->grpc_port_);
  // gRPC sets SO_REUSEPORT by default: a second server on the same port would start and split
  // the traffic. A busy port must be a start-up error.
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  builder.SetMaxReceiveMessageSize(options.max_message_bytes);
  builder.SetMaxSendMessageSize(options.max_message_bytes);
  builder.RegisterService(server->info_service_.get());
  builder.RegisterService(server->health_service_.get());
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr || server->grpc_port_ == 0) {
    return absl::UnavailableError(absl::StrFormat("cannot serve gRPC on %s", options.grpc_address));
  }
  server->health_service_->SetStatus("", grpc::health::v1::HealthCheckResponse::SERVING);
  server->health_service_->SetStatus(ksserve::v1::KsServe::service_full_name(),
                                     grpc::health::v1::HealthCheckResponse::SERVING);

  int cuda_devices = 0;
  for (const auto& device : info.devices()) {
    if (device.kind() != ksserve::v1::Device::KIND_CUDA) continue;
    ++cuda_devices;
    LogInfo("cuda:%d %s (sm_%d%d, %d SMs, %.1f GiB)", device.index(), device.name(),
            device.compute_capability_major(), device.compute_capability_minor(), device.multiprocessor_count(),
            static_cast<double>(device.memory_total_bytes()) / (1 << 30));
  }
  if (!info.nvidia_driver_version().empty()) LogInfo("NVIDIA driver %s", info.nvidia_driver_version());
  LogInfo("ksserve %s (%s, torch %s, gRPC %s, %s)", info.build().version(), info.build().build_type(),
          info.build().torch_version(), info.build().grpc_version(),
          info.build().cuda_enabled() ? absl::StrFormat("CUDA %s, %d device(s)",
                                                        info.build().cuda_runtime_version(), cuda_devices)
                                      : std::string("CPU build"));
  if (!options.model_repo.empty()) LogInfo("model repository: %s", options.model_repo);
  return server;
}

void Server::Shutdown(absl::Duration drain_timeout) {
  if (shut_down_) return;
  shut_down_ = true;
  health_service_->Shutdown();
  grpc_server_->Shutdown(absl::ToChronoTime(absl::Now() + drain_timeout));
  grpc_server_->Wait();
}

Server::~Server() {
  if (grpc_server_ != nullptr) Shutdown(absl::ZeroDuration());
}

}  // namespace ksserve

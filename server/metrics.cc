#include "server/metrics.h"

#include <dlfcn.h>
#include <pthread.h>

#include <algorithm>
#include <cerrno>
#include <exception>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

// Debian's civetweb (under prometheus-cpp's Exposer) starts its threads with a fixed 100 KiB
// stack. glibc carves each thread's static TLS out of its stack, and CUDA's libcublasLt alone
// holds 94 KiB of it, so in a process that links LibTorch's CUDA libraries those threads fail
// to start ("Cannot create first worker thread"). Requests below 1 MiB are raised to 1 MiB;
// larger ones pass through. Exported from each executable (see server/CMakeLists.txt) so that
// it interposes on libc's definition for every library.
extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stack_size) {
  using SetStackSize = int (*)(pthread_attr_t*, size_t);
  static const auto libc_set_stack_size =
      reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  constexpr size_t kMinStackSize = size_t{1} << 20;
  if (libc_set_stack_size == nullptr) return EINVAL;
  return libc_set_stack_size(attr, std::max(stack_size, kMinStackSize));
}

namespace ksserve {

MetricsExporter::MetricsExporter(std::shared_ptr<prometheus::Registry> registry,
                                 std::unique_ptr<prometheus::Exposer> exposer, int port)
    : registry_(std::move(registry)), exposer_(std::move(exposer)), port_(port) {}

absl::StatusOr<std::unique_ptr<MetricsExporter>> MetricsExporter::Start(const std::string& address) {
  std::unique_ptr<prometheus::Exposer> exposer;
  try {
    // One civetweb thread pool of 2: scrapes are rare and small.
    exposer = std::make_unique<prometheus::Exposer>(address, 2);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrFormat("cannot serve metrics on %s: %s", address, e.what()));
  }
  const std::vector<int> ports = exposer->GetListeningPorts();
  if (ports.empty()) return absl::UnavailableError("metrics exposer reports no listening port");
  auto registry = std::make_shared<prometheus::Registry>();
  exposer->RegisterCollectable(registry);
  return std::unique_ptr<MetricsExporter>(new MetricsExporter(std::move(registry), std::move(exposer), ports[0]));
}

ServerMetrics::ServerMetrics(prometheus::Registry& registry, const BuildLabels& build)
    : requests_(prometheus::BuildCounter()
                    .Name("ksserve_requests_total")
                    .Help("RPCs answered, by method and gRPC status code")
                    .Register(registry)) {
  prometheus::BuildGauge()
      .Name("ksserve_build_info")
      .Help("Always 1; labels say which ksserve build is running")
      .Register(registry)
      .Add({{"version", build.version},
            {"cuda", build.cuda_enabled ? "true" : "false"},
            {"torch", build.torch_version}})
      .Set(1);
  prometheus::BuildGauge()
      .Name("ksserve_start_time_seconds")
      .Help("Start time of the server since the Unix epoch")
      .Register(registry)
      .Add({})
      .Set(absl::ToDoubleSeconds(absl::Now() - absl::UnixEpoch()));
}

prometheus::Counter& ServerMetrics::Requests(absl::string_view method, absl::string_view code) {
  return requests_.Add({{"method", std::string(method)}, {"code", std::string(code)}});
}

}  // namespace ksserve

#include "server/nvml.h"

#include <dlfcn.h>

#include "absl/strings/str_format.h"

namespace ksserve {
namespace {

template <typename Fn>
bool Resolve(void* library, const char* name, Fn* fn) {
  *fn = reinterpret_cast<Fn>(dlsym(library, name));
  return *fn != nullptr;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Nvml>> Nvml::Load() {
  void* library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
  if (library == nullptr) {
    return absl::UnavailableError(absl::StrFormat("NVML not found (%s)", dlerror()));
  }
  std::unique_ptr<Nvml> nvml(new Nvml(library));
  if (!Resolve(library, "nvmlInit_v2", &nvml->init_) ||
      !Resolve(library, "nvmlShutdown", &nvml->shutdown_) ||
      !Resolve(library, "nvmlErrorString", &nvml->error_string_) ||
      !Resolve(library, "nvmlSystemGetDriverVersion", &nvml->driver_version_) ||
      !Resolve(library, "nvmlDeviceGetCount_v2", &nvml->device_count_)) {
    nvml->shutdown_ = nullptr;  // never initialized: the destructor only closes the library
    return absl::UnavailableError("libnvidia-ml.so.1 lacks a required NVML function");
  }
  if (const nvmlReturn_t result = nvml->init_(); result != NVML_SUCCESS) {
    const std::string reason = nvml->error_string_(result);
    nvml->shutdown_ = nullptr;
    return absl::UnavailableError(absl::StrFormat("nvmlInit failed: %s", reason));
  }
  return nvml;
}

Nvml::~Nvml() {
  if (shutdown_ != nullptr) shutdown_();
  dlclose(library_);
}

absl::Status Nvml::Check(nvmlReturn_t result, const char* what) const {
  if (result == NVML_SUCCESS) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s: %s", what, error_string_(result)));
}

absl::StatusOr<std::string> Nvml::DriverVersion() const {
  char version[NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE] = {};
  if (absl::Status s = Check(driver_version_(version, sizeof(version)), "nvmlSystemGetDriverVersion"); !s.ok()) {
    return s;
  }
  return std::string(version);
}

absl::StatusOr<unsigned> Nvml::DeviceCount() const {
  unsigned count = 0;
  if (absl::Status s = Check(device_count_(&count), "nvmlDeviceGetCount"); !s.ok()) return s;
  return count;
}

}  // namespace ksserve

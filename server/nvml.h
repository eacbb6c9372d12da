// NVML, loaded at run time with dlopen so that ksserve runs on machines without an NVIDIA
// driver. Function types come from nvml.h; nothing links libnvidia-ml.
#pragma once

#include <nvml.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace ksserve {

class Nvml {
 public:
  // Opens libnvidia-ml.so.1 and calls nvmlInit; UNAVAILABLE with the reason when there is no
  // driver (the normal case on CPU machines).
  static absl::StatusOr<std::unique_ptr<Nvml>> Load();
  ~Nvml();
  Nvml(const Nvml&) = delete;
  Nvml& operator=(const Nvml&) = delete;

  absl::StatusOr<std::string> DriverVersion() const;
  absl::StatusOr<unsigned> DeviceCount() const;

 private:
  explicit Nvml(void* library) : library_(library) {}
  absl::Status Check(nvmlReturn_t result, const char* what) const;

  void* library_;
  decltype(&nvmlInit_v2) init_ = nullptr;
  decltype(&nvmlShutdown) shutdown_ = nullptr;
  decltype(&nvmlErrorString) error_string_ = nullptr;
  decltype(&nvmlSystemGetDriverVersion) driver_version_ = nullptr;
  decltype(&nvmlDeviceGetCount_v2) device_count_ = nullptr;
};

}  // namespace ksserve

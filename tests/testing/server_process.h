// Runs the real ksserve binary for a test: free ports, a port file, clean signal-driven stop.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace ksserve::testing {

class ServerProcess {
 public:
  // Starts `binary` on 127.0.0.1 with ports chosen by the OS plus `extra_args`, and waits until
  // it has written its port file (or exited).
  static absl::StatusOr<ServerProcess> Start(const std::string& binary,
                                             const std::vector<std::string>& extra_args = {},
                                             absl::Duration timeout = absl::Seconds(60));
  ServerProcess(ServerProcess&& other) noexcept;
  ServerProcess& operator=(ServerProcess&&) = delete;
  ~ServerProcess();  // SIGKILL if still running

  int grpc_port() const { return grpc_port_; }
  int metrics_port() const { return metrics_port_; }
  std::string grpc_target() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  const std::string& log_path() const { return log_path_; }

  // Sends `signal_number` and waits; returns the exit code (or -signal if killed by one).
  absl::StatusOr<int> StopWith(int signal_number, absl::Duration timeout = absl::Seconds(60));

 private:
  ServerProcess(pid_t pid, std::string dir, std::string log_path)
      : pid_(pid), dir_(std::move(dir)), log_path_(std::move(log_path)) {}

  pid_t pid_ = -1;
  std::string dir_;
  std::string log_path_;
  int grpc_port_ = 0;
  int metrics_port_ = 0;
};

// Runs `binary args...` to completion; returns the exit code and the combined output.
struct CommandResult {
  int exit_code = -1;
  std::string output;
};
absl::StatusOr<CommandResult> RunCommand(const std::string& binary, const std::vector<std::string>& args,
                                         const std::string& stdin_text = "",
                                         absl::Duration timeout = absl::Seconds(60));

std::string ReadFile(const std::string& path);

}  // namespace ksserve::testing

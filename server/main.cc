// ksserve: flags, signals and the server's lifetime. Everything else lives in server.cc.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "server/log.h"
#include "server/server.h"

ABSL_FLAG(std::string, grpc_address, "0.0.0.0:8001", "gRPC listen address (host:port; port 0 picks one)");
ABSL_FLAG(std::string, metrics_address, "0.0.0.0:8002",
          "Prometheus /metrics listen address (host:port; port 0 picks one)");
ABSL_FLAG(std::string, model_repo, "", "Model repository directory (one folder per model)");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(30),
          "On SIGTERM/SIGINT, how long in-flight calls may take to finish");
ABSL_FLAG(std::string, port_file, "",
          "Once serving, write {\"grpc_port\": N, \"metrics_port\": M} to this file");
ABSL_FLAG(int, max_message_bytes, 64 << 20, "Largest gRPC message accepted or sent");

namespace {

// Self-pipe: the handler only write()s the signal number (async-signal-safe); main blocks in
// read(). Unlike sigwait() this does not depend on every thread's signal mask, and libraries
// loaded before main (LibTorch's thread pools) start threads of their own.
int termination_pipe[2] = {-1, -1};

void OnTerminationSignal(int signal_number) {
  const int saved_errno = errno;
  const unsigned char byte = static_cast<unsigned char>(signal_number);
  [[maybe_unused]] const ssize_t written = write(termination_pipe[1], &byte, 1);  // non-blocking
  errno = saved_errno;
}

bool SetTerminationHandler(void (*handler)(int)) {
  struct sigaction action {};
  action.sa_handler = handler;
  action.sa_flags = SA_RESTART;
  sigemptyset(&action.sa_mask);
  return sigaction(SIGTERM, &action, nullptr) == 0 && sigaction(SIGINT, &action, nullptr) == 0;
}

bool InstallTerminationHandlers() {
  if (pipe2(termination_pipe, O_CLOEXEC) != 0) return false;
  if (fcntl(termination_pipe[1], F_SETFL, O_NONBLOCK) != 0) return false;
  return SetTerminationHandler(OnTerminationSignal);
}

// Blocks until SIGTERM or SIGINT. Afterwards a second signal ends the process at once (the
// default action), so a stuck drain can still be interrupted.
int WaitForTerminationSignal() {
  unsigned char byte = SIGTERM;
  ssize_t n = 0;
  do {
    n = read(termination_pipe[0], &byte, 1);
  } while (n < 0 && errno == EINTR);
  SetTerminationHandler(SIG_DFL);
  return n == 1 ? byte : SIGTERM;
}

bool WritePortFile(const std::string& path, int grpc_port, int metrics_port) {
  const std::string tmp = path + ".tmp";
  std::ofstream out(tmp, std::ios::trunc);
  out << absl::StrFormat("{\"grpc_port\": %d, \"metrics_port\": %d}\n", grpc_port, metrics_port);
  out.close();
  if (!out) return false;
  std::error_code error;
  std::filesystem::rename(tmp, path, error);  // readers never see a partial file
  return !error;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("ksserve: gRPC inference server for Kronecker-sparse ViT and GPT-2 models");
  if (const std::vector<char*> rest = absl::ParseCommandLine(argc, argv); rest.size() > 1) {
    ksserve::LogError("unexpected argument '%s' (flags are --name=value; see --help)", rest[1]);
    return 1;
  }

  if (!InstallTerminationHandlers()) {
    ksserve::LogError("cannot install signal handlers: %s", std::strerror(errno));
    return 1;
  }

  ksserve::ServerOptions options;
  options.grpc_address = absl::GetFlag(FLAGS_grpc_address);
  options.metrics_address = absl::GetFlag(FLAGS_metrics_address);
  options.model_repo = absl::GetFlag(FLAGS_model_repo);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);

  auto server = ksserve::Server::Start(options);
  if (!server.ok()) {
    ksserve::LogError("cannot start: %s", server.status().ToString());
    return 1;
  }
  ksserve::LogInfo("serving gRPC on port %d, Prometheus /metrics on port %d", (*server)->grpc_port(),
                   (*server)->metrics_port());
  if (const std::string port_file = absl::GetFlag(FLAGS_port_file); !port_file.empty()) {
    if (!WritePortFile(port_file, (*server)->grpc_port(), (*server)->metrics_port())) {
      ksserve::LogError("cannot write --port_file %s", port_file);
      (*server)->Shutdown(absl::ZeroDuration());
      std::fflush(nullptr);
      std::_Exit(1);
    }
  }

  const int signal_number = WaitForTerminationSignal();
  const absl::Duration drain = absl::GetFlag(FLAGS_drain_timeout);
  ksserve::LogInfo("%s: draining (up to %s)", strsignal(signal_number), absl::FormatDuration(drain));
  (*server)->Shutdown(drain);
  ksserve::LogInfo("stopped");
  // Every call is answered. Skip the teardown that remains: civetweb's mg_stop waits out its
  // 2 s poll quantum plus worker joins, and LibTorch's static destructors add nothing of value.
  std::fflush(nullptr);
  std::_Exit(0);
}

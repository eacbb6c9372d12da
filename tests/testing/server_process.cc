#include "tests/testing/server_process.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_format.h"
#include "absl/time/clock.h"

namespace ksserve::testing {
namespace {

std::string MakeTempDir() {
  std::string pattern = (std::filesystem::temp_directory_path() / "ksserve-test-XXXXXX").string();
  if (mkdtemp(pattern.data()) == nullptr) std::abort();
  return pattern;
}

// fork + exec with stdin/stdout/stderr redirected to files; returns the child's pid.
absl::StatusOr<pid_t> Spawn(const std::string& binary, const std::vector<std::string>& args,
                            const std::string& stdin_path, const std::string& output_path) {
  std::vector<std::string> argv_storage = {binary};
  argv_storage.insert(argv_storage.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (std::string& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);

  const pid_t pid = fork();
  if (pid < 0) return absl::InternalError("fork failed");
  if (pid == 0) {
    const int in = open(stdin_path.c_str(), O_RDONLY);
    const int out = open(output_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (in < 0 || out < 0) _exit(126);
    dup2(in, STDIN_FILENO);
    dup2(out, STDOUT_FILENO);
    dup2(out, STDERR_FILENO);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// Waits for `pid` up to `timeout`; returns its exit code, or -signal.
absl::StatusOr<int> WaitFor(pid_t pid, absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  while (true) {
    int status = 0;
    const pid_t done = waitpid(pid, &status, WNOHANG);
    if (done == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
    if (done < 0) return absl::InternalError("waitpid failed");
    if (absl::Now() > deadline) {
      return absl::DeadlineExceededError(absl::StrFormat("process %d still running after %s", pid,
                                                         absl::FormatDuration(timeout)));
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

absl::StatusOr<ServerProcess> ServerProcess::Start(const std::string& binary,
                                                   const std::vector<std::string>& extra_args,
                                                   absl::Duration timeout) {
  const std::string dir = MakeTempDir();
  const std::string port_file = dir + "/ports.json";
  std::vector<std::string> args = {"--grpc_address=127.0.0.1:0", "--metrics_address=127.0.0.1:0",
                                   "--port_file=" + port_file};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  absl::StatusOr<pid_t> pid = Spawn(binary, args, "/dev/null", dir + "/server.log");
  if (!pid.ok()) return pid.status();
  ServerProcess process(*pid, dir, dir + "/server.log");

  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status = 0;
    if (waitpid(process.pid_, &status, WNOHANG) == process.pid_) {
      process.pid_ = -1;
      return absl::FailedPreconditionError("ksserve exited during start-up:\n" + ReadFile(process.log_path_));
    }
    const std::string ports = ReadFile(port_file);
    if (std::sscanf(ports.c_str(), "{\"grpc_port\": %d, \"metrics_port\": %d}", &process.grpc_port_,
                    &process.metrics_port_) == 2) {
      return process;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError("ksserve did not start in time:\n" + ReadFile(process.log_path_));
}

ServerProcess::ServerProcess(ServerProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      dir_(std::move(other.dir_)),
      log_path_(std::move(other.log_path_)),
      grpc_port_(other.grpc_port_),
      metrics_port_(other.metrics_port_) {}

ServerProcess::~ServerProcess() {
  if (pid_ > 0) {
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

absl::StatusOr<int> ServerProcess::StopWith(int signal_number, absl::Duration timeout) {
  if (pid_ <= 0) return absl::FailedPreconditionError("not running");
  kill(pid_, signal_number);
  absl::StatusOr<int> code = WaitFor(pid_, timeout);
  if (code.ok()) pid_ = -1;
  return code;
}

absl::StatusOr<CommandResult> RunCommand(const std::string& binary, const std::vector<std::string>& args,
                                         const std::string& stdin_text, absl::Duration timeout) {
  const std::string dir = MakeTempDir();
  std::ofstream(dir + "/stdin") << stdin_text;
  absl::StatusOr<pid_t> pid = Spawn(binary, args, dir + "/stdin", dir + "/output");
  if (!pid.ok()) return pid.status();
  absl::StatusOr<int> code = WaitFor(*pid, timeout);
  if (!code.ok()) {
    kill(*pid, SIGKILL);
    waitpid(*pid, nullptr, 0);
  }
  CommandResult result{.exit_code = code.value_or(-1), .output = ReadFile(dir + "/output")};
  std::error_code ignored;
  std::filesystem::remove_all(dir, ignored);
  if (!code.ok()) return code.status();
  return result;
}

}  // namespace ksserve::testing

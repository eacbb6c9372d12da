#include "server/log.h"

#include <cstdio>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace ksserve {

void LogLine(LogSeverity severity, std::string_view message) {
  static absl::Mutex mutex(absl::kConstInit);
  const char tag = severity == LogSeverity::kInfo ? 'I' : severity == LogSeverity::kWarning ? 'W' : 'E';
  const std::string time = absl::FormatTime("%Y-%m-%d %H:%M:%E3S", absl::Now(), absl::UTCTimeZone());
  absl::MutexLock lock(&mutex);
  std::fprintf(stderr, "%s %c %.*s\n", time.c_str(), tag, static_cast<int>(message.size()), message.data());
  std::fflush(stderr);
}

}  // namespace ksserve

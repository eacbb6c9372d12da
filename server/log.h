// Readable, thread-safe log lines on stderr: "2026-11-25 04:50:01.123 I message".
#pragma once

#include <string_view>

#include "absl/strings/str_format.h"

namespace ksserve {

enum class LogSeverity { kInfo, kWarning, kError };

void LogLine(LogSeverity severity, std::string_view message);

template <typename... Args>
void LogInfo(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogSeverity::kInfo, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogWarning(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogSeverity::kWarning, absl::StrFormat(format, args...));
}
template <typename... Args>
void LogError(const absl::FormatSpec<Args...>& format, const Args&... args) {
  LogLine(LogSeverity::kError, absl::StrFormat(format, args...));
}

}  // namespace ksserve

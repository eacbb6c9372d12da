// A minimal HTTP/1.0 GET over loopback, enough to scrape /metrics without libcurl.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace ksserve::testing {

struct HttpResponse {
  int status = 0;
  std::string content_type;
  std::string body;
};

absl::StatusOr<HttpResponse> HttpGet(int port, const std::string& path);

}  // namespace ksserve::testing

#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <functional>

#include "agent/metrics.hpp"
#include "agent/sandbox_manager.hpp"

namespace wrenn::agent {

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;
using Respond = std::function<void(HttpResponse)>;

// What the API reports about how it is served.
struct ApiOptions {
    // Serving TCP without a token (--insecure-tcp): /healthz says so, with a warning.
    bool insecure_tcp = false;
    // The transport's connection counts, for /metrics; none when not set.
    std::function<ConnectionCounts()> connections;
    // The state filesystem's space, for /healthz and /metrics; none when not watched.
    std::function<SpaceStatus()> space;
};

// The HTTP API's routes, apart from any transport: parses and validates the request, hands the
// work to the SandboxManager (which runs kernel work on its pool) and answers through
// `respond`, exactly once, possibly from another thread. Tests call handle() directly.
class Api {
  public:
    Api(SandboxManager& manager, Platform& platform, Metrics& metrics, ApiOptions options = {});
    void handle(HttpRequest&& request, Respond respond);

  private:
    SandboxManager& manager_;
    Platform& platform_;
    Metrics& metrics_;
    ApiOptions options_;
};

// {"error": {"code": ..., "message": ...}} with the given status.
HttpResponse json_error(const HttpRequest& request, unsigned status, std::string_view code,
                        std::string_view message);

}  // namespace wrenn::agent

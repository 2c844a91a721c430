#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/verb.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "agent/platform/metrics.hpp"
#include "agent/sandboxes/sandbox_manager.hpp"
#include "http/server.hpp"

namespace wrenn::agent {

using HttpRequest = boost::beast::http::request<boost::beast::http::string_body>;
using HttpResponse = boost::beast::http::response<boost::beast::http::string_body>;
// A whole response converts to what a handler answers; an export answers a streamed one.
using Respond = http::Respond;

// What the API reports about how it is served.
struct ApiOptions {
    // Serving TCP without a token (--insecure-tcp): /healthz says so, with a warning.
    bool insecure_tcp = false;
    // The transport's connection counts, for /metrics; none when not set.
    std::function<ConnectionCounts()> connections;
    // The state filesystem's space, for /healthz and /metrics; none when not watched.
    std::function<SpaceStatus()> space;
    // The largest image PUT /templates/{name} takes (--max-template-bytes).
    std::uint64_t max_template_bytes = 256ull << 30;
    // The largest archive POST /sandboxes/import takes (--max-import-bytes; 0: no fixed
    // cap). Whatever this says, an archive is refused once it passes its template's size plus
    // 1% and 1 MiB, the most an archive of that template can honestly hold.
    std::uint64_t max_import_bytes = 0;
};

// The HTTP API's routes, apart from any transport: parses and validates the request, hands the
// work to the SandboxManager (which runs kernel work on its pool) and answers through
// `respond`, exactly once, possibly from another thread. Tests call handle() directly.
class Api {
  public:
    Api(SandboxManager& manager, Platform& platform, Metrics& metrics, ApiOptions options = {});
    void handle(HttpRequest&& request, Respond respond);
    // Which requests stream their body (the transport's ServerOptions::streamed_body): POST
    // /sandboxes/import, whose body is an archive of type application/vnd.wrenn.sandbox, and
    // PUT /templates/{name}, whose body is an image.
    [[nodiscard]] std::optional<http::StreamedBody> streamed_body(
        const http::RequestHeader& header) const;
    // A request streamed_body picked, its body read through `body` on the transfer pool.
    void handle_streamed(HttpRequest&& request, http::BodyReader body, Respond respond);

  private:
    // One request on its way through a route: the request (shared: answers may come from the
    // worker pool), the sandbox id its path names ("" where it names none), where the answer goes.
    struct Call {
        std::shared_ptr<HttpRequest> request;
        std::string id;
        Respond respond;
    };
    // A method, a path pattern ("/sandboxes/{id}/pause") and the function that answers it. No
    // method: the route answers any method on a path that no route with a method matches.
    struct Route {
        std::optional<boost::beast::http::verb> method;
        std::string_view pattern;
        void (Api::*answer)(const Call&);
    };
    // The table handle() routes by (api.cpp).
    static std::span<const Route> routes();

    // The routes, one function each.
    void health(const Call& call);
    void metrics(const Call& call);
    void list_templates(const Call& call);
    void list_sandboxes(const Call& call);
    void create_sandbox(const Call& call);
    void import_without_archive(const Call& call);
    void get_sandbox(const Call& call);
    void destroy_sandbox(const Call& call);
    void pause_sandbox(const Call& call);
    void resume_sandbox(const Call& call);
    void flatten_sandbox(const Call& call);
    void fork_sandbox(const Call& call);
    void export_sandbox(const Call& call);
    void no_such_action(const Call& call);
    void get_template(const Call& call);
    void upload_without_body(const Call& call);
    void download_template(const Call& call);
    void delete_template(const Call& call);
    void no_such_template_action(const Call& call);

    // The streamed routes.
    void import_sandbox(std::shared_ptr<HttpRequest> request, http::BodyReader body,
                        Respond respond);
    void upload_template(std::shared_ptr<HttpRequest> request, std::string name,
                         http::BodyReader body, Respond respond);

    SandboxManager& manager_;
    Platform& platform_;
    Metrics& metrics_;
    ApiOptions options_;
};

// {"error": {"code": ..., "message": ...}} with the given status.
HttpResponse json_error(const HttpRequest& request, unsigned status, std::string_view code,
                        std::string_view message);

}  // namespace wrenn::agent

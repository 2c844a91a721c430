#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/result.hpp"
#include "http/body_pipe.hpp"
#include "http/listen_address.hpp"

namespace wrenn::http {

using Request = boost::beast::http::request<boost::beast::http::string_body>;
using Response = boost::beast::http::response<boost::beast::http::string_body>;
using RequestHeader = boost::beast::http::request_header<>;

// A response whose body a worker writes through a BodyPipe while the server sends it, with
// chunked transfer encoding (HTTP/1.0: plain, then the connection closes). The reader's EOF
// after the writer's finish() ends it with the last chunk; a body cut short (the writer's
// fail(), or it went away) aborts the connection without the last chunk, so that the client
// sees a broken transfer. The server sets Transfer-Encoding, the version and keep-alive.
struct StreamedResponse {
    boost::beast::http::response_header<> header;
    BodyReader body;
};

// What a handler answers: a whole response (implicitly, as before) or a streamed one.
class Reply {
  public:
    Reply(Response response) : value_(std::move(response)) {}  // NOLINT: implicit by design
    Reply(StreamedResponse streamed)                           // NOLINT: implicit by design
        : value_(std::move(streamed)) {}
    [[nodiscard]] bool streamed() const { return value_.index() == 1; }
    Response& response() { return std::get<0>(value_); }
    StreamedResponse& stream() { return std::get<1>(value_); }

  private:
    std::variant<Response, StreamedResponse> value_;
};

// Delivers the response for one request. May be called from any thread, exactly once; later
// calls, and calls after the connection is gone, are dropped. The server sets Content-Length,
// the HTTP version and keep-alive on the response it is given. It holds the connection's strand,
// so it must be called and destroyed before the io_context is destroyed.
using Respond = std::function<void(Reply)>;
// Called on the connection's strand for every request that passed the transport checks; with
// several io_context threads it runs concurrently for different connections. Must not block:
// hand slow work to another thread and call respond from there. A handler that never responds
// has its connection closed after handler_timeout.
using Handler = std::function<void(Request&&, Respond)>;

// A request whose body the handler reads as it arrives instead of whole: the one media type
// its Content-Type must be (else 415) and the most bytes it may have (else 413).
struct StreamedBody {
    std::string media_type;
    std::uint64_t limit = 0;
};
// Handles the requests ServerOptions::streamed_body picked. The request carries the header
// only; the body's bytes arrive through `body` (read it on a worker thread: reads block). The
// handler may respond before the end of the body (a refusal): the server then stops reading
// it and closes the connection after the response.
using StreamHandler = std::function<void(Request&&, BodyReader body, Respond)>;

struct ServerOptions {
    std::vector<ListenAddress> listen;
    // When set, every request except GET /healthz needs "Authorization: Bearer <token>",
    // else 401 JSON. Without it, a TCP listener takes only a Host header naming a loopback
    // address or the listener's own (else 403), so that a DNS-rebinding web page cannot reach
    // it. On every listener: a request with an Origin header is refused (403), and a request
    // with a body, or any Content-Type, must be "application/json" (else 415), except that a
    // request streamed_body picks must have its own media type instead.
    std::optional<std::string> bearer_token;
    std::size_t body_limit = 64 * 1024;     // larger -> 413 JSON
    std::size_t header_limit = 8 * 1024;    // larger -> 431 JSON
    std::chrono::seconds read_timeout{30};  // per request, from its first byte; also bounds writes
    // Wait for the next request on a kept-alive connection.
    std::chrono::seconds idle_timeout{60};
    // Wait for a handler's response. Long on purpose: a flatten of a large image may take
    // minutes, and closing the connection would lose its answer, not stop the work.
    std::chrono::seconds handler_timeout{3600};
    // Each listener holds at most this many connections at a time; beyond it a new connection
    // is accepted and closed at once (counted in connections_refused()), so idle sockets on
    // one listener can neither use up the process's file descriptors nor lock out the others.
    std::size_t max_connections = 256;
    // Unix sockets get this group and mode 0660 when the group exists, else mode 0600; a
    // directory the server creates for a socket is 0750, with that group.
    std::string unix_socket_group = "wrenn";
    // Which requests stream their body to stream_handler, from the header (after the Origin,
    // Host and token checks): nullopt for an ordinary request (JSON, body_limit). Such a body
    // is read in pieces of at most 64 KiB and written into a BodyPipe with backpressure, so
    // memory stays bounded whatever its size. Timeouts: each read of a piece (and each write
    // of a streamed response's piece) must make progress within read_timeout, so a long
    // transfer that keeps moving is never cut; handler_timeout starts once the body has been
    // read whole. The connection closes after the response unless the body was read whole.
    std::function<std::optional<StreamedBody>(const RequestHeader&)> streamed_body;
    StreamHandler stream_handler;
};

namespace detail {
struct ServerState;
class ListenerBase;
}  // namespace detail

// Owns the listening sockets (and the unix socket files it created) and the live connections.
// A Server either listens on every address it was given or does not exist. Destroying it closes
// the listeners and every connection; responses still pending are dropped. The io_context must
// outlive it and every Respond callback that may still be called.
class Server {
  public:
    // Binds and listens on every address in opts.listen; accepting starts when ioc runs.
    // Errors read as "listen 127.0.0.1:7070: address already in use".
    static Result<std::unique_ptr<Server>> create(boost::asio::io_context& ioc, ServerOptions opts,
                                                  Handler handler);
    ~Server();
    Server(const Server&) = delete;
    Server& operator=(const Server&) = delete;

    // Closes the listeners (new connections are refused) and removes their socket files. Idle
    // connections close at once; busy ones finish their current request, answer it with
    // "Connection: close" and close. Safe to call from any thread, more than once.
    void stop_accepting();
    // Live connections, including those waiting for a handler's response.
    std::size_t connections() const;
    // Connections closed at once because their listener already held max_connections.
    std::uint64_t connections_refused() const;
    // The addresses listened on, with the real port where port 0 was asked for.
    std::vector<ListenAddress> bound() const;

  private:
    Server(std::shared_ptr<detail::ServerState> state,
           std::vector<std::shared_ptr<detail::ListenerBase>> listeners,
           std::vector<ListenAddress> bound);

    std::shared_ptr<detail::ServerState> state_;
    std::vector<std::shared_ptr<detail::ListenerBase>> listeners_;
    std::vector<ListenAddress> bound_;
};

// JSON error body used for every transport-level error: {"error":{"code":"...","message":"..."}}
// with Content-Type application/json; "Connection: close" unless keep_alive.
Response error_response(unsigned version, boost::beast::http::status status, std::string_view code,
                        std::string_view message, bool keep_alive);

}  // namespace wrenn::http

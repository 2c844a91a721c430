#pragma once

// What the server hands a handler and what a handler answers: requests, whole and streamed
// responses, the callbacks between them, and the JSON error body of the transport.

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/status.hpp>
#include <boost/beast/http/string_body.hpp>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "http/core/body_pipe.hpp"

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

// A request whose body the handler reads as it arrives instead of whole: the media type its
// Content-Type must be (else 415) and the most bytes it may have (else 413).
struct StreamedBody {
    std::string media_type;
    std::uint64_t limit = 0;
    // Other types the body may be sent as, and whether it may come without a Content-Type (the
    // handler then tells its form from its bytes).
    std::vector<std::string> other_types{};
    bool untyped = false;
};
// Handles the requests ServerOptions::streamed_body picked. The request carries the header
// only; the body's bytes arrive through `body` (read it on a worker thread: reads block). The
// handler may respond before the end of the body (a refusal): the server then stops reading
// it and closes the connection after the response.
using StreamHandler = std::function<void(Request&&, BodyReader body, Respond)>;

// JSON error body used for every transport-level error: {"error":{"code":"...","message":"..."}}
// with Content-Type application/json; "Connection: close" unless keep_alive.
Response error_response(unsigned version, boost::beast::http::status status, std::string_view code,
                        std::string_view message, bool keep_alive);

}  // namespace wrenn::http

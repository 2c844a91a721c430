#pragma once

// The transport's rules for a request, as pure functions of its header and the server's
// settings: which requests are refused before any body is read, and why; how a failed read
// is answered. The session applies them; the tests call them directly.

#include <boost/beast/core/error.hpp>
#include <boost/beast/http/status.hpp>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "http/core/listen_address.hpp"
#include "http/core/message.hpp"

namespace wrenn::http {

// ASCII letters compared without case, as header values that name a scheme or a type are.
bool iequals_ascii(std::string_view a, std::string_view b);

// Whether the client waits for "100 Continue" before it sends the body (RFC 9110 section
// 10.1.1): "Expect: 100-continue" in any case, on HTTP/1.1 or later.
bool expects_continue(const RequestHeader& req);

// Whether the request carries the bearer token, when there is one ("Bearer" in any case).
// GET /healthz passes without it: health checks come from load balancers that hold no token.
bool authorized(const std::optional<std::string>& token, const RequestHeader& req);

// Whether the request shows the token ("Authorization: Bearer <token>"), whatever its route.
bool carries_token(const std::string& token, const RequestHeader& req);

// Whether a Content-Type value is `wanted`: RFC 9110 section 8.3.1, type and subtype are
// case-insensitive and parameters (charset=utf-8) follow a ';'.
bool is_media_type(std::string_view value, std::string_view wanted);

// A header value to quote in a message: header values may carry bytes 0x80-0xFF (obs-text),
// which would make the JSON error body invalid UTF-8, so they are percent-encoded; over 100
// bytes it is cut and ends in "...".
std::string printable(std::string_view value);

// Whether a request's header announces a body: chunked, or a Content-Length above 0 (0 when
// there is none).
bool announces_body(bool chunked, std::uint64_t content_length);

// Why the transport refuses a request, from its header alone (so before a body is invited).
struct Refusal {
    boost::beast::http::status status;
    std::string_view code;
    std::string message;
};

// A Transfer-Encoding whose last coding is not "chunked" leaves a request's body without a
// length: Beast would read it as no body and the body as the next request (request smuggling
// behind a proxy that reads it the other way). RFC 9112 section 6.3 asks for 400 and a closed
// connection. `chunked` is what the parser made of the header.
std::optional<Refusal> framing_refusal(const RequestHeader& req, bool chunked);

// The transport's rules, in order: no Origin header (only browsers send one, and no web page
// may drive the server), an allowed Host on a TCP listener without a token (DNS rebinding),
// the bearer token, and JSON for a body or any Content-Type (a browser's cross-origin "simple"
// POST can only be text/plain, form-urlencoded or multipart, so it cannot pass). A streamed
// request's body must be of its own media type instead. tcp_listener is the address of the
// TCP listener the request came in on; nullopt for a unix socket.
std::optional<Refusal> refusal(const std::optional<std::string>& bearer_token,
                               const std::optional<ListenAddress>& tcp_listener,
                               const RequestHeader& req, bool has_body,
                               const StreamedBody* streamed = nullptr);

// The JSON error response for a refusal, in the request's HTTP version; a 401 also says
// "WWW-Authenticate: Bearer".
Response refusal_response(const RequestHeader& req, const Refusal& refused, bool keep_alive);

// How a failed read of a request ends, from Beast's error code.
enum class ReadFailure {
    ClientClosed,    // EOF between requests
    TimedOut,        // basic_stream's timer fired, and it closed the socket
    BodyTooLarge,    // over the parser's body limit: 413
    HeaderTooLarge,  // over the header limit, or the read buffer's: 431
    Malformed,       // not HTTP/1.x: 400
    Gone,            // reset, or closed in the middle of a request: nobody is left to answer
};
ReadFailure classify_read_failure(boost::beast::error_code ec);

}  // namespace wrenn::http

#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "http/core/listen_address.hpp"
#include "http/core/message.hpp"

namespace wrenn::http {

// How a Server listens, what it takes and how long it waits.
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
    // With a bearer token, a connection counts as unauthenticated until a request on it shows
    // the token. One that has not within auth_timeout is closed, and when a listener is full a
    // new connection closes the oldest unauthenticated one instead of being refused: clients
    // without the token can hold slots only briefly and never lock out those with it.
    std::chrono::seconds auth_timeout{10};
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

}  // namespace wrenn::http

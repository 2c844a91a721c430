#pragma once

#include <boost/asio/io_context.hpp>
#include <memory>

#include "common/result.hpp"
#include "http/connection/server_state.hpp"
#include "http/core/listen_address.hpp"

namespace wrenn::http::detail {

// One listening socket and its accept loop: each connection goes to a Session of its own, on a
// strand of its own, up to max_connections at a time; beyond that it is closed at once.
class ListenerBase {
  public:
    virtual ~ListenerBase() = default;
    // Starts accepting; connections come in once the io_context runs.
    virtual void start() = 0;
    // Idempotent; after it returns the socket is closed and new connections are refused. A
    // unix socket's file is removed, if it is still the one this listener bound.
    virtual void close() = 0;
};

// Binds and listens on address, a TCP address or a unix socket (made through a checked
// directory, replacing only a dead socket file); bound gets the address with the real port
// where port 0 was asked for. Errors read as "listen 127.0.0.1:7070: address already in use".
Result<std::shared_ptr<ListenerBase>> open_listener(boost::asio::io_context& ioc,
                                                    const std::shared_ptr<ServerState>& state,
                                                    const ListenAddress& address,
                                                    ListenAddress& bound);

}  // namespace wrenn::http::detail

#pragma once

#include <boost/asio/io_context.hpp>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "common/result.hpp"
#include "http/core/listen_address.hpp"
#include "http/core/message.hpp"
#include "http/core/server_options.hpp"

namespace wrenn::http {

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
    // Closes every connection now, dropping responses still pending and cutting streamed
    // bodies both ways (their readers and writers see an error): the end of a shutdown's grace.
    void close_connections();
    // Replaces the bearer token (a server started with one): requests read from now on must
    // carry the new one. No connection is dropped; one that showed the old token stays
    // counted as authenticated. Safe from any thread.
    void set_bearer_token(std::string token);
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

}  // namespace wrenn::http

#include "http/server.hpp"

#include <cerrno>

#include "http/connection/listener.hpp"
#include "http/connection/server_state.hpp"

namespace wrenn::http {

namespace net = boost::asio;

Result<std::unique_ptr<Server>> Server::create(net::io_context& ioc, ServerOptions opts,
                                               Handler handler) {
    if (opts.listen.empty()) {
        return Error("start http server", EINVAL, "no listen address");
    }
    if (!handler) {
        return Error("start http server", EINVAL, "no handler");
    }
    auto state = std::make_shared<detail::ServerState>(std::move(opts), std::move(handler));
    std::vector<std::shared_ptr<detail::ListenerBase>> listeners;
    std::vector<ListenAddress> bound;
    for (const auto& address : state->opts.listen) {
        ListenAddress actual;
        auto listener = detail::open_listener(ioc, state, address, actual);
        if (!listener) {
            // The listeners opened so far close (and remove their socket files) on the way out.
            return std::move(listener).error();
        }
        listeners.push_back(std::move(*listener));
        bound.push_back(std::move(actual));
    }
    for (auto& listener : listeners) {
        listener->start();
    }
    return std::unique_ptr<Server>(
        new Server(std::move(state), std::move(listeners), std::move(bound)));
}

Server::Server(std::shared_ptr<detail::ServerState> state,
               std::vector<std::shared_ptr<detail::ListenerBase>> listeners,
               std::vector<ListenAddress> bound)
    : state_(std::move(state)), listeners_(std::move(listeners)), bound_(std::move(bound)) {}

Server::~Server() {
    stop_accepting();
    close_connections();
}

void Server::close_connections() {
    for (auto& session : state_->live()) {
        session->close_now();
    }
}

void Server::stop_accepting() {
    // Set before closing the listeners: a session accepted in the meantime sees the flag when
    // it starts reading, and every session seen below gets drain().
    const bool was_draining = state_->draining.exchange(true);
    for (auto& listener : listeners_) {
        listener->close();
    }
    if (!was_draining) {
        for (auto& session : state_->live()) {
            session->drain();
        }
    }
}

void Server::set_bearer_token(std::string token) {
    state_->set_token(std::move(token));
}

std::size_t Server::connections() const {
    return state_->connections.load();
}

std::uint64_t Server::connections_refused() const {
    return state_->refused.load();
}

std::vector<ListenAddress> Server::bound() const {
    return bound_;
}

}  // namespace wrenn::http

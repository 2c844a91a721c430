#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "http/core/listen_address.hpp"
#include "http/core/message.hpp"
#include "http/core/server_options.hpp"

namespace wrenn::http::detail {

// A live connection as the server sees it; both calls may come from any thread.
class SessionBase {
  public:
    virtual ~SessionBase() = default;
    // Finish the current request, if any, then close.
    virtual void drain() = 0;
    // Close now, dropping any response still pending.
    virtual void close_now() = 0;
    // Give up the connection's slot on its listener at once and close: a new connection
    // takes it (the server has a token and this one has not shown it).
    virtual void evict() = 0;
};

// What the server and its sessions share. Sessions keep it alive, so it outlives the Server
// object when connections are still closing.
struct ServerState {
    ServerState(ServerOptions o, Handler h)
        : opts(std::move(o)), handler(std::move(h)), token_(opts.bearer_token) {}

    const ServerOptions opts;
    const Handler handler;
    std::atomic<std::size_t> connections{0};
    std::atomic<std::uint64_t> refused{0};
    std::atomic<bool> draining{false};
    std::atomic<std::uint64_t> next_id{1};

    std::mutex mutex;
    std::unordered_map<std::uint64_t, std::weak_ptr<SessionBase>> sessions;

    void add(std::uint64_t id, std::weak_ptr<SessionBase> session) {
        std::lock_guard lock(mutex);
        sessions.emplace(id, std::move(session));
    }
    void remove(std::uint64_t id) {
        std::lock_guard lock(mutex);
        sessions.erase(id);
    }
    // The bearer token now: opts.bearer_token at first, then what set_token() put there.
    std::optional<std::string> token() const {
        std::lock_guard lock(token_mu_);
        return token_;
    }
    void set_token(std::string token) {
        std::lock_guard lock(token_mu_);
        token_ = std::move(token);
    }

    std::vector<std::shared_ptr<SessionBase>> live() {
        std::vector<std::shared_ptr<SessionBase>> out;
        std::lock_guard lock(mutex);
        for (auto& [id, weak] : sessions) {
            if (auto session = weak.lock()) {
                out.push_back(std::move(session));
            }
        }
        return out;
    }

  private:
    mutable std::mutex token_mu_;
    std::optional<std::string> token_;
};

// What the sessions of one listener share with it.
struct ListenerInfo {
    std::string name;  // "127.0.0.1:7070", "unix:/run/wrenn/agent.sock"
    // Set for a TCP listener: the address a Host header may name besides loopback.
    std::optional<ListenAddress> tcp;
    std::atomic<std::size_t> connections{0};

    // The connections that have not shown the bearer token yet, oldest first (empty when
    // the server has no token).
    void add_unauthenticated(std::uint64_t id, std::weak_ptr<SessionBase> session) {
        std::lock_guard lock(mutex);
        unauthenticated.emplace_back(id, std::move(session));
    }
    void authenticated(std::uint64_t id) {
        std::lock_guard lock(mutex);
        std::erase_if(unauthenticated, [id](const auto& entry) { return entry.first == id; });
    }
    // Takes the oldest unauthenticated connection still alive off the list; null if none.
    std::shared_ptr<SessionBase> take_oldest_unauthenticated() {
        std::lock_guard lock(mutex);
        while (!unauthenticated.empty()) {
            auto session = unauthenticated.front().second.lock();
            unauthenticated.pop_front();
            if (session) {
                return session;
            }
        }
        return nullptr;
    }

  private:
    std::mutex mutex;
    std::list<std::pair<std::uint64_t, std::weak_ptr<SessionBase>>> unauthenticated;
};

}  // namespace wrenn::http::detail

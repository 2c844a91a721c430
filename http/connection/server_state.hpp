#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
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
};

// What the server and its sessions share. Sessions keep it alive, so it outlives the Server
// object when connections are still closing.
struct ServerState {
    ServerState(ServerOptions o, Handler h) : opts(std::move(o)), handler(std::move(h)) {}

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
};

// What the sessions of one listener share with it.
struct ListenerInfo {
    std::string name;  // "127.0.0.1:7070", "unix:/run/wrenn/agent.sock"
    // Set for a TCP listener: the address a Host header may name besides loopback.
    std::optional<ListenAddress> tcp;
    std::atomic<std::size_t> connections{0};
};

}  // namespace wrenn::http::detail

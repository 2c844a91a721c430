#pragma once

// The HTTP server tests' fixture: a Server on io_context threads with a handler that echoes,
// the requests they send and the checks they make. The client is http_test_client.hpp's.

#include <spdlog/spdlog.h>
#include <stdlib.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "http/server.hpp"
#include "http_test_client.hpp"

namespace wrenn::http::testing {

using namespace std::chrono_literals;

inline ListenAddress loopback_any_port() {
    ListenAddress a;
    a.kind = ListenAddress::Kind::Tcp;
    a.host = "127.0.0.1";
    a.port = 0;
    return a;
}

inline ListenAddress unix_address(const std::string& path) {
    ListenAddress a;
    a.kind = ListenAddress::Kind::Unix;
    a.path = path;
    return a;
}

inline Response text_response(const Request& req, std::string body) {
    Response res{boost::beast::http::status::ok, req.version()};
    res.set(boost::beast::http::field::content_type, "text/plain");
    res.body() = std::move(body);
    return res;
}

// Answers "<METHOD> <target> <body>" at once.
inline void echo(Request&& req, Respond respond) {
    std::string body = std::string(req.method_string()) + " " + std::string(req.target());
    if (!req.body().empty()) {
        body += " " + req.body();
    }
    respond(text_response(req, std::move(body)));
}

// A temp directory removed with its contents at scope exit.
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "wrenn-http-XXXXXX").string();
        REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
        path = tmpl;
    }
    ~TempDir() {
        std::error_code ec;
        std::filesystem::remove_all(path, ec);
    }
};

// Threads that the test's handlers start to answer later; joined before the server goes.
struct Workers {
    std::mutex mutex;
    std::vector<std::thread> threads;
    void spawn(std::function<void()> f) {
        std::lock_guard lock(mutex);
        threads.emplace_back(std::move(f));
    }
    void join() {
        std::vector<std::thread> all;
        {
            std::lock_guard lock(mutex);
            all.swap(threads);
        }
        for (auto& t : all) {
            t.join();
        }
    }
    ~Workers() { join(); }
};

// A server running on two io_context threads, as the agent may run it.
struct TestServer {
    IoThreads io;
    std::unique_ptr<Server> server;

    TestServer(ServerOptions opts, Handler handler) : saved_level(spdlog::get_level()) {
        // The failure tests provoke hundreds of warnings by design.
        spdlog::set_level(spdlog::level::err);
        if (opts.listen.empty()) {
            opts.listen.push_back(loopback_any_port());
        }
        auto created = Server::create(io.ioc, std::move(opts), std::move(handler));
        if (!created.ok()) {
            FAIL("create: " << created.error().message());
        }
        server = std::move(*created);
        io.start();
    }
    ~TestServer() {
        shutdown();
        spdlog::set_level(saved_level);
    }
    spdlog::level::level_enum saved_level;

    void shutdown() {
        server.reset();
        io.stop();
    }

    std::uint16_t port() const { return server->bound().at(0).port; }

    // Waits until the server has this many live connections.
    bool wait_connections(std::size_t n, std::chrono::milliseconds timeout = 5s) const {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        while (server->connections() != n) {
            if (std::chrono::steady_clock::now() > deadline) {
                return false;
            }
            std::this_thread::sleep_for(2ms);
        }
        return true;
    }
};

inline std::string get(std::string_view target, std::string_view extra_headers = "") {
    return "GET " + std::string(target) + " HTTP/1.1\r\nHost: 127.0.0.1\r\n" +
           std::string(extra_headers) + "\r\n";
}

inline std::string post(std::string_view target, std::string_view body) {
    return "POST " + std::string(target) +
           " HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\n\r\n" + std::string(body);
}

inline void check_json_error(const Response& res, boost::beast::http::status status,
                             std::string_view code) {
    CHECK(res.result() == status);
    CHECK(res[boost::beast::http::field::content_type] == "application/json");
    CHECK_THAT(res.body(), Catch::Contains("{\"error\":{\"code\":\"" + std::string(code) + "\""));
}

}  // namespace wrenn::http::testing

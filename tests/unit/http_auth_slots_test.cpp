// With a bearer token, connections that have not shown it hold a listener's slots only briefly:
// they are closed after auth_timeout, and a full listener gives their slots to new connections,
// so clients without the token cannot lock out those with it (issue 27, item 5).
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "http/server.hpp"
#include "http_test_server.hpp"

using namespace std::chrono_literals;
using namespace wrenn::http::testing;
using wrenn::http::ServerOptions;

namespace {

constexpr const char* kToken = "0123456789abcdef";

std::string get_with_token(std::string_view target) {
    return get(target, std::string("Authorization: Bearer ") + kToken + "\r\n");
}

ServerOptions token_options(std::size_t max_connections, std::chrono::seconds auth_timeout) {
    ServerOptions opts;
    opts.bearer_token = kToken;
    opts.max_connections = max_connections;
    opts.auth_timeout = auth_timeout;
    opts.read_timeout = 30s;
    opts.idle_timeout = 30s;
    return opts;
}

// One request on the client; the body of its 200, or "" when there is none.
std::string ask(Client& c, const std::string& request) {
    if (!c.send(request)) {
        return "";
    }
    auto res = c.read_response();
    return res && res->result_int() == 200 ? res->body() : "";
}

}  // namespace

TEST_CASE("http auth: a connection that never shows the token is closed after auth_timeout",
          "[http]") {
    TestServer ts(token_options(16, 1s), echo);
    Client silent(ts.port());
    Client healthz_only(ts.port());
    Client authenticated(ts.port());
    CHECK(ask(healthz_only, get("/healthz")) == "GET /healthz");
    CHECK(ask(authenticated, get_with_token("/a")) == "GET /a");

    // read_timeout and idle_timeout are 30 s: only the 1 s auth timeout can close these two.
    const auto start = std::chrono::steady_clock::now();
    CHECK(silent.closed_by_server(5s));
    CHECK(healthz_only.closed_by_server(5s));
    CHECK(std::chrono::steady_clock::now() - start < 5s);
    // The one that showed the token is kept past it.
    std::this_thread::sleep_for(500ms);
    CHECK(ask(authenticated, get_with_token("/b")) == "GET /b");
}

TEST_CASE("http auth: a full listener gives the oldest unauthenticated slot to a new connection",
          "[http]") {
    TestServer ts(token_options(4, 60s), echo);
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 4; ++i) {
        idle.push_back(std::make_unique<Client>(ts.port()));
    }
    REQUIRE(ts.wait_connections(4));

    // Four clients without the token fill the listener; a client with it still gets in, and
    // the oldest idle one is the one closed.
    Client with_token(ts.port());
    CHECK(ask(with_token, get_with_token("/in")) == "GET /in");
    CHECK(idle[0]->closed_by_server(2s));
    CHECK(ts.server->connections_refused() == 0);
    REQUIRE(ts.wait_connections(4));
    for (std::size_t i = 1; i < idle.size(); ++i) {
        CHECK(ask(*idle[i], get("/healthz")) == "GET /healthz");
    }

    SECTION("connections that showed the token are never closed for a new one") {
        std::vector<std::unique_ptr<Client>> trusted;
        for (int i = 0; i < 3; ++i) {
            trusted.push_back(std::make_unique<Client>(ts.port()));
            CHECK(ask(*trusted.back(), get_with_token("/t")) == "GET /t");
        }
        // Now four hold the token; the idle ones have made room one by one.
        REQUIRE(ts.wait_connections(4));
        Client fifth(ts.port());
        CHECK(fifth.closed_by_server(2s));
        CHECK(ts.server->connections_refused() == 1);
        CHECK(ask(with_token, get_with_token("/still")) == "GET /still");
        for (auto& t : trusted) {
            CHECK(ask(*t, get_with_token("/t2")) == "GET /t2");
        }
    }
}

TEST_CASE("http auth: without a token nothing is closed for being unauthenticated", "[http]") {
    ServerOptions opts = token_options(2, 1s);
    opts.bearer_token.reset();
    TestServer ts(opts, echo);
    Client a(ts.port());
    Client b(ts.port());
    REQUIRE(ts.wait_connections(2));
    std::this_thread::sleep_for(1500ms);
    CHECK(ask(a, get("/a")) == "GET /a");
    // A full listener without a token refuses as before.
    Client c(ts.port());
    CHECK(c.closed_by_server(2s));
    CHECK(ts.server->connections_refused() == 1);
    CHECK(ask(b, get("/b")) == "GET /b");
}

TEST_CASE("http auth: a new token takes effect at once and drops no connection", "[http]") {
    TestServer ts(token_options(16, 60s), echo);
    Client kept(ts.port());
    CHECK(ask(kept, get_with_token("/before")) == "GET /before");
    const std::string rotated = "fedcba9876543210";
    ts.server->set_bearer_token(rotated);
    // The same connection: the old token is refused now, the new one passes.
    REQUIRE(kept.send(get_with_token("/old")));
    auto old = kept.read_response();
    REQUIRE(old);
    CHECK(old->result_int() == 401);
    CHECK(ask(kept, get("/new", "Authorization: Bearer " + rotated + "\r\n")) == "GET /new");
    Client fresh(ts.port());
    CHECK(ask(fresh, get("/fresh", "Authorization: Bearer " + rotated + "\r\n")) == "GET /fresh");
}

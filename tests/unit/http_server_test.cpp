// The HTTP transport over real sockets, 127.0.0.1 with port 0: requests and responses, limits,
// timeouts, the token, draining, and what a browser or a careless client sends.
#include <spdlog/spdlog.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/unique_fd.hpp"
#include "http/server.hpp"
#include "http_test_server.hpp"

namespace bhttp = boost::beast::http;
namespace net = boost::asio;
using namespace std::chrono_literals;
using namespace wrenn::http::testing;
using wrenn::UniqueFd;
using wrenn::http::Request;
using wrenn::http::Respond;
using wrenn::http::Response;
using wrenn::http::ServerOptions;

TEST_CASE("http server: GET returns the handler's body", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    REQUIRE(c.send(get("/v1/sandboxes?x=1")));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->result() == bhttp::status::ok);
    CHECK(res->body() == "GET /v1/sandboxes?x=1");
    CHECK(res->at(bhttp::field::content_length) == "21");
    CHECK(res->keep_alive());
    CHECK(ts.server->connections() == 1);
}

TEST_CASE("http server: keep-alive serves two requests on one connection", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    REQUIRE(c.send(get("/one")));
    auto first = c.read_response();
    REQUIRE(first);
    CHECK(first->body() == "GET /one");
    REQUIRE(c.send(post("/two", "hello")));
    auto second = c.read_response();
    REQUIRE(second);
    CHECK(second->body() == "POST /two hello");
    // Pipelined: both requests in one write, answered in order.
    REQUIRE(c.send(get("/three") + get("/four", "Connection: close\r\n")));
    auto third = c.read_response();
    auto fourth = c.read_response();
    REQUIRE(third);
    REQUIRE(fourth);
    CHECK(third->body() == "GET /three");
    CHECK(fourth->body() == "GET /four");
    CHECK_FALSE(fourth->keep_alive());
    CHECK(c.closed_by_server());
    c.close();  // else the server lingers, waiting for our FIN, for up to 2 s
    CHECK(ts.wait_connections(0));
}

TEST_CASE("http server: a handler may respond later from another thread", "[http]") {
    Workers workers;
    TestServer ts({}, [&](Request&& req, Respond respond) {
        workers.spawn([req = std::move(req), respond] {
            std::this_thread::sleep_for(200ms);
            respond(text_response(req, "late"));
            respond(text_response(req, "twice"));  // a second call is dropped
        });
    });
    Client c(ts.port());
    const auto start = std::chrono::steady_clock::now();
    REQUIRE(c.send(get("/slow")));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->body() == "late");
    CHECK(std::chrono::steady_clock::now() - start >= 190ms);
    // The connection is still usable after the dropped second response.
    REQUIRE(c.send(get("/again")));
    auto again = c.read_response();
    REQUIRE(again);
    CHECK(again->body() == "late");
    workers.join();
}

TEST_CASE("http server: a body over the limit gets 413 and the connection closes", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    c.send(post("/big", std::string(64 * 1024 + 1, 'x')));  // the server may close mid-way
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::payload_too_large, "payload_too_large");
    CHECK_FALSE(res->keep_alive());
    CHECK(c.closed_by_server());

    // Exactly at the limit is fine.
    Client ok(ts.port());
    REQUIRE(ok.send(post("/big", std::string(64 * 1024, 'x'))));
    auto fine = ok.read_response();
    REQUIRE(fine);
    CHECK(fine->result() == bhttp::status::ok);

    // A chunked body over the limit is refused too.
    Client chunked(ts.port());
    std::string req =
        "POST /c HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n";
    for (int i = 0; i < 3; ++i) {
        req += "8000\r\n" + std::string(0x8000, 'y') + "\r\n";
    }
    req += "0\r\n\r\n";
    chunked.send(req);
    auto refused = chunked.read_response();
    REQUIRE(refused);
    check_json_error(*refused, bhttp::status::payload_too_large, "payload_too_large");
}

TEST_CASE("http server: a header over the limit gets 431", "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    c.send(get("/", "X-Big: " + std::string(9000, 'h') + "\r\n"));
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::request_header_fields_too_large, "header_too_large");
    CHECK_FALSE(res->keep_alive());
    CHECK(c.closed_by_server());
}

TEST_CASE("http server: malformed requests get 400 and the connection closes", "[http]") {
    TestServer ts({}, echo);
    for (const char* garbage :
         {"GARBAGE\r\n\r\n", "GET / HTTP/9.9\r\n\r\n", "\x01\x02\x03 / x\r\n\r\n",
          "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: nope\r\n\r\n",
          "GET / HTTP/1.1\r\nBad Header\r\n\r\n"}) {
        INFO("request: " << garbage);
        Client c(ts.port());
        REQUIRE(c.send(garbage));
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::bad_request, "bad_request");
        CHECK((*res)[bhttp::field::connection] == "close");
        CHECK(c.closed_by_server());
    }
    CHECK(ts.wait_connections(0));
}

TEST_CASE("http server: a slow client is cut off after read_timeout", "[http]") {
    ServerOptions opts;
    opts.read_timeout = 1s;
    opts.idle_timeout = 10s;
    TestServer ts(opts, echo);

    SECTION("half a request, then silence") {
        Client c(ts.port());
        const auto start = std::chrono::steady_clock::now();
        REQUIRE(c.send("GET /half HTTP/1.1\r\nHost: te"));
        CHECK(c.closed_by_server(5s));
        const auto took = std::chrono::steady_clock::now() - start;
        CHECK(took >= 900ms);
        CHECK(took < 3s);
    }
    SECTION("a trickle of bytes does not extend the deadline") {
        Client c(ts.port());
        const auto start = std::chrono::steady_clock::now();
        const std::string req = get("/trickle");
        bool closed = false;
        for (char ch : req.substr(0, req.size() - 1)) {
            if (!c.send(std::string_view(&ch, 1))) {
                closed = true;
                break;
            }
            std::this_thread::sleep_for(100ms);
            if (std::chrono::steady_clock::now() - start > 2500ms) {
                break;
            }
        }
        CHECK((closed || c.closed_by_server(2s)));
        CHECK(std::chrono::steady_clock::now() - start < 4s);
    }
    SECTION("connecting and sending nothing") {
        Client c(ts.port());
        CHECK(c.closed_by_server(5s));
    }
    CHECK(ts.wait_connections(0));
}

TEST_CASE("http server: bearer token", "[http]") {
    ServerOptions opts;
    // emplace, not "=": GCC 12 misreads operator= on an empty optional<string> as reading an
    // uninitialized string (-Wmaybe-uninitialized) once ServerOptions grew.
    opts.bearer_token.emplace("s3cret-token");
    TestServer ts(std::move(opts), echo);
    Client c(ts.port());

    REQUIRE(c.send(get("/v1/sandboxes")));
    auto missing = c.read_response();
    REQUIRE(missing);
    check_json_error(*missing, bhttp::status::unauthorized, "unauthorized");
    CHECK((*missing)[bhttp::field::www_authenticate] == "Bearer");
    CHECK(missing->keep_alive());

    for (const char* wrong : {"Bearer s3cret-tokeN", "Bearer s3cret-token-longer", "Bearer s3cret",
                              "Bearer ", "Basic s3cret-token", "s3cret-token"}) {
        INFO("Authorization: " << wrong);
        REQUIRE(c.send(get("/v1/sandboxes", std::string("Authorization: ") + wrong + "\r\n")));
        auto res = c.read_response();
        REQUIRE(res);
        check_json_error(*res, bhttp::status::unauthorized, "unauthorized");
    }

    REQUIRE(c.send(get("/v1/sandboxes", "Authorization: Bearer s3cret-token\r\n")));
    auto right = c.read_response();
    REQUIRE(right);
    CHECK(right->result() == bhttp::status::ok);
    CHECK(right->body() == "GET /v1/sandboxes");

    REQUIRE(c.send(get("/v1/sandboxes", "Authorization: bearer s3cret-token\r\n")));
    auto lower = c.read_response();
    REQUIRE(lower);
    CHECK(lower->result() == bhttp::status::ok);

    REQUIRE(c.send(get("/healthz")));
    auto health = c.read_response();
    REQUIRE(health);
    CHECK(health->result() == bhttp::status::ok);

    REQUIRE(c.send(post("/healthz", "")));
    auto post_health = c.read_response();
    REQUIRE(post_health);
    CHECK(post_health->result() == bhttp::status::unauthorized);
}

TEST_CASE("http server: stop_accepting refuses new connections and finishes work", "[http]") {
    Workers workers;
    std::atomic<int> slow_started{0};
    TestServer ts({}, [&](Request&& req, Respond respond) {
        if (req.target() == "/slow") {
            slow_started = 1;
            workers.spawn([req = std::move(req), respond] {
                std::this_thread::sleep_for(300ms);
                respond(text_response(req, "slow done"));
            });
            return;
        }
        echo(std::move(req), std::move(respond));
    });
    const auto port = ts.port();

    Client idle(port);  // served once, then idle between requests
    REQUIRE(idle.send(get("/first")));
    REQUIRE(idle.read_response());

    Client busy(port);
    REQUIRE(busy.send(get("/slow")));
    while (slow_started == 0) {
        std::this_thread::sleep_for(1ms);
    }
    ts.server->stop_accepting();
    ts.server->stop_accepting();  // idempotent

    UniqueFd refused;
    CHECK(Client::connect_tcp(port, refused) == ECONNREFUSED);

    CHECK(idle.closed_by_server(2s));
    auto res = busy.read_response();
    REQUIRE(res);
    CHECK(res->body() == "slow done");
    CHECK_FALSE(res->keep_alive());
    CHECK(busy.closed_by_server(2s));
    busy.close();
    idle.close();
    CHECK(ts.wait_connections(0));
    workers.join();
}

TEST_CASE("http server: a client gone before the response is no problem", "[http]") {
    Workers workers;
    std::atomic<int> responded{0};
    TestServer ts({}, [&](Request&& req, Respond respond) {
        workers.spawn([&responded, req = std::move(req), respond] {
            std::this_thread::sleep_for(100ms);
            respond(text_response(req, "nobody listens"));
            ++responded;
        });
    });
    {
        Client gone(ts.port());
        REQUIRE(gone.send(get("/a")));
        std::this_thread::sleep_for(20ms);
        gone.close();
    }
    {
        Client reset(ts.port());
        REQUIRE(reset.send(get("/b")));
        std::this_thread::sleep_for(20ms);
        reset.reset();
    }
    while (responded < 2) {
        std::this_thread::sleep_for(5ms);
    }
    CHECK(ts.wait_connections(0));
    Client next(ts.port());
    REQUIRE(next.send(get("/c")));
    auto res = next.read_response();
    REQUIRE(res);
    CHECK(res->body() == "nobody listens");
    workers.join();
}

TEST_CASE("http server: a handler that never responds cannot hold the connection", "[http]") {
    std::mutex mutex;
    std::vector<Respond> kept;
    ServerOptions opts;
    opts.handler_timeout = 1s;
    TestServer ts(opts, [&](Request&&, Respond respond) {
        std::lock_guard lock(mutex);
        kept.push_back(std::move(respond));
    });
    Client c(ts.port());
    REQUIRE(c.send(get("/forever")));
    CHECK(c.closed_by_server(4s));
    CHECK(ts.wait_connections(0));
    // Answering after the session is gone is dropped quietly.
    std::lock_guard lock(mutex);
    REQUIRE(kept.size() == 1);
    kept[0](Response{bhttp::status::ok, 11});
    kept.clear();  // a Respond must not outlive the io_context (it holds the strand)
}

TEST_CASE("http server: Expect: 100-continue invites the body, unless unauthorized", "[http]") {
    ServerOptions opts;
    opts.bearer_token.emplace("tok");
    TestServer ts(std::move(opts), echo);
    const std::string head =
        "POST /v1/x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 5\r\nExpect: 100-continue\r\n";

    Client c(ts.port());
    REQUIRE(c.send(head + "Authorization: Bearer tok\r\n\r\n"));
    auto interim = c.read_response();
    REQUIRE(interim);
    CHECK(interim->result() == bhttp::status::continue_);
    REQUIRE(c.send("hello"));
    auto res = c.read_response();
    REQUIRE(res);
    CHECK(res->body() == "POST /v1/x hello");

    Client denied(ts.port());
    REQUIRE(denied.send(head + "\r\n"));
    auto refused = denied.read_response();
    REQUIRE(refused);
    check_json_error(*refused, bhttp::status::unauthorized, "unauthorized");
    CHECK_FALSE(refused->keep_alive());
    CHECK(denied.closed_by_server());
}

TEST_CASE("http server: a handler that throws gets a 500", "[http]") {
    TestServer ts({}, [](Request&&, Respond) { throw std::runtime_error("boom"); });
    Client c(ts.port());
    REQUIRE(c.send(get("/throw")));
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::internal_server_error, "internal_error");
}

TEST_CASE("http server: a cut at every byte of a request leaves the server serving", "[http]") {
    ServerOptions opts;
    opts.read_timeout = 2s;
    TestServer ts(opts, echo);
    const std::string request = post("/v1/sandboxes", "{\"id\":\"sb1\"}");
    for (std::size_t cut = 0; cut <= request.size(); ++cut) {
        INFO("cut after " << cut << " bytes");
        {
            Client c(ts.port());
            REQUIRE(c.send(std::string_view(request).substr(0, cut)));
            if (cut % 2 == 0) {
                c.close();
            } else {
                c.reset();
            }
        }
        {
            // A byte replaced by NUL at the same offset: an answer or a close, never a crash.
            std::string broken = request;
            if (cut < broken.size()) {
                broken[cut] = '\0';
            }
            Client c(ts.port());
            c.send(broken);
            auto res = c.read_response(3s);
            if (res) {
                CHECK((res->result() == bhttp::status::ok ||
                       res->result() == bhttp::status::bad_request));
            }
        }
        Client next(ts.port());
        REQUIRE(next.send(request));
        auto res = next.read_response();
        REQUIRE(res);
        CHECK(res->body() == "POST /v1/sandboxes {\"id\":\"sb1\"}");
    }
    CHECK(ts.wait_connections(0));
}

// ---------------------------------------------------------------------------------------------
// Request hygiene: what a browser, a DNS-rebinding page or a careless client sends is refused.

namespace {

std::string raw(std::string_view method, std::string_view headers, std::string_view body = {}) {
    std::string out = std::string(method) + " /x HTTP/1.1\r\n" + std::string(headers);
    if (!body.empty()) {
        out += "Content-Length: " + std::to_string(body.size()) + "\r\n";
    }
    return out + "\r\n" + std::string(body);
}

Response one(const TestServer& ts, const std::string& bytes) {
    Client c(ts.port());
    REQUIRE(c.send(bytes));
    auto res = c.read_response();
    INFO("request: " << bytes);
    REQUIRE(res);
    return std::move(*res);
}

}  // namespace

TEST_CASE("http server: a body must be Content-Type: application/json, else 415", "[http]") {
    TestServer ts({}, echo);
    const std::string host = "Host: 127.0.0.1\r\n";
    for (const auto* type :
         {"text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
          "application/jsonp", "application/json-seq", "json", ""}) {
        INFO("Content-Type: " << type);
        auto res = one(ts, raw("POST", host + "Content-Type: " + type + "\r\n", "{\"id\":\"a\"}"));
        check_json_error(res, bhttp::status::unsupported_media_type, "unsupported_media_type");
        CHECK_THAT(res.body(), Catch::Contains("application/json"));
    }
    // A body with no Content-Type at all.
    auto none = one(ts, raw("POST", host, "{}"));
    check_json_error(none, bhttp::status::unsupported_media_type, "unsupported_media_type");
    CHECK_THAT(none.body(), Catch::Contains("no Content-Type"));
    // A text/plain form with no fields has an empty body; it is still refused.
    auto empty = one(ts, raw("POST", host + "Content-Type: text/plain\r\nContent-Length: 0\r\n"));
    check_json_error(empty, bhttp::status::unsupported_media_type, "unsupported_media_type");
    // What a JSON client sends passes, with parameters and in any case.
    for (const auto* type : {"application/json", "application/json; charset=utf-8",
                             "Application/JSON;charset=UTF-8", " application/json "}) {
        INFO("Content-Type: " << type);
        auto res = one(ts, raw("POST", host + "Content-Type: " + type + "\r\n", "{}"));
        CHECK(res.result() == bhttp::status::ok);
        CHECK(res.body() == "POST /x {}");
    }
    // No body and no Content-Type: a plain POST (pause) or GET passes.
    CHECK(one(ts, raw("POST", host)).result() == bhttp::status::ok);
    CHECK(one(ts, raw("GET", host)).result() == bhttp::status::ok);
    // The 415 keeps the connection: the body was read.
    Client c(ts.port());
    REQUIRE(c.send(raw("POST", host + "Content-Type: text/plain\r\n", "x")));
    auto refused = c.read_response();
    REQUIRE(refused);
    CHECK(refused->result() == bhttp::status::unsupported_media_type);
    REQUIRE(c.send(get("/after")));
    auto after = c.read_response();
    REQUIRE(after);
    CHECK(after->body() == "GET /after");
}

TEST_CASE("http server: a text/plain body with Expect: 100-continue is refused before the body",
          "[http]") {
    TestServer ts({}, echo);
    Client c(ts.port());
    REQUIRE(
        c.send("POST /x HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\n"
               "Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"));
    auto res = c.read_response();
    REQUIRE(res);
    check_json_error(*res, bhttp::status::unsupported_media_type, "unsupported_media_type");
}

TEST_CASE("http server: any request with an Origin header is refused 403", "[http]") {
    std::atomic<int> handled{0};
    TestServer ts({}, [&](Request&& req, Respond respond) {
        ++handled;
        echo(std::move(req), std::move(respond));
    });
    // What a web page's fetch() or form sends: the "simple" cross-origin POSTs that need no
    // preflight, and the same-origin ones of a DNS-rebinding page.
    for (const auto* request : {
             "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1:7070\r\nOrigin: http://evil.example\r\n"
             "Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}",
             "POST /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: null\r\n"
             "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
             "DELETE /sandboxes/sb1 HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: "
             "http://127.0.0.1\r\n\r\n",
             "GET /sandboxes HTTP/1.1\r\nHost: 127.0.0.1\r\norigin: http://a\r\n\r\n",
         }) {
        INFO(request);
        auto res = one(ts, request);
        check_json_error(res, bhttp::status::forbidden, "origin_refused");
    }
    CHECK(handled == 0);
    // Even with the right token: a browser must not carry it across origins.
    ServerOptions with_token;
    with_token.bearer_token = "0123456789abcdef";
    TestServer tok(std::move(with_token), echo);
    auto res = one(tok,
                   "GET /x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer 0123456789abcdef\r\n"
                   "Origin: http://a\r\n\r\n");
    check_json_error(res, bhttp::status::forbidden, "origin_refused");
}

TEST_CASE("http server: without a token, a TCP listener takes only a loopback or own Host",
          "[http]") {
    TestServer ts({}, echo);
    const std::string port = std::to_string(ts.port());
    for (const std::string& host :
         std::vector<std::string>{"127.0.0.1", "127.0.0.1:" + port, "localhost",
                                  "LOCALHOST:" + port, "127.1.2.3:80", "[::1]", "[::1]:" + port}) {
        INFO("Host: " << host);
        auto res = one(ts, "GET /ok HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
        CHECK(res.result() == bhttp::status::ok);
    }
    for (const std::string& host :
         std::vector<std::string>{"evil.example", "evil.example:" + port, "localhost.evil.example",
                                  "10.1.2.3", "[::2]:80", "127.0.0.1:x", "", "local\xffhost"}) {
        INFO("Host: " << host);
        auto res = one(ts, "GET /no HTTP/1.1\r\nHost: " + host + "\r\n\r\n");
        check_json_error(res, bhttp::status::forbidden, "host_refused");
        CHECK_THAT(res.body(),
                   Catch::Contains("--token-file") && Catch::Contains("127.0.0.1:" + port));
    }
    auto missing = one(ts, "GET /no HTTP/1.1\r\n\r\n");
    check_json_error(missing, bhttp::status::forbidden, "host_refused");
    // HTTP/1.0 may leave Host out (no browser does).
    CHECK(one(ts, "GET /ok HTTP/1.0\r\n\r\n").result() == bhttp::status::ok);
}

TEST_CASE("http server: with a token, or on a unix socket, any Host is fine", "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "a.sock").string();
    ServerOptions opts;
    opts.listen = {unix_address(path)};
    TestServer unix_only(opts, echo);
    Client u(path);
    REQUIRE(u.send("GET /u HTTP/1.1\r\nHost: evil.example\r\n\r\n"));
    auto ures = u.read_response();
    REQUIRE(ures);
    CHECK(ures->result() == bhttp::status::ok);

    ServerOptions with_token;
    with_token.bearer_token = "0123456789abcdef";
    TestServer tok(std::move(with_token), echo);
    auto res = one(tok,
                   "GET /t HTTP/1.1\r\nHost: agent.example.com:7070\r\n"
                   "Authorization: Bearer 0123456789abcdef\r\n\r\n");
    CHECK(res.result() == bhttp::status::ok);
    auto no_token = one(tok, "GET /t HTTP/1.1\r\nHost: agent.example.com\r\n\r\n");
    check_json_error(no_token, bhttp::status::unauthorized, "unauthorized");
}

TEST_CASE("http server: beyond max_connections a listener closes new connections at once",
          "[http]") {
    TempDir dir;
    const std::string path = (dir.path / "cap.sock").string();
    ServerOptions opts;
    opts.listen = {loopback_any_port(), unix_address(path)};
    opts.max_connections = 3;
    opts.idle_timeout = 30s;
    opts.read_timeout = 30s;
    TestServer ts(opts, echo);
    std::vector<std::unique_ptr<Client>> idle;
    for (int i = 0; i < 3; ++i) {
        idle.push_back(std::make_unique<Client>(ts.port()));
    }
    REQUIRE(ts.wait_connections(3));
    Client fourth(ts.port());
    CHECK(fourth.closed_by_server(2s));
    CHECK(ts.server->connections_refused() == 1);
    CHECK(ts.server->connections() == 3);
    // The cap is per listener: the unix socket still answers.
    Client other(path);
    REQUIRE(other.send(get("/other")));
    auto res = other.read_response();
    REQUIRE(res);
    CHECK(res->body() == "GET /other");
    // A held connection still works, and once one goes a new one is taken.
    REQUIRE(idle[0]->send(get("/held")));
    CHECK(idle[0]->read_response());
    idle[1]->close();
    REQUIRE(ts.wait_connections(3));  // two idle TCP + the unix one
    Client fifth(ts.port());
    REQUIRE(fifth.send(get("/fifth")));
    auto fifth_res = fifth.read_response();
    REQUIRE(fifth_res);
    CHECK(fifth_res->body() == "GET /fifth");
}
